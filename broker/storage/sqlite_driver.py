"""SQLAlchemy's aiosqlite dialect, with one trip to the SQLite thread per statement.

aiosqlite runs every call on its own thread, and each call is a round trip: queue the call, wake
the thread, wake the event loop with the result. SQLAlchemy's adapter makes four of them per
statement (open a cursor, execute, fetch, close) and one more to roll back every connection the
pool takes back, even one with no transaction open. On a 2-core machine a trip costs 100-200 us,
so a publish spent more time crossing threads than in SQLite. Here a statement is one trip
(execute, fetch and close together) and a rollback with no open transaction is none.

Writes whose results nobody reads can go further: a statement marked with the execution
option ``PIPELINED``, and the ``BEGIN IMMEDIATE`` that opens every transaction, are queued on the
connection and run on the SQLite thread just before the next statement, or the commit, in the
same trip: begin and lock the head in one trip; every write and the commit in another.
Order and atomicity are unchanged; only an error from a queued write surfaces at the next
statement or at the commit, where it fails the transaction all the same. A marked statement's
row count and last row id are unknown.

``create_engine`` selects this dialect for ``sqlite+aiosqlite`` URLs; behaviour is otherwise
SQLAlchemy's own (same SQL, same types, same errors).
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

NAME = "broker_aiosqlite"
# Execution option: run this statement with the next trip (see above). Ignored by other dialects.
PIPELINED = "broker_pipelined"

_Outcome = tuple[Any, int, int | None, list[Any]]
_Queued = tuple[str, Any, bool]  # statement, parameters, executemany
BEGIN = "BEGIN IMMEDIATE"


def _execute(
    target: sqlite3.Connection | sqlite3.Cursor, operation: str, parameters: Any, many: bool
) -> None:
    if many:
        target.executemany(operation, parameters)
    elif parameters is None:
        target.execute(operation)
    else:
        target.execute(operation, parameters)


def _run_queued(raw: sqlite3.Connection, queued: list[_Queued]) -> None:  # on the SQLite thread
    for operation, parameters, many in queued:
        _execute(raw, operation, parameters, many)


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement runs, is fetched and closed in one call on the SQLite thread."""

    __slots__ = ("_defer", "_description", "_lastrowid", "_rowcount")
    _awaitable_cursor_close = False  # there is no driver cursor left open to close

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._defer = False  # set by the dialect for a statement marked PIPELINED

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        raise NotImplementedError("this cursor fetches every row at once")

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._submit(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        self._submit(operation, seq_of_parameters, many=True)

    def _submit(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        if self._defer:
            connection.queued.append((operation, parameters, many))
            # SQLAlchemy's AsyncConnection insists that a statement awaits something.
            await_(asyncio.sleep(0))
            return
        try:
            await_(self._run(operation, parameters, many=many))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, operation: str, parameters: Any, *, many: bool) -> None:
        adapted: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        queued, adapted.queued = adapted.queued, []

        def statement() -> _Outcome:  # on the SQLite thread
            raw = connection._conn
            _run_queued(raw, queued)
            cursor = raw.cursor()
            try:
                _execute(cursor, operation, parameters, many)
                rows = cursor.fetchall() if cursor.description else []
                return cursor.description, cursor.rowcount, cursor.lastrowid, rows
            finally:
                cursor.close()

        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await connection._execute(statement)  # type: ignore[no-untyped-call]
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows)

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        raise NotImplementedError("SQLite has no result sets after the first")


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("queued",)
    _cursor_cls = OneTripCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.queued: list[_Queued] = []  # statements waiting for the next trip

    def _in_transaction(self) -> bool:
        raw: sqlite3.Connection | None = cast(aiosqlite.Connection, self._connection)._connection
        return raw is not None and raw.in_transaction

    def commit(self) -> None:
        queued, self.queued = self.queued, []
        if all(operation == BEGIN for operation, _, _ in queued):
            if self._in_transaction():
                super().commit()
            return  # a transaction that never ran a statement has nothing to commit
        connection = cast(aiosqlite.Connection, self._connection)

        def queued_then_commit() -> None:  # on the SQLite thread
            raw = connection._conn
            _run_queued(raw, queued)
            raw.commit()

        try:
            await_(connection._execute(queued_then_commit))  # type: ignore[no-untyped-call]
        except Exception as error:
            self._handle_exception(error)

    def rollback(self) -> None:
        self.queued = []  # never run: nothing of them to undo
        if not self._in_transaction():
            return  # nothing to undo: spare the trip (the pool rolls back every returned connection)
        super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy does: never keep the process alive
        return OneTripConnection(self, await_(connection))


class Dialect(SQLiteDialect_aiosqlite):
    driver = NAME
    supports_statement_cache = True  # same SQL as the parent: its compiled cache applies

    @classmethod
    def import_dbapi(cls) -> OneTripDBAPI:
        return OneTripDBAPI(aiosqlite, sqlite3)

    def do_begin(self, dbapi_connection: Any) -> None:
        """Every transaction takes the write lock at once (``BEGIN IMMEDIATE``), so writers queue
        on it instead of failing to upgrade a read lock; queued, it costs no trip of its own."""
        adapted = getattr(dbapi_connection, "dbapi_connection", dbapi_connection)
        adapted.queued.append((BEGIN, None, False))

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        _mark(cursor, context)
        super().do_execute(cursor, statement, parameters, context)  # type: ignore[no-untyped-call]

    def do_executemany(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        _mark(cursor, context)
        super().do_executemany(cursor, statement, parameters, context)  # type: ignore[no-untyped-call]


def _mark(cursor: Any, context: Any) -> None:
    if context is not None and context.execution_options.get(PIPELINED) and isinstance(cursor, OneTripCursor):
        cursor._defer = True


def register() -> str:
    """Register the dialect with SQLAlchemy (idempotent); return the URL drivername to use."""
    from sqlalchemy.dialects import registry

    registry.register(f"sqlite.{NAME}", __name__, "Dialect")
    return f"sqlite+{NAME}"
