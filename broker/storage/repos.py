"""``Tx``: the transaction with the queries the services need.

Records (``broker.domain.records``) go in and come out; no row or ORM object leaves here. Each
method is a plain synchronous SQLAlchemy Core body run on the transaction's connection, in one
trip (``storage.transaction``); the same code serves both engines. Writes nobody reads back are
queued: a publish is one trip to lock the head and one for its writes and the commit.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from broker.domain.alliances import Alliance, Directory, Membership
from broker.domain.records import AuditEvent, Checkpoint, Head, NodeRecord, ReportRecord
from broker.storage import statements as st
from broker.storage.transaction import TxBase

R, E, C, N = st.REPORTS.c, st.EVENTS.c, st.CURSORS.c, st.NODES.c
WITHDRAWN = or_(R.recalled_at.is_not(None), R.erased_at.is_not(None))
# What ``update_node`` changes; identity, token, revocation and foreign origin have acts of their own.
NODE_SETTINGS = (
    "clearance",
    "caveats",
    "roles",
    "ed25519_public_key",
    "x25519_public_key",
    "tls_fingerprint",
    "audience",
    "origins",
)


class LockOrder(RuntimeError):
    """A transaction wanted the head after writing a row (a programming error: see ``lock_head``)."""


@dataclass
class PublishReads:
    """What ``Tx.publish_reads`` read under the head lock."""

    head: Head
    by_key: dict[tuple[str, str], ReportRecord] = field(default_factory=dict)
    by_id: dict[str, ReportRecord] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)


class Tx(TxBase):
    """One database transaction. Created only by ``Database``."""

    # -- the head row: sequence numbers, audit chain head, change counter ----------------
    async def lock_head(self) -> Head:
        """Lock the head row until commit (on SQLite, BEGIN IMMEDIATE already serialised the
        writers) and return it. Locked once: later calls answer the head as this transaction
        has it (``save_head`` included) without a trip.

        The head is the first row a writing transaction locks: an import, a publish and every
        audited act take it before the rows they change. A transaction that wrote a row and then
        wanted the head would deadlock on PostgreSQL with one that holds the head and wants that
        row, so that order is refused here (``LockOrder``), on both engines, where tests see it."""
        if self._head is None:
            if self.wrote:
                raise LockOrder("the head is locked before any row is written (lock order)")
            self._head = st.head_of(await self.row(st.LOCK_HEAD))
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
                rows = c.execute(st.RECENT_BY_NODES, {"nodes": sorted(nodes), "since": since})
                found.recent = dict.fromkeys(nodes, 0) | {str(node): int(n) for node, n in rows}
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
        row = await self.row(st.HEAD_STATE)
        return int(row[0]), int(row[1]), int(row[2])

    async def save_head(self, head: Head) -> None:
        self.queue(st.SAVE_HEAD, st.head_values(head))
        self._head = head

    # -- reports, their topics and TAXII's object index rows; which were withdrawn ---------
    async def insert_reports(self, reports: Sequence[tuple[ReportRecord, str | None]]) -> None:
        """Insert reports (with their idempotency keys) and their topics (queued)."""
        rows, topics = st.report_rows(reports)
        self.queue(st.INSERT_REPORTS, rows)
        self.queue(st.INSERT_TOPICS, topics)

    async def insert_objects(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of TAXII's object index (``models.TaxiiObjectRow``), queued."""
        self.queue(st.INSERT_OBJECTS, rows)

    async def report(self, report_id: str) -> ReportRecord | None:
        row = await self.row(st.REPORT_BY_ID, {"id": report_id})
        return None if row is None else st.report_of(row)

    async def reports(self, *where: ColumnElement[bool], limit: int | None = None) -> list[ReportRecord]:
        """The reports matching ``where``, in sequence order, at most ``limit``."""
        query = select(st.REPORTS).where(*where).order_by(R.seq).limit(limit)
        return [st.report_of(row) for row in await self.rows(query)]

    async def reports_after(self, *, after: int, topics: Sequence[str], limit: int) -> list[ReportRecord]:
        if not topics:
            return await self.reports(R.seq > after, limit=limit)
        tagged = select(st.TOPICS.c.report_seq).where(st.TOPICS.c.topic.in_(topics))
        return await self.reports(R.seq > after, R.seq.in_(tagged), limit=limit)

    async def set_recalled(self, report_id: str, *, at: datetime) -> None:
        await self.execute(update(st.REPORTS).where(R.id == report_id).values(recalled_at=at))

    async def withdrawn(self, ids: Collection[str]) -> dict[str, str]:
        """Of the reports ``ids``, those recalled or erased: id -> ``erased`` or ``recalled``."""
        if not ids:
            return {}
        rows = await self.rows(select(R.id, R.erased_at).where(R.id.in_(sorted(ids)), WITHDRAWN))
        return {str(row.id): "recalled" if row.erased_at is None else "erased" for row in rows}

    async def withdrawn_after(self, after: int) -> dict[int, tuple[datetime | None, datetime | None]]:
        """Every report above ``after`` that was recalled or erased: (recalled, erased) by sequence."""
        rows = await self.rows(select(R.seq, R.recalled_at, R.erased_at).where(R.seq > after, WITHDRAWN))
        return {int(row.seq): (row.recalled_at, row.erased_at) for row in rows}

    async def withdrawn_since(self, since: datetime, *, upto: int) -> list[ReportRecord]:
        """Reports up to sequence ``upto`` recalled or erased at or after ``since``, by sequence:
        what a stream that has passed them must send recall notices for."""
        return await self.reports(R.seq <= upto, or_(R.recalled_at >= since, R.erased_at >= since))

    # -- alliances, memberships and nodes ---------------------------------------------------
    async def load_directory(self) -> Directory:
        def body(c: Connection) -> Directory:
            return st.directory_of(list(c.execute(st.ALLIANCES)), list(c.execute(st.MEMBERSHIPS)))

        return await self.run(body)

    async def count_alliances(self) -> int:
        return int(await self.scalar(select(func.count()).select_from(st.ALLIANCE_TABLE)))

    async def insert_alliance(self, alliance: Alliance, *, at: datetime) -> None:
        values = st.values_of(alliance, st.ALLIANCE_TABLE, created_at=at)
        await self.execute(insert(st.ALLIANCE_TABLE), values)

    async def insert_membership(self, membership: Membership) -> None:
        values = st.values_of(membership, st.MEMBERSHIP_TABLE, alliance_id=membership.alliance)
        await self.execute(insert(st.MEMBERSHIP_TABLE), values)

    async def close_membership(self, *, alliance: str, nation: str, at: datetime) -> bool:
        """Set ``left`` on the open membership period; False when there is none."""
        m = st.MEMBERSHIP_TABLE.c
        open_period = (m.alliance_id == alliance, m.nation == nation, m.left.is_(None))
        return bool(await self.execute(update(st.MEMBERSHIP_TABLE).where(*open_period).values(left=at)))

    async def insert_node(self, node: NodeRecord) -> None:
        await self.execute(insert(st.NODES), st.values_of(node, st.NODES))

    async def node(self, node_id: str) -> NodeRecord | None:
        row = await self.row(st.NODE_BY_ID, {"id": node_id})
        return None if row is None else st.record_of(NodeRecord, row)

    async def node_by_token_hash(self, token_hash: str) -> NodeRecord | None:
        row = await self.row(st.NODE_BY_TOKEN, {"token_hash": token_hash})
        return None if row is None else st.record_of(NodeRecord, row)

    async def nodes(self) -> list[NodeRecord]:
        return [st.record_of(NodeRecord, r) for r in await self.rows(select(st.NODES).order_by(N.id))]

    async def update_node(self, node: NodeRecord) -> None:
        """Store a node's ``NODE_SETTINGS``: clearance, caveats, roles, keys, certificate pin, link."""
        values = {k: v for k, v in st.values_of(node, st.NODES).items() if k in NODE_SETTINGS}
        await self.execute(update(st.NODES).where(N.id == node.id).values(values))

    async def set_token_hash(
        self, node_id: str, token_hash: str, *, expires_at: datetime | None = None
    ) -> bool:
        """Replace a live node's token hash and expiry (the old token stops working at commit)."""
        live = (N.id == node_id, N.revoked_at.is_(None))
        values = {"token_hash": token_hash, "token_expires_at": expires_at}
        return bool(await self.execute(update(st.NODES).where(*live).values(values)))

    async def revoke_node(self, node_id: str, *, at: datetime) -> bool:
        live = (N.id == node_id, N.revoked_at.is_(None))
        return bool(await self.execute(update(st.NODES).where(*live).values(revoked_at=at)))

    # -- a node's named stream cursors ------------------------------------------------------
    async def cursor(self, *, node: str, name: str) -> int | None:
        value = await self.scalar(st.CURSOR, {"node": node, "name": name})
        return None if value is None else int(value)

    async def cursors(self, *, node: str) -> list[tuple[str, int, datetime]]:
        """A node's stream cursors: (name, acknowledged sequence, when), by name."""
        query = select(C.name, C.sequence, C.updated_at).where(C.node_id == node).order_by(C.name)
        return [(r.name, int(r.sequence), r.updated_at) for r in await self.rows(query)]

    async def delete_cursor(self, *, node: str, name: str) -> int | None:
        """Remove a stream cursor; the sequence it held, or None when there was none."""

        def body(connection: Connection) -> int | None:
            row = connection.execute(st.CURSOR, {"node": node, "name": name}).first()
            if row is None:
                return None
            connection.execute(delete(st.CURSORS).where(C.node_id == node, C.name == name))
            return int(row[0])

        return await self.write(body)

    async def save_cursor(self, *, node: str, name: str, sequence: int, at: datetime) -> None:
        """Store the acknowledged sequence; a cursor never moves backwards. One upsert: two first
        acks at once (two streams, two instances) both store, where an insert after a read raced."""
        values = {"node_id": node, "name": name, "sequence": sequence, "updated_at": at}

        def body(connection: Connection) -> None:
            upsert = st.upsert_into(connection, st.CURSORS)
            new = upsert.excluded
            statement = upsert.values(values).on_conflict_do_update(
                index_elements=[C.node_id, C.name],
                set_={"sequence": new.sequence, "updated_at": new.updated_at},
                where=C.sequence < new.sequence,
            )
            connection.execute(statement)

        await self.write(body)

    # -- audit events, Merkle nodes and checkpoints -----------------------------------------
    async def events(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        report: str | None = None,
        node: str | None = None,
        action: str | None = None,
        nation: str | None = None,
        decision: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        upto: int | None = None,
        before: int | None = None,
        descending: bool = False,
    ) -> list[AuditEvent]:
        """Audit events above ``after`` (at most ``upto``, below ``before``), filtered, in
        sequence order or, ``descending``, newest first."""
        query = select(st.EVENTS).where(E.seq > after).order_by(E.seq.desc() if descending else E.seq)
        for column, value in (
            (E.report, report),
            (E.node, node),
            (E.action, action),
            (E.nation, nation),
            (E.decision, decision),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(E.time >= since)
        if until is not None:
            query = query.where(E.time < until)
        if upto is not None:
            query = query.where(E.seq <= upto)
        if before is not None:
            query = query.where(E.seq < before)
        return [st.event_of(r) for r in await self.rows(query.limit(limit))]

    async def insert_events(self, events: Sequence[AuditEvent]) -> None:
        self.queue(st.INSERT_EVENTS, st.event_rows(events))

    async def event(self, seq: int) -> AuditEvent | None:
        row = await self.row(select(st.EVENTS).where(E.seq == seq))
        return None if row is None else st.event_of(row)

    async def audit_size(self) -> int:
        """Events in the log (without locking the head)."""
        return int(await self.scalar(select(st.HEAD.c.audit_seq).where(st.HEAD.c.id == 1)) or 0)

    async def publish_event_hash(self, report_id: str) -> str | None:
        """The hash of the audit event that accepted ``report_id``'s publication."""
        accepted = (E.report == report_id, E.action == "publish", E.decision == "allow")
        found = await self.scalar(select(E.hash).where(*accepted).order_by(E.seq).limit(1))
        return None if found is None else str(found)

    async def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self.queue(st.INSERT_NODES, st.node_rows(nodes))

    async def merkle_nodes(self, coords: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored Merkle nodes by (level, index); absent ones are simply missing."""
        by_level: dict[int, list[int]] = {}
        for lvl, idx in coords:
            by_level.setdefault(lvl, []).append(idx)
        m = st.MERKLE.c

        def body(connection: Connection) -> dict[tuple[int, int], bytes]:
            found: dict[tuple[int, int], bytes] = {}
            for lvl, indexes in by_level.items():
                for row in connection.execute(select(st.MERKLE).where(m.level == lvl, m.idx.in_(indexes))):
                    found[(row.level, row.idx)] = bytes.fromhex(row.hash)
            return found

        return await self.run(body)

    async def latest_checkpoint(self) -> Checkpoint | None:
        row = await self.row(select(st.CHECKPOINTS).order_by(st.CHECKPOINTS.c.size.desc()).limit(1))
        return None if row is None else st.checkpoint_of(row)

    async def checkpoints(self, *, upto: int, above: int = -1, limit: int | None = None) -> list[Checkpoint]:
        """Checkpoints of more than ``above`` and at most ``upto`` events, smallest first."""
        c = st.CHECKPOINTS.c
        query = select(st.CHECKPOINTS).where(c.size > above, c.size <= upto).order_by(c.size).limit(limit)
        return [st.checkpoint_of(r) for r in await self.rows(query)]

    async def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        values = st.values_of(checkpoint, st.CHECKPOINTS, root=checkpoint.root.hex())
        await self.execute(insert(st.CHECKPOINTS), values)
