"""``Database``: hands out transactions, and on SQLite owns the thread its writes run on.

SQLite admits one writer. Every write transaction of this process runs on one connection owned
by one thread (``ConnectionThread``): a transaction's bodies (``Tx.run``) are queued to it
and their results handed back to the event loop, one trip per body. The connection is opened
through SQLAlchemy's public synchronous API (``sqlite+pysqlite``, a ``NullPool``), with the same
pragmas as every other SQLite connection (db.SQLITE_PRAGMAS) and ``BEGIN IMMEDIATE``. An
``asyncio.Lock`` queues the process's write transactions in front of it, so they never wait in
SQLite's busy handler, which sleeps and ruins tail latency; other processes queue on BEGIN
IMMEDIATE and the busy timeout. Read transactions (``read_transaction``) run on reader threads,
each with a connection of its own that begins a plain (deferred) transaction: a WAL snapshot that
neither takes nor waits for the write lock. Several readers run at once (SQLite releases the GIL
while it works), so a long listing or an auditor's export does not queue every other read.

On PostgreSQL the same bodies run through ``AsyncConnection.run_sync`` on a pooled connection;
writers serialise on the ``log_head`` row, and reads are ordinary transactions. A group-committed
batch is one ordinary transaction: lock the head and read what the batch needs, one combined
statement for its writes, commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool

from broker.errors import BadRequest, Unavailable
from broker.storage.db import SQLITE_BUSY_TIMEOUT_MS, configure_sqlite, ping
from broker.storage.repos import Tx

T = TypeVar("T")
_Job = tuple[Callable[[Connection], Any], asyncio.Future[Any]] | None
# Reader threads on SQLite: enough that one long read (a 5,000-row listing scan, an export page)
# leaves others free; each holds one connection and its page cache.
SQLITE_READERS = 4


class ConnectionThread:
    """One thread, one connection: ``run`` queues a body, the thread runs it on the connection
    and hands the outcome back to the caller's event loop. Bodies run one at a time, in the order
    queued (so a rollback queued by a cancelled transaction runs before the next one's bodies).
    The thread starts with the first body and is a daemon: it never keeps the process alive."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.name = name

    def run(self, body: Callable[[Connection], T]) -> asyncio.Future[T]:
        """Queue ``body`` now (not when awaited); the future has its outcome."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if not self._thread.is_alive():
            self._thread.start()
        self._jobs.put((body, future))
        return future

    def _main(self) -> None:
        connection: Connection | None = None
        try:
            while (job := self._jobs.get()) is not None:
                body, future = job
                try:
                    if connection is None:
                        connection = self._engine.connect()
                    outcome = body(connection)
                except BaseException as exc:
                    future.get_loop().call_soon_threadsafe(_settle, future, None, exc)
                else:
                    future.get_loop().call_soon_threadsafe(_settle, future, outcome, None)
        finally:
            if connection is not None:
                connection.close()  # a NullPool's engine holds no other connection to dispose of

    async def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)


def _settle(future: asyncio.Future[Any], outcome: Any, exc: BaseException | None) -> None:
    if future.done():  # its caller went away; the body ran all the same
        return
    if exc is None:
        future.set_result(outcome)
    else:
        future.set_exception(exc)


def _sqlite_engine(engine: AsyncEngine, *, read_only: bool) -> Engine:
    """The synchronous engine of the writer thread or of the reader threads (one for all of
    them: each statement is compiled once for every reader, not once per reader)."""
    sync = create_engine(
        engine.url.set(drivername="sqlite+pysqlite"),
        poolclass=NullPool,  # each thread's one connection lives and dies with its thread
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    configure_sqlite(sync, read_only=read_only)
    return sync


class Database:
    """Owns the engine; hands out transactions."""

    def __init__(self, engine: AsyncEngine, *, deadline: float = 5.0) -> None:
        self.engine = engine
        # Seconds a group-committed write may wait and run before its caller gets 503
        # (services/groupcommit.py): the flush in flight is abandoned after it, lock released.
        self.deadline = deadline
        sqlite = engine.dialect.name == "sqlite"
        # Several broker processes serve one PostgreSQL database; a SQLite file has one broker.
        self.shared = not sqlite
        self._writer: ConnectionThread | None = None
        self._readers: list[ConnectionThread] = []
        # Last in, first out: reads one after another keep to one reader, whose page cache and
        # statement cache are warm; only reads that overlap spread to the others.
        self._idle_readers: asyncio.LifoQueue[ConnectionThread] = asyncio.LifoQueue()
        self._serial = asyncio.Lock()
        # Called with the seconds each write transaction held the write lock (the head row on
        # PostgreSQL, from when ``lock_head`` returned; the whole write transaction on SQLite),
        # through its commit or rollback: the hot spot every publish and audit event queues on.
        self.on_lock_held: Callable[[float], None] | None = None
        if sqlite:
            self._writer = ConnectionThread(_sqlite_engine(engine, read_only=False), "sqlite-writer")
            readers = _sqlite_engine(engine, read_only=True)
            self._readers = [ConnectionThread(readers, f"sqlite-reader-{n}") for n in range(SQLITE_READERS)]
            for reader in self._readers:
                self._idle_readers.put_nowait(reader)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A transaction that commits when the block ends normally, else rolls back.
        Database outages surface as Unavailable (503)."""
        async with _mapped_errors():
            if self._writer is None:
                async with self._pooled(measure=True) as tx:
                    yield tx
            else:
                async with self._serial:
                    tx = Tx(self._writer.run, postgresql=False)
                    tx.locked_at = time.perf_counter()
                    try:
                        async with _ended(tx):
                            yield tx
                    finally:
                        self._held(tx)
                    tx.committed()

    def _held(self, tx: Tx) -> None:
        if tx.locked_at is not None and self.on_lock_held is not None:
            self.on_lock_held(time.perf_counter() - tx.locked_at)

    async def ping(self, *, seconds: float) -> None:
        """Raise Unavailable unless the database answers a read within ``seconds``. On SQLite the
        read is a WAL snapshot on a reader thread: it never waits for the write lock, so a long
        write does not make a healthy database look down."""
        if not self._readers:
            await ping(self.engine, seconds=seconds)
            return
        try:
            async with asyncio.timeout(seconds):
                async with self.read_transaction() as tx:
                    await tx.scalar(select(1))
        except TimeoutError:
            raise Unavailable("database did not answer in time") from None

    @asynccontextmanager
    async def read_transaction(self) -> AsyncIterator[Tx]:
        """A transaction for reading only; ends like ``transaction``. On SQLite it is a WAL
        snapshot on a connection of its own (``query_only``: a write in it fails), so it neither
        takes nor waits for the write lock, and writers do not wait for it."""
        async with _mapped_errors():
            if not self._readers:
                async with self._pooled() as tx:
                    yield tx
                return
            reader = await self._free_reader()
            try:
                async with _ended(Tx(reader.run, postgresql=False)) as tx:
                    yield tx
            finally:
                self._idle_readers.put_nowait(reader)

    async def _free_reader(self) -> ConnectionThread:
        """A reader thread nobody is using, waited for within the deadline (503 after it)."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self._idle_readers.get()
        except TimeoutError:
            raise Unavailable("no database reader free in time") from None

    @asynccontextmanager
    async def _pooled(self, *, measure: bool = False) -> AsyncIterator[Tx]:
        # The whole transaction, checkout included, within the deadline: a checkout that waited
        # for a connection and then met the stuck server again must not add up to twice it.
        async with asyncio.timeout(self.deadline), self.engine.connect() as connection:
            postgresql = self.engine.dialect.name == "postgresql"
            tx = Tx(connection.run_sync, postgresql=postgresql)
            try:
                # The commit (or rollback) ends the lock: measured with it. A transaction cut
                # short by a deadline or a cancellation is not rolled back but its connection
                # closed: a rollback would first wait for the server to acknowledge the cancel
                # of the statement in flight, from a server that may not be answering at all.
                driver = (await connection.get_raw_connection()).driver_connection
                async with _ended(tx, abandon=partial(_abandon, connection, driver)):
                    yield tx
            finally:
                if measure:
                    self._held(tx)
            tx.committed()

    async def dispose(self) -> None:
        for thread in (self._writer, *self._readers):
            if thread is not None:
                await thread.close()
        await self.engine.dispose()


@asynccontextmanager
async def _ended(tx: Tx, *, abandon: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Tx]:
    """Commit when the block ends normally, else roll back (no trip when nothing ran); when
    interrupted (a deadline, a cancellation), ``abandon`` the connection instead if given."""
    try:
        yield tx
        await tx.commit()
    except BaseException as exc:
        if abandon is not None and _interrupted(exc):
            await asyncio.shield(abandon())  # the server rolls back a closed session's transaction
            raise
        # On SQLite queued at once (``rollback`` is not a coroutine), so it runs before any later
        # transaction's bodies even if this task is cancelled while waiting for it. A failed
        # commit (or queued write) is undone too.
        await asyncio.shield(tx.rollback())
        raise


@asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    try:
        yield
    except DataError as exc:  # a value the edge let through and the database refuses (NUL...)
        raise _refused_value() from exc
    except OperationalError as exc:
        # SQLite's primary result code 1 is an SQL error or a missing table or column: no outage
        # but a fault (500, logged with its traceback). Its other codes (busy, locked, I/O,
        # cannot open, full) are the database unavailable.
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == 1:
            raise
        raise Unavailable("database unavailable") from exc
    except (InterfaceError, OSError) as exc:
        raise Unavailable("database unavailable") from exc
    except PoolTimeout as exc:  # every pooled connection busy (or stuck) past pool_timeout
        raise Unavailable("no database connection free in time") from exc
    except TimeoutError as exc:  # asyncpg's command_timeout: a server that stopped answering
        raise Unavailable("the database did not answer in time") from exc
    except DBAPIError as exc:
        # The asyncpg dialect raises a plain DBAPIError for PostgreSQL's data exceptions (SQLSTATE
        # class 22: too long, out of range, not encodable), and for a connection lost mid-statement
        # (class 08, or 57: its backend terminated, the server shutting down).
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
        if exc.connection_invalidated or sqlstate[:2] in ("08", "57"):
            raise Unavailable("database connection lost") from exc
        if sqlstate[:2] == "22":
            raise _refused_value() from exc
        raise


async def _abandon(connection: AsyncConnection, driver: Any) -> None:
    """Close ``connection`` at once and drop it from the pool. SQLAlchemy's own invalidation
    first tries a polite close that waits up to 2 s for the server: the driver's ``terminate``
    closes the socket without a word."""
    if driver is not None and hasattr(driver, "terminate"):
        driver.terminate()
    with contextlib.suppress(SQLAlchemyError):  # already invalidated by SQLAlchemy itself
        await connection.invalidate()


def _interrupted(exc: BaseException) -> bool:
    """A deadline or a cancellation, or an error raised from one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError | asyncio.CancelledError):
            return True
        seen = seen.__cause__
    return False


def _refused_value() -> BadRequest:
    return BadRequest("the request holds a value that cannot be stored", code="invalid_value")
