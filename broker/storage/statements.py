"""The statements the repository runs, and the mapping between rows and records.

Pure SQLAlchemy Core: nothing here touches a connection, so every statement is built once at
import and SQLAlchemy's compiled cache hits on every execution.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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

from broker.domain.alliances import Alliance, Directory, History, Membership
from broker.domain.records import AuditDraft, AuditEvent, Checkpoint, Head, NodeRecord, ReportRecord
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


def table(model: type[object]) -> Table:
    found = getattr(model, "__table__", None)
    assert isinstance(found, Table)
    return found


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
# The tables whose queued inserts may be combined into one statement on PostgreSQL (repos._flush).
COMBINABLE = {t.name: t for t in (REPORTS, TOPICS, TAXII_OBJECTS, EVENTS, MERKLE)}

REPORT_BY_ID = select(REPORTS).where(REPORTS.c.id == bindparam("id"))
REPORT_BY_KEY = select(REPORTS).where(
    REPORTS.c.originator_node == bindparam("node"), REPORTS.c.idempotency_key == bindparam("key")
)
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


def head_of(row: Any) -> Head:
    frontier = tuple((int(lvl), int(idx), bytes.fromhex(h)) for lvl, idx, h in json.loads(row.audit_frontier))
    return Head(
        row.report_seq,
        row.audit_seq,
        row.audit_hash,
        row.change_counter,
        frontier,
        row.report_changes,
        row.report_created,
    )


def head_values(head: Head) -> dict[str, Any]:
    return {
        "report_seq": head.report_seq,
        "audit_seq": head.audit_seq,
        "audit_hash": head.audit_hash,
        "change_counter": head.change_counter,
        "report_changes": head.report_changes,
        "report_created": head.report_created,
        "audit_frontier": json.dumps([[lvl, idx, h.hex()] for lvl, idx, h in head.frontier]),
    }


def history_of(value: str) -> History:
    return "since-join" if value == "since-join" else "full"


def directory_of(alliances: Sequence[Any], memberships: Sequence[Any]) -> Directory:
    by_id = {r.id: Alliance(id=r.id, name=r.name, history=history_of(r.history)) for r in alliances}
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
            "added_at": r.added,
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


def node_values(node: NodeRecord) -> dict[str, Any]:
    """The columns of the nodes table that a node's record sets (all but ``revoked_at``)."""
    return {
        "id": node.id,
        "nation": node.nation,
        "clearance": node.clearance,
        "caveats": list(node.caveats),
        "roles": list(node.roles),
        "token_hash": node.token_hash,
        "ed25519_public_key": node.ed25519_public_key,
        "x25519_public_key": node.x25519_public_key,
        "tls_fingerprint": node.tls_fingerprint,
        "token_expires_at": node.token_expires_at,
        "created_at": node.created_at,
        "audience": list(node.audience),
        "origins": list(node.origins),
        "foreign_peer": node.foreign_peer,
    }


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
        token_expires_at=row.token_expires_at,
        audience=tuple(row.audience or ()),
        origins=tuple(row.origins or ()),
        foreign_peer=row.foreign_peer,
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
        added_at=row.added_at,
    )


def checkpoint_of(row: Any) -> Checkpoint:
    return Checkpoint(size=row.size, root=bytes.fromhex(row.root), time=row.time, note=row.note)


def event_of(row: Any) -> AuditEvent:
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
