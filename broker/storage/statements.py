"""The statements the repository runs, and the mapping between rows and records.

Pure SQLAlchemy Core: nothing here touches a connection, so every statement is built once at
import and SQLAlchemy's compiled cache hits on every execution.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from broker.domain.alliances import Alliance, Directory, Membership
from broker.domain.records import AuditDraft, AuditEvent, Checkpoint, Head, ReportRecord
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
    TaxiiObjectRow,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def table(model: type[object]) -> Table:
    found = getattr(model, "__table__", None)
    assert isinstance(found, Table)
    return found


def upsert_into(connection: Connection, into: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``into`` in ``connection``'s dialect, which can take ``ON CONFLICT``."""
    return (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(into)


HEAD = table(LogHeadRow)
REPORTS = table(ReportRow)
TOPICS = table(ReportTopicRow)
NODES = table(NodeRow)
ALLIANCE_TABLE = table(AllianceRow)
MEMBERSHIP_TABLE = table(MembershipRow)
EVENTS = table(AuditEventRow)
MERKLE = table(MerkleNodeRow)
CHECKPOINTS = table(CheckpointRow)
CURSORS = table(StreamCursorRow)
TAXII_OBJECTS = table(TaxiiObjectRow)

LOCK_HEAD = select(HEAD).where(HEAD.c.id == 1).with_for_update()
HEAD_STATE = select(HEAD.c.report_seq, HEAD.c.change_counter, HEAD.c.report_changes).where(HEAD.c.id == 1)
SAVE_HEAD = update(HEAD).where(HEAD.c.id == 1)
INSERT_REPORTS = insert(REPORTS)
INSERT_TOPICS = insert(TOPICS)
INSERT_EVENTS = insert(EVENTS)
INSERT_NODES = insert(MERKLE)
INSERT_OBJECTS = insert(TAXII_OBJECTS)
# The tables whose queued inserts may be combined into one statement on PostgreSQL (transaction.flush).
COMBINABLE = {t.name: t for t in (REPORTS, TOPICS, TAXII_OBJECTS, EVENTS, MERKLE)}

REPORT_BY_ID = select(REPORTS).where(REPORTS.c.id == bindparam("id"))
# The channel every broker process LISTENs on (storage/listen.py). A notification means only
# "look at the head again": it carries no payload, and one a notifier adds is never read (any
# role that can connect may NOTIFY, table privileges or not).
CHANGE_CHANNEL = "alliance_broker_change"
NOTIFY = select(func.pg_notify(CHANGE_CHANNEL, literal_column("''")))
NODE_BY_ID = select(NODES).where(NODES.c.id == bindparam("id"))
NODE_BY_TOKEN = select(NODES).where(NODES.c.token_hash == bindparam("token_hash"))
# Reports each node published since a moment (index ix_reports_originator_created): the publish
# rate limit that holds across broker processes, counted under the head lock.
RECENT_BY_NODES = (
    select(REPORTS.c.originator_node, func.count().label("n"))
    .where(
        REPORTS.c.originator_node.in_(bindparam("nodes", expanding=True)),
        REPORTS.c.created_at > bindparam("since", type_=REPORTS.c.created_at.type),
    )
    .group_by(REPORTS.c.originator_node)
)


# The reports stored under any of some (originator node, idempotency key) pairs or ids.
REPORTS_BY_KEYS_OR_IDS = select(REPORTS).where(
    or_(
        tuple_(REPORTS.c.originator_node, REPORTS.c.idempotency_key).in_(bindparam("keys", expanding=True)),
        REPORTS.c.id.in_(bindparam("ids", expanding=True)),
    )
)

ALLIANCES = select(ALLIANCE_TABLE)
MEMBERSHIPS = select(MEMBERSHIP_TABLE).order_by(MEMBERSHIP_TABLE.c.id)
CURSOR = select(CURSORS.c.sequence).where(
    CURSORS.c.node_id == bindparam("node"), CURSORS.c.name == bindparam("name")
)


@functools.cache
def _fields(kind: type[DataclassInstance], table: Table | None = None) -> tuple[str, ...]:
    """The init fields of ``kind`` (those that are columns of ``table`` when given)."""
    return tuple(f.name for f in fields(kind) if f.init and (table is None or f.name in table.c))


def values_of(record: DataclassInstance, table: Table, **extra: Any) -> dict[str, Any]:
    """The fields of ``record`` that are columns of ``table`` (tuples as lists: JSON), then ``extra``."""
    values = {name: getattr(record, name) for name in _fields(type(record), table)}
    for name, value in values.items():
        if isinstance(value, tuple):
            values[name] = list(value)
    return values | extra


def record_of(kind: type[R], row: Any, **extra: Any) -> R:
    """A ``kind`` from the columns of ``row`` named as its fields (lists as tuples: JSON), then
    ``extra``; a field the row lacks keeps its default."""
    found = dict(zip(row._fields, row, strict=True))  # Row._fields: public, as a namedtuple's
    values = {name: found[name] for name in _fields(kind) if name in found}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return kind(**(values | extra))


def head_of(row: Any) -> Head:
    frontier = tuple((int(lvl), int(idx), bytes.fromhex(h)) for lvl, idx, h in json.loads(row.audit_frontier))
    return record_of(Head, row, frontier=frontier)


def head_values(head: Head) -> dict[str, Any]:
    frontier = json.dumps([[lvl, idx, h.hex()] for lvl, idx, h in head.frontier])
    return values_of(head, HEAD, audit_frontier=frontier)


def directory_of(alliances: Sequence[Any], memberships: Sequence[Any]) -> Directory:
    by_id = {
        r.id: Alliance(r.id, r.name, "since-join" if r.history == "since-join" else "full") for r in alliances
    }
    members: dict[str, list[Membership]] = {a: [] for a in by_id}
    for m in memberships:
        members[m.alliance_id].append(Membership(m.alliance_id, m.nation, m.joined, m.left))
    return Directory(alliances=by_id, memberships={k: tuple(v) for k, v in members.items()})


def report_rows(
    reports: Sequence[tuple[ReportRecord, str | None]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the reports table (with their idempotency keys) and of the topics table."""
    rows = [values_of(r, REPORTS, added_at=r.added, idempotency_key=key) for r, key in reports]
    return rows, [{"topic": t, "report_seq": r.seq} for r, _ in reports for t in r.topics]


def event_rows(events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
    return [values_of(e, EVENTS) | values_of(e.draft, EVENTS) for e in events]


def node_rows(nodes: Sequence[tuple[int, int, bytes]]) -> list[dict[str, Any]]:
    return [{"level": lvl, "idx": idx, "hash": h.hex()} for lvl, idx, h in nodes]


def report_of(row: Any) -> ReportRecord:
    """From a row of the reports table."""
    return record_of(ReportRecord, row, label=json.loads(row.label_json))


def checkpoint_of(row: Any) -> Checkpoint:
    return record_of(Checkpoint, row, root=bytes.fromhex(row.root))


def event_of(row: Any) -> AuditEvent:
    return record_of(AuditEvent, row, draft=record_of(AuditDraft, row))
