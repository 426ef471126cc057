"""The auditor page's report view notices an event of the report removed from the database or
moved to another seq (red-team finding 12b): each remaining row still verifies alone, so the
view reads the log around the report's events and checks that it is whole. Headless Chromium,
as tests/integration/test_audit_page.py."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from sqlalchemy import delete, update

from broker.storage import statements as st
from tests.integration.conftest import Api
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

# The page's own judgement in the browser, the same whichever engine served the events.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MOVED_TO = 1_000_000  # far beyond the log's end


def _report_rows(driver: Any) -> dict[int, tuple[str, str]]:
    """Each row of the report view by seq: its mark's state and its reason (the mark's title)."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#report-events tbody tr[data-seq]')]"
        ".map((tr) => [Number(tr.dataset.seq), tr.querySelector('td.mark').dataset.state,"
        " tr.querySelector('td.mark').title])"
    )
    return {int(seq): (state, title) for seq, state, title in rows}


def _open_report(
    chromium: Chromium, base: str, token: str, vkey: str | None, report_id: str
) -> dict[str, Any]:
    """Sign in (pinning ``vkey`` unless the page remembers it), wait for the latest checkpoint
    to verify, open the report's view and wait until no row but one beyond the log is pending."""
    from selenium.webdriver.common.by import By

    driver = chromium.tab(base)
    sign_in(driver, base, token)
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) > 3)
    wait_for(driver, lambda d: d.find_element(By.ID, "checkpoint-verdict").text)
    if vkey is not None:
        driver.find_element(By.ID, "pin-input").send_keys(vkey)
        driver.find_element(By.CSS_SELECTOR, "#pin-form button[type=submit]").click()
    wait_for(driver, lambda d: "\u2713" in d.find_element(By.ID, "checkpoint-verdict").text)
    # Set in the same step that re-verifies the rows against this checkpoint.
    wait_for(driver, lambda d: d.find_element(By.ID, "consistency-verdict").text)
    driver.find_element(By.CSS_SELECTOR, f"#events td.report[title='{report_id}']").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "report-progress").get_attribute("data-complete"))
    wait_for(
        driver,
        lambda d: [s for seq, (s, _) in _report_rows(d).items() if seq < MOVED_TO and s == "pending"] == [],
    )
    chain = driver.find_elements(By.ID, "report-chain")
    out = {
        "rows": _report_rows(driver),
        "chain": chain[0].text if chain else None,
        "chain_state": chain[0].get_attribute("data-state") if chain else None,
        "marks": marks(driver, "#report-events"),
    }
    shot(
        driver,
        f"audit-report-chain-{'pinned' if vkey else 'tampered'}.png",
        driver.find_element(By.ID, "report-panel"),
    )
    return out


@needs_browser
async def test_report_view_flags_a_removed_and_a_moved_event(api: Api, chromium: Chromium) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    auditor = await api.node("aud", "BEL", roles=("audit",))
    _, mine = await api.publish(usa, body())
    _, other = await api.publish(usa, body())
    for _ in range(4):  # the report's reads, each with another report's event between them
        assert (await api.get(f"/v1/reports/{mine['id']}", swe))[0] == 200
        assert (await api.get(f"/v1/reports/{other['id']}", swe))[0] == 200
    async with api.ctx.db.transaction() as tx:
        seqs = [e.seq for e in await tx.events(report=mine["id"], limit=100)]
    assert len(seqs) == 5 and all(b - a == 2 for a, b in itertools.pairwise(seqs))
    published, first_read, second_read, third_read, last_read = seqs
    _, pinned = await api.get("/.well-known/alliance-broker/checkpoint-key")
    # Each time, a checkpoint covering every event the test made (the page loads the latest).
    assert (await api.call("POST", "/v1/audit/checkpoints", auditor))[0] == 201

    whole = await asyncio.to_thread(_open_report, chromium, api.base_url, auditor, pinned["vkey"], mine["id"])
    assert set(whole["marks"]) == {"verified"} and len(whole["marks"]) == 5, whole["rows"]

    # Remove one read, and move the last one far beyond the log's end.
    async with api.ctx.db.transaction() as tx:

        def tamper(connection: Any) -> None:
            connection.execute(delete(st.EVENTS).where(st.EVENTS.c.seq == first_read))
            connection.execute(update(st.EVENTS).where(st.EVENTS.c.seq == last_read).values(seq=MOVED_TO))

        await tx.run(tamper)  # committed as the block ends

    assert (await api.call("POST", "/v1/audit/checkpoints", auditor))[0] == 201
    seen = await asyncio.to_thread(_open_report, chromium, api.base_url, auditor, None, mine["id"])
    rows = seen["rows"]
    assert set(rows) == {published, second_read, third_read, MOVED_TO}, rows
    # Each remaining row still verifies alone; the rows next to each hole fail, saying where it is.
    assert rows[published][0] == "failed" and f"no event at seq {first_read}" in rows[published][1], rows
    assert rows[second_read][0] == "failed" and f"no event at seq {first_read}" in rows[second_read][1], rows
    assert rows[third_read][0] == "failed" and f"no event at seq {last_read}" in rows[third_read][1], rows
    assert rows[MOVED_TO][0] == "pending", rows  # beyond every checkpoint: it cannot be proven
    assert seen["chain_state"] == "failed" and "NOT whole" in str(seen["chain"]), seen["chain"]
    # Untampered, the same check found the log whole (no false alarm from the other report's
    # events between this one's).
    assert whole["chain_state"] == "verified" and "is whole" in str(whole["chain"]), whole["chain"]
