"""The auditor page's verdicts are unmistakable (issue 23, items 5 and 6): one banner for the
whole log from a verification of every event up to the signed checkpoint, grey "not yet
verified" before a key is pinned, allow and deny in separate colour families with an altered
event never charted as an "allow", report ids as real links, and the report view keeping
refusals of receiving apart from refusals of other acts. Headless Chromium, as
tests/integration/test_audit_page.py; screenshots under var/screenshots/."""

from __future__ import annotations

import asyncio
import colorsys
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, update

from broker.crypto.chain import event_hash
from broker.services import auth, reports
from broker.storage import statements as st
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body
from tests.integration.test_audit_page import (
    Chromium,
    chromium_fixture,  # noqa: F401 (the fixture)
    marks,
    needs_browser,
    shot,
    sign_in,
    wait_for,
)

# What these check is the page's own judgement in the browser, the same whichever engine served
# the events (the audit endpoints and the export are checked on both in their own tests).
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

LATER_READS = 110  # more than the table's first page (100 rows), all newer than the edited event


@dataclass
class Log:
    auditor: str
    report: str
    vkey: str
    first_read: int  # swe-1's first read of the report: older than the table's first page


async def _log(api: Api) -> Log:
    """A report read by swe-1, refused to nga-1, its recall by swe-1 refused; then enough reads
    that the first one is off the first page; a checkpoint covering all of it."""
    usa, swe, nga = (
        await api.node("usa-1", "USA"),
        await api.node("swe-1", "SWE"),
        await api.node("nga-1", "NGA"),
    )
    auditor = await api.node("aud", "BEL", roles=("audit",))
    _, receipt = await api.publish(usa, body())
    for _ in range(4):  # "USA allow" ranks high enough to get a colour of its own
        await api.publish(usa, body())
    assert (await api.get(f"/v1/reports/{receipt['id']}", swe))[0] == 200
    assert (await api.get(f"/v1/reports/{receipt['id']}", nga))[0] == 404
    assert (await api.call("POST", f"/v1/reports/{receipt['id']}/recall", swe))[0] == 403
    # The later reads through the service, all at once: the group commit writes them together,
    # where one HTTP round trip and one commit each took most of the setup.
    reader = await auth.authenticate(api.ctx, swe, source="127.0.0.1")
    await asyncio.gather(*(reports.read(api.ctx, reader, receipt["id"]) for _ in range(LATER_READS)))
    async with api.ctx.db.transaction() as tx:
        reads = await tx.events(report=receipt["id"], action="read", decision="allow", limit=1)
    assert (await api.call("POST", "/v1/audit/checkpoints", auditor))[0] == 201
    _, key = await api.get("/.well-known/alliance-broker/checkpoint-key")
    return Log(auditor=auditor, report=receipt["id"], vkey=key["vkey"], first_read=reads[0].seq)


async def _edit(api: Api, seq: int) -> None:
    """Change one stored event's reason behind the broker's back (its decision stays "allow")."""
    async with api.ctx.db.transaction() as tx:

        def alter(connection: Any) -> None:
            connection.execute(update(st.EVENTS).where(st.EVENTS.c.seq == seq).values(reason="edited"))

        await tx.run(alter)  # committed as the block ends


def _banner(driver: Any) -> dict[str, Any]:
    return dict(
        driver.execute_script(
            "const b = document.getElementById('log-verdict');"
            "return b ? {state: b.dataset.state, text: b.innerText, firstBad: b.dataset.firstBad || null,"
            " remembered: b.dataset.remembered || null, shown: !b.hidden,"
            " colour: getComputedStyle(b).backgroundColor} : {state: null, text: '', shown: false};"
        )
    )


def _mark_colours(driver: Any) -> set[str]:
    return set(
        driver.execute_script(
            "return [...document.querySelectorAll('#events tbody td.mark')]"
            ".map((td) => getComputedStyle(td).color)"
        )
    )


def _settled(driver: Any) -> list[str]:
    """The events table's marks, a row newer than the signed checkpoint counted as "newer"."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#events tbody td.mark')].map((td) =>"
            " td.dataset.state === 'pending' && td.title.includes('newer than the signed checkpoint')"
            " ? 'newer' : td.dataset.state)"
        )
    )


def _rgb(css: str) -> tuple[int, int, int]:
    if css.startswith("#"):
        return int(css[1:3], 16), int(css[3:5], 16), int(css[5:7], 16)
    r, g, b = (int(float(v)) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return r, g, b


def _family(css: str) -> str:
    """ "red" (reds, oranges, magentas), "cool" (greens to blues) or "grey", by hue."""
    r, g, b = _rgb(css)
    hue, _lightness, saturation = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    if saturation < 0.25 or max(r, g, b) - min(r, g, b) < 40:
        return "grey"
    degrees = hue * 360
    return "red" if degrees < 50 or degrees > 290 else "cool" if 70 < degrees < 260 else "other"


def _sign_in_and_wait(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    sign_in(driver, base, token)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) >= 100)
    wait_for(driver, lambda d: d.find_element(By.ID, "checkpoint-verdict").text)


def _verdicts(chromium: Chromium, base: str, log: Log, after_edit: bool) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    out: dict[str, Any] = {}
    name = "tampered" if after_edit else "intact"
    # Tall enough that one screenshot holds the banner, the checkpoint, the charts and the table's
    # first rows.
    driver = chromium.tab(base, height=2300)
    _sign_in_and_wait(driver, base, log.auditor)
    if not after_edit:
        # (c) No key pinned yet: grey "not yet verified", nothing red, nothing ticked.
        wait_for(driver, lambda d: set(marks(d, "#events")) == {"unverified"})
        out["unpinned"] = _banner(driver)
        out["unpinned_mark_colours"] = _mark_colours(driver)
        out["unpinned_verdict_colour"] = driver.execute_script(
            "return getComputedStyle(document.getElementById('checkpoint-verdict')).color"
        )
        driver.execute_script("window.scrollTo(0, 0)")
        out["shot_unpinned"] = shot(driver, "audit-verdict-unpinned.png")
        driver.find_element(By.ID, "pin-input").send_keys(log.vkey)
        driver.find_element(By.CSS_SELECTOR, "#pin-form button[type=submit]").click()
    wait_for(driver, lambda d: _banner(d)["state"] in ("intact", "tampered", "failed"), timeout=60)
    # Settled: each row verified or failed, or newer than the checkpoint (an audited query of
    # the page's own may land before the table's).
    wait_for(driver, lambda d: "pending" not in _settled(d))
    out["banner"] = _banner(driver)
    out["marks"] = _settled(driver)
    out["seqs"] = [
        int(s)
        for s in driver.execute_script(
            "return [...document.querySelectorAll('#events tbody tr[data-seq]')].map((tr) => tr.dataset.seq)"
        )
    ]
    driver.execute_script("window.scrollTo(0, 0)")
    out["shot"] = shot(driver, f"audit-verdict-{name}.png")
    if after_edit:
        # The banner's button shows the first bad event in the table, flagged there too.
        driver.find_element(By.ID, "show-first-bad").click()
        wait_for(
            driver,
            lambda d: d.execute_script(
                "const tr = document.querySelector('#events tbody tr[data-seq]');"
                "return tr && tr.dataset.seq === arguments[0]"
                " && tr.querySelector('td.mark').dataset.state === 'failed'",
                str(log.first_read),
            ),
        )
        out["shot_first_bad"] = shot(
            driver, "audit-verdict-tampered-first-bad.png", driver.find_element(By.ID, "events-panel")
        )
    # Reloaded: the verdict for this checkpoint is remembered, not recomputed.
    driver.get(f"{base}/audit/")
    wait_for(driver, lambda d: _banner(d)["state"] in ("intact", "tampered", "failed"), timeout=60)
    out["reloaded"] = _banner(driver)
    return out


@needs_browser
async def test_one_banner_for_the_whole_log_names_an_edited_event_off_the_first_page(
    start_server: StartServer, chromium: Chromium
) -> None:
    # No checkpoint but the test's own: a reload must meet the checkpoint it verified.
    api = await start_server(checkpoint_every_seconds=86_400.0, checkpoint_every_events=10**9)
    log = await _log(api)
    intact = await asyncio.to_thread(_verdicts, chromium, api.base_url, log, False)

    unpinned = intact["unpinned"]
    assert unpinned["shown"] and unpinned["state"] == "unverified", unpinned
    assert "not yet verified" in unpinned["text"].lower() and _family(unpinned["colour"]) == "grey", unpinned
    assert {_family(c) for c in intact["unpinned_mark_colours"]} == {"grey"}, intact["unpinned_mark_colours"]
    assert _family(intact["unpinned_verdict_colour"]) == "grey"

    banner = intact["banner"]
    async with api.ctx.db.transaction() as tx:
        size = await tx.audit_size()
    assert banner["state"] == "intact" and _family(banner["colour"]) == "cool", banner
    assert "intact" in banner["text"].lower() and "every event" in banner["text"].lower(), banner
    assert intact["reloaded"]["state"] == "intact" and intact["reloaded"]["remembered"], intact["reloaded"]

    # One event older than the first page is edited; a new checkpoint covers everything.
    await _edit(api, log.first_read)
    assert (await api.call("POST", "/v1/audit/checkpoints", log.auditor))[0] == 201
    tampered = await asyncio.to_thread(_verdicts, chromium, api.base_url, log, True)
    assert log.first_read not in tampered["seqs"] and len(tampered["seqs"]) == 100, "the edited row is shown"
    # Every row on the first page verifies: only the banner can tell the log was edited.
    assert set(tampered["marks"]) <= {"verified", "newer"} and "verified" in tampered["marks"], tampered[
        "marks"
    ]
    banner = tampered["banner"]
    assert banner["state"] == "tampered" and _family(banner["colour"]) == "red", banner
    assert banner["firstBad"] == str(log.first_read), banner
    assert f"event {log.first_read}" in banner["text"] and "TAMPERED" in banner["text"], banner
    assert tampered["reloaded"]["state"] == "tampered" and tampered["reloaded"]["remembered"], tampered[
        "reloaded"
    ]
    assert size > LATER_READS
    assert set(intact["marks"]) <= {"verified", "newer"} and "verified" in intact["marks"], intact["marks"]
    for path in (intact["shot_unpinned"], intact["shot"], tampered["shot"], tampered["shot_first_bad"]):
        assert path.exists()


def _first_verdict(chromium: Chromium, base: str, log: Log) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    _sign_in_and_wait(driver, base, log.auditor)
    driver.find_element(By.ID, "pin-input").send_keys(log.vkey)
    driver.find_element(By.CSS_SELECTOR, "#pin-form button[type=submit]").click()
    wait_for(driver, lambda d: _banner(d)["state"] in ("intact", "tampered", "failed"), timeout=60)
    return _banner(driver)


@needs_browser
async def test_the_banner_names_an_event_removed_from_the_database(api: Api, chromium: Chromium) -> None:
    log = await _log(api)
    async with api.ctx.db.transaction() as tx:

        def remove(connection: Any) -> None:
            connection.execute(delete(st.EVENTS).where(st.EVENTS.c.seq == log.first_read))

        await tx.run(remove)  # committed as the block ends
    banner = await asyncio.to_thread(_first_verdict, chromium, api.base_url, log)
    assert banner["state"] == "tampered" and banner["firstBad"] == str(log.first_read), banner
    assert f"no event at seq {log.first_read}" in banner["text"], banner


def _charts(chromium: Chromium, base: str, token: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    _sign_in_and_wait(driver, base, token)
    wait_for(
        driver,
        lambda d: "All " in d.execute_script("return document.getElementById('charts-coverage').textContent"),
    )
    legends = {}
    for chart in ("reason", "nation"):
        legends[chart] = driver.execute_script(
            "return [...document.querySelectorAll('#legend-' + arguments[0] + ' > span')]"
            ".map((s) => [s.dataset.series, s.textContent,"
            " s.querySelector('rect').getAttribute('fill')])",
            chart,
        )
    shot(driver, "audit-verdict-charts.png", driver.find_element(By.ID, "charts-panel"))
    return legends


@needs_browser
async def test_charts_keep_allow_and_deny_apart_and_never_count_an_altered_event_as_allowed(
    api: Api, chromium: Chromium
) -> None:
    log = await _log(api)
    await _edit(api, log.first_read)
    legends = await asyncio.to_thread(_charts, chromium, api.base_url, log.auditor)
    for chart, items in legends.items():
        series = {name: (text, fill) for name, text, fill in items}
        assert any(name.endswith("allow") or name.startswith("allow") for name in series), series
        for name, (_, fill) in series.items():
            decision = (
                "allow"
                if "allow" in name.split(":")[0].split()
                else "deny"
                if "deny" in name.split(":")[0].split()
                else None
            )
            if decision == "allow":
                assert _family(fill) == "cool", f"{chart}: {name} drawn in {fill}"
            elif decision == "deny":
                assert _family(fill) == "red", f"{chart}: {name} drawn in {fill}"
        assert not any("edited" in name for name in series), f"{chart}: the altered event charted as {series}"
        altered = [text for name, (text, _) in series.items() if "altered" in name]
        assert altered == ["altered event (1)"], series


def _links(chromium: Chromium, base: str, token: str, report: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    out: dict[str, Any] = {}
    driver = chromium.tab(base)
    _sign_in_and_wait(driver, base, token)
    links = driver.find_elements(By.CSS_SELECTOR, f"#events td.report[title='{report}'] a[href]")
    out["hrefs"] = {a.get_attribute("href") for a in links}
    # The link opened as a link would be (pasted, or from a bookmark) shows the report.
    driver.get(next(iter(out["hrefs"])) if out["hrefs"] else f"{base}/audit/#report={report}")
    driver.refresh()
    wait_for(driver, lambda d: d.find_element(By.ID, "report-id").text == report)
    wait_for(driver, lambda d: d.find_element(By.ID, "report-progress").get_attribute("data-complete"))
    out["opened"] = driver.find_element(By.ID, "report-id").text
    return out


@needs_browser
async def test_report_ids_are_real_links(api: Api, chromium: Chromium) -> None:
    log = await _log(api)
    out = await asyncio.to_thread(_links, chromium, api.base_url, log.auditor, log.report)
    assert out["hrefs"] and all(h.endswith(f"/audit/#report={log.report}") for h in out["hrefs"]), out
    assert out["opened"] == log.report


def _glance(chromium: Chromium, base: str, token: str, report: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    _sign_in_and_wait(driver, base, token)
    driver.find_element(By.CSS_SELECTOR, f"#events td.report[title='{report}']").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "report-progress").get_attribute("data-complete"))
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#report-recipients tbody tr"))
    out = {
        "glance": driver.find_element(By.ID, "report-glance").text,
        "lines": driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#report-glance [data-list]')]"
            ".map((p) => [p.dataset.list, p.textContent]))"
        ),
        "headers": [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#report-recipients thead th")],
        "rows": {
            row.get_attribute("data-node"): row.text
            for row in driver.find_elements(By.CSS_SELECTOR, "#report-recipients tbody tr")
        },
    }
    shot(driver, "audit-verdict-report.png", driver.find_element(By.ID, "report-panel"))
    return out


@needs_browser
async def test_report_view_keeps_refusals_of_receiving_apart_from_other_refusals(
    api: Api, chromium: Chromium
) -> None:
    log = await _log(api)
    out = await asyncio.to_thread(_glance, chromium, api.base_url, log.auditor, log.report)
    lines = out["lines"]
    assert "swe-1 (SWE)" in lines.get("received", ""), out
    # nga-1 was refused the report; swe-1 received it and was only refused its recall.
    assert (
        "nga-1 (NGA)" in lines.get("refused-receiving", "") and "swe-1" not in lines["refused-receiving"]
    ), out
    assert "swe-1 (SWE)" in lines.get("refused-other", "") and "recall" in lines["refused-other"], out
    assert "nga-1" not in lines["refused-other"], out
    assert "Refused: swe-1" not in out["glance"]
    swe = out["rows"]["swe-1"]
    assert "recall: not_originator" in swe and "not_releasable" not in swe, swe
    assert "read: not_releasable" in out["rows"]["nga-1"]


def _verdict_and_charts(chromium: Chromium, base: str, log: Log) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole-log verdict once the key is pinned, and the charts' legends once both are done
    (the verdict redraws charts already drawn; charts drawn after it use its faults)."""
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    _sign_in_and_wait(driver, base, log.auditor)
    driver.find_element(By.ID, "pin-input").send_keys(log.vkey)
    driver.find_element(By.CSS_SELECTOR, "#pin-form button[type=submit]").click()
    wait_for(driver, lambda d: _banner(d)["state"] in ("intact", "tampered", "failed"), timeout=60)
    wait_for(
        driver,
        lambda d: "All " in d.execute_script("return document.getElementById('charts-coverage').textContent"),
    )
    legends = {
        chart: driver.execute_script(
            "return [...document.querySelectorAll('#legend-' + arguments[0] + ' > span')]"
            ".map((s) => [s.dataset.series, s.textContent])",
            chart,
        )
        for chart in ("reason", "nation")
    }
    return _banner(driver), legends


@needs_browser
async def test_an_event_edited_and_rehashed_is_named_first_and_never_charted_under_its_decision(
    api: Api, chromium: Chromium
) -> None:
    """An event edited and given the hash of its new fields hashes to its hash: only the next
    event's link shows the break, and either of the two may be the edited one. Both are charted
    as altered, and the banner names the first of them, as `broker audit verify` does."""
    log = await _log(api)
    _, page = await api.get(f"/v1/audit/events?after={log.first_read - 1}&limit=1", log.auditor)
    (event,) = page["events"]
    assert event["seq"] == log.first_read and event["decision"] == "allow"
    forged = {**event, "reason": "edited"}
    async with api.ctx.db.transaction() as tx:

        def rehash(connection: Any) -> None:
            values = {"reason": "edited", "hash": event_hash(forged)}
            connection.execute(update(st.EVENTS).where(st.EVENTS.c.seq == log.first_read).values(**values))

        await tx.run(rehash)  # committed as the block ends
    _, after = await api.get(f"/v1/audit/events?after={log.first_read - 1}&limit=1", log.auditor)
    assert event_hash(after["events"][0]) == after["events"][0]["hash"]  # it hashes to its hash
    banner, legends = await asyncio.to_thread(_verdict_and_charts, chromium, api.base_url, log)
    assert banner["state"] == "tampered" and banner["firstBad"] == str(log.first_read), banner
    for chart, items in legends.items():
        series = dict(items)
        assert not any("edited" in name for name in series), f"{chart}: the edited event charted as {series}"
        assert [text for name, text in series.items() if "altered" in name] == ["altered event (2)"], series


@needs_browser
async def test_events_rewritten_with_every_later_hash_are_never_charted_under_their_decision(
    api: Api, chromium: Chromium
) -> None:
    """An event edited and every hash after it recomputed: each event hashes to its hash and links
    to the one before, and only the signed root shows the rewrite. The page cannot tell which
    event was edited, so none up to the checkpoint is charted under its decision."""
    log = await _log(api)
    _, page = await api.get(f"/v1/audit/events?after={log.first_read - 1}&limit=1000", log.auditor)
    events = page["events"]
    assert events[0]["seq"] == log.first_read
    rewritten, prev = [], events[0]["prev_hash"]
    for event in events:
        forged = {**event, "prev_hash": prev, **({"reason": "edited"} if event is events[0] else {})}
        forged["hash"] = event_hash({k: v for k, v in forged.items() if k != "hash"})
        rewritten.append(forged)
        prev = forged["hash"]
    async with api.ctx.db.transaction() as tx:

        def rewrite(connection: Any) -> None:
            for forged in rewritten:
                values = {key: forged[key] for key in ("prev_hash", "hash", "reason")}
                connection.execute(update(st.EVENTS).where(st.EVENTS.c.seq == forged["seq"]).values(**values))

        await tx.run(rewrite)  # committed as the block ends
    banner, legends = await asyncio.to_thread(_verdict_and_charts, chromium, api.base_url, log)
    assert banner["state"] == "tampered" and "rewritten" in banner["text"], banner
    for chart, items in legends.items():
        series = dict(items)
        assert not any("edited" in name for name in series), f"{chart}: the edited event charted as {series}"
        assert "altered event" in series, series


@needs_browser
async def test_an_event_whose_decision_was_removed_is_charted_as_altered(
    api: Api, chromium: Chromium
) -> None:
    """An event edited to carry no decision is not left out of the charts: it is charted as altered."""
    log = await _log(api)
    async with api.ctx.db.transaction() as tx:

        def blank(connection: Any) -> None:
            connection.execute(update(st.EVENTS).where(st.EVENTS.c.seq == log.first_read).values(decision=""))

        await tx.run(blank)  # committed as the block ends
    banner, legends = await asyncio.to_thread(_verdict_and_charts, chromium, api.base_url, log)
    assert banner["state"] == "tampered" and banner["firstBad"] == str(log.first_read), banner
    for items in legends.values():
        assert dict(items).get("altered event") == "altered event (1)", items
