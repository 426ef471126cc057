"""Repositories: the transaction object with the queries the services need.

Records (``broker.domain.records``) go in and come out; no row or ORM object leaves here. Each
method is a plain synchronous SQLAlchemy Core body run on the transaction's connection, in one
trip (``storage.transaction``); the same code serves both engines. ``Tx`` is one interface
assembled from one module per concern (``storage.queries``); the head row, which orders every
write, is kept here.

Writes whose results nobody reads (the head, new reports, audit events, Merkle nodes, NOTIFY)
are queued and run at the front of the next trip, or of the commit (``storage.combined``): a
publish is one trip to lock the head and one for its writes and the commit.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection

from broker.domain.records import Head, ReportRecord
from broker.storage import statements as st
from broker.storage.queries.audit import AuditQueries
from broker.storage.queries.cursors import CursorQueries
from broker.storage.queries.directory import DirectoryQueries
from broker.storage.queries.reports import ReportQueries

# Re-exported for storage/listen.py and storage/collections.py.
from broker.storage.statements import CHANGE_CHANNEL as CHANGE_CHANNEL
from broker.storage.statements import report_of as report_of


@dataclass
class PublishReads:
    """What ``Tx.lock_head_for_publish`` read under the head lock."""

    head: Head
    by_key: dict[tuple[str, str], ReportRecord] = field(default_factory=dict)
    by_id: dict[str, ReportRecord] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)


class Tx(ReportQueries, DirectoryQueries, CursorQueries, AuditQueries):
    """One database transaction. Created only by ``Database``."""

    # -- the head row: sequence numbers, audit chain head, change counter ----------------
    async def lock_head(self) -> Head:
        """Lock the head row until commit (on SQLite, BEGIN IMMEDIATE already serialised the
        writers) and return it."""
        row = await self._first(st.LOCK_HEAD)
        if self.locked_at is None:
            self.locked_at = time.perf_counter()
        return st.head_of(row)

    async def lock_head_for_publish(
        self,
        *,
        keys: Collection[tuple[str, str]],
        ids: Collection[str],
        nodes: Collection[str],
        since: datetime | None,
        limit: int | None = None,
    ) -> PublishReads:
        """``lock_head``, and in the same trip, under the lock, what a batch of publishes must
        check: the reports already stored under these (node, idempotency key) pairs and ids, and
        (``since`` given) how many reports each node published after ``since``. One trip to take
        the lock and read, one for the writes and the commit: the lock is held for two.

        ``limit`` is unused (the caller compares the counts itself); it is still accepted only
        because services/reports.py passes it, and goes when that argument does."""

        def body(c: Connection) -> PublishReads:
            found = PublishReads(st.head_of(c.execute(st.LOCK_HEAD).first()))
            # Everything below is read by statements of its own, after the lock was granted: a
            # statement's snapshot is taken before it waits for the lock, so a count inside the
            # locking statement would miss what the transactions queued ahead committed.
            for node, key in keys:
                row = c.execute(st.REPORT_BY_KEY, {"node": node, "key": key}).first()
                if row is not None:
                    found.by_key[(node, key)] = st.report_of(row)
            for report_id in ids:
                row = c.execute(st.REPORT_BY_ID, {"id": report_id}).first()
                if row is not None:
                    found.by_id[report_id] = st.report_of(row)
            if since is not None:
                for node in nodes:
                    found.recent[node] = int(
                        c.execute(st.RECENT_BY_NODE, {"node": node, "since": since}).scalar_one()
                    )
            return found

        found = await self.run(body)
        if self.locked_at is None:
            self.locked_at = time.perf_counter()
        return found

    async def change_counter(self) -> int:
        return (await self.head_state())[1]

    async def decision_state(self) -> tuple[int, int]:
        """(change counter, report changes): what a decision made in this transaction is made at."""
        _, counter, report_changes = await self.head_state()
        return counter, report_changes

    async def head_state(self) -> tuple[int, int, int]:
        """(last report sequence, change counter, report changes), without locking: what the
        hub watches."""
        row = await self._first(st.HEAD_STATE)
        return int(row[0]), int(row[1]), int(row[2])

    async def save_head(self, head: Head) -> None:
        self._queue(st.SAVE_HEAD, st.head_values(head))


# What a group-committed act may do in its transaction: one implementation serves every engine.
WriteTx = Tx
