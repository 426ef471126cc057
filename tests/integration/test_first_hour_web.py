"""The first hour over HTTP (issue 23): an auditor's unknown filter is refused by name, a refused
certificate is told what the audit log says, GET / points a person somewhere useful, a report
released to nobody says so in its receipt, `broker serve` says when it stops, and the example
subscriber stops on Ctrl-C without a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.services import admin, auth
from broker.services.context import Context
from tests.conftest import CONFIG, ROOT
from tests.integration.conftest import Api
from tests.integration.helpers import body, cli_env
from tests.integration.test_tls import Pki, TlsBroker, dev_pki, tls_broker

__all__ = ["dev_pki", "tls_broker"]  # fixtures shared with test_tls


async def test_an_unknown_audit_filter_is_refused_naming_it(api: Api) -> None:
    auditor = await api.node("auditor-1", "BEL", roles=("audit",))
    status, problem = await api.get("/v1/audit/events?decison=deny&limit=5", auditor)
    assert status == 400, problem
    assert problem["type"].endswith(":unknown_parameter") and "decison" in problem["detail"]
    assert "decision" in problem["detail"]  # what it accepts
    status, page = await api.get("/v1/audit/events?decision=deny&order=desc&limit=5", auditor)
    assert status == 200, page


async def _problem(broker: TlsBroker, cert: tuple[Path, Path], token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(broker.base + "/v1/reports", ssl=broker.client(cert), headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def test_a_refused_certificate_is_told_what_the_log_says(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker()
    spec = {"clearance": "SECRET", "roles": ["subscribe"]}
    pin = dev_pki.node("fra-1")[0].read_text()
    await admin.add_node(broker.ctx, {"id": "fra-1", "nation": "FRA", **spec, "certificate": pin}, actor="t")
    await admin.add_node(broker.ctx, {"id": "deu-1", "nation": "DEU", **spec}, actor="t")
    usa = (await admin.add_node(broker.ctx, {"id": "usa-1", "nation": "USA", **spec}, actor="t"))["token"]
    told = {}
    for reason, cert, token in (
        ("certificate_not_pinned", dev_pki.node("fra-1"), None),  # a second certificate for fra-1
        ("unknown_certificate", dev_pki.node("nobody"), None),
        ("token_certificate_mismatch", dev_pki.node("deu-1"), usa),
    ):
        status, problem = await _problem(broker, cert, token)
        assert status == 401 and problem["type"].endswith(":unauthenticated"), problem
        told[reason] = problem["detail"]
    await auth.flush_failures(broker.server_ctx)
    async with broker.ctx.db.transaction() as tx:
        logged = {r for e in await tx.events(action="authenticate") for r in e.draft.details["reasons"]}
    assert logged == set(told), told
    for reason, detail in told.items():
        assert reason in detail and "bearer token" not in detail, detail


async def test_root_points_to_the_audit_page_and_the_api_description(api: Api) -> None:
    status, index = await api.get("/")
    assert status == 200, index
    assert index["audit_page"] == "/audit/" and index["openapi"] == "/v1/openapi.json"
    for path in (index["audit_page"], index["openapi"]):
        assert (await api.get(path))[0] == 200


async def test_a_report_released_to_nobody_says_so_in_its_receipt(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    status, receipt = await api.publish(usa, body(to=[]))
    assert status == 201, receipt
    assert "releasable_to" in receipt["notice"] and "USA" in receipt["notice"], receipt
    status, receipt = await api.publish(usa, body(to=["NATO"]))
    assert status == 201 and "notice" not in receipt, receipt


async def _line(stream: asyncio.StreamReader, wanted: str, seconds: float = 60) -> str:
    async with asyncio.timeout(seconds):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"ended before {wanted!r}"
            if wanted in line:
                return line


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a signal, whatever the engine
async def test_serve_says_when_it_stops(ctx: Context, tmp_path: Path) -> None:
    env = cli_env(ctx.settings.database_url, ctx.settings.keyring_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "serve", "--port", "0", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        await _line(proc.stderr, "serving on")
        proc.send_signal(signal.SIGINT)
        line = await _line(proc.stderr, "stopped")
        assert "serving" not in line
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_the_example_subscriber_stops_on_ctrl_c_without_a_traceback(api: Api) -> None:
    usa, gbr = await api.node("usa-1", "USA"), await api.node("gbr-1", "GBR")
    status, receipt = await api.publish(usa, body())
    assert status == 201, receipt
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "subscriber.py"),
        env={**os.environ, "BROKER_URL": api.base_url, "BROKER_TOKEN": gbr, "BROKER_CONFIG_DIR": str(CONFIG)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        await _line(proc.stdout, '"originator"')
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _out, err = await proc.communicate()
        assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
        assert proc.returncode == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
