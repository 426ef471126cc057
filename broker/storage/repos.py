"""Repositories: a transaction object with the queries the services need.

Sessions go in, records (``broker.domain.records``) come out; no ORM object leaves here.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.domain.alliances import Alliance, Directory, History, Membership
from broker.domain.records import AuditDraft, AuditEvent, Checkpoint, Head, NodeRecord, ReportRecord
from broker.errors import BadRequest, Unavailable
from broker.storage.db import SQLITE_PRAGMAS
from broker.storage.models import (
    AllianceRow,
    AuditEventRow,
    CheckpointRow,
    LogHeadRow,
    MembershipRow,
    MerkleNodeRow,
    NodeRow,
    ReportRow,
    ReportTopicRow,
    StreamCursorRow,
)
from broker.storage.sqlite_driver import PIPELINED

if TYPE_CHECKING:
    from broker.storage.sqlite_writer import SqliteWriter


def _table(model: type[object]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


# The hot path (publish) runs Core statements built once on the tables: no ORM unit of work,
# no per-call statement construction, and SQLAlchemy's compiled cache hits every time. Writes
# whose results nobody reads are PIPELINED: on SQLite they ride along with the next statement or
# the commit (see storage/sqlite_driver.py); elsewhere the option means nothing.
HEAD = _table(LogHeadRow)
LOCK_HEAD = select(HEAD).where(HEAD.c.id == 1).with_for_update()
HEAD_STATE = select(HEAD.c.report_seq, HEAD.c.change_counter).where(HEAD.c.id == 1)
_PIPELINED_WRITE = {PIPELINED: True}
SAVE_HEAD = update(HEAD).where(HEAD.c.id == 1).execution_options(**_PIPELINED_WRITE)
INSERT_REPORTS = insert(_table(ReportRow)).execution_options(**_PIPELINED_WRITE)
INSERT_TOPICS = insert(_table(ReportTopicRow)).execution_options(**_PIPELINED_WRITE)
INSERT_EVENTS = insert(_table(AuditEventRow)).execution_options(**_PIPELINED_WRITE)
INSERT_NODES = insert(_table(MerkleNodeRow)).execution_options(**_PIPELINED_WRITE)


_REPORTS = _table(ReportRow)
REPORT_BY_ID = select(_REPORTS).where(_REPORTS.c.id == bindparam("id"))
REPORT_BY_KEY = select(_REPORTS).where(
    _REPORTS.c.originator_node == bindparam("node"), _REPORTS.c.idempotency_key == bindparam("key")
)
# The channel every broker process LISTENs on (storage/listen.py); the payload is empty: a
# notification only means "look at the head again".
CHANGE_CHANNEL = "alliance_broker_change"
NOTIFY = select(func.pg_notify(CHANGE_CHANNEL, ""))
_NODES = _table(NodeRow)
NODE_BY_ID = select(_NODES).where(_NODES.c.id == bindparam("id"))
# Reports a node published since a moment (index ix_reports_originator_created): the publish
# rate limit that holds across broker processes, counted under the head lock.
RECENT_BY_NODE = (
    select(func.count().label("n"))
    .select_from(_REPORTS)
    .where(
        _REPORTS.c.originator_node == bindparam("node"),
        _REPORTS.c.created_at > bindparam("since", type_=_REPORTS.c.created_at.type),
    )
)
ALLIANCES = select(_table(AllianceRow))
MEMBERSHIPS = select(_table(MembershipRow)).order_by(_table(MembershipRow).c.id)


def head_of(row: Any) -> Head:
    frontier = tuple((int(lvl), int(idx), bytes.fromhex(h)) for lvl, idx, h in json.loads(row.audit_frontier))
    return Head(row.report_seq, row.audit_seq, row.audit_hash, row.change_counter, frontier)


def head_values(head: Head) -> dict[str, Any]:
    return {
        "report_seq": head.report_seq,
        "audit_seq": head.audit_seq,
        "audit_hash": head.audit_hash,
        "change_counter": head.change_counter,
        "audit_frontier": json.dumps([[lvl, idx, h.hex()] for lvl, idx, h in head.frontier]),
    }


def directory_of(alliances: Sequence[Any], memberships: Sequence[Any]) -> Directory:
    by_id = {r.id: Alliance(id=r.id, name=r.name, history=_history(r.history)) for r in alliances}
    members: dict[str, list[Membership]] = {a: [] for a in by_id}
    for m in memberships:
        members[m.alliance_id].append(
            Membership(alliance=m.alliance_id, nation=m.nation, joined=m.joined, left=m.left)
        )
    return Directory(alliances=by_id, memberships={k: tuple(v) for k, v in members.items()})


def report_rows(
    reports: Sequence[tuple[ReportRecord, str | None]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the reports table (with their idempotency keys) and of the topics table."""
    rows = [
        {
            "seq": r.seq,
            "id": r.id,
            "originator_node": r.originator_node,
            "originator_nation": r.originator_nation,
            "label_json": r.label_json,
            "label_hash": r.label_hash,
            "topics": list(r.topics),
            "created_at": r.created_at,
            "payload_sha256": r.payload_sha256,
            "signature": r.signature,
            "ciphertext": r.ciphertext,
            "wrapped_key": r.wrapped_key,
            "kek_id": r.kek_id,
            "idempotency_key": key,
            "request_hash": r.request_hash,
        }
        for r, key in reports
    ]
    return rows, [{"topic": t, "report_seq": r.seq} for r, _ in reports for t in r.topics]


def event_rows(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    return [
        {
            "seq": e.seq,
            "time": e.time,
            "actor": e.draft.actor,
            "action": e.draft.action,
            "report": e.draft.report,
            "node": e.draft.node,
            "nation": e.draft.nation,
            "decision": e.draft.decision,
            "reason": e.draft.reason,
            "details": e.draft.details,
            "prev_hash": e.prev_hash,
            "hash": e.hash,
        }
        for e in events
    ]


def node_rows(nodes: Sequence[tuple[int, int, bytes]]) -> list[dict[str, Any]]:
    return [{"level": lvl, "idx": idx, "hash": h.hex()} for lvl, idx, h in nodes]


def node_of(row: Any) -> NodeRecord:
    """From an ORM row or a Core row of the nodes table."""
    return NodeRecord(
        id=row.id,
        nation=row.nation,
        clearance=row.clearance,
        caveats=tuple(row.caveats),
        roles=tuple(row.roles),
        token_hash=row.token_hash,
        created_at=row.created_at,
        ed25519_public_key=row.ed25519_public_key,
        x25519_public_key=row.x25519_public_key,
        revoked_at=row.revoked_at,
        tls_fingerprint=row.tls_fingerprint,
    )


def report_of(row: Any) -> ReportRecord:
    """From an ORM row or a Core row of the reports table."""
    return ReportRecord(
        seq=row.seq,
        id=row.id,
        originator_node=row.originator_node,
        originator_nation=row.originator_nation,
        label_json=row.label_json,
        label=json.loads(row.label_json),
        label_hash=row.label_hash,
        topics=tuple(row.topics),
        created_at=row.created_at,
        payload_sha256=row.payload_sha256,
        signature=row.signature,
        request_hash=row.request_hash,
        recalled_at=row.recalled_at,
        erased_at=row.erased_at,
        ciphertext=row.ciphertext,
        wrapped_key=row.wrapped_key,
        kek_id=row.kek_id,
    )


def _checkpoint(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(size=row.size, root=bytes.fromhex(row.root), time=row.time, note=row.note)


def _event(row: AuditEventRow) -> AuditEvent:
    draft = AuditDraft(
        action=row.action,
        actor=row.actor,
        report=row.report,
        node=row.node,
        nation=row.nation,
        decision=row.decision,
        reason=row.reason,
        details=dict(row.details),
    )
    return AuditEvent(seq=row.seq, time=row.time, draft=draft, prev_hash=row.prev_hash, hash=row.hash)


class Tx:
    """One database transaction. Created only by ``Database.transaction()``."""

    def __init__(self, session: AsyncSession) -> None:
        self._s = session

    # -- the head row: sequence numbers, audit chain head, change counter ----------------
    async def lock_head(self) -> Head:
        """Lock the head row until commit (a no-op lock on SQLite, which BEGIN IMMEDIATE
        already serialised) and return it."""
        return head_of((await self._s.execute(LOCK_HEAD)).one())

    async def change_counter(self) -> int:
        return (await self.head_state())[1]

    async def save_head(self, head: Head) -> None:
        await self._s.execute(SAVE_HEAD, head_values(head))

    # -- alliances ------------------------------------------------------------------------
    async def load_directory(self) -> Directory:
        alliances = (await self._s.execute(ALLIANCES)).all()
        return directory_of(alliances, (await self._s.execute(MEMBERSHIPS)).all())

    async def count_alliances(self) -> int:
        return int(await self._s.scalar(select(func.count()).select_from(AllianceRow)) or 0)

    async def insert_alliance(self, alliance: Alliance, *, at: datetime) -> None:
        self._s.add(AllianceRow(id=alliance.id, name=alliance.name, history=alliance.history, created_at=at))
        await self._s.flush()

    async def insert_membership(self, membership: Membership) -> None:
        self._s.add(
            MembershipRow(
                alliance_id=membership.alliance,
                nation=membership.nation,
                joined=membership.joined,
                left=membership.left,
            )
        )
        await self._s.flush()

    async def close_membership(self, *, alliance: str, nation: str, at: datetime) -> bool:
        """Set ``left`` on the open membership period; False when there is none."""
        result = await self._s.execute(
            update(MembershipRow)
            .where(
                MembershipRow.alliance_id == alliance,
                MembershipRow.nation == nation,
                MembershipRow.left.is_(None),
            )
            .values(left=at)
        )
        return bool(getattr(result, "rowcount", 0))

    # -- nodes ----------------------------------------------------------------------------
    async def insert_node(self, node: NodeRecord) -> None:
        self._s.add(
            NodeRow(
                id=node.id,
                nation=node.nation,
                clearance=node.clearance,
                caveats=list(node.caveats),
                roles=list(node.roles),
                token_hash=node.token_hash,
                ed25519_public_key=node.ed25519_public_key,
                x25519_public_key=node.x25519_public_key,
                tls_fingerprint=node.tls_fingerprint,
                created_at=node.created_at,
            )
        )
        await self._s.flush()

    async def node(self, node_id: str) -> NodeRecord | None:
        row = (await self._s.execute(NODE_BY_ID, {"id": node_id})).first()
        return None if row is None else node_of(row)

    async def node_by_token_hash(self, token_hash: str) -> NodeRecord | None:
        row = await self._s.scalar(select(NodeRow).where(NodeRow.token_hash == token_hash))
        return None if row is None else node_of(row)

    async def nodes(self) -> list[NodeRecord]:
        return [node_of(r) for r in (await self._s.scalars(select(NodeRow).order_by(NodeRow.id))).all()]

    async def update_node(self, node: NodeRecord) -> None:
        """Store a node's clearance, caveats, roles, public keys and certificate pin."""
        await self._s.execute(
            update(NodeRow)
            .where(NodeRow.id == node.id)
            .values(
                clearance=node.clearance,
                caveats=list(node.caveats),
                roles=list(node.roles),
                ed25519_public_key=node.ed25519_public_key,
                x25519_public_key=node.x25519_public_key,
                tls_fingerprint=node.tls_fingerprint,
            )
        )

    async def set_token_hash(self, node_id: str, token_hash: str) -> bool:
        """Replace a live node's token hash (the old token stops working at commit)."""
        result = await self._s.execute(
            update(NodeRow)
            .where(NodeRow.id == node_id, NodeRow.revoked_at.is_(None))
            .values(token_hash=token_hash)
        )
        return bool(getattr(result, "rowcount", 0))

    async def revoke_node(self, node_id: str, *, at: datetime) -> bool:
        result = await self._s.execute(
            update(NodeRow).where(NodeRow.id == node_id, NodeRow.revoked_at.is_(None)).values(revoked_at=at)
        )
        return bool(getattr(result, "rowcount", 0))

    # -- reports --------------------------------------------------------------------------
    async def insert_reports(self, reports: Sequence[tuple[ReportRecord, str | None]]) -> None:
        """Insert reports (with their idempotency keys) and their topics, as bulk inserts: no
        identity-map bookkeeping on the hot path."""
        rows, topics = report_rows(reports)
        await self._s.execute(INSERT_REPORTS, rows)
        if topics:
            await self._s.execute(INSERT_TOPICS, topics)

    async def report(self, report_id: str) -> ReportRecord | None:
        row = (await self._s.execute(REPORT_BY_ID, {"id": report_id})).first()
        return None if row is None else report_of(row)

    async def report_by_idempotency_key(self, *, node: str, key: str) -> ReportRecord | None:
        row = (await self._s.execute(REPORT_BY_KEY, {"node": node, "key": key})).first()
        return None if row is None else report_of(row)

    async def reports_since(self, *, node: str, since: datetime) -> int:
        """How many reports ``node`` published after ``since``."""
        return int((await self._s.execute(RECENT_BY_NODE, {"node": node, "since": since})).scalar_one())

    async def reports_after(self, *, after: int, topics: Sequence[str], limit: int) -> list[ReportRecord]:
        query = select(ReportRow).where(ReportRow.seq > after).order_by(ReportRow.seq).limit(limit)
        if topics:
            query = query.where(
                ReportRow.seq.in_(select(ReportTopicRow.report_seq).where(ReportTopicRow.topic.in_(topics)))
            )
        return [report_of(r) for r in (await self._s.scalars(query)).all()]

    async def set_recalled(self, report_id: str, *, at: datetime) -> None:
        await self._s.execute(update(ReportRow).where(ReportRow.id == report_id).values(recalled_at=at))

    async def erase(self, report_id: str, *, at: datetime) -> None:
        """Crypto-shred: drop the wrapped data key and the ciphertext."""
        await self._s.execute(
            update(ReportRow)
            .where(ReportRow.id == report_id)
            .values(erased_at=at, wrapped_key=None, ciphertext=None, kek_id=None)
        )

    async def reports_wrapped_not_by(self, kek_id: str, *, limit: int) -> list[ReportRecord]:
        query = (
            select(ReportRow)
            .where(ReportRow.kek_id.is_not(None), ReportRow.kek_id != kek_id)
            .order_by(ReportRow.seq)
            .limit(limit)
        )
        return [report_of(r) for r in (await self._s.scalars(query)).all()]

    async def set_wrapped_key(self, seq: int, *, wrapped_key: bytes, kek_id: str) -> None:
        await self._s.execute(
            update(ReportRow).where(ReportRow.seq == seq).values(wrapped_key=wrapped_key, kek_id=kek_id)
        )

    async def notify_change(self) -> None:
        """On PostgreSQL, wake the other broker processes when this transaction commits
        (LISTEN/NOTIFY delivers at commit, never for a rollback); on SQLite they poll."""
        if self._s.get_bind().dialect.name == "postgresql":
            await self._s.execute(NOTIFY)

    async def head_state(self) -> tuple[int, int]:
        """(last report sequence, change counter), without locking: what the hub watches."""
        row = (await self._s.execute(HEAD_STATE)).one()
        return int(row[0]), int(row[1])

    # -- stream cursors -------------------------------------------------------------------
    async def cursor(self, *, node: str, name: str) -> int | None:
        value = await self._s.scalar(
            select(StreamCursorRow.sequence).where(
                StreamCursorRow.node_id == node, StreamCursorRow.name == name
            )
        )
        return None if value is None else int(value)

    async def cursors(self, *, node: str) -> list[tuple[str, int, datetime]]:
        """A node's stream cursors: (name, acknowledged sequence, when), by name."""
        query = (
            select(StreamCursorRow.name, StreamCursorRow.sequence, StreamCursorRow.updated_at)
            .where(StreamCursorRow.node_id == node)
            .order_by(StreamCursorRow.name)
        )
        return [(r.name, int(r.sequence), r.updated_at) for r in (await self._s.execute(query)).all()]

    async def delete_cursor(self, *, node: str, name: str) -> int | None:
        """Remove a stream cursor; the sequence it held, or None when there was none."""
        value = await self.cursor(node=node, name=name)
        if value is not None:
            await self._s.execute(
                delete(StreamCursorRow).where(StreamCursorRow.node_id == node, StreamCursorRow.name == name)
            )
        return value

    async def save_cursor(self, *, node: str, name: str, sequence: int, at: datetime) -> None:
        """Store the acknowledged sequence; a cursor never moves backwards."""
        row = await self._s.get(StreamCursorRow, (node, name))
        if row is None:
            self._s.add(StreamCursorRow(node_id=node, name=name, sequence=sequence, updated_at=at))
        elif sequence > row.sequence:
            row.sequence, row.updated_at = sequence, at
        await self._s.flush()

    # -- audit ----------------------------------------------------------------------------
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
    ) -> list[AuditEvent]:
        """Audit events above ``after`` (and at most ``upto``) in sequence order, filtered."""
        query = (
            select(AuditEventRow).where(AuditEventRow.seq > after).order_by(AuditEventRow.seq).limit(limit)
        )
        for column, value in (
            (AuditEventRow.report, report),
            (AuditEventRow.node, node),
            (AuditEventRow.action, action),
            (AuditEventRow.nation, nation),
            (AuditEventRow.decision, decision),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AuditEventRow.time >= since)
        if until is not None:
            query = query.where(AuditEventRow.time < until)
        if upto is not None:
            query = query.where(AuditEventRow.seq <= upto)
        return [_event(r) for r in (await self._s.scalars(query)).all()]

    # -- Merkle tree and checkpoints ------------------------------------------------------
    async def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        if nodes:
            await self._s.execute(INSERT_NODES, node_rows(nodes))

    async def merkle_nodes(self, coords: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored Merkle nodes by (level, index); absent ones are simply missing."""
        found: dict[tuple[int, int], bytes] = {}
        by_level: dict[int, list[int]] = {}
        for lvl, idx in coords:
            by_level.setdefault(lvl, []).append(idx)
        for lvl, indexes in by_level.items():
            query = select(MerkleNodeRow).where(MerkleNodeRow.level == lvl, MerkleNodeRow.idx.in_(indexes))
            for row in (await self._s.scalars(query)).all():
                found[(row.level, row.idx)] = bytes.fromhex(row.hash)
        return found

    async def event(self, seq: int) -> AuditEvent | None:
        row = await self._s.get(AuditEventRow, seq)
        return None if row is None else _event(row)

    async def audit_size(self) -> int:
        """Events in the log (without locking the head)."""
        return int(await self._s.scalar(select(LogHeadRow.audit_seq).where(LogHeadRow.id == 1)) or 0)

    async def latest_checkpoint(self) -> Checkpoint | None:
        row = await self._s.scalar(select(CheckpointRow).order_by(CheckpointRow.size.desc()).limit(1))
        return None if row is None else _checkpoint(row)

    async def checkpoints(self, *, upto: int) -> list[Checkpoint]:
        query = select(CheckpointRow).where(CheckpointRow.size <= upto).order_by(CheckpointRow.size)
        return [_checkpoint(r) for r in (await self._s.scalars(query)).all()]

    async def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        row = CheckpointRow(
            size=checkpoint.size, root=checkpoint.root.hex(), time=checkpoint.time, note=checkpoint.note
        )
        self._s.add(row)
        await self._s.flush()

    async def insert_events(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        rows = event_rows(events)
        await self._s.execute(INSERT_EVENTS, rows)


class WriteTx(Protocol):
    """What a group-committed act may do in its transaction: ``Tx`` everywhere, and on SQLite
    ``sqlite_writer.SqliteWriteTx`` (the same statements without SQLAlchemy's async layer)."""

    async def lock_head(self) -> Head: ...
    async def change_counter(self) -> int: ...
    async def save_head(self, head: Head) -> None: ...
    async def load_directory(self) -> Directory: ...
    async def insert_reports(self, reports: Sequence[tuple[ReportRecord, str | None]]) -> None: ...
    async def insert_events(self, events: Sequence[AuditEvent]) -> None: ...
    async def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None: ...
    async def report(self, report_id: str) -> ReportRecord | None: ...
    async def node(self, node_id: str) -> NodeRecord | None: ...
    async def notify_change(self) -> None: ...
    async def reports_since(self, *, node: str, since: datetime) -> int: ...
    async def report_by_idempotency_key(self, *, node: str, key: str) -> ReportRecord | None: ...


def _history(value: str) -> History:
    return "since-join" if value == "since-join" else "full"


class Database:
    """Owns the engine; hands out transactions."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # SQLite admits one writer, and every transaction here begins IMMEDIATE; queueing them in
        # the process avoids the busy handler's sleep-and-retry, which ruins tail latency.
        self._serial = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # Several broker processes serve one PostgreSQL database; a SQLite file has one broker.
        self.shared = engine.dialect.name != "sqlite"
        self._writer: SqliteWriter | None = None
        path = engine.url.database
        if engine.dialect.name == "sqlite" and path and path != ":memory:":
            from broker.storage.sqlite_writer import SqliteWriter  # it builds on this module

            self._writer = SqliteWriter(path, engine.dialect, SQLITE_PRAGMAS)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A transaction that commits when the block ends normally, else rolls back.
        Database outages surface as Unavailable (503)."""
        try:
            async with self._serialised(), self._sessions() as session, session.begin():
                yield Tx(session)
        except DataError as exc:  # a value the edge let through and the database refuses (NUL...)
            raise BadRequest("the request holds a value that cannot be stored", code="invalid_value") from exc
        except (OperationalError, InterfaceError, OSError) as exc:
            raise Unavailable("database unavailable") from exc

    @asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[WriteTx]:
        """A transaction limited to ``WriteTx`` (the acts on the hot path: publishes, reads and
        deliveries with their audit events); commits when the block ends normally, else rolls
        back. Outages surface as Unavailable (503)."""
        if self._writer is None:
            async with self.transaction() as tx:
                yield tx
            return
        try:
            async with self._serialised(), self._writer.transaction() as fast:
                yield fast
        except sqlite3.OperationalError as exc:
            raise Unavailable("database unavailable") from exc

    @asynccontextmanager
    async def _serialised(self) -> AsyncIterator[None]:
        if self._serial is None:
            yield
            return
        async with self._serial:
            yield

    async def dispose(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        await self.engine.dispose()
