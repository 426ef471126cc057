"""NOTIFY is a wake-up signal only (issue 19, finding 6).

Any role that can connect to the database may LISTEN and NOTIFY on the broker's channel, table
privileges or not. Whatever such a role sends, no request may fail because of it: a payload is
never taken for the head (the hub re-reads the truth from the database)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from broker.client import BrokerClient, Received
from broker.storage.statements import CHANGE_CHANNEL
from tests.integration.conftest import Api
from tests.integration.helpers import body, chain_holds

TIMEOUT = 30
REPORTS = 20


@pytest.fixture(autouse=True)
def _postgresql_only(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's: SQLite brokers poll")


@contextlib.asynccontextmanager
async def _unprivileged(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database as a fresh login role granted nothing."""
    url = make_url(database_url)
    server = {"host": url.host, "port": url.port or 5432, "user": url.username, "password": url.password}
    role = f"forger_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(**server, database="postgres")
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        forger = await asyncpg.connect(**{**server, "user": role, "password": None}, database=url.database)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # it may read no table
                await forger.fetch("SELECT * FROM log_head")
            yield forger
        finally:
            await forger.close()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def _forgeries(real: dict[str, Any]) -> list[str]:
    """Payloads built from a real head (a copy with its counters pushed to the limit) and junk."""
    huge = 2**63
    copies = [
        {**real, "audit_seq": huge},
        {**real, "audit_seq": huge - 1, "change_counter": huge - 1},
        {**real, "report_seq": huge, "audit_seq": real["audit_seq"] + 1},
        {**real, "audit_seq": -1},
        {**real, "audit_frontier": '[[0, 0, "zz"]]'},
        {**real, "audit_hash": 7},
    ]
    junk = ["{", "null", "[]", "{}", '"x"', "é" * 3000, json.dumps({"audit_seq": huge})]
    return [json.dumps(c) for c in copies] + junk


async def _real_head(forger: asyncpg.Connection, api: Api, token: str) -> dict[str, Any]:
    """The head as a payload would carry it: the one the broker's NOTIFY announced, if it
    carries one, else the row's (read through the test's own access, as a role that can read
    the table would)."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    forger_listener = lambda *args: heard.put_nowait(args[3])  # noqa: E731
    await forger.add_listener(CHANGE_CHANNEL, forger_listener)
    assert (await api.publish(token, body()))[0] == 201
    async with asyncio.timeout(TIMEOUT):
        payload = await heard.get()
    await forger.remove_listener(CHANGE_CHANNEL, forger_listener)
    with contextlib.suppress(ValueError):
        found = json.loads(payload)
        if isinstance(found, dict) and "audit_seq" in found:
            return found
    async with api.ctx.db.transaction() as tx:
        head = await tx.lock_head()
    frontier = [[lvl, idx, h.hex()] for lvl, idx, h in head.frontier]
    return {
        "report_seq": head.report_seq,
        "audit_seq": head.audit_seq,
        "audit_hash": head.audit_hash,
        "change_counter": head.change_counter,
        "audit_frontier": json.dumps(frontier),
    }


async def _keep_notifying(forger: asyncpg.Connection, payloads: list[str], stop: asyncio.Event) -> int:
    sent = 0
    while not stop.is_set():
        for payload in payloads:
            await forger.execute("SELECT pg_notify($1, $2)", CHANGE_CHANNEL, payload)
            sent += 1
        await asyncio.sleep(0.005)  # a pace, not a synchronisation: the flood goes on meanwhile
    return sent


async def test_forged_notifications_fail_no_request(api: Api, database_url: str) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    async with _unprivileged(database_url) as forger:
        payloads = _forgeries(await _real_head(forger, api, usa))
        stop = asyncio.Event()
        flood = asyncio.create_task(_keep_notifying(forger, payloads, stop))
        received: list[Received] = []
        try:
            async with BrokerClient(api.base_url, swe) as client:
                stream = client.stream(after=0)

                async def consume() -> None:
                    async for item in stream:
                        received.append(item)
                        if len(received) == REPORTS + 1:
                            return

                consumer = asyncio.create_task(consume())
                ids = []
                for i in range(REPORTS):
                    status, receipt = await api.publish(usa, body(payload={"n": i}))
                    assert status == 201, receipt
                    ids.append(receipt["id"])
                    status, page = await api.get("/v1/reports?after=0&limit=100", swe)
                    assert status == 200, page
                    assert page["reports"][-1]["id"] == receipt["id"]
                    status, report = await api.get(f"/v1/reports/{receipt['id']}", swe)
                    assert status == 200, report
                async with asyncio.timeout(TIMEOUT):
                    await consumer
                await stream.aclose()
        finally:
            stop.set()
            sent = await flood
    assert sent > len(payloads)  # the flood ran all along
    assert [r.id for r in received][1:] == ids
    await chain_holds(api.ctx)


async def test_the_brokers_notifications_carry_nothing(api: Api, database_url: str) -> None:
    # Whoever can connect can LISTEN too: a NOTIFY is a wake-up, with nothing in it to read.
    usa = await api.node("usa-1", "USA")
    async with _unprivileged(database_url) as listener:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(CHANGE_CHANNEL, lambda *args: heard.put_nowait(args[3]))
        assert (await api.publish(usa, body()))[0] == 201
        async with asyncio.timeout(TIMEOUT):
            assert await heard.get() == ""
