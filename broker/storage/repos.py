"""Repositories: the transaction object with the queries the services need.

Records (``broker.domain.records``) go in and come out; no row or ORM object leaves here. Each
method is a plain synchronous SQLAlchemy Core body run on the transaction's connection, in one
trip (``Tx.run``): on SQLite to the thread that owns the connection, on PostgreSQL through
``AsyncConnection.run_sync``. The same code serves both engines.

Writes whose results nobody reads (the head, new reports, audit events, Merkle nodes, NOTIFY)
are queued and run at the front of the next trip, or of the commit: a publish is one trip to
lock the head and one for its writes and the commit. Order and atomicity are unchanged; an error
from a queued write surfaces at the next trip or at the commit and fails the transaction alike.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

from broker.domain.alliances import Alliance, Directory, Membership
from broker.domain.records import AuditEvent, Checkpoint, Head, NodeRecord, ReportRecord
from broker.storage import statements as st

# Re-exported for storage/listen.py and storage/collections.py.
from broker.storage.statements import CHANGE_CHANNEL as CHANGE_CHANNEL
from broker.storage.statements import report_of as report_of

T = TypeVar("T")
Body = Callable[[Connection], T]


class Runner(Protocol):
    """Runs a body on the transaction's connection and returns what it returned (one trip)."""

    def __call__(self, body: Callable[[Connection], T], /) -> Awaitable[T]: ...


@dataclass
class PublishReads:
    """What ``Tx.publish_reads`` read under the head lock."""

    head: Head
    by_key: dict[tuple[str, str], ReportRecord] = field(default_factory=dict)
    by_id: dict[str, ReportRecord] = field(default_factory=dict)
    recent: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Write:
    """A queued write: ``statement`` with its rows (an insert or the head's update), or the
    NOTIFY (no rows)."""

    statement: Executable
    rows: list[dict[str, Any]]


def _flush(connection: Connection, writes: Sequence[_Write], *, combine: bool) -> None:
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


def _parameters(dialect: Dialect, writes: Sequence[_Write], shape: Shape) -> dict[str, Any]:
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


def _shape(writes: Sequence[_Write]) -> Shape | None:
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


class Tx:
    """One database transaction. Created only by ``Database``."""

    def __init__(self, run: Runner, *, postgresql: bool) -> None:
        self._run = run
        self._postgresql = postgresql
        self._queued: list[_Write] = []
        self._fresh = True
        self.tripped = False  # whether anything ran on the connection (then there is work to end)
        # When this transaction got the write lock (perf_counter): on PostgreSQL the head row's
        # lock, taken by ``lock_head``; on SQLite the database's write lock, set by ``Database``.
        self.locked_at: float | None = None
        self._committed: list[Callable[[], None]] = []
        self._head: Head | None = None  # as locked, then as saved

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this transaction has committed (never if it does not)."""
        self._committed.append(callback)

    def committed(self) -> None:
        """Called by ``Database`` when the commit succeeded."""
        callbacks, self._committed = self._committed, []
        for callback in callbacks:
            callback()

    async def run(self, body: Callable[[Connection], T]) -> T:
        """Run ``body(connection)`` in this transaction, after the queued writes, in one trip.

        ``body`` is synchronous SQLAlchemy: it must not commit, roll back or keep the
        connection."""
        queued, self._queued = self._queued, []
        fresh, self._fresh = self._fresh, False
        self.tripped = True

        def trip(connection: Connection) -> T:
            if fresh and connection.in_transaction():  # left open by an abandoned transaction
                connection.rollback()
            _flush(connection, queued, combine=self._postgresql)
            return body(connection)

        return await self._run(trip)

    async def commit(self) -> None:
        """Run the queued writes and commit (no trip when nothing ran and nothing is queued)."""
        if self._queued or self.tripped:
            await self.run(_commit)

    def rollback(self) -> Awaitable[None]:
        """Drop the queued writes and roll back what ran. Not a coroutine: the rollback is
        handed to the runner at the call (on SQLite: queued to the thread at once)."""
        self._queued = []
        return self._run(_rollback) if self.tripped else _nothing()

    def _queue(self, statement: Executable, rows: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
        if rows:
            self._queued.append(_Write(statement, [rows] if isinstance(rows, dict) else list(rows)))

    async def _all(self, statement: Executable, params: dict[str, Any] | None = None) -> list[Any]:
        return await self.run(lambda c: list(c.execute(statement, params)))

    async def _first(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        return await self.run(lambda c: c.execute(statement, params).first())

    async def _count(self, statement: Executable) -> int:
        """Run a write now; the rows it matched."""
        return int(await self.run(lambda c: c.execute(statement).rowcount))

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

    async def withdrawn(self, ids: Collection[str]) -> dict[str, str]:
        """Of the reports ``ids``, those recalled or erased: id -> ``erased`` or ``recalled``."""
        if not ids:
            return {}
        statement = select(st.REPORTS.c.id, st.REPORTS.c.erased_at).where(
            st.REPORTS.c.id.in_(sorted(ids)),
            or_(st.REPORTS.c.recalled_at.is_not(None), st.REPORTS.c.erased_at.is_not(None)),
        )
        rows = await self._all(statement)
        return {str(row.id): "recalled" if row.erased_at is None else "erased" for row in rows}

    async def withdrawn_after(self, after: int) -> dict[int, tuple[datetime | None, datetime | None]]:
        """Every report above ``after`` that was recalled or erased, as ``withdrawn``."""
        statement = select(st.REPORTS.c.seq, st.REPORTS.c.recalled_at, st.REPORTS.c.erased_at).where(
            st.REPORTS.c.seq > after,
            or_(st.REPORTS.c.recalled_at.is_not(None), st.REPORTS.c.erased_at.is_not(None)),
        )
        return {int(row.seq): (row.recalled_at, row.erased_at) for row in await self._all(statement)}

    async def withdrawn_since(self, since: datetime, *, upto: int) -> list[ReportRecord]:
        """Reports up to sequence ``upto`` recalled or erased at or after ``since``, by sequence:
        what a stream that has passed them must send recall notices for."""
        r = st.REPORTS.c
        query = (
            select(st.REPORTS)
            .where(r.seq <= upto, or_(r.recalled_at >= since, r.erased_at >= since))
            .order_by(r.seq)
        )
        return [st.report_of(row) for row in await self._all(query)]

    async def publish_event_hash(self, report_id: str) -> str | None:
        """The hash of the audit event that accepted ``report_id``'s publication."""
        a = st.EVENTS.c
        query = (
            select(a.hash)
            .where(a.report == report_id, a.action == "publish", a.decision == "allow")
            .order_by(a.seq)
            .limit(1)
        )
        row = await self._first(query)
        return None if row is None else str(row[0])

    async def save_head(self, head: Head) -> None:
        self._queue(st.SAVE_HEAD, st.head_values(head))
        self._head = head

    async def notify_change(self) -> None:
        """On PostgreSQL, wake the other broker processes when this transaction commits
        (LISTEN/NOTIFY delivers at commit, never for a rollback); on SQLite they poll."""
        if self._postgresql:
            self._queued.append(_Write(st.NOTIFY, []))

    # -- alliances ------------------------------------------------------------------------
    async def load_directory(self) -> Directory:
        def body(c: Connection) -> Directory:
            return st.directory_of(list(c.execute(st.ALLIANCES)), list(c.execute(st.MEMBERSHIPS)))

        return await self.run(body)

    async def count_alliances(self) -> int:
        return int((await self._first(select(func.count()).select_from(st.ALLIANCE_TABLE)))[0])

    async def insert_alliance(self, alliance: Alliance, *, at: datetime) -> None:
        values = {"id": alliance.id, "name": alliance.name, "history": alliance.history, "created_at": at}
        await self.run(lambda c: c.execute(insert(st.ALLIANCE_TABLE), values))

    async def insert_membership(self, membership: Membership) -> None:
        values = {
            "alliance_id": membership.alliance,
            "nation": membership.nation,
            "joined": membership.joined,
            "left": membership.left,
        }
        await self.run(lambda c: c.execute(insert(st.MEMBERSHIP_TABLE), values))

    async def close_membership(self, *, alliance: str, nation: str, at: datetime) -> bool:
        """Set ``left`` on the open membership period; False when there is none."""
        m = st.MEMBERSHIP_TABLE.c
        open_period = (m.alliance_id == alliance, m.nation == nation, m.left.is_(None))
        return bool(await self._count(update(st.MEMBERSHIP_TABLE).where(*open_period).values(left=at)))

    # -- nodes ----------------------------------------------------------------------------
    async def insert_node(self, node: NodeRecord) -> None:
        values = st.node_values(node)
        await self.run(lambda c: c.execute(insert(st.NODES), values))

    async def node(self, node_id: str) -> NodeRecord | None:
        row = await self._first(st.NODE_BY_ID, {"id": node_id})
        return None if row is None else st.node_of(row)

    async def node_by_token_hash(self, token_hash: str) -> NodeRecord | None:
        row = await self._first(st.NODE_BY_TOKEN, {"token_hash": token_hash})
        return None if row is None else st.node_of(row)

    async def nodes(self) -> list[NodeRecord]:
        return [st.node_of(r) for r in await self._all(select(st.NODES).order_by(st.NODES.c.id))]

    async def update_node(self, node: NodeRecord) -> None:
        """Store a node's clearance, caveats, roles, public keys and certificate pin."""
        values = st.node_values(node)
        for fixed in ("id", "nation", "token_hash", "token_expires_at", "created_at"):
            del values[fixed]
        await self._count(update(st.NODES).where(st.NODES.c.id == node.id).values(values))

    async def set_token_hash(
        self, node_id: str, token_hash: str, *, expires_at: datetime | None = None
    ) -> bool:
        """Replace a live node's token hash and expiry (the old token stops working at commit)."""
        n = st.NODES.c
        live = (n.id == node_id, n.revoked_at.is_(None))
        values = {"token_hash": token_hash, "token_expires_at": expires_at}
        return bool(await self._count(update(st.NODES).where(*live).values(values)))

    async def revoke_node(self, node_id: str, *, at: datetime) -> bool:
        n = st.NODES.c
        live = (n.id == node_id, n.revoked_at.is_(None))
        return bool(await self._count(update(st.NODES).where(*live).values(revoked_at=at)))

    # -- reports --------------------------------------------------------------------------
    async def insert_reports(self, reports: Sequence[tuple[ReportRecord, str | None]]) -> None:
        """Insert reports (with their idempotency keys) and their topics (queued)."""
        rows, topics = st.report_rows(reports)
        self._queue(st.INSERT_REPORTS, rows)
        self._queue(st.INSERT_TOPICS, topics)

    async def insert_objects(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of TAXII's object index (``models.TaxiiObjectRow``), queued."""
        self._queue(st.INSERT_OBJECTS, rows)

    async def report(self, report_id: str) -> ReportRecord | None:
        row = await self._first(st.REPORT_BY_ID, {"id": report_id})
        return None if row is None else st.report_of(row)

    async def reports_after(self, *, after: int, topics: Sequence[str], limit: int) -> list[ReportRecord]:
        r = st.REPORTS.c
        query = select(st.REPORTS).where(r.seq > after).order_by(r.seq).limit(limit)
        if topics:
            tagged = select(st.TOPICS.c.report_seq).where(st.TOPICS.c.topic.in_(topics))
            query = query.where(r.seq.in_(tagged))
        return [st.report_of(row) for row in await self._all(query)]

    async def set_recalled(self, report_id: str, *, at: datetime) -> None:
        await self._count(update(st.REPORTS).where(st.REPORTS.c.id == report_id).values(recalled_at=at))

    async def erase(self, report_id: str, *, at: datetime) -> None:
        """Crypto-shred: drop the wrapped data key and the ciphertext."""
        shred = {"erased_at": at, "wrapped_key": None, "ciphertext": None, "kek_id": None}
        await self._count(update(st.REPORTS).where(st.REPORTS.c.id == report_id).values(shred))

    async def reports_wrapped_not_by(self, kek_id: str, *, limit: int) -> list[ReportRecord]:
        r = st.REPORTS.c
        query = (
            select(st.REPORTS).where(r.kek_id.is_not(None), r.kek_id != kek_id).order_by(r.seq).limit(limit)
        )
        return [st.report_of(row) for row in await self._all(query)]

    async def set_wrapped_key(self, seq: int, *, wrapped_key: bytes, kek_id: str) -> bool:
        """Re-wrap a report's data key; False (nothing written) when it was erased meanwhile: a
        shredded report never gets a wrapped key back."""
        r = st.REPORTS.c
        rewrap = update(st.REPORTS).where(r.seq == seq, r.erased_at.is_(None))
        return await self._count(rewrap.values(wrapped_key=wrapped_key, kek_id=kek_id)) == 1

    # -- stream cursors -------------------------------------------------------------------
    async def cursor(self, *, node: str, name: str) -> int | None:
        row = await self._first(st.CURSOR, {"node": node, "name": name})
        return None if row is None else int(row[0])

    async def cursors(self, *, node: str) -> list[tuple[str, int, datetime]]:
        """A node's stream cursors: (name, acknowledged sequence, when), by name."""
        c = st.CURSORS.c
        query = select(c.name, c.sequence, c.updated_at).where(c.node_id == node).order_by(c.name)
        return [(r.name, int(r.sequence), r.updated_at) for r in await self._all(query)]

    async def delete_cursor(self, *, node: str, name: str) -> int | None:
        """Remove a stream cursor; the sequence it held, or None when there was none."""
        c = st.CURSORS.c

        def body(connection: Connection) -> int | None:
            row = connection.execute(st.CURSOR, {"node": node, "name": name}).first()
            if row is None:
                return None
            connection.execute(delete(st.CURSORS).where(c.node_id == node, c.name == name))
            return int(row[0])

        return await self.run(body)

    async def save_cursor(self, *, node: str, name: str, sequence: int, at: datetime) -> None:
        """Store the acknowledged sequence; a cursor never moves backwards."""
        c = st.CURSORS.c

        def body(connection: Connection) -> None:
            row = connection.execute(st.CURSOR, {"node": node, "name": name}).first()
            if row is None:
                values = {"node_id": node, "name": name, "sequence": sequence, "updated_at": at}
                connection.execute(insert(st.CURSORS), values)
            elif sequence > row[0]:
                mine = update(st.CURSORS).where(c.node_id == node, c.name == name)
                connection.execute(mine.values(sequence=sequence, updated_at=at))

        await self.run(body)

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
        before: int | None = None,
        descending: bool = False,
    ) -> list[AuditEvent]:
        """Audit events above ``after`` (at most ``upto``, below ``before``), filtered, in
        sequence order or, ``descending``, newest first."""
        e = st.EVENTS.c
        order = e.seq.desc() if descending else e.seq
        query = select(st.EVENTS).where(e.seq > after).order_by(order).limit(limit)
        if before is not None:
            query = query.where(e.seq < before)
        for column, value in (
            (e.report, report),
            (e.node, node),
            (e.action, action),
            (e.nation, nation),
            (e.decision, decision),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(e.time >= since)
        if until is not None:
            query = query.where(e.time < until)
        if upto is not None:
            query = query.where(e.seq <= upto)
        return [st.event_of(r) for r in await self._all(query)]

    async def insert_events(self, events: Sequence[AuditEvent]) -> None:
        self._queue(st.INSERT_EVENTS, st.event_rows(events))

    async def event(self, seq: int) -> AuditEvent | None:
        row = await self._first(select(st.EVENTS).where(st.EVENTS.c.seq == seq))
        return None if row is None else st.event_of(row)

    async def audit_size(self) -> int:
        """Events in the log (without locking the head)."""
        row = await self._first(select(st.HEAD.c.audit_seq).where(st.HEAD.c.id == 1))
        return 0 if row is None else int(row[0])

    # -- Merkle tree and checkpoints ------------------------------------------------------
    async def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._queue(st.INSERT_NODES, st.node_rows(nodes))

    async def merkle_nodes(self, coords: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored Merkle nodes by (level, index); absent ones are simply missing."""
        by_level: dict[int, list[int]] = {}
        for lvl, idx in coords:
            by_level.setdefault(lvl, []).append(idx)
        m = st.MERKLE.c

        def body(connection: Connection) -> dict[tuple[int, int], bytes]:
            found: dict[tuple[int, int], bytes] = {}
            for lvl, indexes in by_level.items():
                query = select(st.MERKLE).where(m.level == lvl, m.idx.in_(indexes))
                for row in connection.execute(query):
                    found[(row.level, row.idx)] = bytes.fromhex(row.hash)
            return found

        return await self.run(body)

    async def latest_checkpoint(self) -> Checkpoint | None:
        row = await self._first(select(st.CHECKPOINTS).order_by(st.CHECKPOINTS.c.size.desc()).limit(1))
        return None if row is None else st.checkpoint_of(row)

    async def checkpoints(self, *, upto: int) -> list[Checkpoint]:
        c = st.CHECKPOINTS.c
        query = select(st.CHECKPOINTS).where(c.size <= upto).order_by(c.size)
        return [st.checkpoint_of(r) for r in await self._all(query)]

    async def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        values = {
            "size": checkpoint.size,
            "root": checkpoint.root.hex(),
            "time": checkpoint.time,
            "note": checkpoint.note,
        }
        await self.run(lambda c: c.execute(insert(st.CHECKPOINTS), values))


def _recent(connection: Connection, nodes: Collection[str], since: datetime) -> dict[str, int]:
    rows = connection.execute(st.RECENT_BY_NODES, {"nodes": sorted(nodes), "since": since})
    return dict.fromkeys(nodes, 0) | {str(node): int(n) for node, n in rows}


# What a group-committed act may do in its transaction: one implementation serves every engine.
WriteTx = Tx


def _commit(connection: Connection) -> None:
    connection.commit()


def _rollback(connection: Connection) -> None:
    connection.rollback()


async def _nothing() -> None:
    pass
