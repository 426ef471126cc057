"""A publish batch is one ordinary transaction: lock the head, read what the batch needs, write,
commit. What other processes committed before the lock was granted (reports, audit events, a
revocation) is what the batch decides on; on PostgreSQL two brokers publishing at once keep the
chain whole and answer 201. A value the database refuses is the client's (400), never a 500,
and a naive datetime is refused before anything is written."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import datetime

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError

from broker.domain.records import AuditDraft
from broker.errors import BadRequest
from broker.services import admin, audit, publishing
from broker.services.context import Context
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, chain_holds, events, publish_acts, report_count

DEADLINE = 10


def _postgresql(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("one broker process per SQLite file: nobody else holds its write lock")


async def test_two_brokers_publishing_alternately_keep_the_sequence(
    start_server: StartServer, database_url: str
) -> None:
    _postgresql(database_url)
    a, b = await start_server(), await start_server()
    usa = await a.node("usa-1", "USA")
    sequences = []
    for i in range(8):
        status, receipt = await (a if i % 2 == 0 else b).publish(usa, body(payload={"n": i}))
        assert status == 201, receipt
        sequences.append(receipt["sequence"])
    assert sequences == list(range(sequences[0], sequences[0] + 8))
    assert await chain_holds(a.ctx) >= 8
    assert await report_count(a.ctx) == 8


async def test_two_brokers_publishing_at_once_keep_the_chain_whole(
    start_server: StartServer, database_url: str
) -> None:
    _postgresql(database_url)
    a, b = await start_server(), await start_server()
    usa = await a.node("usa-1", "USA")
    answers = await asyncio.gather(
        *((a if i % 2 == 0 else b).publish(usa, body(payload={"n": i})) for i in range(40))
    )
    assert [status for status, _ in answers] == [201] * 40, answers
    sequences = sorted(receipt["sequence"] for _, receipt in answers)
    assert sequences == list(range(sequences[0], sequences[0] + 40))  # no gap, no duplicate
    assert await report_count(a.ctx) == 40
    assert len(await events(a.ctx, action="publish")) == 40
    await chain_holds(a.ctx)


async def test_audit_events_appended_by_another_process_are_built_on(api: Api) -> None:
    # Another process moves the head without waking anyone (audit events only): the next batch
    # reads the head under its lock, so it appends after them.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    drafts = [
        AuditDraft(action="read", actor="x", node="x", nation="USA", decision="deny", reason="not_found")
    ]
    await audit.record_alone(api.ctx, drafts)
    assert (await api.publish(usa, body()))[0] == 201
    assert await chain_holds(api.ctx) == len(await events(api.ctx))


async def test_an_idempotent_repeat_returns_the_first_receipt(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    first = await api.publish(usa, body(), headers={"Idempotency-Key": "k-1"})
    assert first[0] == 201
    assert await api.publish(usa, body(), headers={"Idempotency-Key": "k-1"}) == first
    status, problem = await api.publish(usa, body(payload={"other": 1}), headers={"Idempotency-Key": "k-1"})
    assert status == 409, problem
    assert await report_count(api.ctx) == 1


async def test_a_client_chosen_id_already_stored_is_found(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    chosen = str(uuid.uuid4())
    status, receipt = await api.publish(usa, {**body(), "id": chosen})
    assert status == 201
    assert await api.publish(usa, {**body(), "id": chosen}) == (status, receipt)
    assert (await api.publish(usa, {**body(payload={"x": 2}), "id": chosen}))[0] == 409
    assert await report_count(api.ctx) == 2


async def _acts(api: Api, token: str, count: int) -> tuple[Context, list[publishing.PublishAct]]:
    """Another process's view of the database (the limit of 5 in 5 s), and ``count`` publish
    acts for the node holding ``token``, ready for ``publishing.store_publishes``."""
    limits = replace(api.ctx.settings, publish_burst=5, publish_rate_per_second=1.0)
    ctx = replace(api.ctx, settings=limits)
    return ctx, await publish_acts(ctx, token, count)


async def test_reports_another_process_stored_count_in_the_rate_window(
    start_server: StartServer, database_url: str
) -> None:
    _postgresql(database_url)  # one broker per SQLite file: its own token bucket is the limit
    api = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    ctx, acts = await _acts(api, usa, 4)
    async with ctx.db.transaction() as tx:
        assert all(not isinstance(r, Exception) for r in await publishing.store_publishes(ctx, tx, acts))
    assert (await api.publish(usa, body()))[0] == 429
    assert await report_count(api.ctx) == 5
    assert {e["reason"] for e in await events(api.ctx, action="publish", decision="deny")} == {"rate_limited"}


async def test_a_revocation_by_another_process_refuses_the_next_publish(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201  # node and head cached by the broker
    await admin.revoke_node(api.ctx, "usa-1", actor="cli")  # another process: no wake-up needed
    assert (await api.publish(usa, body()))[0] == 401
    assert await report_count(api.ctx) == 1


async def _blocked(database_url: str) -> list[int]:
    """Until a backend of the test database waits for a lock (the head row): their pids."""
    url = make_url(database_url)
    watcher = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database="postgres"
    )
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                pids = await watcher.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                    url.database,
                )
                if pids:
                    return [row["pid"] for row in pids]
                await asyncio.sleep(0.01)  # polling the server's view: nothing to wait on instead
    finally:
        await watcher.close()


async def test_a_publish_that_waited_for_the_lock_counts_what_committed_meanwhile(
    start_server: StartServer, database_url: str
) -> None:
    # Another process holds the head while it stores the node's 4 more reports of 5; the
    # broker's batch waits for the row, then counts 5 and refuses.
    _postgresql(database_url)
    api = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    ctx, acts = await _acts(api, usa, 4)
    async with ctx.db.transaction() as tx:
        stored = await publishing.store_publishes(ctx, tx, acts)
        assert all(not isinstance(r, Exception) for r in stored)
        waiting = asyncio.create_task(api.publish(usa, body()))
        await _blocked(database_url)
        assert not waiting.done()
    status, _ = await waiting
    assert status == 429
    assert await report_count(api.ctx) == 5


async def test_a_publish_that_waited_while_another_process_appended_builds_on_it(
    api: Api, database_url: str
) -> None:
    _postgresql(database_url)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    draft = AuditDraft(action="read", actor="x", node="x", nation="USA", decision="deny", reason="not_found")
    async with api.ctx.db.transaction() as tx:
        await audit.record(tx, [draft], now=api.ctx.now())
        waiting = asyncio.create_task(api.publish(usa, body(payload={"waited": True})))
        await _blocked(database_url)
    assert (await waiting)[0] == 201
    await chain_holds(api.ctx)


async def test_a_publish_whose_connection_is_lost_answers_503_and_stores_nothing(
    api: Api, database_url: str
) -> None:
    # The batch's backend is terminated while it waits for the head row: the database is
    # unavailable to it (503), nothing is stored, and the next publish works.
    _postgresql(database_url)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    url = make_url(database_url)
    admin_connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database="postgres"
    )
    try:
        async with api.ctx.db.transaction() as tx:
            await tx.lock_head()
            waiting = asyncio.create_task(api.publish(usa, body()))
            blocked = await _blocked(database_url)
            assert len(blocked) == 1
            await admin_connection.execute("SELECT pg_terminate_backend($1)", blocked[0])
            async with asyncio.timeout(DEADLINE):
                status, _ = await waiting
    finally:
        await admin_connection.close()
    assert status == 503
    assert await report_count(api.ctx) == 1
    assert (await api.publish(usa, body()))[0] == 201


async def test_a_value_the_database_refuses_is_the_clients_and_writes_nothing(
    ctx: Context, database_url: str
) -> None:
    # An audit reason longer than its column (64) is refused (400), never cut to fit; nothing is
    # written, and the next append goes through.
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite does not enforce string lengths")
    size = await chain_holds(ctx)

    async def append(reason: str) -> None:
        async with ctx.db.transaction() as tx:
            await audit.record(tx, [AuditDraft(action="test", actor="a", reason=reason)], now=ctx.now())

    with pytest.raises(BadRequest):
        await append("r" * 100)
    assert await chain_holds(ctx) == size
    await append("fits")
    assert await chain_holds(ctx) == size + 1


async def test_a_naive_datetime_is_refused_and_writes_nothing(ctx: Context) -> None:
    # models.UTCDateTime refuses a naive datetime (it would be stored shifted by the server's
    # time zone), on both engines and in the combined write.
    size = await chain_holds(ctx)
    with pytest.raises(StatementError, match="naive datetime"):
        async with ctx.db.transaction() as tx:
            await audit.record(tx, [AuditDraft(action="test", actor="a")], now=datetime(2026, 11, 25, 12))  # noqa: DTZ001
    assert await chain_holds(ctx) == size
