"""A database transaction's plumbing: one trip per call to the connection, queued writes run
at the front of the next trip or of the commit, callbacks after a commit.

Each query is a plain synchronous SQLAlchemy Core body run on the transaction's connection, in
one trip (``TxBase.run``): on SQLite to the thread that owns the connection, on PostgreSQL
through ``AsyncConnection.run_sync``. The same code serves both engines. A queued write's error
surfaces at the next trip or at the commit and fails the transaction alike. The queries
themselves are ``storage.repos.Tx``'s methods, and functions on a ``Tx`` in the modules of
``storage`` named after their concern.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import Executable
from sqlalchemy.engine import Connection

from broker.domain.records import Head
from broker.storage import statements as st
from broker.storage.combined import Write, flush

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
        return int(await self.run(lambda c: c.execute(statement, params).rowcount))

    async def notify_change(self) -> None:
        """On PostgreSQL, wake the other broker processes when this transaction commits
        (LISTEN/NOTIFY delivers at commit, never for a rollback); on SQLite they poll."""
        if self._postgresql:
            self._queued.append(Write(st.NOTIFY, []))


async def _nothing() -> None:
    pass
