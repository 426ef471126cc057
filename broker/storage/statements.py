"""The statements the repository runs, and the mapping between rows and records.

Pure SQLAlchemy Core: nothing here touches a connection, so every statement is built once at
import and SQLAlchemy's compiled cache hits on every execution.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    Text,
    TextClause,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

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

LOCK_HEAD = select(HEAD).where(HEAD.c.id == 1).with_for_update()
HEAD_STATE = select(HEAD.c.report_seq, HEAD.c.change_counter, HEAD.c.report_changes).where(HEAD.c.id == 1)
SAVE_HEAD = update(HEAD).where(HEAD.c.id == 1)
INSERT_REPORTS = insert(REPORTS)
INSERT_TOPICS = insert(TOPICS)
INSERT_EVENTS = insert(EVENTS)
INSERT_NODES = insert(MERKLE)
# The tables whose queued inserts may be combined into one statement on PostgreSQL (repos._flush).
COMBINABLE = {t.name: t for t in (REPORTS, TOPICS, EVENTS, MERKLE)}

REPORT_BY_ID = select(REPORTS).where(REPORTS.c.id == bindparam("id"))
REPORT_BY_KEY = select(REPORTS).where(
    REPORTS.c.originator_node == bindparam("node"), REPORTS.c.idempotency_key == bindparam("key")
)
# The channel every broker process LISTENs on (storage/listen.py). A notification means "look at
# the head again"; its payload is the head the notifying transaction committed (``head_payload``),
# or empty, so that other processes' guarded commits start from it.
CHANGE_CHANNEL = "alliance_broker_change"
NOTIFY_CALL = func.pg_notify(CHANGE_CHANNEL, bindparam("notify_payload", type_=Text()))
NOTIFY = select(NOTIFY_CALL)
# PostgreSQL refuses a payload of 8000 bytes or more; a head's frontier has one entry per bit of
# the log's size, so this is only ever reached by a log of astronomical size (then: no head).
MAX_PAYLOAD = 7000
NODE_BY_ID = select(NODES).where(NODES.c.id == bindparam("id"))
NODE_BY_TOKEN = select(NODES).where(NODES.c.token_hash == bindparam("token_hash"))
# Reports a node published since a moment (index ix_reports_originator_created): the publish
# rate limit that holds across broker processes, counted under the head lock.
RECENT_BY_NODE = (
    select(func.count().label("n"))
    .select_from(REPORTS)
    .where(
        REPORTS.c.originator_node == bindparam("node"),
        REPORTS.c.created_at > bindparam("since", type_=REPORTS.c.created_at.type),
    )
)
# What a guarded commit (repos.GuardedTx, PostgreSQL only) checks in the WHERE clause of the
# head's update, so once it holds the row's lock: the head is still the one the writes were
# computed from, every field of it (every transaction that stores a report or an event, or
# changes security state, moves one of them; and a head learned from a NOTIFY payload, which
# any database role can send, is used only if it is the row), no report is stored under the
# batch's client-chosen ids or (node, idempotency key) pairs, and no node published more than
# its room allows since g_since.
# The subqueries read the statement's snapshot, taken before the lock: that they are still
# current follows from the head being unchanged (whoever committed a report moved it).
GUARD: tuple[ColumnElement[bool] | TextClause, ...] = (
    HEAD.c.report_seq == bindparam("g_report_seq"),
    HEAD.c.audit_seq == bindparam("g_audit_seq"),
    HEAD.c.audit_hash == bindparam("g_audit_hash", type_=Text()),
    HEAD.c.change_counter == bindparam("g_change_counter"),
    HEAD.c.report_changes == bindparam("g_report_changes"),
    HEAD.c.audit_frontier == bindparam("g_audit_frontier", type_=Text()),
    text(
        "NOT EXISTS (SELECT 1 FROM reports AS r WHERE r.id = ANY(:g_ids))"
        " AND NOT EXISTS (SELECT 1 FROM reports AS r"
        "  JOIN unnest(CAST(:g_key_nodes AS text[]), CAST(:g_keys AS text[])) AS k(node, key)"
        "  ON r.originator_node = k.node AND r.idempotency_key = k.key)"
        " AND NOT EXISTS (SELECT 1 FROM unnest(CAST(:g_nodes AS text[]), CAST(:g_room AS bigint[]))"
        "  AS q(node, room)"
        "  WHERE (SELECT count(*) FROM reports AS r"
        "   WHERE r.originator_node = q.node AND r.created_at > :g_since) > q.room)"
    ).bindparams(
        bindparam("g_ids", type_=ARRAY(Text)),
        bindparam("g_key_nodes", type_=ARRAY(Text)),
        bindparam("g_keys", type_=ARRAY(Text)),
        bindparam("g_nodes", type_=ARRAY(Text)),
        bindparam("g_room", type_=ARRAY(BigInteger)),
        bindparam("g_since", type_=REPORTS.c.created_at.type),
    ),
)
ALLIANCES = select(ALLIANCE_TABLE)
MEMBERSHIPS = select(MEMBERSHIP_TABLE).order_by(MEMBERSHIP_TABLE.c.id)
CURSOR = select(CURSORS.c.sequence).where(
    CURSORS.c.node_id == bindparam("node"), CURSORS.c.name == bindparam("name")
)


def head_of(row: Any) -> Head:
    frontier = tuple((int(lvl), int(idx), bytes.fromhex(h)) for lvl, idx, h in json.loads(row.audit_frontier))
    return Head(
        row.report_seq, row.audit_seq, row.audit_hash, row.change_counter, frontier, row.report_changes
    )


def head_of_mapping(values: Mapping[str, Any]) -> Head:
    """``head_of`` for a row (or values) read by column name."""
    return head_of(_Values(values))


def head_payload(values: dict[str, Any] | None) -> str:
    """A NOTIFY payload for the head saved with ``values`` (``head_values``); empty without."""
    if values is None:
        return ""
    payload = json.dumps(values, separators=(",", ":"))
    return payload if len(payload) <= MAX_PAYLOAD else ""


def head_from_payload(payload: str) -> Head | None:
    """The head a NOTIFY payload carries; None for an empty or malformed one (a hint only: a
    guarded commit checks the head it assumes against the row)."""
    try:
        head = head_of_mapping(json.loads(payload))
        if not (isinstance(head.report_seq, int) and isinstance(head.audit_seq, int)):
            return None
        if not (isinstance(head.audit_hash, str) and isinstance(head.change_counter, int)):
            return None
        return head
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


class _Values:
    def __init__(self, values: Mapping[str, Any]) -> None:
        self.report_seq = values["report_seq"]
        self.audit_seq = values["audit_seq"]
        self.audit_hash = values["audit_hash"]
        self.change_counter = values["change_counter"]
        self.report_changes = values.get("report_changes", 0)
        self.audit_frontier = values["audit_frontier"]


def head_values(head: Head) -> dict[str, Any]:
    return {
        "report_seq": head.report_seq,
        "audit_seq": head.audit_seq,
        "audit_hash": head.audit_hash,
        "change_counter": head.change_counter,
        "report_changes": head.report_changes,
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
