"""The one repository (storage/repos.py) writes on the owned SQLite thread exactly what
SQLAlchemy's async engine reads back, in the trips promised, and leaves nothing behind when a
transaction fails or is abandoned."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from broker.domain.records import AuditDraft
from broker.services import admin, audit, ledger, publishing
from broker.services import reports as report_service
from broker.services.auth import authenticate
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import statements as st
from tests.conftest import CONFIG, FakeClock
from tests.integration.helpers import body, chain_holds, events, report_count


@pytest.fixture
async def sqlite_ctx(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Context]:
    path = tmp_path / "broker.db"
    shutil.copyfile(sqlite_template, path)
    settings = Settings.load(
        env={
            "BROKER_CONFIG_DIR": str(CONFIG),
            "BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
            "BROKER_KEYRING": str(tmp_path / "keyring.json"),
        }
    )
    ctx = Context.open(settings, clock=FakeClock())
    yield ctx
    await ctx.close()


async def test_what_it_writes_sqlalchemy_reads_back_unchanged(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    spec = {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}
    node = await authenticate(ctx, (await admin.add_node(ctx, spec, actor="t"))["token"], source="test")
    directory = await ctx.cached_directory()
    raw = body(topics=["c2", "ransomware"], payload={"n": 1, "text": "é\u2028\U0001f600"})
    sub = publishing.parse_submission(raw, ctx=ctx, known_alliances=directory.alliances)
    act = publishing.PublishAct(node=node, sub=sub, idempotency_key="key-1")
    async with ctx.db.transaction() as tx:
        (written,) = await publishing.store_publishes(ctx, tx, [act])
    async with ctx.db.engine.connect() as conn:  # SQLAlchemy's async engine, another connection
        row = (await conn.execute(st.REPORT_BY_ID, {"id": written.id})).one()
        topics = (await conn.execute(select(st.TOPICS.c.topic).order_by(st.TOPICS.c.topic))).scalars()
        assert st.report_of(row) == written and list(topics) == ["c2", "ransomware"]
        assert (await conn.execute(st.NODE_BY_ID, {"id": "usa-1"})).one().token_hash == node.token_hash
    assert written.created_at.tzinfo is not None
    got = await report_service.read(ctx, replace(node, roles=("subscribe",)), written.id)
    assert got["payload"] == {"n": 1, "text": "é\u2028\U0001f600"}
    async with ctx.db.read_transaction() as tx:  # and the reader thread reads the same
        assert await tx.report(written.id) == written
        keyed = st.REPORTS.c.idempotency_key == "key-1"
        assert await tx.reports(st.REPORTS.c.originator_node == "usa-1", keyed) == [written]
        assert await tx.reports_after(after=0, topics=["ransomware"], limit=10) == [written]
        assert await tx.report("no-such-id") is None
    await chain_holds(ctx)


async def test_two_trips_per_publish(sqlite_ctx: Context, request: pytest.FixtureRequest) -> None:
    ctx = sqlite_ctx
    spec = {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}
    node = await authenticate(ctx, (await admin.add_node(ctx, spec, actor="t"))["token"], source="test")
    await publishing.publish(ctx, node, body(), idempotency_key=None)  # caches warm
    trips: list[str] = request.getfixturevalue("sqlite_trips")  # counting from here on
    await publishing.publish(ctx, node, body(), idempotency_key=None)
    assert trips == ["sqlite-writer", "sqlite-writer"]  # begin + lock the head; the writes + commit
    assert await report_count(ctx) == 2


async def test_a_transaction_that_runs_nothing_costs_nothing(
    sqlite_ctx: Context, request: pytest.FixtureRequest
) -> None:
    trips: list[str] = request.getfixturevalue("sqlite_trips")
    async with sqlite_ctx.db.transaction():
        pass
    async with sqlite_ctx.db.read_transaction():
        pass
    assert trips == []


async def test_a_failed_transaction_leaves_nothing(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    before = await chain_holds(ctx)

    async def fails() -> None:
        async with ctx.db.transaction() as tx:
            await audit.record(tx, [AuditDraft(action="lost")], now=ctx.now())
            await tx.lock_head()  # the queued writes have run: now they must be undone
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fails()
    assert await chain_holds(ctx) == before
    async with ctx.db.transaction() as tx:
        await audit.record(tx, [AuditDraft(action="kept")], now=ctx.now())
    assert [e["action"] for e in await events(ctx)][-1] == "kept"
    assert await chain_holds(ctx) == before + 1


async def test_a_queued_write_that_fails_fails_the_commit(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    async with ctx.db.transaction() as tx:
        await audit.record(tx, [AuditDraft(action="first")], now=ctx.now())
    before = await chain_holds(ctx)
    async with ctx.db.read_transaction() as tx:
        counter = await tx.change_counter()
        first = await tx.event(before)
    assert first is not None

    async def duplicate() -> None:
        async with ctx.db.transaction() as tx:
            head = await tx.lock_head()
            await tx.save_head(replace(head, change_counter=head.change_counter + 5))
            await tx.insert_events([first])  # the same sequence again: fails at the commit

    with pytest.raises(IntegrityError):
        await duplicate()
    async with ctx.db.read_transaction() as tx:
        assert await tx.change_counter() == counter  # the head update went with it
    assert await chain_holds(ctx) == before


async def test_a_cancelled_transaction_is_rolled_back_before_the_next(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    written, forever = asyncio.Event(), asyncio.Event()

    async def abandoned() -> None:
        async with ctx.db.transaction() as tx:
            head = await tx.lock_head()  # BEGIN IMMEDIATE has run
            await tx.save_head(replace(head, change_counter=head.change_counter + 7))
            await tx.change_counter()  # the queued update has run, uncommitted
            written.set()
            await forever.wait()

    async with ctx.db.read_transaction() as tx:
        counter = await tx.change_counter()
    task = asyncio.create_task(abandoned())
    await written.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with ctx.db.transaction() as tx:
        assert await tx.change_counter() == counter


async def test_reads_run_side_by_side_and_beside_an_open_write(sqlite_ctx: Context) -> None:
    """Several SQLite readers: a read in progress does not hold up another read, and an auditor's
    query (events, proofs, export pages, the checkpoint poll) reads a snapshot instead of queueing
    behind a write transaction that is still open."""
    ctx = sqlite_ctx
    await admin.add_node(
        ctx, {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}, actor="t"
    )
    async with asyncio.timeout(5):  # the old single reader (or the write lock) would hold these for good
        async with ctx.db.read_transaction() as first, ctx.db.read_transaction() as second:
            assert await first.audit_size() == await second.audit_size() >= 1
        async with ctx.db.transaction() as tx:
            await tx.lock_head()
            page = await ledger.events(ctx, after=0, limit=10, filters={})
            assert page["events"] and page["events"][0]["seq"] == 1
