"""The one-trip aiosqlite dialect behaves as a DB-API cursor should: rows, row counts, last row
ids, executemany, errors mapped to SQLAlchemy's, transactions that commit and roll back, and
one trip to the SQLite thread per statement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.storage import db, sqlite_driver


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    made = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    assert made.dialect.driver == "broker_aiosqlite"
    async with made.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)"))
    yield made
    await made.dispose()


async def test_rows_counts_and_ids(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))
        assert inserted.lastrowid == 1 and inserted.rowcount == 1
        many = await conn.execute(text("INSERT INTO t (name) VALUES (:n)"), [{"n": "b"}, {"n": "c"}])
        assert many.rowcount == 2
        updated = await conn.execute(text("UPDATE t SET name = name || '!' WHERE id > 1"))
        assert updated.rowcount == 2
        rows = (await conn.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b!"), (3, "c!")]
        first = (await conn.execute(text("SELECT name FROM t ORDER BY id"))).first()
        assert first is not None and first.name == "a"
        assert (await conn.execute(text("SELECT name FROM t WHERE id = 99"))).first() is None


async def test_errors_and_rollback(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))

    async def insert_b_then_a() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name) VALUES ('b')"))
            await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))  # unique: fails

    async def bad_column() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT nope FROM t"))

    with pytest.raises(IntegrityError):
        await insert_b_then_a()
    with pytest.raises(OperationalError):
        await bad_column()
    async with engine.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM t"))).scalars().all()
    assert names == ["a"]  # 'b' rolled back with its transaction


async def test_one_trip_per_statement(engine: AsyncEngine, sqlite_trips: list[str]) -> None:
    trips = sqlite_trips
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name) VALUES ('a')"))  # with BEGIN IMMEDIATE
        await conn.execute(text("SELECT name FROM t"))
    assert trips == ["statement", "statement", "commit"]  # and no rollback on return to the pool
    trips.clear()
    async with engine.begin():
        pass
    assert trips == []  # a transaction that ran nothing costs nothing


async def test_pipelined_writes_ride_with_the_commit(engine: AsyncEngine, sqlite_trips: list[str]) -> None:
    trips = sqlite_trips
    async with engine.begin() as conn:
        write = text("INSERT INTO t (name) VALUES (:n)").execution_options(**{sqlite_driver.PIPELINED: True})
        await conn.execute(write, {"n": "a"})
        await conn.execute(write, [{"n": "b"}, {"n": "c"}])
        assert trips == []
    assert trips == ["queued_then_commit"]
    trips.clear()
    async with engine.begin() as conn:
        await conn.execute(write, {"n": "d"})
        names = (await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
    assert names == ["a", "b", "c", "d"]  # a queued write runs before the next statement
    assert trips == ["statement", "commit"]

    async def duplicate() -> None:
        async with engine.begin() as conn:
            await conn.execute(write, {"n": "e"})
            await conn.execute(write, {"n": "a"})  # unique: fails, at the commit

    with pytest.raises(IntegrityError):
        await duplicate()
    async with engine.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM t ORDER BY id"))).scalars().all()
    assert names == ["a", "b", "c", "d"]  # 'e' went with its transaction
