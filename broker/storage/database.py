"""``Database``: hands out transactions, and on SQLite owns the thread its writes run on.

SQLite admits one writer. Every write transaction of this process runs on one connection owned
by one thread (``ConnectionThread``): a transaction's bodies (``repos.Tx.run``) are queued to it
and their results handed back to the event loop, one trip per body. The connection is opened
through SQLAlchemy's public synchronous API (``sqlite+pysqlite``, a ``NullPool``), with the same
pragmas as every other SQLite connection (db.SQLITE_PRAGMAS) and ``BEGIN IMMEDIATE``. An
``asyncio.Lock`` queues the process's write transactions in front of it, so they never wait in
SQLite's busy handler, which sleeps and ruins tail latency; other processes queue on BEGIN
IMMEDIATE and the busy timeout. Read transactions (``read_transaction``) run on a second thread
with a connection of its own that begins a plain (deferred) transaction: a WAL snapshot that
neither takes nor waits for the write lock.

On PostgreSQL the same bodies run through ``AsyncConnection.run_sync`` on a pooled connection;
writers serialise on the ``log_head`` row, and reads are ordinary transactions. Group-committed
batches are first tried as guarded transactions (``guarded_transaction``, ``repos.GuardedTx``):
one statement, compiled by SQLAlchemy once per shape and sent through the asyncpg connection kept
for them, against the head this process last committed or heard of (``learn``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeGuard, TypeVar

import asyncpg
from sqlalchemy import ClauseElement, Engine, Executable, create_engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.compiler import SQLCompiler

from broker.domain.records import Head
from broker.errors import BadRequest, Unavailable
from broker.storage.db import SQLITE_BUSY_TIMEOUT_MS, configure_sqlite
from broker.storage.models import refuse_naive
from broker.storage.repos import GuardedTx, HeadMoved, Tx
from broker.storage.statements import head_from_payload
from broker.waiting import wait_event

T = TypeVar("T")
# The connection kept for guarded statements is replaced after this long (as pooled ones are).
GUARDED_RECYCLE_SECONDS = 300.0
# How long, at most, a batch waits for another process's commit once guarded statements have
# collided (``Database.turn``); a wait that times out ends the waiting until the next collision.
# The other's turn is its requests' processing plus its statement: two brokers at 16 clients on
# this 2-core machine, alternating runs: 5 ms timed out on about 40 % of waits and left 150
# statements of 500 refused per broker; 15 ms timed out on 1-5 waits and left 2-8 refused;
# 30 ms did no better (493/540, 657/560 and 543/517 publishes/s).
TURN_SECONDS = 0.015
# Waiting for another process's commit is worth it only if that process announces its commits
# (NOTIFY): it has done so within this long. Audit-only commits (reads, deliveries) send none.
HEARD_SECONDS = 0.1
# A guarded statement the server refuses to run at all turns them off for this long (a migration
# running under the broker, a privilege revoked for a while), then they are tried again.
GUARDED_OFF_SECONDS = 60.0
log = logging.getLogger(__name__)
_Job = tuple[Callable[[Connection], Any], asyncio.Future[Any]] | None


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
                    future.get_loop().call_soon_threadsafe(_fail, future, exc)
                else:
                    future.get_loop().call_soon_threadsafe(_settle, future, outcome)
        finally:
            if connection is not None:
                connection.close()
            self._engine.dispose()

    async def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if not future.done():  # its caller went away; the body ran all the same
        future.set_result(outcome)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _sqlite_thread(engine: AsyncEngine, *, name: str, read_only: bool) -> ConnectionThread:
    sync = create_engine(
        engine.url.set(drivername="sqlite+pysqlite"),
        poolclass=NullPool,  # the one connection lives and dies with its thread
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    configure_sqlite(sync, read_only=read_only)
    return ConnectionThread(sync, name)


class Database:
    """Owns the engine; hands out transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        sqlite = engine.dialect.name == "sqlite"
        # Several broker processes serve one PostgreSQL database; a SQLite file has one broker.
        self.shared = not sqlite
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._serial = asyncio.Lock()
        # Called with the seconds each write transaction held the write lock (the head row on
        # PostgreSQL, from when ``lock_head`` returned; the whole write transaction on SQLite),
        # through its commit or rollback: the hot spot every publish and audit event queues on.
        self.on_lock_held: Callable[[float], None] | None = None
        self._read_serial = asyncio.Lock()
        # PostgreSQL: the head as this process's last committed write transaction left it (or
        # locked it), or a later one heard of, for guarded transactions; None until the first.
        self._head: Head | None = None
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._guarded_connection: AsyncConnection | None = None
        self._guarded_since = 0.0
        self._compiled: dict[Executable, tuple[str, list[str], dict[str, Any]]] = {}
        self._guarded_serial = asyncio.Lock()
        # Guarded transactions that committed, and that were refused (then run as ordinary ones).
        self.guarded = {"committed": 0, "refused": 0}
        self.on_guarded: Callable[[str], None] | None = None
        # Taking turns with other processes (``turn``): whether a guarded statement of this one
        # lately found the head moved by a commit made while it waited; the head this process's
        # last commit left; an event set (and replaced) whenever the known head moves.
        self._contended = False
        self._own: Head | None = None
        self._moved = asyncio.Event()
        self._heard_at = -1.0  # when a NOTIFY from another process was last heard
        # This process's backends (every pooled connection's, the kept one's included): their
        # NOTIFYs are this process's own commits, not another process announcing its own.
        self._own_pids: set[int] = set()
        # Off until then once a guarded statement cannot run at all here (SQLSTATE class 42:
        # the function of migration 0008 missing, say, or not executable by this role).
        self._guarded_off_until = 0.0
        self.turns = {"other_committed": 0, "timed_out": 0}
        self.on_turn: Callable[[str], None] | None = None
        if sqlite:
            self._writer = _sqlite_thread(engine, name="sqlite-writer", read_only=False)
            self._reader = _sqlite_thread(engine, name="sqlite-reader", read_only=True)
        else:
            event.listen(engine.sync_engine.pool, "connect", self._backend_opened)
            event.listen(engine.sync_engine.pool, "close", self._backend_closed)

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
                    self._committed(tx)

    # Publishes, reads and deliveries with their audit events: the same transaction.
    write_transaction = transaction

    @asynccontextmanager
    async def guarded_transaction(self) -> AsyncIterator[GuardedTx]:
        """A ``GuardedTx`` against the head this process last saw (PostgreSQL only): it commits
        in one statement, or raises ``HeadMoved`` having written nothing, and then the caller runs
        the same work in ``transaction``. Raises ``HeadMoved`` at once when there is no head to
        assume (SQLite, a fresh process), or guarded statements are off for now."""
        if self._head is None or not self.shared or time.monotonic() < self._guarded_off_until:
            raise HeadMoved("no head to assume")
        expected = self._head

        async def send(statement: Executable, parameters: dict[str, Any]) -> Mapping[str, Any]:
            return await self._send_guarded(statement, parameters, expected)

        tx = GuardedTx(send, expected, self.engine.dialect)
        try:
            async with _mapped_errors():
                yield tx
                began = time.perf_counter()
                await tx.commit()
        except HeadMoved as exc:
            if exc.seen is not None:
                # Read from the row once the statement had waited for it: the current head,
                # whatever a NOTIFY (which any database role may send) claimed. So a forged head
                # ahead of the row is dropped here rather than refusing every batch after it.
                self._set_head(exc.seen)
            # Worth another try only against another head (the one seen, or one a NOTIFY brought
            # meanwhile): against the same one, a check failed or the head is unknown.
            exc.retry = self._head is not None and self._head != tx.expected
            if exc.retry and exc.seen is not None and exc.seen != self._own:
                # Another process committed while this one's statement was on its way (not this
                # process's other group commit: that head is its own).
                self._contended = True
            self._count_guarded("refused")
            raise
        # Committed. Nothing from here may raise: the caller would take the batch for failed and
        # store it again.
        if self.on_lock_held is not None and tx.sent:
            # The row is locked inside the statement, through its commit: at most this long.
            _quietly(self.on_lock_held, time.perf_counter() - began)
        self._count_guarded("committed")
        self._committed(tx)

    async def turn(self) -> None:
        """Before a guarded batch is decided: if this process's statements have lately collided
        with another process's and the head is still the one this process's last commit left,
        wait (at most TURN_SECONDS) for the other's commit to be heard of, so that it goes next.

        Two processes that both always have work otherwise send at once against the same head;
        one waits for the row and is refused, about every other statement (measured: 45 % of
        guarded statements refused with two brokers at 16 clients, and a fifth of the batches
        ending in the five-trip transaction). Taking turns, each decides against the head the
        other just left, and its batch holds what queued meanwhile. The other process's NOTIFY
        (its payload is the head it committed) ends the wait, so there is none unless another
        process's NOTIFY was heard within HEARD_SECONDS (audit-only commits send none). A wait
        that times out (the other had nothing to write) ends the waiting until the next
        collision. A collision with this process's own other group commit (publishes and audit
        events) is not one: they take turns on the kept connection already."""
        if not self._contended or self._own is None or self._head != self._own:
            return
        if time.monotonic() - self._heard_at > HEARD_SECONDS:
            return  # the other announces nothing (audit-only commits): its commit would go unheard
        moved = self._moved
        if not await wait_event(moved, TURN_SECONDS):
            self._contended = False
            outcome = "timed_out"
        else:
            outcome = "other_committed"
        self.turns[outcome] += 1
        if self.on_turn is not None:
            _quietly(self.on_turn, outcome)

    def _count_guarded(self, outcome: str) -> None:
        self.guarded[outcome] += 1
        if self.on_guarded is not None:
            _quietly(self.on_guarded, outcome)

    async def _send_guarded(
        self, statement: Executable, parameters: dict[str, Any], expected: Head
    ) -> Mapping[str, Any]:
        """Send a guarded statement on the connection kept for them (in autocommit, one at a
        time: they queue on the head row anyway) and return its row.

        The statement is compiled by SQLAlchemy once (``_driver_form``) and sent through the
        driver connection with its parameters as they are (they need no conversion for asyncpg:
        JSON columns travel as text already). SQLAlchemy's per-execution work for this statement
        (processing some fifty parameters, wrapping the result, the greenlet hop) took 0.3-1.2 ms
        of a 1.6-2.9 ms publish measured in-process here.

        The connection is opened on first use and replaced when the server closed it or it is
        GUARDED_RECYCLE_SECONDS old (one that died silently, behind a firewall, would otherwise
        hang a batch), and closed after any error. A connection lost once the statement was
        sent leaves its outcome unknown, as a lost COMMIT does: the batch fails (503) and is not
        run again (it may have committed)."""
        sql, names, fixed = self._driver_form(statement)
        arguments = [parameters[name] if name in parameters else fixed[name] for name in names]
        _refuse_naive(arguments)  # what UTCDateTime's bind processing does on the ordinary path
        async with self._guarded_serial:
            if self._head != expected:
                # The head moved while the batch was decided or waited its turn here (this
                # process's other group commit, or another process's NOTIFY): the statement
                # would be refused. Decided again against the newer head, without the trip.
                raise HeadMoved("the head moved while the batch was decided")
            connection = self._guarded_connection
            if connection is not None and await self._worn(connection):
                self._guarded_connection = None
                with contextlib.suppress(Exception):
                    await connection.close()
                connection = None
            if connection is None:
                connection = self._guarded_connection = await self._autocommit.connect()
                self._guarded_since = time.monotonic()
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None  # an open connection has its driver's
            try:
                row: Mapping[str, Any] = await driver.fetchrow(sql, *arguments)
            except BaseException as exc:
                self._guarded_connection = None
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close())
                closed = driver.is_closed()
                if not closed and _cannot_run(exc):
                    # Refused as a whole before writing anything (autocommit: one statement is
                    # one transaction), and likely every time for a while: the ordinary path.
                    if time.monotonic() >= self._guarded_off_until:
                        log.warning(
                            "guarded_statements_off seconds=%.0f sqlstate=%s error=%s",
                            GUARDED_OFF_SECONDS,
                            exc.sqlstate,
                            exc,
                        )
                    self._guarded_off_until = time.monotonic() + GUARDED_OFF_SECONDS
                    raise HeadMoved("guarded statements cannot run on this database") from exc
                mapped = _driver_error(exc, closed=closed)
                if mapped is exc:
                    raise
                raise mapped from exc
            return row

    def _driver_form(self, statement: Executable) -> tuple[str, list[str], dict[str, Any]]:
        """``statement`` compiled for the driver: its SQL, its parameters' names in order, and
        the values of those it fixes itself (literals). Statements are built once per shape, so
        this is computed once per shape."""
        found = self._compiled.get(statement)
        if found is None:
            assert isinstance(statement, ClauseElement)
            compiled = statement.compile(dialect=self.engine.dialect)
            assert isinstance(compiled, SQLCompiler)
            # Literals only: a parameter the caller must give and did not is a KeyError below,
            # never a NULL sent in its place.
            fixed = {n: b.effective_value for n, b in compiled.binds.items() if not b.required}
            found = (compiled.string, list(compiled.positiontup or ()), fixed)
            self._compiled[statement] = found
        return found

    async def _worn(self, connection: AsyncConnection) -> bool:
        if connection.closed or time.monotonic() - self._guarded_since > GUARDED_RECYCLE_SECONDS:
            return True
        driver = (await connection.get_raw_connection()).driver_connection
        closed = getattr(driver, "is_closed", None)  # asyncpg notices a closed socket by itself
        return bool(closed()) if callable(closed) else False

    def _committed(self, tx: Tx) -> None:
        """``tx`` committed: run its callbacks, and remember the head it left. Never raises (a
        caller would take the committed transaction for failed)."""
        if tx.head is not None:
            # Read from the row under its lock (or written there): the head as it is, not a hint.
            # It replaces whatever a NOTIFY claimed, even a head further on: a forged one (any
            # role may NOTIFY) would otherwise refuse every guarded batch for good; a real one
            # heard first costs one refused statement, which answers the current head.
            self._set_head(tx.head)
            if tx.saved:  # it moved the head (a transaction that only locked it did not)
                self._own = tx.head
        _quietly(tx.committed)

    def learn(self, head: Head) -> None:
        """Remember ``head``, a hint (a NOTIFY's), as the current one for guarded transactions,
        unless a later one is known: notifications arrive out of order, and the head moves
        forward only (events appended, counter bumped). Heads read from the row replace the
        known one whatever it is (``_set_head``)."""
        known = self._head
        if self.shared and (
            known is None or (head.audit_seq, head.change_counter) >= (known.audit_seq, known.change_counter)
        ):
            self._set_head(head)

    def _set_head(self, head: Head) -> None:
        if self.shared and head != self._head:
            self._head = head
            self._moved.set()
            self._moved = asyncio.Event()

    def learn_payload(self, payload: str, pid: int | None = None) -> None:
        """A NOTIFY's payload: the head another (or this) process just committed; ``pid`` is the
        notifying backend's."""
        if pid is not None and pid in self._own_pids:
            return  # this process's own commit: its head is remembered as it commits
        head = head_from_payload(payload)
        if head is not None:
            self._heard_at = time.monotonic()  # another process announces its commits
            self.learn(head)

    def _backend_opened(self, dbapi_connection: Any, _record: Any) -> None:
        pid = _server_pid(dbapi_connection)
        if pid is not None:
            self._own_pids.add(pid)

    def _backend_closed(self, dbapi_connection: Any, _record: Any) -> None:
        pid = _server_pid(dbapi_connection)
        if pid is not None:
            self._own_pids.discard(pid)

    def _held(self, tx: Tx) -> None:
        if tx.locked_at is not None and self.on_lock_held is not None:
            self.on_lock_held(time.perf_counter() - tx.locked_at)

    @asynccontextmanager
    async def read_transaction(self) -> AsyncIterator[Tx]:
        """A transaction for reading only; ends like ``transaction``. On SQLite it is a WAL
        snapshot on a connection of its own (``query_only``: a write in it fails), so it neither
        takes nor waits for the write lock, and writers do not wait for it."""
        async with _mapped_errors():
            if self._reader is None:
                async with self._pooled() as tx:
                    yield tx
            else:
                async with self._read_serial, _ended(Tx(self._reader.run, postgresql=False)) as tx:
                    yield tx

    @asynccontextmanager
    async def _pooled(self, *, measure: bool = False) -> AsyncIterator[Tx]:
        async with self.engine.connect() as connection:
            postgresql = self.engine.dialect.name == "postgresql"
            tx = Tx(connection.run_sync, postgresql=postgresql)
            try:
                async with _ended(tx):  # the commit (or rollback) ends the lock: measured with it
                    yield tx
            finally:
                if measure:
                    self._held(tx)
            self._committed(tx)

    async def dispose(self) -> None:
        if self._guarded_connection is not None:
            connection, self._guarded_connection = self._guarded_connection, None
            with contextlib.suppress(Exception):
                await connection.close()
        for thread in (self._writer, self._reader):
            if thread is not None:
                await thread.close()
        await self.engine.dispose()


def _driver_error(exc: BaseException, *, closed: bool) -> BaseException:
    """What a guarded statement's driver error means here, as ``_mapped_errors`` says it for
    statements sent through SQLAlchemy. Once the statement was sent, a connection that is now
    closed (whatever the exception), a lost server or an administrator's intervention (a
    terminated backend, a cancelled statement) is an outage (503): the batch fails and is not
    run again act by act, since it may have committed. A value the database refuses is the
    client's (400). Anything else is raised as it is."""
    if closed or isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
        return Unavailable("database connection lost during a write")
    if isinstance(exc, asyncpg.OperatorInterventionError):
        return Unavailable("the database stopped the statement")
    if isinstance(exc, asyncpg.PostgresError) and _data_exception(exc.sqlstate):
        return _refused_value()
    return exc


def _refuse_naive(arguments: list[Any]) -> None:
    """Refuse a naive datetime among a guarded statement's arguments (single values, or lists
    for a batch's rows), as ``models.UTCDateTime`` does for statements sent through SQLAlchemy."""
    for argument in arguments:
        for value in argument if isinstance(argument, list) else (argument,):
            if isinstance(value, datetime):
                refuse_naive(value)


def _server_pid(dbapi_connection: Any) -> int | None:
    """The PostgreSQL backend pid of a pooled connection (asyncpg's), if it has one."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    get = getattr(driver, "get_server_pid", None)
    pid = get() if callable(get) else None
    return pid if isinstance(pid, int) else None


def _cannot_run(exc: BaseException) -> TypeGuard[asyncpg.PostgresError]:
    """A guarded statement the server refuses to run at all (SQLSTATE class 42: an undefined
    function, say, or one this role may not execute), not one that ran and failed."""
    return isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "").startswith("42")


def _quietly(callback: Callable[..., object], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("after_commit_callback_failed")


@asynccontextmanager
async def _ended(tx: Tx) -> AsyncIterator[Tx]:
    """Commit when the block ends normally, else roll back (no trip when nothing ran)."""
    try:
        yield tx
        await tx.commit()
    except BaseException:
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
    except (OperationalError, InterfaceError, OSError) as exc:
        raise Unavailable("database unavailable") from exc
    except DBAPIError as exc:
        # The asyncpg dialect raises a plain DBAPIError for PostgreSQL's data exceptions.
        if _data_exception(getattr(exc.orig, "sqlstate", None)):
            raise _refused_value() from exc
        raise


def _data_exception(sqlstate: object) -> bool:
    """SQLSTATE class 22: a value the database refuses (too long, out of range, not encodable)."""
    return isinstance(sqlstate, str) and sqlstate.startswith("22")


def _refused_value() -> BadRequest:
    return BadRequest("the request holds a value that cannot be stored", code="invalid_value")
