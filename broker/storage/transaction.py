"""A database transaction's plumbing: one trip per call to the connection, queued writes run
at the front of the next trip or of the commit (on PostgreSQL as one combined statement),
callbacks after a commit.

Each query is a plain synchronous SQLAlchemy Core body run on the transaction's connection, in
one trip (``TxBase.run``): on SQLite to the thread that owns the connection, on PostgreSQL
through ``AsyncConnection.run_sync``. The same code serves both engines. Writes whose results
nobody reads (the head, new reports, audit events, Merkle nodes, NOTIFY) are queued; a queued
write's error surfaces at the next trip or at the commit and fails the transaction alike. The
queries themselves are ``storage.repos.Tx``'s methods, and functions on a ``Tx`` in the modules
of ``storage`` named after their concern.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Executable,
    Insert,
    Select,
    String,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

from broker.domain.records import Head
from broker.storage import statements as st

T = TypeVar("T")
log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs a body on the transaction's connection and returns what it returned (one trip)."""

    def __call__(self, body: Callable[[Connection], T], /) -> Awaitable[T]: ...


class TxBase:
    """What every query of a transaction runs on. Created only through ``Database``."""

    def __init__(self, run: Runner, *, postgresql: bool) -> None:
        self._run = run
        self._postgresql = postgresql
        self._queued: list[Write] = []
        self.tripped = False  # whether anything ran on the connection (then there is work to end)
        # When this transaction got the write lock (perf_counter): on PostgreSQL the head row's
        # lock, taken by ``lock_head``; on SQLite the database's write lock, set by ``Database``.
        self.locked_at: float | None = None
        self._committed: list[Callable[[], None]] = []
        self._head: Head | None = None  # as locked, then as saved (storage.repos.Tx.lock_head)
        self.wrote = False  # whether a row was written (``write``) or queued (``queue``)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction has committed (never if it does not)."""
        self._committed.append(callback)

    def committed(self) -> None:
        """Called by ``Database`` when the commit succeeded. Never raises: a caller would take the
        committed transaction for failed."""
        callbacks, self._committed = self._committed, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("after_commit_callback_failed")

    async def run(self, body: Callable[[Connection], T]) -> T:
        """Run ``body(connection)`` in this transaction, after the queued writes, in one trip.

        ``body`` is synchronous SQLAlchemy: it must not commit, roll back or keep the
        connection."""
        queued, self._queued = self._queued, []
        fresh, self.tripped = not self.tripped, True

        def trip(connection: Connection) -> T:
            if fresh and connection.in_transaction():  # left open by an abandoned transaction
                connection.rollback()
            flush(connection, queued, combine=self._postgresql)
            return body(connection)

        return await self._run(trip)

    async def commit(self) -> None:
        """Run the queued writes and commit (no trip when nothing ran and nothing is queued)."""
        if self._queued or self.tripped:
            await self.run(Connection.commit)

    def rollback(self) -> Awaitable[None]:
        """Drop the queued writes and roll back what ran. Not a coroutine: the rollback is
        handed to the runner at the call (on SQLite: queued to the thread at once)."""
        self._queued = []
        return self._run(Connection.rollback) if self.tripped else _nothing()

    def queue(self, statement: Executable, rows: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
        """Queue a write whose result nobody reads (no trip now; nothing for no rows)."""
        if rows:
            self.wrote = True  # it runs before the next trip's statement (``lock_head``'s too)
            self._queued.append(Write(statement, [rows] if isinstance(rows, dict) else list(rows)))

    async def rows(self, statement: Executable, params: dict[str, Any] | None = None) -> list[Any]:
        return await self.run(lambda c: list(c.execute(statement, params)))

    async def row(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        """The first row, or None."""
        return await self.run(lambda c: c.execute(statement, params).first())

    async def scalar(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        return await self.run(lambda c: c.execute(statement, params).scalar())

    async def execute(self, statement: Executable, params: Any = None) -> int:
        """Run a write now; the rows it matched."""
        return int(await self.write(lambda c: c.execute(statement, params).rowcount))

    async def write(self, body: Callable[[Connection], T]) -> T:
        """``run`` for a body that writes rows (noted: ``storage.repos.Tx.lock_head``)."""
        self.wrote = True
        return await self.run(body)

    async def notify_change(self) -> None:
        """On PostgreSQL, wake the other broker processes when this transaction commits
        (LISTEN/NOTIFY delivers at commit, never for a rollback); on SQLite they poll."""
        if self._postgresql:
            self._queued.append(Write(st.NOTIFY, []))


async def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Write:
    """A queued write: ``statement`` with its rows (an insert or the head's update), or the
    NOTIFY (no rows)."""

    statement: Executable
    rows: list[dict[str, Any]]


def flush(connection: Connection, writes: Sequence[Write], *, combine: bool) -> None:
    """Run the queued writes in order. On PostgreSQL (``combine``) they go as one statement: each
    insert a data-modifying WITH clause reading its rows from one array parameter per column
    (``unnest``), the head's update another, the NOTIFY the statement's own SELECT. PostgreSQL runs
    every data-modifying clause once, in the statement's snapshot, and checks constraints at its
    end; the statement's text depends only on which tables and columns are written, never on the
    row counts, so it is built and compiled once per shape. One round trip instead of one per
    write."""
    shape = _shape(writes) if combine and len(writes) > 1 else None
    if shape is None:
        for write in writes:
            if write.rows:
                connection.execute(write.statement, write.rows)
            else:
                connection.execute(write.statement)
        return
    connection.execute(_combined(shape), _parameters(connection.dialect, writes, shape))


def _parameters(dialect: Dialect, writes: Sequence[Write], shape: Shape) -> dict[str, Any]:
    """The combined statement's parameters: one array per inserted column, the head's values."""
    parameters: dict[str, Any] = {}
    for index, (write, (kind, _keys)) in enumerate(zip(writes, shape, strict=True)):
        if kind == "head":
            parameters.update({f"w{index}_{k}": v for k, v in write.rows[0].items()})
        elif kind not in ("skip", "notify"):
            table = st.COMBINABLE[kind]
            for key in write.rows[0]:
                values = [row[key] for row in write.rows]
                if isinstance(table.c[key].type, JSON):  # sent as text (a list would nest the array)
                    values = _json_texts(dialect, table.c[key].type, values)
                parameters[f"w{index}_{key}"] = values
    return parameters


def _json_texts(dialect: Dialect, kind: TypeEngine[Any], values: list[Any]) -> list[Any]:
    """``values`` as the column type would serialise them (its bind processor)."""
    process = kind.dialect_impl(dialect).bind_processor(dialect)
    return [process(v) for v in values] if process is not None else [json.dumps(v) for v in values]


Shape = tuple[tuple[str, tuple[str, ...]], ...]


def _shape(writes: Sequence[Write]) -> Shape | None:
    """What the combined statement for ``writes`` depends on: per write, its table and columns
    (``notify`` for the NOTIFY, ``skip`` for a head update a later one supersedes). None when the
    writes cannot be combined."""
    last_save = max((i for i, w in enumerate(writes) if w.statement is st.SAVE_HEAD), default=-1)
    shape: list[tuple[str, tuple[str, ...]]] = []
    for index, write in enumerate(writes):
        if not write.rows:
            shape.append(("notify", ()))
        elif write.statement is st.SAVE_HEAD:
            # A row may be updated once per statement; each save sets every column of the head,
            # so the last one leaves what sequential execution would have.
            shape.append(("head" if index == last_save else "skip", tuple(write.rows[0])))
        elif isinstance(write.statement, Insert) and write.statement.table.name in st.COMBINABLE:
            keys = tuple(write.rows[0])
            if any(tuple(row) != keys for row in write.rows):
                return None
            shape.append((write.statement.table.name, keys))
        else:
            return None
    return tuple(shape)


def _unnest(name: str, kind: TypeEngine[Any]) -> ColumnElement[Any]:
    """One column's rows from its array parameter. JSON values travel as text and are cast
    back: an array of JSON lists would otherwise be read as a two-dimensional array."""
    if isinstance(kind, JSON):
        return cast(func.unnest(bindparam(name, type_=ARRAY(Text)), type_=Text), kind)
    wire = _wire(kind)
    return func.unnest(bindparam(name, type_=ARRAY(wire)), type_=wire)


def _wire(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type a value is bound as: strings as unbounded text, so the column's own length is
    checked on assignment (an over-long value is refused, as one by one); an explicit cast to
    ``varchar(n)`` would truncate it silently."""
    return Text() if isinstance(kind, String) else kind


@functools.lru_cache(maxsize=512)
def _combined(shape: Shape) -> Executable:
    """The statement for the writes of ``shape``."""
    clauses = []
    notify = False
    for index, (kind, keys) in enumerate(shape):
        if kind == "head":
            values = {k: bindparam(f"w{index}_{k}", type_=_wire(st.HEAD.c[k].type)) for k in keys}
            clauses.append(update(st.HEAD).where(st.HEAD.c.id == 1).values(values).cte(f"w{index}"))
        elif kind == "notify":
            notify = True
        elif kind != "skip":
            table = st.COMBINABLE[kind]
            rows = select(*(_unnest(f"w{index}_{k}", table.c[k].type) for k in keys))
            clauses.append(insert(table).from_select(list(keys), rows).cte(f"w{index}"))
    final: Select[Any] = st.NOTIFY if notify else select(literal(1))
    return final.add_cte(*clauses)
