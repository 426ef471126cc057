"""The change listener and the hub's watcher run under the supervisor (issue 21, finding 3): an
error neither anticipates is logged once at ERROR, counted in
broker_background_restarts_total{task} (the exposition /metrics serves) and the loop started
again; a configuration error no longer ends the listener without a word."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import make_url

from broker.realtime.hub import Hub
from broker.services.supervisor import supervise
from broker.storage.listen import ChangeListener
from tests.integration.conftest import StartServer
from tests.integration.test_faults import metric


def restarts(task: str) -> float:
    value = REGISTRY.get_sample_value("broker_background_restarts_total", {"task": task})
    return value or 0.0


async def until(check: Callable[[], bool], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.05)


def failures(caplog: pytest.LogCaptureFixture, task: str) -> list[logging.LogRecord]:
    logged = f"background_task_failed task={task} "
    return [r for r in caplog.records if r.getMessage().startswith(logged)]


async def test_a_listener_with_a_bad_ssl_mode_is_logged_restarted_and_counted(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    caplog.set_level(logging.INFO)
    bad = make_url(database_url).update_query_dict({"ssl": "bogus"}).render_as_string(hide_password=False)
    listener = ChangeListener(bad, lambda: None)
    stop = asyncio.Event()
    before = restarts("change-listener")
    listener.start(lambda run: supervise("change-listener", run, stop))
    try:
        await until(lambda: restarts("change-listener") >= before + 2, 5)
    finally:
        stop.set()
        await listener.stop()
    assert not listener.connected
    logged = failures(caplog, "change-listener")
    assert len(logged) == restarts("change-listener") - before >= 2  # each failure logged once
    assert all(r.levelno == logging.ERROR and r.exc_info for r in logged)


async def test_a_failed_hub_watcher_is_logged_restarted_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    probed = asyncio.Event()
    calls = 0

    async def probe() -> tuple[int, ...]:
        probed.set()
        return (calls,)

    def interval() -> float:  # an error the watcher does not anticipate, on its first wait only
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected watcher failure")
        return 0.05

    hub = Hub(probe, interval=interval)
    stop = asyncio.Event()
    before = restarts("hub-watch")
    hub.start(lambda watch: supervise("hub-watch", watch, stop))
    try:
        await until(lambda: calls >= 3, 5)  # restarted: it probes and waits again
    finally:
        stop.set()
        await hub.stop()
    assert restarts("hub-watch") - before == 1
    logged = failures(caplog, "hub-watch")
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR and logged[0].exc_info


async def test_the_app_runs_its_listener_and_watcher_under_the_supervisor(
    start_server: StartServer, database_url: str
) -> None:
    """Each supervised loop has its restart series on /metrics from the start (at 0)."""
    api = await start_server()
    auditor = await api.node("aud-usa", "USA", roles=("audit",))
    tasks = ["hub-watch"] + (["change-listener"] if database_url.startswith("postgresql") else [])
    for task in tasks:
        assert await metric(api, auditor, f'broker_background_restarts_total{{task="{task}"}}') is not None
    if database_url.startswith("postgresql"):
        assert await metric(api, auditor, "broker_change_listener_connected") == 1.0
