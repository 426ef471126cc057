"""The SQLite group-commit writer writes exactly what SQLAlchemy reads back, in as few trips as
promised, and leaves nothing behind when a transaction fails or is abandoned."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from broker.domain.records import AuditDraft
from broker.services import admin, audit
from broker.services import reports as report_service
from broker.services.auth import authenticate
from broker.services.context import Context
from broker.settings import Settings
from broker.storage.sqlite_writer import SqliteWriter, SqliteWriteTx
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
    sub = report_service.parse_submission(raw, ctx=ctx, known_alliances=directory.alliances)
    act = report_service.PublishAct(node=node, sub=sub, idempotency_key="key-1")
    async with ctx.db.write_transaction() as tx:
        assert isinstance(tx, SqliteWriteTx)
        (written,) = await report_service.store_publishes(ctx, tx, [act])
    async with ctx.db.transaction() as tx2:  # SQLAlchemy's own path
        by_id = await tx2.report(written.id)
        by_key = await tx2.report_by_idempotency_key(node="usa-1", key="key-1")
        found = await tx2.reports_after(after=0, topics=["ransomware"], limit=10)
    assert by_id == written and by_key == written and found == [written]
    assert written.created_at.tzinfo is not None
    got = await report_service.read(ctx, replace(node, roles=("subscribe",)), written.id)
    assert got["payload"] == {"n": 1, "text": "é\u2028\U0001f600"}
    # And the writer reads what SQLAlchemy wrote.
    async with ctx.db.write_transaction() as tx:
        assert await tx.report(written.id) == written
        assert await tx.report_by_idempotency_key(node="usa-1", key="key-1") == written
        assert await tx.report("no-such-id") is None
        fresh = await tx.load_directory()
    async with ctx.db.transaction() as tx2:
        assert fresh == await tx2.load_directory()
    await chain_holds(ctx)


async def test_two_trips_per_publish(sqlite_ctx: Context, request: pytest.FixtureRequest) -> None:
    ctx = sqlite_ctx
    spec = {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}
    node = await authenticate(ctx, (await admin.add_node(ctx, spec, actor="t"))["token"], source="test")
    await report_service.publish(ctx, node, body(), idempotency_key=None)  # caches warm
    trips: list[str] = request.getfixturevalue("sqlite_trips")  # counting from here on
    await report_service.publish(ctx, node, body(), idempotency_key=None)
    assert len(trips) == 2  # begin + lock the head; the writes + commit
    assert await report_count(ctx) == 2


async def test_a_failed_transaction_leaves_nothing(sqlite_ctx: Context) -> None:
    ctx = sqlite_ctx
    before = await chain_holds(ctx)

    async def fails() -> None:
        async with ctx.db.write_transaction() as tx:
            await audit.record(tx, [AuditDraft(action="lost")], now=ctx.now())
            await tx.lock_head()  # the queued writes have run: now they must be undone
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fails()
    assert await chain_holds(ctx) == before
    async with ctx.db.write_transaction() as tx:
        await audit.record(tx, [AuditDraft(action="kept")], now=ctx.now())
    assert [e["action"] for e in await events(ctx)][-1] == "kept"
    assert await chain_holds(ctx) == before + 1


async def test_an_abandoned_transaction_is_rolled_back_by_the_next(
    sqlite_template: Path, tmp_path: Path
) -> None:
    path = tmp_path / "broker.db"
    shutil.copyfile(sqlite_template, path)
    from broker.storage.db import SQLITE_PRAGMAS, create_engine

    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    writer = SqliteWriter(str(path), engine.dialect, SQLITE_PRAGMAS)
    try:
        abandoned = SqliteWriteTx(writer, await writer._connect())
        head = await abandoned.lock_head()  # BEGIN IMMEDIATE has run
        await abandoned.save_head(replace(head, change_counter=head.change_counter + 7))
        await abandoned.change_counter()  # the queued update has run, uncommitted
        async with writer.transaction() as tx:  # as after a cancellation: never committed
            assert await tx.change_counter() == head.change_counter
    finally:
        await writer.close()
        await engine.dispose()


async def test_a_locked_database_is_an_operational_error(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    shutil.copyfile(sqlite_template, path)
    from broker.storage.db import create_engine

    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    writer = SqliteWriter(str(path), engine.dialect, ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=50"))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            async with writer.transaction() as tx:
                await tx.lock_head()
        holder.execute("ROLLBACK")
        async with writer.transaction() as tx:  # and the writer recovers once it is free
            assert (await tx.lock_head()).report_seq == 0
    finally:
        holder.close()
        await writer.close()
        await engine.dispose()


def test_a_statement_that_needs_a_python_side_default_is_refused() -> None:
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert

    from broker.storage.db import SQLITE_PRAGMAS, create_engine

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("v", String, default="x"))
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    writer = SqliteWriter(":memory:", engine.dialect, SQLITE_PRAGMAS)
    assert writer.prepared(insert(table), ("id", "v")).direct
    with pytest.raises(TypeError, match="Python-side default"):
        writer.prepared(insert(table), ("id",))
