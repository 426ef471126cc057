"""The auditor page shows each cosigner of the checkpoint, verifies the cosignatures in the
browser (WebCrypto Ed25519) against the witness keys the auditor pinned, and says plainly when
the pinned quorum is not met. Headless Chromium, as tests/integration/test_audit_page.py; two
witnesses (the reference C2SP implementation, in process) cosign the broker's checkpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.witness_settings import WitnessSettings
from tests.integration import c2sp_reference as c2sp
from tests.integration.conftest import StartServer
from tests.integration.test_audit_page import (
    Chromium,
    chromium_fixture,  # noqa: F401 (the fixture)
    needs_browser,
    shot,
    sign_in,
    wait_for,
)
from tests.integration.test_witnessing import serving, sign_now, witnessed_at


def _pin_witnesses(driver: Any, vkeys: list[str], quorum: int) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "witness-input")
    field.clear()
    field.send_keys("\n".join(vkeys))
    count = driver.find_element(By.ID, "quorum-input")
    count.clear()
    count.send_keys(str(quorum))
    before = driver.find_element(By.ID, "pinned-witnesses").text
    driver.find_element(By.CSS_SELECTOR, "#witness-form button[type=submit]").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "pinned-witnesses").text != before)
    wait_for(driver, lambda d: d.find_element(By.ID, "witness-verdict").get_attribute("data-state") in (
        "witnessed", "unwitnessed"))  # fmt: skip
    verdict = driver.find_element(By.ID, "witness-verdict")
    return {
        "state": verdict.get_attribute("data-state"),
        "text": verdict.text,
        "cosigners": [
            (li.get_attribute("data-state"), li.text)
            for li in driver.find_elements(By.CSS_SELECTOR, "#cosigners li")
        ],
    }


def _drive(
    chromium: Chromium, base: str, token: str, log_vkey: str, pinned: list[str], stranger: str
) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    out: dict[str, Any] = {}
    driver = chromium.tab(base)
    sign_in(driver, base, token)
    wait_for(driver, lambda d: d.find_element(By.ID, "checkpoint-verdict").text)
    out["unpinned"] = driver.find_element(By.ID, "witness-verdict").text
    driver.find_element(By.ID, "pin-input").send_keys(log_vkey)
    driver.find_element(By.CSS_SELECTOR, "#pin-form button[type=submit]").click()
    wait_for(driver, lambda d: "\u2713" in d.find_element(By.ID, "checkpoint-verdict").text)
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "witness-verdict").get_attribute("data-state") == "unpinned",
    )
    out["no_witness_pinned"] = driver.find_element(By.ID, "witness-verdict").text
    out["both"] = _pin_witnesses(driver, pinned, 2)
    shot(driver, "audit-witnessed", driver.find_element(By.ID, "checkpoint-panel"))
    out["short"] = _pin_witnesses(driver, [pinned[0], stranger], 2)
    shot(driver, "audit-quorum-not-met", driver.find_element(By.ID, "checkpoint-panel"))
    return out


@needs_browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_page_verifies_each_cosigner_and_says_when_the_quorum_is_not_met(
    start_server: StartServer, chromium: Chromium
) -> None:
    fra, deu = (
        c2sp.ReferenceWitness("witness.fra/w1", log_vkey=""),
        c2sp.ReferenceWitness("witness.deu/w1", log_vkey=""),
    )
    async with serving(fra) as w1, serving(deu) as w2:
        pair = tuple(
            WitnessSettings(name=w.name, url=f"http://127.0.0.1:{s.port}", vkey=w.vkey)
            for w, s in ((fra, w1), (deu, w2))
        )
        api = await start_server(witnesses=pair, witness_quorum=2, witness_timeout_seconds=2.0)
        _, key = await api.get("/.well-known/alliance-broker/checkpoint-key")
        fra.log_vkey = deu.log_vkey = key["vkey"]
        auditor = await api.node("aud", "BEL", roles=("audit",))
        await witnessed_at(api, auditor, await sign_now(api, auditor), 2)
        stranger = c2sp.ReferenceWitness("witness.swe/w1", log_vkey=key["vkey"]).vkey
        out = await asyncio.to_thread(
            _drive, chromium, api.base_url, auditor, key["vkey"], [fra.vkey, deu.vkey], stranger
        )
    assert "no witness keys pinned" in out["no_witness_pinned"]
    both = out["both"]
    assert both["state"] == "witnessed" and "Witnessed \u2713 2 of 2" in both["text"], both
    assert sorted(state for state, _ in both["cosigners"]) == ["verified", "verified"]
    assert any("witness.fra/w1 \u2713 cosigned at" in text for _, text in both["cosigners"])
    short = out["short"]
    assert short["state"] == "unwitnessed", short
    assert (
        "Quorum NOT met \u2717 1 valid cosignature of the 2 required; missing: witness.swe/w1"
        in short["text"]
    )
    # deu's line is still shown, but it is not pinned now: neither checked nor counted.
    assert ("unpinned", "witness.deu/w1 ? not a pinned witness: not checked, not counted") in short[
        "cosigners"
    ]
