"""The auditor page on a log of more than 10,000 events: time to first render, responsiveness,
every page of a report with more than 1,000 events, lazy verification. SQLite only (kept lean);
prints the measured times and the screenshot paths."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

import pytest

from broker.domain.records import AuditDraft
from broker.services import audit
from tests.conftest import START, FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import body
from tests.integration.test_audit_page import (
    Chromium,
    chromium_fixture,  # noqa: F401 (the fixture)
    colour_pixels,
    ink,
    marks,
    needs_browser,
    shot,
    texts,
    wait_for,
)

pytestmark = [pytest.mark.parametrize("database_url", ["sqlite"], indirect=True), needs_browser]

EVENTS = 10_000  # synthetic events, on top of what the real calls write
BIG_REPORT_DELIVERIES = 1_200  # more than one 1,000-event page
FILL_HOURS = 48  # the synthetic events span two days from START
BURST = 1_200  # denials in twenty minutes: the tallest bar of the charts
BURST_AT = START + timedelta(hours=31, minutes=10)
BACKGROUND = EVENTS - BURST
PER_MOMENT = 20  # synthetic events recorded with one time
NATIONS = {"usa-1": "USA", "swe-1": "SWE", "nga-1": "NGA", "fra-1": "FRA", "deu-1": "DEU", "jpn-1": "JPN"}
RECEIVERS = ("usa-1", "swe-1", "fra-1", "deu-1")  # NATO members: reports[0] is releasable to NATO
DENIALS = ("not_releasable", "clearance", "caveat_missing", "recalled")


def _drafts(reports: list[str], start: int, count: int) -> list[AuditDraft]:
    """A mix like busy days: deliveries and reads, denials with reasons, failed sign-ins."""
    nodes = list(NATIONS)
    drafts = []
    for i in range(start, start + count):
        node = nodes[i % len(nodes)]
        report = reports[i % len(reports)]
        kind = i % 10
        if kind < 6 and node in RECEIVERS:
            drafts.append(
                AuditDraft(
                    action="deliver",
                    actor=node,
                    report=report,
                    node=node,
                    nation=NATIONS[node],
                    decision="allow",
                    reason="allowed",
                    details={"sequence": i % len(reports) + 1},
                )
            )
        elif kind < 9 or node not in RECEIVERS:
            drafts.append(
                AuditDraft(
                    action="read",
                    actor=node,
                    report=report,
                    node=node,
                    nation=NATIONS[node],
                    decision="deny",
                    reason="not_releasable" if node not in RECEIVERS else DENIALS[i % len(DENIALS)],
                )
            )
        else:
            drafts.append(
                AuditDraft(
                    action="authenticate",
                    decision="deny",
                    reason="unknown_token",
                    details={"source": f"198.51.100.{i % 200}", "failures": i % 7 + 1},
                )
            )
    return drafts


def _iso(moment: datetime) -> str:
    """``moment`` as the page writes times: ISO 8601 in UTC, with milliseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _spread(drafts: list[AuditDraft], start: datetime, span: timedelta) -> list[tuple[datetime, AuditDraft]]:
    """``drafts`` at evenly spaced times from ``start`` over ``span``, a few events per moment."""
    moments = max(1, len(drafts) // PER_MOMENT)
    return [(start + span * (k * moments // len(drafts)) / moments, draft) for k, draft in enumerate(drafts)]


def _hourly(hour: int) -> int:
    """Background events in fill hour ``hour``: three times as many in office hours (08-18 UTC)."""
    weights = [3 if 8 <= (START.hour + h) % 24 < 18 else 1 for h in range(FILL_HOURS)]
    unit = BACKGROUND // sum(weights)
    return unit * weights[hour] + (BACKGROUND - unit * sum(weights) if hour == 0 else 0)


def _timeline(reports: list[str]) -> list[tuple[datetime, AuditDraft]]:
    """Two days of activity from START: a background that follows office hours, the busy report's
    deliveries over the first half day, and a burst of denials (one subscriber asking again and
    again for what it may not have) in the twenty minutes from BURST_AT. In time order."""
    timeline: list[tuple[datetime, AuditDraft]] = []
    done = 0
    for hour in range(FILL_HOURS):
        count = _hourly(hour)
        timeline += _spread(_drafts(reports, done, count), START + timedelta(hours=hour), timedelta(hours=1))
        done += count
    burst = [
        AuditDraft(
            action="read",
            actor="swe-1",
            report=reports[1 + i % (len(reports) - 1)],  # not the busy report: swe-1 received it
            node="swe-1",
            nation="SWE",
            decision="deny",
            reason="caveat_missing",
        )
        for i in range(BURST)
    ]
    timeline += _spread(burst, BURST_AT, timedelta(minutes=20))
    big = [
        AuditDraft(
            action="deliver",
            actor=node,
            report=reports[0],
            node=node,
            nation=NATIONS[node],
            decision="allow",
            reason="allowed",
        )
        for i in range(BIG_REPORT_DELIVERIES)
        for node in [RECEIVERS[i % len(RECEIVERS)]]
    ]
    timeline += _spread(big, START + timedelta(hours=2), timedelta(hours=12))
    return sorted(timeline, key=lambda item: item[0])  # stable: the order within a moment stays


async def _fill(api: Api, reports: list[str]) -> int:
    """Append the timeline's events through the service layer, each with its own time (so the
    log's times never go back), in transactions of about 1,000 events; return the log size."""
    timeline = _timeline(reports)
    for first in range(0, len(timeline), 1_000):
        async with api.ctx.db.transaction() as tx:
            for _, moment in groupby(timeline[first : first + 1_000], key=lambda item: item[0]):
                group = list(moment)
                await audit.record(tx, [draft for _, draft in group], now=group[0][0])
    async with api.ctx.db.transaction() as tx:
        return await tx.audit_size()


def _bars(driver: Any, chart: str) -> list[dict[str, Any]]:
    """The bars a chart draws: their time span, total and, for the one before the time axis,
    ``earlier``."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' g.bar')].map((g) => ({"
            "  from: g.dataset.from, to: g.dataset.to, total: +g.dataset.total,"
            "  earlier: g.classList.contains('earlier'), height: g.getBBox().height}))",
            chart,
        )
    )


def _counted(driver: Any) -> int:
    """The number of events the charts' coverage line says they show ("All N events, ...")."""
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "charts-coverage").text
    words = text.split(", ")[1].split() if ", " in text else []
    return int(words[0]) if words and words[0].isdigit() else -1


def _axis(driver: Any) -> dict[str, Any]:
    """The charts' caption and what it records: the bar width (ms) and the events before the axis."""
    from selenium.webdriver.common.by import By

    caption = driver.find_element(By.ID, "charts-axis")
    return {
        "text": caption.text,
        "width": int(caption.get_attribute("data-width")),
        "earlier": int(caption.get_attribute("data-earlier")),
    }


def _drive(chromium: Chromium, base: str, token: str, vkey: str, big_report: str) -> dict[str, Any]:
    from selenium.webdriver.common.by import By

    out: dict[str, Any] = {}
    driver = chromium.tab(base, height=1100)
    # The key was pasted once before (it is kept in localStorage).
    driver.get(f"{base}/audit/")
    driver.execute_script("localStorage.setItem('auditPinnedCheckpointKey', arguments[0])", vkey)
    driver.execute_script(
        "window.longTasks = [];"
        "new PerformanceObserver((list) => {"
        "  for (const e of list.getEntries()) window.longTasks.push(e.duration);"
        "}).observe({type: 'longtask', buffered: true});"
    )
    driver.find_element(By.ID, "token").send_keys(token)
    clicked = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait_for(driver, lambda d: d.execute_script("return window.auditTimings.firstRender !== undefined"), 60)
    out["wall_first_render_ms"] = (time.perf_counter() - clicked) * 1000
    out["rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]"))
    out["bars_first"] = len(driver.find_elements(By.CSS_SELECTOR, "#chart-reason rect"))
    wait_for(driver, lambda d: "All " in d.find_element(By.ID, "charts-coverage").text, 60)
    wait_for(driver, lambda d: "\u2713" in d.find_element(By.ID, "checkpoint-verdict").text)
    # Sign a checkpoint covering everything shown: every row on the page is then checked.
    driver.find_element(By.ID, "sign-checkpoint").click()
    wait_for(driver, lambda d: set(marks(d, "#events")) == {"verified"}, 60)
    out["all_verified_ms"] = (time.perf_counter() - clicked) * 1000
    out["timings"] = driver.execute_script("return window.auditTimings")
    out["long_tasks"] = driver.execute_script("return window.longTasks")
    out["coverage"] = driver.find_element(By.ID, "charts-coverage").text
    out["seqs"] = [int(s) for s in texts(driver, "#events tbody tr[data-seq] td:nth-child(2)")]
    out["who"] = driver.find_element(By.ID, "who").text
    out["legend_reason"] = driver.find_element(By.ID, "legend-reason").text
    out["legend_nation"] = driver.find_element(By.ID, "legend-nation").text
    out["bars"] = _bars(driver, "#chart-reason")
    out["bars_nation"] = _bars(driver, "#chart-nation")
    out["axis"] = _axis(driver)
    out["failures"] = len(driver.find_elements(By.CSS_SELECTOR, "#failures tbody tr[data-seq]"))
    out["shot_page"] = shot(driver, "audit-scale-page.png")
    out["shot_charts"] = shot(driver, "audit-scale-charts.png", driver.find_element(By.ID, "charts-panel"))

    # Clicking a bar (the burst's) narrows the filters to its time span; the charts follow,
    # now a bar a minute.
    driver.execute_script(
        "const bars = [...document.querySelectorAll('#chart-reason g.bar:not(.earlier)')];"
        "const top = bars.reduce((a, b) => (+b.dataset.total > +a.dataset.total ? b : a));"
        "top.querySelector('rect').dispatchEvent(new MouseEvent('click', {bubbles: true}))"
    )
    wait_for(
        driver,
        lambda d: (
            "All " in d.find_element(By.ID, "charts-coverage").text
            and d.find_element(By.ID, "charts-coverage").text != out["coverage"]
        ),
    )
    # The coverage line can change before the bars are drawn again (seen once on a loaded
    # machine: 18 of the zoomed hour's minutes): wait until the bars hold what it counts.
    wait_for(driver, lambda d: sum(b["total"] for b in _bars(d, "#chart-reason")) == _counted(d))
    out["zoomed_coverage"] = driver.find_element(By.ID, "charts-coverage").text
    out["zoomed_bars"] = _bars(driver, "#chart-reason")
    out["zoomed_axis"] = _axis(driver)
    out["zoomed_since"] = driver.find_element(By.CSS_SELECTOR, "#filters input[name=since]").get_attribute(
        "value"
    )
    out["zoomed_until"] = driver.find_element(By.CSS_SELECTOR, "#filters input[name=until]").get_attribute(
        "value"
    )
    out["shot_zoomed"] = shot(driver, "audit-scale-zoomed.png", driver.find_element(By.ID, "charts-panel"))
    driver.find_element(By.ID, "clear-filters").click()
    wait_for(
        driver,
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) == 100
            and int(texts(d, "#events tbody tr[data-seq] td:nth-child(2)")[0]) > out["seqs"][0]
        ),
    )
    out["seqs_cleared"] = [int(s) for s in texts(driver, "#events tbody tr[data-seq] td:nth-child(2)")]

    # The next page of older events continues where the first one stopped.
    driver.find_element(By.ID, "older").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]")) == 200)
    out["seqs_two_pages"] = [int(s) for s in texts(driver, "#events tbody tr[data-seq] td:nth-child(2)")]

    # A narrow filter reaches the end of the log.
    driver.find_element(By.CSS_SELECTOR, "#filters input[name=action]").send_keys("publish")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#events tbody tr.end-of-log"))
    out["publish_rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#events tbody tr[data-seq]"))
    out["end_of_log"] = texts(driver, "#events tbody tr.end-of-log")

    # The busy report: every one of its events, over several pages, verified as shown.
    started = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, f"#events td.report[title='{big_report}']").click()
    wait_for(driver, lambda d: d.find_element(By.ID, "report-progress").get_attribute("data-complete"), 60)
    out["report_ms"] = (time.perf_counter() - started) * 1000
    out["report_events"] = int(driver.find_element(By.ID, "report-progress").get_attribute("data-complete"))
    out["report_progress"] = driver.find_element(By.ID, "report-progress").text
    out["report_rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#report-events tbody tr[data-seq]"))
    wait_for(driver, lambda d: marks(d, "#report-events")[:5] == ["verified"] * 5)
    out["report_marks"] = marks(driver, "#report-events")
    out["recipients"] = texts(driver, "#report-recipients tbody tr")
    out["report_glance"] = driver.find_element(By.ID, "report-glance").text
    out["shot_report"] = shot(driver, "audit-scale-report.png", driver.find_element(By.ID, "report-panel"))
    return out


async def test_auditor_page_at_ten_thousand_events(api: Api, clock: FakeClock, chromium: Chromium) -> None:
    tokens = {node: await api.node(node, nation) for node, nation in NATIONS.items()}
    auditor = await api.node("aud", "BEL", roles=("audit",))
    reports = []
    for i in range(10):
        status, receipt = await api.publish(tokens["usa-1"], body(to=["USA", "SWE"] if i % 2 else ["NATO"]))
        assert status == 201
        reports.append(receipt["id"])
    for report in reports[:4]:
        for node in ("swe-1", "nga-1"):
            await api.get(f"/v1/reports/{report}", tokens[node])
    size = await _fill(api, reports)
    assert size >= 10_000
    clock.moment = START + timedelta(hours=FILL_HOURS, minutes=1)  # the auditor looks after it all
    _, key = await api.get("/.well-known/alliance-broker/checkpoint-key")

    result = await asyncio.to_thread(_drive, chromium, api.base_url, auditor, key["vkey"], reports[0])

    t = result["timings"]
    print(
        f"\naudit page at {size} events: time to first render (sign-in to first rows + charts) "
        f"{t['firstRender']:.0f} ms in the page ({result['wall_first_render_ms']:.0f} ms measured by "
        f"the test); first rows {t['rows']:.0f} ms, first charts {t['charts']:.0f} ms, charts over "
        f"all events {t['chartsComplete']:.0f} ms, all {result['rows']} rows proven included "
        f"{result['all_verified_ms']:.0f} ms; longest main-thread task "
        f"{max(result['long_tasks'], default=0):.0f} ms (0: none over 50 ms), longest drawing of the "
        f"charts {t['chartDrawMax']:.0f} ms; report of {result['report_events']} events "
        f"in {result['report_ms']:.0f} ms"
    )
    assert result["rows"] == 100
    assert result["bars_first"] > 0
    assert t["firstRender"] < 10_000, "too slow to first render"
    assert max(result["long_tasks"], default=0) < 1_000, "the page froze"
    assert "aud (BEL)" in result["who"]
    assert f"All {size}" in result["coverage"] or "All " in result["coverage"]
    assert result["seqs"] == sorted(result["seqs"], reverse=True) and result["seqs"][0] >= size
    two = result["seqs_two_pages"]
    assert two[:100] == result["seqs_cleared"] and two == sorted(two, reverse=True) and len(set(two)) == 200
    assert result["failures"] == 100
    for reason in DENIALS:
        assert f"deny: {reason}" in result["legend_reason"]
    for nation in ("USA", "SWE", "NGA", "FRA", "DEU", "JPN"):
        assert nation in result["legend_nation"]
    assert result["publish_rows"] == 10 and "end of log" in result["end_of_log"][0]
    assert result["report_events"] > BIG_REPORT_DELIVERIES + BACKGROUND // 10  # its share of the fill too
    assert result["report_rows"] == result["report_events"]
    assert "pages" in result["report_progress"]
    states = result["report_marks"]
    assert "failed" not in states and "unverified" not in states
    assert states.count("verified") < len(states) // 2, "the report's rows were not verified lazily"
    recipients = {r.split()[0]: r for r in result["recipients"]}
    assert set(recipients) == {*RECEIVERS, "nga-1"}  # jpn-1 never asked for it
    for node in RECEIVERS:
        assert recipients[node].split()[1] == NATIONS[node] and "not_releasable" not in recipients[node]
    assert "read: not_releasable" in recipients["nga-1"], recipients["nga-1"]
    assert "Refused it (a read or a delivery denied): nga-1 (NGA)" in result["report_glance"]
    assert result["zoomed_since"] and result["zoomed_until"] > result["zoomed_since"]
    assert result["zoomed_coverage"] != result["coverage"]
    # The time axis: an hour a bar over the two days, the setup events of 2026-01-01 counted in
    # an "earlier" bar, and the burst of denials the tallest bar.
    axis, bars = result["axis"], result["bars"]
    timed = [b for b in bars if not b["earlier"]]
    assert axis["width"] == 3_600_000, axis
    assert len(timed) >= 40, [b["from"] for b in timed]
    assert axis["earlier"] > 0 and "earlier event" in axis["text"], axis
    assert [b["total"] for b in bars if b["earlier"]] == [axis["earlier"]]
    assert sum(b["total"] for b in bars) == int(result["coverage"].split(", ")[1].split()[0])
    tallest = max(timed, key=lambda b: b["total"])
    assert tallest["from"] == _iso(BURST_AT.replace(minute=0)), tallest
    assert tallest["total"] > BURST and tallest["height"] == max(b["height"] for b in timed)
    assert [b["from"] for b in result["bars_nation"]] == [b["from"] for b in bars]
    zoomed = [b for b in result["zoomed_bars"] if not b["earlier"]]
    assert result["zoomed_since"] == tallest["from"] and result["zoomed_until"] == tallest["to"]
    assert result["zoomed_axis"]["width"] == 60_000 and result["zoomed_axis"]["earlier"] == 0
    assert len(zoomed) >= 20 and sum(b["total"] for b in zoomed) == tallest["total"]
    for name in ("shot_page", "shot_charts", "shot_report", "shot_zoomed"):
        assert ink(result[name]) > 500, f"{name} rendered no text"
    assert colour_pixels(result["shot_charts"]) > 500, "the charts drew no bars"
