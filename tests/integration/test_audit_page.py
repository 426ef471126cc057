"""The auditor web page, end to end in headless Chromium (Debian's chromium + chromedriver).

Screenshots go to var/screenshots/ (git-ignored); their paths are printed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from PIL import Image, ImageChops
from sqlalchemy import update

from broker.crypto import signing
from broker.domain.canonical import canonical
from broker.services import admin
from broker.storage import statements as st
from tests.integration.conftest import Api
from tests.integration.helpers import body, events

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
SHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"

if not HAVE_BROWSER and os.environ.get("CI") == "true":
    pytest.fail("CI requires chromium and chromedriver (make test installs them)", pytrace=False)
needs_browser = pytest.mark.skipif(
    not HAVE_BROWSER, reason="chromium/chromedriver not installed (make test installs them)"
)


def _start(profile: Path) -> Any:
    """A headless Chromium driven through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Chromium:
    """One headless Chromium for the page tests of a worker: starting a browser for each test cost
    more than most of the pages it was started for. A test gets no state another left behind: as
    it ends, its page is left and what the origins it opened stored is cleared (a later test's
    broker may listen on the same port)."""

    def __init__(self, profile: Path) -> None:
        self.driver = _start(profile)
        self._origins: set[str] = set()

    def tab(self, base: str, *, height: int = 1000) -> Any:
        """The driver, on a window ``height`` pixels tall, for pages of ``base``. The test's first
        tab is blank, nothing stored for any origin. A later one is a new tab (the others closed):
        what the page keeps in localStorage (the pinned key, the last checkpoint verified) is still
        there, as in a browser restarted with the same profile; sessionStorage (the token) is not,
        it belonged to the tab closed."""
        if self._origins:
            self._fresh_tab()
        self._origins.add(base)
        self.driver.set_window_size(1400, height)
        return self.driver

    def _fresh_tab(self) -> None:
        old = self.driver.window_handles
        self.driver.switch_to.new_window("tab")
        new = self.driver.current_window_handle
        for handle in old:
            self.driver.switch_to.window(handle)
            self.driver.close()
        self.driver.switch_to.window(new)

    def forget(self) -> None:
        """Leave the test's page (none may keep calling its broker) and clear what its origins
        stored, sessionStorage included."""
        self.driver.get("about:blank")
        for origin in self._origins:
            self.driver.execute_cdp_cmd(
                "Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"}
            )
        self._origins.clear()

    def alive(self) -> bool:
        from selenium.common.exceptions import WebDriverException
        from urllib3.exceptions import HTTPError

        if self.driver is None:
            return False
        try:
            self.driver.window_handles  # noqa: B018 (a round trip to the browser)
        except (WebDriverException, HTTPError):  # the browser, or chromedriver itself, is gone
            return False
        return True

    def quit(self) -> None:
        """Quit the browser, if it can still be reached (once is enough)."""
        from selenium.common.exceptions import WebDriverException
        from urllib3.exceptions import HTTPError

        driver, self.driver = self.driver, None
        if driver is not None:
            with contextlib.suppress(WebDriverException, HTTPError):
                driver.quit()


_SHARED = pytest.StashKey[Chromium]()


@pytest.fixture(name="chromium")
def chromium_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chromium]:
    """The worker's Chromium: started by the first test that asks for it (again if it died), quit
    as the session ends. The other page modules import it."""
    shared = request.config.stash.get(_SHARED, None)
    if shared is None or not shared.alive():
        if shared is not None:
            shared.quit()
        shared = request.config.stash[_SHARED] = Chromium(tmp_path_factory.mktemp("chromium"))
        request.config.add_cleanup(shared.quit)
    yield shared
    shared.forget()


def shot(driver: Any, name: str, element: Any = None) -> Path:
    """Save a screenshot (of the page, or of one element) under var/screenshots/; return its path."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    if element is None:
        driver.save_screenshot(str(path))
    else:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        path.write_bytes(element.screenshot_as_png)
    print(f"screenshot: {path}")
    return path


def ink(path: Path) -> int:
    """Pixels darker than mid-grey: text, rules, bars. A blank or white capture has none."""
    image = Image.open(io.BytesIO(path.read_bytes())).convert("L")
    return sum(image.histogram()[:128])


def colour_pixels(path: Path) -> int:
    """Strongly coloured pixels (chart bars and legend swatches): their brightest and darkest
    channels more than 60 apart. Counted by Pillow, not pixel by pixel in Python (a second of
    CPU for one screenshot)."""
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        r, g, b = image.convert("RGB").split()
    brightest = ImageChops.lighter(ImageChops.lighter(r, g), b)
    darkest = ImageChops.darker(ImageChops.darker(r, g), b)
    return sum(ImageChops.subtract(brightest, darkest).histogram()[61:])


def sign_in(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/audit/")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()


def marks(driver: Any, table: str) -> list[str]:
    """The verification state of each event row of a table, top to bottom."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' tbody td.mark')]"
            ".map((td) => td.dataset.state)",
            table,
        )
    )


def wait_for(driver: Any, test: Callable[[Any], Any], timeout: float = 30) -> Any:
    """Wait until ``test(driver)`` is truthy; on a timeout, fail with what the page shows."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # An element the page re-rendered between being found and being read is looked up again.
    waiting = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    try:
        return waiting.until(test)
    except TimeoutException:
        state = driver.execute_script(
            "return {errors: [...document.querySelectorAll('.error')].map((e) => e.textContent),"
            " marks: [...document.querySelectorAll('td.mark')].slice(0, 12)"
            ".map((td) => td.dataset.state + ': ' + td.title)}"
        )
        raise AssertionError(f"timed out; the page shows {state}") from None


def texts(driver: Any, css: str) -> list[str]:
    """The rendered text of each element ``css`` selects, as WebDriver's element text has it (a row's
    cells separated by one space), read in one round trip to the browser: one per element took
    seconds on a table of a hundred rows."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".map((e) => e.innerText.replace(/\\t+/g, ' ').trim())",
            css,
        )
    )


def _drive(chromium: Chromium, base: str, token: str, vkey: str, report_id: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out: dict[str, Any] = {}
    driver = chromium.tab(base)
    # A wrong token: the sign-in panel says so, and nothing else shows.
    sign_in(driver, base, "abk_not-a-token")
    wait_for(driver, lambda d: "Sign-in failed" in d.find_element(By.ID, "signin-error").text)
    out["signin_error"] = driver.find_element(By.ID, "signin-error").text
    out["events_hidden"] = not driver.find_element(By.ID, "events-panel").is_displayed()

    # WebCrypto Ed25519 in this Chromium (on the page: a blank tab is no secure context): the page
    # relies on it.
    out["ed25519"] = driver.execute_async_script(
        "const done = arguments[0];"
        "crypto.subtle.importKey('raw', new Uint8Array(32).fill(7), {name: 'Ed25519'}, false, ['verify'])"
        ".then(() => done('supported'), (e) => done('unsupported: ' + e.name));"
    )

    # Signed in, no key pinned yet: nothing may claim to be verified.
    sign_in(driver, base, token)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) > 3)
    wait_for(driver, lambda d: d.find_element(By.ID, "checkpoint-verdict").text)
    wait_for(driver, lambda d: set(marks(d, "#events")) == {"unverified"})
    out["who"] = driver.find_element(By.ID, "who").text
    out["unpinned_verdict"] = driver.find_element(By.ID, "checkpoint-verdict").text
    out["unpinned_ticks"] = driver.execute_script(
        "return document.body.innerText.split('\\u2713').length - 1"
    )

    # Pin the key (as an auditor would paste it): the checkpoint verifies, it becomes the
    # baseline, and the rows it covers are proven included.
    driver.find_element(By.ID, "pin-input").send_keys(vkey)
    driver.find_element(By.CSS_SELECTOR, "#pin-form button[type=submit]").click()
    wait_for(driver, lambda d: "\u2713" in d.find_element(By.ID, "checkpoint-verdict").text)
    out["first_consistency"] = wait_for(driver, lambda d: d.find_element(By.ID, "consistency-verdict").text)
    wait_for(driver, lambda d: "verified" in marks(d, "#events") and "unverified" not in marks(d, "#events"))
    out["marks_before_sign"] = marks(driver, "#events")

    # A new checkpoint: consistent with the one seen before, and it covers every row. (One
    # more audited query first, so that the log has grown past the checkpoint just verified.)
    driver.execute_async_script("api('/v1/audit/events?limit=1').then(arguments[0])")
    driver.find_element(By.ID, "sign-checkpoint").click()
    wait_for(driver, lambda d: "Consistent with" in d.find_element(By.ID, "consistency-verdict").text)
    out["second_consistency"] = driver.find_element(By.ID, "consistency-verdict").text
    wait_for(driver, lambda d: set(marks(d, "#events")) == {"verified"})
    out["marks"] = marks(driver, "#events")
    out["seqs"] = [int(s) for s in texts(driver, "#events tbody tr[data-seq] td:nth-child(2)")]
    out["end_of_log"] = texts(driver, "#events tbody tr.end-of-log")
    out["headers"] = texts(driver, "#events thead th")
    out["details"] = texts(driver, "#events tbody td.details")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#failures tbody tr[data-seq]"))
    out["failures"] = texts(driver, "#failures tbody tr")
    wait_for(driver, lambda d: "All " in d.find_element(By.ID, "charts-coverage").text)
    out["legend_reason"] = driver.find_element(By.ID, "legend-reason").text
    out["legend_nation"] = driver.find_element(By.ID, "legend-nation").text
    out["bars"] = len(driver.find_elements(By.CSS_SELECTOR, "#chart-reason rect"))
    out["shot_page"] = shot(driver, "audit-page.png")
    out["shot_table"] = shot(driver, "audit-events.png", driver.find_element(By.ID, "events"))
    out["shot_charts"] = shot(driver, "audit-charts.png", driver.find_element(By.ID, "charts-panel"))

    # A malformed filter: the broker's problem message shows by the filters; the table stays.
    rows_before = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]"))
    driver.find_element(By.CSS_SELECTOR, "#filters input[name=since]").send_keys("yesterday")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "filter-error").text)
    out["filter_error"] = driver.find_element(By.ID, "filter-error").text
    out["filter_error_shown"] = driver.find_element(By.ID, "filter-error").is_displayed()
    out["rows_kept"] = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) == rows_before
    out["shot_filter_error"] = shot(driver, "audit-filter-error.png")
    driver.find_element(By.CSS_SELECTOR, "#filters input[name=since]").clear()

    # Denials only.
    Select(driver.find_element(By.CSS_SELECTOR, "#filters select[name=decision]")).select_by_value("deny")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(
        driver,
        lambda d: (
            not d.find_element(By.ID, "filter-error").text
            and set(texts(d, "#events tbody tr[data-seq] td:nth-child(9)")) == {"deny"}
        ),
    )
    out["denied_rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]"))

    # The page's RFC 9162 verifiers against the broker's proofs, for every pair of sizes up
    # to 20: each proof must verify, and a proof with one hash changed must not.
    out["merkle_failures"] = driver.execute_async_script(MERKLE_CHECK, 20, 4)

    # The report: label, topics, signature status, who received it, every event.
    driver.find_element(By.CSS_SELECTOR, f"#events td.report[title='{report_id}']").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "report-progress").get_attribute("data-complete"))
    wait_for(driver, lambda d: "checking" not in d.find_element(By.ID, "report-meta").text)
    out["report_meta"] = driver.find_element(By.ID, "report-meta").text
    out["report_glance"] = driver.find_element(By.ID, "report-glance").text
    out["recipients"] = {
        row.get_attribute("data-node"): row.text
        for row in driver.find_elements(By.CSS_SELECTOR, "#report-recipients tbody tr")
    }
    out["report_events"] = int(
        driver.find_element(By.ID, "report-progress").get_attribute("data-complete") or 0
    )
    wait_for(driver, lambda d: set(marks(d, "#report-events")) == {"verified"})
    out["shot_report"] = shot(driver, "audit-report.png", driver.find_element(By.ID, "report-panel"))
    return out


MERKLE_CHECK = """
const [limit, lanes, done] = arguments;
(async () => {
  const bad = [];
  const size = Math.min(limit, (await api("/v1/audit/events?order=desc&limit=1")).events[0].seq);
  const checks = [];
  for (let second = 1; second <= size; second++) {
    for (let first = 1; first <= second; first++) {
      checks.push(async () => {
        const p = await api(`/v1/audit/proofs/consistency?first=${first}&second=${second}`);
        const path = p.path.map(fromHex), one = fromHex(p.first_root), two = fromHex(p.second_root);
        const ok = await consistencyHolds(first, second, one, two, path);
        if (!ok) bad.push(`consistency ${first}/${second}`);
        if (path.length) {
          path[path.length - 1] = await sha256(path[path.length - 1]);
          if (await consistencyHolds(first, second, one, two, path)) bad.push(`forged ${first}/${second}`);
        }
      });
    }
    for (let seq = 1; seq <= second; seq++) {
      checks.push(async () => {
        const p = await api(`/v1/audit/proofs/inclusion?seq=${seq}&size=${second}`);
        const path = p.path.map(fromHex);
        const root = await inclusionRoot(seq - 1, second, fromHex(p.leaf_hash), path);
        if (!root || toHex(root) !== p.root) bad.push(`inclusion ${seq}/${second}`);
        if (path.length) {
          path[0] = await sha256(path[0]);
          const forged = await inclusionRoot(seq - 1, second, fromHex(p.leaf_hash), path);
          if (forged && toHex(forged) === p.root) bad.push(`forged inclusion ${seq}/${second}`);
        }
      });
    }
  }
  // A few checks in flight at once: one after another, each waited a round trip to the broker.
  const lane = async () => { while (checks.length) await checks.shift()(); };
  await Promise.all(Array.from({length: lanes}, lane));
  done(size < 12 ? [`only ${size} events`] : bad.sort());
})().catch((e) => done(["error: " + e.message]));
"""


def _tampered(chromium: Chromium, base: str, token: str, seq: int) -> list[str]:
    """In a new tab of the same browser (the key and last checkpoint are remembered): the row of
    an altered event is marked failed, the others still verify."""
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    sign_in(driver, base, token)
    wait_for(driver, lambda d: "\u2713" in d.find_element(By.ID, "checkpoint-verdict").text)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) > 5)
    driver.find_element(By.ID, "sign-checkpoint").click()  # covering every row shown
    wait_for(driver, lambda d: "Consistent with" in d.find_element(By.ID, "consistency-verdict").text)
    wait_for(driver, lambda d: "failed" in marks(d, "#events") and "pending" not in marks(d, "#events"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")
    states = {int(r.get_attribute("data-seq")): marks(driver, "#events")[i] for i, r in enumerate(rows)}
    shot(driver, "audit-tampered.png", driver.find_element(By.ID, "events"))
    found = [f"{s}:{states[s]}" for s in sorted(states)]
    # A remembered checkpoint the broker's log does not extend: the page must say so.
    driver.execute_script(
        "const seen = JSON.parse(localStorage.getItem('auditLastVerifiedCheckpoint'));"
        "seen.size -= 1; seen.root = btoa('x'.repeat(32));"
        "localStorage.setItem('auditLastVerifiedCheckpoint', JSON.stringify(seen));"
    )
    driver.find_element(By.ID, "reload-checkpoint").click()
    wait_for(driver, lambda d: "NOT an extension" in d.find_element(By.ID, "consistency-verdict").text)
    return found


@needs_browser
async def test_auditor_page_in_headless_chromium(api: Api, chromium: Chromium) -> None:
    key = Ed25519PrivateKey.generate()
    usa, swe, nga = (
        await api.node("usa-1", "USA", ed25519_public_key=_raw_public(key)),
        await api.node("swe-1", "SWE"),
        await api.node("nga-1", "NGA"),
    )
    auditor = await api.node("aud", "BEL", roles=("audit",))
    sent = body(topics=["ransomware", "apt-29"])
    message = signing.signing_message(
        canonical_label=canonical(sent["label"]), canonical_payload=canonical(sent["payload"])
    )
    _, receipt = await api.publish(usa, {**sent, "signature": signing.sign(private_key=key, message=message)})
    assert (await api.get(f"/v1/reports/{receipt['id']}", swe))[0] == 200
    assert (await api.get(f"/v1/reports/{receipt['id']}", nga))[0] == 404
    assert (await api.get("/v1/audit/events", "abk_" + "x" * 43))[0] == 401  # a failed sign-in
    await api.flush_auth_failures()
    _, pinned = await api.get("/.well-known/alliance-broker/checkpoint-key")

    result = await asyncio.to_thread(_drive, chromium, api.base_url, auditor, pinned["vkey"], receipt["id"])

    assert result["ed25519"] == "supported", result["ed25519"]
    assert "Sign-in failed" in result["signin_error"] and "401" in result["signin_error"]
    assert result["events_hidden"]
    assert "aud" in result["who"] and "BEL" in result["who"]
    assert "NOT verified" in result["unpinned_verdict"]
    assert result["unpinned_ticks"] == 0, "a tick shown before anything was verified"
    assert "baseline" in result["first_consistency"]
    assert "Consistent with the checkpoint of size" in result["second_consistency"]
    assert set(result["marks"]) == {"verified"} and len(result["marks"]) >= 5
    assert result["seqs"] == sorted(result["seqs"], reverse=True), "not newest first"
    assert result["seqs"][-1] == 1
    assert len(result["end_of_log"]) == 1 and "end of log" in result["end_of_log"][0]
    assert "details" in result["headers"]
    assert any("label_hash=" in d for d in result["details"])
    assert any("127.0.0.1" in row and "unknown_token" in row for row in result["failures"]), result[
        "failures"
    ]
    assert "deny: not_releasable" in result["legend_reason"] and "allow: allowed" in result["legend_reason"]
    assert "NGA deny" in result["legend_nation"] and "SWE allow" in result["legend_nation"]
    assert result["bars"] >= 2
    assert "since must be an ISO-8601" in result["filter_error"] and result["filter_error_shown"]
    assert result["rows_kept"], "a refused filter emptied the table"
    assert 0 < result["denied_rows"] < len(result["seqs"])
    meta = result["report_meta"]
    assert "SECRET // REL TO NATO" in meta and "ransomware, apt-29" in meta and "usa-1 (USA)" in meta
    assert "the broker reports it verifies against the originator's current key" in meta
    assert "verified in this browser against the key the broker lists for usa-1 \u2713" in meta
    assert "payload" not in result["report_meta"].lower().replace("payload sha-256", "")
    assert "swe-1 (SWE)" in result["report_glance"] and "nga-1 (NGA)" in result["report_glance"]
    assert result["recipients"]["swe-1"].split()[:3] == ["swe-1", "SWE", "1"]  # read once
    assert "read: not_releasable" in result["recipients"]["nga-1"]
    assert result["report_events"] == 3  # publish, swe's read, nga's refused read
    assert result["merkle_failures"] == [], result["merkle_failures"]
    for name in ("shot_page", "shot_table", "shot_charts", "shot_filter_error", "shot_report"):
        assert ink(result[name]) > 500, f"{name} rendered no text"
    assert colour_pixels(result["shot_charts"]) > 200, "the charts drew no bars"
    with Image.open(result["shot_page"]) as page:
        assert page.width >= 1000 and page.height >= 600

    # Alter one stored event: the page must now flag it, not call it verified.
    async with api.ctx.db.transaction() as tx:
        events = await tx.events(limit=1000)
        target = next(e for e in events if e.draft.action == "read" and e.draft.decision == "allow")

        def alter(connection: Any) -> None:
            connection.execute(update(st.EVENTS).where(st.EVENTS.c.seq == target.seq).values(reason="edited"))

        await tx.run(alter)  # committed as the block ends
    states = await asyncio.to_thread(_tampered, chromium, api.base_url, auditor, target.seq)
    assert f"{target.seq}:failed" in states, states
    assert sum(s.endswith(":failed") for s in states) == 1, states


# -- the endpoints the page added ---------------------------------------------------------


async def _log(api: Api) -> tuple[str, str]:
    """A few events of several kinds; return the auditor's token and a publisher's."""
    usa = await api.node("usa-1", "USA")
    nga = await api.node("nga-1", "NGA")
    auditor = await api.node("aud", "BEL", roles=("audit",))
    for _ in range(3):
        _, receipt = await api.publish(usa, body())
        await api.get(f"/v1/reports/{receipt['id']}", nga)
    return auditor, usa


async def test_events_newest_first_with_a_before_cursor(api: Api) -> None:
    auditor, _ = await _log(api)
    async with api.ctx.db.transaction() as tx:
        size = await tx.audit_size()
    status, ascending = await api.get("/v1/audit/events?limit=1000&until=2100-01-01", auditor)
    assert status == 200
    oldest_first = [e["seq"] for e in ascending["events"]]
    assert oldest_first == list(range(1, size + 1)) and ascending["next_after"] == size  # unchanged

    seen: list[int] = []
    query = "/v1/audit/events?order=desc&limit=4&until=2100-01-01"
    status, page = await api.get(query, auditor)
    while page["events"]:
        assert status == 200
        got = [e["seq"] for e in page["events"]]
        assert got == sorted(got, reverse=True) and page["next_after"] == got[-1]
        seen += got
        status, page = await api.get(f"{query}&before={page['next_after']}", auditor)
    assert page["next_after"] == 0  # empty: the request's after; nothing older is left
    # Every event exactly once, newest to oldest: the queries' own events land above the cursor.
    assert seen == list(range(seen[0], 0, -1)) and seen[0] > size

    status, between = await api.get("/v1/audit/events?order=desc&after=2&before=6", auditor)
    assert [e["seq"] for e in between["events"]] == [5, 4, 3]
    status, between = await api.get("/v1/audit/events?after=2&before=6", auditor)
    assert [e["seq"] for e in between["events"]] == [3, 4, 5] and between["next_after"] == 5

    status, denied = await api.get("/v1/audit/events?order=desc&decision=deny&action=read", auditor)
    got = [e["seq"] for e in denied["events"]]
    assert len(got) == 3 and got == sorted(got, reverse=True)
    assert all(e["reason"] == "not_releasable" for e in denied["events"])

    for bad in ("order=newest", "order=DESC", "before=0", "before=x"):
        status, problem = await api.get(f"/v1/audit/events?{bad}", auditor)
        assert status == 400 and problem["type"].endswith("invalid_parameter"), bad
    queries = await events(api.ctx, action="audit_query")
    assert queries
    async with api.ctx.db.transaction() as tx:
        last = (await tx.events(after=queries[-1]["seq"] - 1, limit=1))[0]
    assert last.draft.details.get("order") == "desc" and last.draft.details.get("decision") == "deny"


async def test_whoami_names_the_auditor(api: Api) -> None:
    auditor, usa = await _log(api)
    status, me = await api.get("/v1/audit/whoami", auditor)
    assert status == 200 and me == {"id": "aud", "nation": "BEL", "roles": ["audit"]}
    assert (await api.get("/v1/audit/whoami", usa))[0] == 403
    assert (await api.get("/v1/audit/whoami"))[0] == 401
    refused = await events(api.ctx, action="audit_whoami")
    assert [(e["node"], e["decision"], e["reason"]) for e in refused] == [("usa-1", "deny", "missing_role")]


def _raw_public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


async def test_report_metadata_for_auditors_never_the_payload(api: Api) -> None:
    auditor, usa = await _log(api)
    key = Ed25519PrivateKey.generate()
    signer = await api.node("fra-1", "FRA", ed25519_public_key=_raw_public(key))
    sent = body(topics=["ransomware", "apt-29"], to=["NATO"])
    message = signing.signing_message(
        canonical_label=canonical(sent["label"]), canonical_payload=canonical(sent["payload"])
    )
    signature = signing.sign(private_key=key, message=message)
    status, receipt = await api.publish(signer, {**sent, "signature": signature})
    assert status == 201

    status, meta = await api.get(f"/v1/audit/reports/{receipt['id'].upper()}", auditor)
    assert status == 200
    assert meta["id"] == receipt["id"] and meta["sequence"] == receipt["sequence"]
    assert meta["label"] == sent["label"] and meta["topics"] == ["ransomware", "apt-29"]
    assert meta["originator"] == {"node": "fra-1", "nation": "FRA"}
    assert meta["signature"] == {
        "present": True,
        "verified": True,
        "detail": "verifies against the originator's current key",
        "value": signature,
    }
    assert meta["recalled"] is None and meta["erased"] is None
    assert "payload" not in meta and "sealed" not in meta and "198.51.100.7" not in str(meta)

    # The originator's key changed since: the stored signature no longer verifies with it.
    await admin.update_node(
        api.ctx, "fra-1", {"ed25519_public_key": _raw_public(Ed25519PrivateKey.generate())}, actor="test"
    )
    _, meta = await api.get(f"/v1/audit/reports/{receipt['id']}", auditor)
    assert meta["signature"]["present"] and meta["signature"]["verified"] is False

    _, unsigned = await api.publish(usa, body())
    _, meta = await api.get(f"/v1/audit/reports/{unsigned['id']}", auditor)
    assert meta["signature"] == {"present": False, "verified": None, "detail": "unsigned", "value": None}

    assert (await api.get("/v1/audit/reports/00000000-0000-4000-8000-000000000000", auditor))[0] == 404
    status, problem = await api.get("/v1/audit/reports/not-a-uuid", auditor)
    assert status == 400 and problem["type"].endswith("invalid_parameter")
    assert (await api.get(f"/v1/audit/reports/{receipt['id']}", usa))[0] == 403
    looked = await events(api.ctx, action="audit_report", decision="allow")
    # Four looked up (the malformed id was refused first, usa-1's attempt denied): none of them is
    # filed under the report, whose own acts they are not.
    assert len(looked) == 4 and all(e["report"] is None for e in looked)
    async with api.ctx.db.transaction() as tx:
        first = await tx.event(looked[0]["seq"])
    assert first is not None and first.draft.details == {"report": receipt["id"]}


async def test_page_headers_keep_everything_local(api: Api) -> None:
    for path, kind in (
        ("/audit/", "text/html"),
        ("/audit/app.js", "text/javascript"),
        ("/audit/app.css", "text/css"),
    ):
        async with api.client.get(path) as resp:
            assert resp.status == 200 and resp.content_type == kind
            policy = resp.headers["Content-Security-Policy"]
            text = await resp.text()
        assert (
            "default-src 'none'" in policy and "script-src 'self'" in policy and "style-src 'self'" in policy
        )
        assert "unsafe-inline" not in policy and "connect-src 'self'" in policy
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    async with api.client.get("/audit/app.js") as resp:
        script = await resp.text()
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in script, sink
    assert 'localStorage.setItem("auditToken"' not in script  # the token only in sessionStorage
    async with api.client.get("/audit/") as resp:
        page = await resp.text()
    assert "<style" not in page and " style=" not in page  # the CSP allows no inline style
