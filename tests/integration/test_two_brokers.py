"""Two `broker serve` processes on one PostgreSQL database: a report published through either
reaches streams on the other once, in sequence order; a revocation through one closes the node's
stream on the other at once and its token stops working there."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings
from tests.integration.helpers import body, cli_env
from tests.integration.test_processes import _free_port

REPORTS = 60


@asynccontextmanager
async def serving(env: dict[str, str]) -> AsyncIterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, "broker exited early"
                try:
                    async with session.get(f"{base}/v1/health") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "broker did not become healthy"
                await asyncio.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)


async def _add(ctx: Context, node_id: str, nation: str, roles: list[str]) -> str:
    spec = {"id": node_id, "nation": nation, "clearance": "SECRET", "roles": roles}
    return str((await admin.add_node(ctx, spec, actor="test"))["token"])


async def test_two_brokers_deliver_across_in_order_and_revoke_everywhere(
    settings: Settings, ctx: Context, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several brokers share a PostgreSQL database; a SQLite file has one broker")
    usa = await _add(ctx, "usa-1", "USA", ["publish"])
    swe = await _add(ctx, "swe-1", "SWE", ["subscribe"])
    gbr = await _add(ctx, "gbr-1", "GBR", ["subscribe"])
    root = await _add(ctx, "ops", "BEL", ["admin"])
    env = cli_env(database_url, settings.keyring_path)
    async with serving(env) as a, serving(env) as b, aiohttp.ClientSession() as session:

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        swe_ws = await session.ws_connect(f"{b.replace('http', 'ws')}/v1/stream?after=0", headers=auth(swe))
        gbr_ws = await session.ws_connect(f"{b.replace('http', 'ws')}/v1/stream?after=0", headers=auth(gbr))

        async def publish(i: int) -> dict[str, Any]:
            target = a if i % 2 == 0 else b
            async with session.post(
                f"{target}/v1/reports", json=body(to=["NATO"], payload={"n": i}), headers=auth(usa)
            ) as r:
                assert r.status == 201, await r.text()
                return dict(await r.json())

        receipts: list[dict[str, Any]] = []
        for start in range(0, REPORTS, 10):  # concurrent publishes through both brokers
            receipts += await asyncio.gather(*(publish(i) for i in range(start, start + 10)))

        got: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            while len(got) < REPORTS:
                message = await swe_ws.receive()
                assert message.type == aiohttp.WSMsgType.TEXT, message
                frame = json.loads(message.data)
                if frame["type"] == "report":
                    got.append(frame["report"])
        sequences = [r["sequence"] for r in got]
        assert sequences == sorted(r["sequence"] for r in receipts)  # each once, in order, no gap
        assert {r["id"] for r in got} == {r["id"] for r in receipts}

        async with session.post(f"{a}/v1/admin/nodes/gbr-1/revoke", headers=auth(root)) as r:
            assert r.status == 200, await r.text()
        revoked = time.perf_counter()
        async with asyncio.timeout(5):
            while True:
                message = await gbr_ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        assert gbr_ws.close_code == 4001
        assert time.perf_counter() - revoked < 1.0  # woken by NOTIFY, not by the 1 s safety poll
        async with session.get(f"{b}/v1/reports", headers=auth(gbr)) as r:
            assert r.status == 401
        await swe_ws.close()
