"""The hot path's transactions on SQLite, without SQLAlchemy's async layer.

Publishes and delivery events (one transaction per batch, services.groupcommit), reads by id
and refusals with their audit events run here (``Database.write_transaction``). Through an
AsyncSession such a transaction costs about 1.3 ms of event-loop CPU on the 2-core
machine, mostly SQLAlchemy's asynchronous execution machinery; SQLite's own work, commit and
fsync included, is a fraction of that. Here the same transaction runs on a connection of its own
in at most one trip to the SQLite thread per read (with ``BEGIN IMMEDIATE`` and any queued writes
in front of it) and one trip for the remaining writes and the commit.

Nothing about the schema is restated: the statements are the Core statements of ``repos``,
compiled once by the engine's own dialect, and every value passes through its column type's own
bind and result processors, so the rows written and read are exactly those SQLAlchemy would
write and read (the test suite reads every row this writes through SQLAlchemy).
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from broker.domain.alliances import Directory
from broker.domain.records import AuditEvent, Head, NodeRecord, ReportRecord
from broker.storage import repos

T = TypeVar("T")
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Prepared:
    compiled: SQLCompiler
    order: tuple[str, ...]
    binds: tuple[Processor, ...]
    row: Callable[..., Any] | None  # result row factory (select only)
    results: tuple[Processor, ...]
    direct: bool  # every parameter comes from the row (no literals to fill in)

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = params if self.direct else self.compiled.construct_params(dict(params))
        return tuple(
            value if proc is None else proc(value)
            for value, proc in zip((values[name] for name in self.order), self.binds, strict=True)
        )

    def decode(self, raw: Sequence[Any]) -> Any:
        assert self.row is not None
        return self.row(
            *(value if proc is None else proc(value) for value, proc in zip(raw, self.results, strict=True))
        )


def _prepare(statement: Any, dialect: Dialect, keys: tuple[str, ...] | None) -> _Prepared:
    compiled = statement.compile(dialect=dialect, column_keys=None if keys is None else list(keys))
    assert isinstance(compiled, SQLCompiler)
    order = tuple(compiled.positiontup or ())
    binds = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order)
    direct = keys is not None and set(order) <= set(keys)
    if keys is not None:
        # SQLAlchemy fills Python-side column defaults at execution, not in construct_params:
        # a parameter that is neither in the rows nor a literal would silently go in as NULL.
        missing = [n for n in order if n not in keys and compiled.binds[n].value is None]
        if missing:
            raise TypeError(f"sqlite_writer: no value for {missing} (a Python-side default?)")
    columns = list(getattr(statement, "selected_columns", ()))
    if not columns:
        return _Prepared(compiled, order, binds, None, (), direct)
    row = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return _Prepared(compiled, order, binds, row, results, direct)


class SqliteWriter:
    """Owns one SQLite connection (its own thread, via aiosqlite) for write transactions.

    The caller serialises transactions in the process (``Database`` holds its SQLite lock);
    other processes queue on ``BEGIN IMMEDIATE`` and the busy timeout, as everywhere else.
    """

    def __init__(self, path: str, dialect: Dialect, pragmas: Sequence[str]) -> None:
        self._path = path
        self._dialect = dialect
        self._pragmas = tuple(pragmas)
        self._connection: aiosqlite.Connection | None = None
        self._prepared: dict[tuple[int, tuple[str, ...] | None], _Prepared] = {}

    def prepared(self, statement: Executable, keys: tuple[str, ...] | None = None) -> _Prepared:
        found = self._prepared.get((id(statement), keys))
        if found is None:
            found = self._prepared[(id(statement), keys)] = _prepare(statement, self._dialect, keys)
        return found

    async def _connect(self) -> aiosqlite.Connection:
        if self._connection is None:
            connection = aiosqlite.connect(self._path, isolation_level=None)
            connection._thread.daemon = True  # never keep the process alive
            opened = await connection
            for pragma in self._pragmas:
                await opened.execute(pragma)
            self._connection = opened
        return self._connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteWriteTx]:
        """Commit when the block ends normally, else roll back."""
        tx = SqliteWriteTx(self, await self._connect())
        try:
            yield tx
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


class SqliteWriteTx:
    """The write-side subset of ``repos.Tx`` (see ``repos.WriteTx``) on a SqliteWriter."""

    def __init__(self, writer: SqliteWriter, connection: aiosqlite.Connection) -> None:
        self._writer = writer
        self._connection = connection
        self._begun = False
        self._queued: list[tuple[str, list[tuple[Any, ...]]]] = []

    # -- the trips --------------------------------------------------------------------------
    async def _trip(self, last: Callable[[sqlite3.Connection], T]) -> T:
        """One call on the SQLite thread: begin if not yet, run what is queued, then ``last``."""
        begin, self._begun = not self._begun, True
        queued, self._queued = self._queued, []
        connection = self._connection

        def work() -> T:
            raw = connection._conn
            if begin:
                if raw.in_transaction:  # left open by a caller cancelled mid-transaction
                    raw.rollback()
                raw.execute("BEGIN IMMEDIATE")
            for sql, rows in queued:
                raw.executemany(sql, rows)
            return last(raw)

        result: T = await connection._execute(work)  # type: ignore[no-untyped-call]
        return result

    async def _read(self, statement: Executable, params: Mapping[str, Any] | None = None) -> list[Any]:
        prepared = self._writer.prepared(statement)
        sql, args = prepared.compiled.string, prepared.args(params or {})
        rows = await self._trip(lambda raw: raw.execute(sql, args).fetchall())
        return [prepared.decode(r) for r in rows]

    def _write(self, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            prepared = self._writer.prepared(statement, tuple(rows[0]))
            self._queued.append((prepared.compiled.string, [prepared.args(r) for r in rows]))

    async def commit(self) -> None:
        if self._begun or self._queued:
            await self._trip(lambda raw: raw.commit())

    async def rollback(self) -> None:
        self._queued = []
        if not self._begun:
            return
        connection = self._connection

        def undo() -> None:
            raw = connection._conn
            if raw.in_transaction:
                raw.rollback()

        await connection._execute(undo)  # type: ignore[no-untyped-call]

    # -- repos.WriteTx ----------------------------------------------------------------------
    async def lock_head(self) -> Head:
        return repos.head_of((await self._read(repos.LOCK_HEAD))[0])

    async def change_counter(self) -> int:
        return int((await self._read(repos.HEAD_STATE))[0].change_counter)

    async def save_head(self, head: Head) -> None:
        self._write(repos.SAVE_HEAD, [repos.head_values(head)])

    async def load_directory(self) -> Directory:
        alliances = await self._read(repos.ALLIANCES)
        return repos.directory_of(alliances, await self._read(repos.MEMBERSHIPS))

    async def insert_reports(self, reports: Sequence[tuple[ReportRecord, str | None]]) -> None:
        rows, topics = repos.report_rows(reports)
        self._write(repos.INSERT_REPORTS, rows)
        self._write(repos.INSERT_TOPICS, topics)

    async def insert_events(self, events: Sequence[AuditEvent]) -> None:
        self._write(repos.INSERT_EVENTS, repos.event_rows(events))

    async def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._write(repos.INSERT_NODES, repos.node_rows(nodes))

    async def report(self, report_id: str) -> ReportRecord | None:
        rows = await self._read(repos.REPORT_BY_ID, {"id": report_id})
        return repos.report_of(rows[0]) if rows else None

    async def report_by_idempotency_key(self, *, node: str, key: str) -> ReportRecord | None:
        rows = await self._read(repos.REPORT_BY_KEY, {"node": node, "key": key})
        return repos.report_of(rows[0]) if rows else None

    async def node(self, node_id: str) -> NodeRecord | None:
        rows = await self._read(repos.NODE_BY_ID, {"id": node_id})
        return repos.node_of(rows[0]) if rows else None

    async def reports_since(self, *, node: str, since: datetime) -> int:
        rows = await self._read(repos.RECENT_BY_NODE, {"node": node, "since": since})
        return int(rows[0][0])

    async def notify_change(self) -> None:
        """Other processes on SQLite learn of changes by polling the head (nothing to send)."""
