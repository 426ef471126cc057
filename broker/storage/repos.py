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


@dataclass
class PublishReads:
    """What ``Tx.publish_reads`` read under the head lock."""

    head: Head
    by_key: dict[tuple[str, str], ReportRecord] = field(default_factory=dict)
    by_id: dict[str, ReportRecord] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)


class Tx(ReportQueries, DirectoryQueries, CursorQueries, AuditQueries):
    """One database transaction. Created only by ``Database``."""

    # -- the head row: sequence numbers, audit chain head, change counter ----------------
    async def lock_head(self) -> Head:
        """Lock the head row until commit (on SQLite, BEGIN IMMEDIATE already serialised the
        writers) and return it. Locked once: later calls answer the head as this transaction
        has it (``save_head`` included) without a trip."""
        if self._head is None:
            self._head = st.head_of(await self._first(st.LOCK_HEAD))
            if self.locked_at is None:
                self.locked_at = time.perf_counter()
        return self._head

    async def publish_reads(
        self,
        *,
        keys: Collection[tuple[str, str]],
        ids: Collection[str],
        nodes: Collection[str],
        since: datetime | None,
    ) -> PublishReads:
        """``lock_head``, then, under the lock, what a batch of publishes must check: the
        reports already stored under these (node, idempotency key) pairs and ids (one statement),
        and (``since`` given) how many reports each node published after ``since`` (another).
        No trip beyond the lock's when there is nothing to read.

        The reads are statements of their own, after the lock was granted: a statement's
        snapshot is taken before it waits for the lock, so a read inside the locking statement
        would miss what the transactions queued ahead committed."""

        def body(c: Connection) -> PublishReads:
            found = PublishReads(head)
            if keys or ids:
                wanted = {"keys": sorted(keys), "ids": sorted(ids)}
                for row in c.execute(st.REPORTS_BY_KEYS_OR_IDS, wanted):
                    report = st.report_of(row)
                    if report.id in ids:
                        found.by_id[report.id] = report
                    if (report.originator_node, row.idempotency_key) in keys:
                        found.by_key[(report.originator_node, row.idempotency_key)] = report
            if since is not None:
                found.recent = _recent(c, nodes, since)
            return found

        head = await self.lock_head()
        return await self.run(body) if keys or ids or since is not None else PublishReads(head)

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
        self._head = head


def _recent(connection: Connection, nodes: Collection[str], since: datetime) -> dict[str, int]:
    rows = connection.execute(st.RECENT_BY_NODES, {"nodes": sorted(nodes), "since": since})
    return dict.fromkeys(nodes, 0) | {str(node): int(n) for node, n in rows}
