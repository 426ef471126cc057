"""On PostgreSQL a transaction's queued writes (reports, topics, audit events, Merkle nodes, the
head, NOTIFY) go to the database as one statement; the outcome must be what running them one by
one gives, on both engines."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from broker.domain.records import AuditDraft, AuditEvent
from broker.errors import BadRequest
from broker.services.context import Context
from tests.conftest import _pg_exec
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, chain_holds, events, statements_seen


async def test_a_publish_batch_writes_in_one_statement_on_postgresql(api: Api, database_url: str) -> None:
    usa = await api.node("usa-1", "USA")
    for _ in range(2):  # warm: the node cached, the head known, the statement shapes compiled
        await api.publish(usa, body())
    seen = statements_seen(api.server_ctx)
    answers = await asyncio.gather(
        *(api.publish(usa, body(topics=["ied", f"t{i}", "apt-28"], payload={"n": i})) for i in range(12))
    )
    assert all(status == 201 for status, _ in answers)
    sequences = sorted(receipt["sequence"] for _, receipt in answers)
    assert sequences == list(range(sequences[0], sequences[0] + 12))  # no gap, no duplicate
    if database_url.startswith("postgresql"):
        # Per transaction one combined write, after the lock and the reads: every write of a
        # batch is in its one WITH statement.
        assert "INSERT" not in seen and "UPDATE" not in seen, seen
        assert "WITH" in seen, seen
    assert await chain_holds(api.ctx) >= 14
    published = await events(api.ctx, action="publish")
    assert len(published) == 14  # two to warm up, twelve at once
    async with api.ctx.db.read_transaction() as tx:
        head = await tx.lock_head()
        stored = await tx.reports_after(after=0, topics=("apt-28",), limit=100)
    assert head.report_seq == sequences[-1]
    assert sorted(r.seq for r in stored) == sequences  # every topic row written


async def test_the_last_of_several_head_saves_in_one_transaction_wins(ctx: Context) -> None:
    # A row may be updated once per statement: of two queued saves, the combined statement keeps
    # the last, as running them one by one would.
    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        await tx.save_head(replace(head, report_seq=head.report_seq + 5))
        await tx.save_head(
            replace(head, report_seq=head.report_seq + 7, change_counter=head.change_counter + 1)
        )
        await tx.notify_change()
    async with ctx.db.read_transaction() as tx:
        assert await tx.head_state() == (head.report_seq + 7, head.change_counter + 1, head.report_changes)


async def test_connections_the_server_closed_are_replaced_before_use(api: Api, database_url: str) -> None:
    # Pooled connections are checked without a round trip (asyncpg knows its socket closed):
    # after the server terminates every connection of this database, publishing still works.
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server to close connections")
    usa = await api.node("usa-1", "USA")
    answers = await asyncio.gather(*(api.publish(usa, body()) for _ in range(8)))  # fill the pool
    assert all(status == 201 for status, _ in answers)
    url = make_url(database_url)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database="postgres"
    )
    try:
        terminate = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()"
        )
        await admin.execute(terminate, url.database)
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the event loop reads the closed sockets
    statuses = [(await api.publish(usa, body()))[0] for _ in range(12)]
    assert statuses == [201] * 12


async def test_an_over_long_value_is_refused_not_truncated(ctx: Context, database_url: str) -> None:
    # The combined statement binds strings as text: a value longer than its column is refused
    # (as one statement per write refuses it), never cut to fit (an explicit varchar(n) cast
    # would: the stored audit event would no longer match its hash).
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite does not enforce string lengths")
    long_reason = "r" * 100  # the column holds 64
    async with ctx.db.read_transaction() as tx:
        head = await tx.lock_head()

    async def append() -> None:
        async with ctx.db.transaction() as tx:
            await tx.lock_head()
            event = AuditEvent(
                seq=head.audit_seq + 1,
                time=ctx.now(),
                draft=AuditDraft(action="test", actor="a", reason=long_reason),
                prev_hash=head.audit_hash,
                hash="0" * 64,
            )
            await tx.insert_events([event])
            await tx.save_head(replace(head, audit_seq=head.audit_seq + 1))

    with pytest.raises(BadRequest):  # the edge never lets such values through: 400 if one came
        await append()
    async with ctx.db.read_transaction() as tx:
        assert await tx.event(head.audit_seq + 1) is None


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
async def test_writes_hold_when_the_database_defaults_to_a_stricter_isolation(
    start_server: StartServer, database_url: str, isolation: str
) -> None:
    # The head row is locked under READ COMMITTED: under a stricter default, a write that meets another
    # broker's commit fails with a serialization error (a 500) instead of waiting for it.
    # Every connection the broker opens sets its own isolation, whatever the database's default.
    if not database_url.startswith("postgresql"):
        pytest.skip("an isolation default is PostgreSQL's")
    url = make_url(database_url)
    server = url.set(database="postgres").render_as_string(hide_password=False)
    alter = f"ALTER DATABASE \"{url.database}\" SET default_transaction_isolation = '{isolation}'"
    await _pg_exec(server, alter)
    one, two = await start_server(), await start_server()  # two brokers, one database
    usa = await one.node("usa-1", "USA")
    answers = await asyncio.gather(
        *(api.publish(usa, body(payload={"n": i})) for i in range(20) for api in (one, two))
    )
    assert [status for status, _ in answers] == [201] * 40
    for api in (one, two):  # the session default of the pool's connections (the kept one is one)
        async with api.server_ctx.db.engine.connect() as connection:
            shown = await connection.exec_driver_sql("SHOW default_transaction_isolation")
            assert shown.scalar() == "read committed"
    assert await chain_holds(one.ctx) >= 40
