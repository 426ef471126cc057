"""The thread that owns SQLite's connections (storage/database.py) keeps its promises: bodies run
one at a time in the order queued, results and errors come back to the caller, a caller that goes
away does not wedge it; writers begin IMMEDIATE with the durability pragmas, and readers take a
WAL snapshot that neither waits for nor blocks the writer."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from broker.errors import Unavailable
from broker.storage import db
from broker.storage.database import ConnectionThread, Database


@pytest.fixture
async def thread(tmp_path: Path) -> AsyncIterator[ConnectionThread]:
    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}", poolclass=NullPool)
    db.configure_sqlite(engine)
    owned = ConnectionThread(engine, "test-sqlite")

    def create(c: Connection) -> None:
        with c.begin():
            c.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")

    await owned.run(create)
    yield owned
    await owned.close()


@pytest.fixture
async def database(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    path = tmp_path / "broker.db"
    shutil.copyfile(sqlite_template, path)
    made = Database(db.create_engine(f"sqlite+aiosqlite:///{path}"))
    yield made
    await made.dispose()


async def test_bodies_run_in_order_and_answer(thread: ConnectionThread) -> None:
    def insert(name: str) -> Callable[[Connection], int]:
        def body(c: Connection) -> int:
            with c.begin():
                return int(c.execute(text("INSERT INTO t (name) VALUES (:n)"), {"n": name}).lastrowid)

        return body

    ids = await asyncio.gather(*(thread.run(insert(f"n{i}")) for i in range(20)))
    assert ids == list(range(1, 21))
    with pytest.raises(IntegrityError):
        await thread.run(insert("n0"))
    names = await thread.run(lambda c: c.execute(text("SELECT name FROM t ORDER BY id")).scalars().all())
    assert names == [f"n{i}" for i in range(20)]  # the failed insert rolled back with its block


async def test_a_caller_that_goes_away_does_not_wedge_the_thread(thread: ConnectionThread) -> None:
    started, release = asyncio.Event(), asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def slow(c: Connection) -> str:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(release), 5), loop).result()
        return "done"

    async def call() -> str:
        return await thread.run(slow)

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    release.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await thread.run(lambda c: "next") == "next"


async def test_writer_pragmas_and_begin_immediate(database: Database, tmp_path: Path) -> None:
    async with database.transaction() as tx:
        settings = await tx.run(
            lambda c: (
                c.exec_driver_sql("PRAGMA journal_mode").scalar(),
                c.exec_driver_sql("PRAGMA synchronous").scalar(),
                c.exec_driver_sql("PRAGMA foreign_keys").scalar(),
            )
        )
        assert settings == ("wal", 2, 1)  # WAL, synchronous=FULL, foreign keys on
        other = sqlite3.connect(tmp_path / "broker.db", timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # the writer holds the lock from its first trip
            assert other.execute("SELECT id FROM log_head").fetchone() == (1,)  # WAL: reads go on
        finally:
            other.close()


async def test_reads_neither_wait_for_nor_block_the_writer(database: Database) -> None:
    async with database.transaction() as tx:
        head = await tx.lock_head()  # the write lock is held from here to the commit
        async with database.read_transaction() as reader:  # would deadlock if it queued behind
            assert (await reader.head_state())[1] == head.change_counter
        await tx.save_head(replace(head, change_counter=head.change_counter + 1))
    async with database.read_transaction() as reader:
        before = (await reader.head_state())[1]
        async with database.transaction() as tx:  # a reader open does not hold the writer up
            head = await tx.lock_head()
            await tx.save_head(replace(head, change_counter=head.change_counter + 1))
        assert (await reader.head_state())[1] == before  # its snapshot stands
    async with database.read_transaction() as reader:
        assert (await reader.head_state())[1] == before + 1


async def test_a_read_transaction_cannot_write(database: Database) -> None:
    with pytest.raises(Unavailable) as caught:
        async with database.read_transaction() as reader:
            await reader.run(lambda c: c.exec_driver_sql("UPDATE log_head SET change_counter = 99"))
    assert isinstance(caught.value.__cause__, OperationalError)  # "attempt to write a readonly database"


async def test_a_locked_database_is_unavailable(database: Database, tmp_path: Path) -> None:
    async with database.transaction() as tx:  # a short wait for the lock, for this test
        await tx.run(lambda c: c.exec_driver_sql("PRAGMA busy_timeout=50"))
    holder = sqlite3.connect(tmp_path / "broker.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(Unavailable):
            async with database.transaction() as tx:
                await tx.lock_head()
        holder.execute("ROLLBACK")
        async with database.transaction() as tx:  # and the writer recovers once it is free
            assert (await tx.lock_head()).report_seq == 0
    finally:
        holder.close()
