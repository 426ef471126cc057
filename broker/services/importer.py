"""Importing what a peer's stream carries: reports (verified against their attestation chain,
stored as this broker's own with their provenance) and recall notices.

Every frame ends in exactly one audit event, written in the same transaction as its effect and
as the peer's cursor: ``import`` allowed (the report stored), or ``import`` denied with a stable
reason (nothing stored). Either way the cursor moves past it, so a refused report is not offered
again; the caller acks upstream only after this commit. Frames received together are imported
in one transaction (one audit group, one commit), each decided as if it came alone. A frame at
or below the peer's stored cursor was decided already (every broker process pulls every peer):
acked, and not decided again, so it has one event whatever the number of processes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from prometheus_client import Counter

from broker.crypto import attest, envelope
from broker.crypto.tokens import hash_token
from broker.domain import federation as fed
from broker.domain.alliances import Directory
from broker.domain.canonical import canonical, sha256_hex
from broker.domain.federation import Imported, PeerRecord
from broker.domain.ids import canonical_report_id
from broker.domain.labels import parse_label
from broker.domain.nations import is_nation
from broker.domain.records import AuditDraft, Head, NodeRecord, ReportRecord
from broker.domain.time import parse_time
from broker.errors import BrokerError, Conflict
from broker.services import journal
from broker.services.context import Context
from broker.services.publishing import index_rows, stamp_after
from broker.services.wire.requests import MAX_TOPICS, NODE_ID, TOPIC
from broker.storage import federation as store
from broker.storage.repos import Tx

IMPORTS = Counter(
    "broker_peer_imports", "Frames imported from peers, by peer and decision", ["peer", "decision"]
)


@dataclass(frozen=True)
class Frame:
    """A report frame from a peer, parsed; ``chain`` verified (None when refused before that)."""

    report: dict[str, Any]
    label_json: str
    attestations: list[Any]
    upstream_sequence: int


ALREADY_DECIDED = "already_decided"  # a frame at or below the peer's stored cursor: no event


class Refused(Exception):
    """A frame this broker will not import; ``reason`` is the audit reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_frame(frame: Mapping[str, Any]) -> Frame:
    report, federation = frame.get("report"), frame.get("federation")
    if not isinstance(report, dict) or not isinstance(federation, dict):
        raise Refused(fed.MALFORMED, "a report frame from a peer carries report and federation")
    label_json, chain, sequence = (
        federation.get("label_json"),
        federation.get("attestations"),
        report.get("sequence"),
    )
    if not isinstance(label_json, str) or not isinstance(chain, list) or type(sequence) is not int:
        raise Refused(fed.MALFORMED, "federation needs label_json and attestations; report a sequence")
    if not isinstance(report.get("id"), str) or not isinstance(report.get("payload"), dict):
        raise Refused(fed.MALFORMED, "the report has no id or no payload in clear")
    _check_storable(report, label_json)
    return Frame(report, label_json, chain, sequence)


def _check_storable(report: dict[str, Any], label_json: str) -> None:
    """What this broker could not store, or a local publish could not carry, refused before the
    import's transaction: there it would fail the whole batch, and the link would be offered the
    same frame forever. The id a canonical UUID (another spelling of one would pass as another
    report), the originator a node id and a nation, the topics a publish's, ``created`` a
    moment; the label and payload readable and canonical."""
    origin = report.get("originator")
    topics = report.get("topics")
    if canonical_report_id(report["id"]) != report["id"]:
        raise Refused(fed.MALFORMED, "the report id is not a canonical UUID")
    if not (
        isinstance(origin, dict)
        and isinstance(origin.get("node"), str)
        and NODE_ID.fullmatch(origin["node"])
        and isinstance(origin.get("nation"), str)
        and is_nation(origin["nation"])
    ):
        raise Refused(fed.MALFORMED, "the originator is not a node id and a nation")
    if not isinstance(topics, list) or len(topics) > MAX_TOPICS:
        raise Refused(fed.MALFORMED, f"topics must be a list of at most {MAX_TOPICS}")
    if not all(isinstance(t, str) and TOPIC.fullmatch(t) for t in topics):
        raise Refused(fed.MALFORMED, f"every topic must match {TOPIC.pattern}")
    if not isinstance(report.get("signature"), str | None):
        raise Refused(fed.MALFORMED, "the signature is not a string")
    try:
        if parse_time(report.get("created"), name="created") is None:
            raise Refused(fed.MALFORMED, "the report has no created")
        canonical(json.loads(label_json))
        canonical(report["payload"])
    except (BrokerError, ValueError, TypeError, RecursionError) as exc:
        raise Refused(fed.MALFORMED, f"the report cannot be stored: {exc}") from None


def verify(ctx: Context, peer: PeerRecord, frame: Frame) -> attest.VerifiedChain:
    """The checks that need no database: the chain from the pinned key down to the origin, the
    report against what the origin attested, the origins this link may carry, loops, and that
    the label is one this broker can decide."""
    try:
        chain = attest.verify_chain(
            frame.attestations, pinned_vkey=peer.broker_key, report=frame.report, label_json=frame.label_json
        )
    except attest.AttestationError as exc:
        raise Refused(exc.reason, str(exc)) from None
    if frame.report["originator"]["nation"] not in peer.origins:
        raise Refused(fed.ORIGIN_NOT_CARRIED, "this link may not speak for the originator's nation")
    own = ctx.settings.audit_origin
    if any(hop.broker == own for hop in chain.hops):
        raise Refused(fed.LOOP, "the report has already passed through this broker")
    return chain


async def import_report(ctx: Context, peer: PeerRecord, raw: Mapping[str, Any]) -> str:
    """Import one report frame; the decision's reason (``imported`` or why it was refused)."""
    return (await import_reports(ctx, peer, [raw]))[0]


async def import_reports(ctx: Context, peer: PeerRecord, raws: Sequence[Mapping[str, Any]]) -> list[str]:
    """Import report frames received together in one transaction and one audit group, each
    decided as if it came alone, in order (one ``import`` event each), the peer's cursor moved
    past the last. The caller acks upstream only once this has returned (committed). Returns
    each frame's decision: ``imported`` or why it was refused."""
    if not raws:
        return []
    checked = [_checked(ctx, peer, raw) for raw in raws]  # no database: outside the lock
    decisions: list[str] = []
    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        decided = (await _still_configured(tx, peer)).cursor
        directory = await ctx.directory_at(tx, head.change_counter)
        batch = _Batch(head=head, now=ctx.now())
        for raw, found in zip(raws, checked, strict=True):
            reason: str | None
            if _upstream_sequence(raw) <= decided:
                # Decided already, by another broker process pulling this peer too (each does):
                # on the record once, so acked and not decided again.
                decisions.append(ALREADY_DECIDED)
                continue
            if isinstance(found, Refused):
                reason = found.reason
            elif (reason := await _refusal(ctx, tx, directory, peer, *found)) is None:
                await _store(ctx, tx, peer, batch, *found)
                decisions.append("imported")
                continue
            assert reason is not None
            batch.deny(peer, raw, reason)
            decisions.append(reason)
        await _commit(ctx, tx, peer, batch)
    for decision in decisions:
        if decision != ALREADY_DECIDED:
            IMPORTS.labels(peer.name, "allow" if decision == "imported" else "deny").inc()
    return decisions


def _upstream_sequence(raw: Mapping[str, Any]) -> int | float:
    """A frame's upstream sequence; infinity when it has none (it is decided, and refused)."""
    report = raw.get("report")
    sequence = report.get("sequence") if isinstance(report, dict) else None
    return sequence if type(sequence) is int else float("inf")


async def _still_configured(tx: Tx, peer: PeerRecord) -> PeerRecord:
    """Under the head lock: ``peer`` (as its puller read it, a scan ago and maybe in another
    process) is still the configured peer of its name, with the key and origins the frames were
    verified against. Otherwise (removed, or removed and added again) ``Conflict`` and nothing is
    written, acked or audited: the puller stops at its next scan of the peers table."""
    current = await store.peer(tx, peer.name)
    pinned = (peer.created_at, peer.url, peer.broker_key, peer.origins)
    if current is None or (current.created_at, current.url, current.broker_key, current.origins) != pinned:
        raise Conflict(f"peer {peer.name!r} was removed or replaced", code="peer_gone")
    return current


def _checked(
    ctx: Context, peer: PeerRecord, raw: Mapping[str, Any]
) -> tuple[Frame, attest.VerifiedChain] | Refused:
    try:
        frame = parse_frame(raw)
        return frame, verify(ctx, peer, frame)
    except Refused as exc:
        return exc


async def _refusal(
    ctx: Context, tx: Tx, directory: Directory, peer: PeerRecord, frame: Frame, chain: attest.VerifiedChain
) -> str | None:
    """Why ``frame`` cannot be stored here now (None: it can): a conflict, or a label this
    broker cannot decide (an unknown alliance id)."""
    reason = await _conflict(tx, peer, frame, chain.originator_key)
    if reason is None:
        try:
            parse_label(json.loads(frame.label_json), policy=ctx.policy, known_alliances=directory.alliances)
        except (BrokerError, ValueError) as exc:
            reason = getattr(exc, "code", "invalid_label")
    return reason


async def _conflict(tx: Tx, peer: PeerRecord, frame: Frame, key: str | None) -> str | None:
    """``duplicate`` when the id is held already (the second path of a diamond, or twice in one
    batch: the earlier insert is visible here), and ``originator_conflict`` when the
    originator's id is one of this broker's own nodes, or another broker's originator that the
    frame names under another nation, or attests another key for through a peer other than the
    one that introduced it (which would re-key it for every report it signed: the other peer's
    would no longer verify at local SDKs, and this peer's would verify under its id)."""
    if await tx.report(frame.report["id"]) is not None:
        return fed.DUPLICATE
    origin = frame.report["originator"]
    node = await tx.node(origin["node"])
    if node is None:
        return None
    if node.foreign_peer is None or node.nation != origin["nation"]:
        return fed.ORIGINATOR_CONFLICT
    if node.foreign_peer != peer.name and key is not None and key != node.ed25519_public_key:
        return fed.ORIGINATOR_CONFLICT
    return None


@dataclass
class _Batch:
    """One transaction's imports: the audit drafts in order, the reports stored (each with the
    position of its import event, whose hash its provenance names), the head as they leave it,
    and the cursor and lag reached."""

    head: Head
    now: datetime
    drafts: list[AuditDraft] = field(default_factory=list)
    stored: list[tuple[int, ReportRecord, Frame, attest.VerifiedChain]] = field(default_factory=list)
    cursor: int | None = None
    lag: float = 0.0

    def reach(self, sequence: object, *, lag: float) -> None:
        if type(sequence) is int and (self.cursor is None or sequence > self.cursor):
            self.cursor = sequence
        self.lag = lag

    def deny(self, peer: PeerRecord, raw: Mapping[str, Any], reason: str) -> None:
        found = raw.get("report")
        report: Mapping[str, Any] = found if isinstance(found, dict) else {}
        sequence = report.get("sequence")
        report_id = report.get("id") if isinstance(report.get("id"), str) else None
        self.drafts.append(
            AuditDraft(
                action="import",
                actor=peer.name,
                report=report_id if report_id and len(report_id) <= 36 else None,
                decision="deny",
                reason=reason,
                details={"peer": peer.name, "upstream_sequence": sequence if type(sequence) is int else None},
            )
        )
        self.reach(sequence, lag=0.0)


async def _store(
    ctx: Context, tx: Tx, peer: PeerRecord, batch: _Batch, frame: Frame, chain: attest.VerifiedChain
) -> None:
    report = frame.report
    origin = report["originator"]
    await _originator(tx, peer, origin["node"], origin["nation"], chain.originator_key, now=batch.now)
    created = parse_time(report["created"], name="created")
    assert created is not None
    added = stamp_after(batch.head.report_created, batch.now)  # the created it attested may be older
    record = replace(
        _record(ctx, peer, frame, seq=batch.head.report_seq + 1, created=created), added_at=added
    )
    await tx.insert_reports([(record, None)])
    await tx.insert_objects(index_rows(ctx, record, report["payload"]))
    batch.stored.append((len(batch.drafts), record, frame, chain))
    batch.drafts.append(_imported_draft(peer, record, chain))
    batch.head = replace(batch.head, report_seq=record.seq, report_created=added)
    batch.reach(frame.upstream_sequence, lag=_lag(batch.now, created))


async def _commit(ctx: Context, tx: Tx, peer: PeerRecord, batch: _Batch) -> None:
    """The provenance of each report stored (its import event's hash, now that the group is
    complete), the peer's cursor, and the audit group."""
    if batch.stored:
        events, _nodes, _head = journal.chain(batch.head, batch.drafts, now=batch.now)
        own_name = ctx.settings.audit_origin
        for index, record, frame, chain in batch.stored:
            own = {"broker": own_name, "sequence": record.seq, "event_hash": events[index].hash}
            path = tuple(
                {"broker": h.broker, "sequence": h.sequence, "event_hash": h.event_hash} for h in chain.hops
            )
            imported = Imported(
                report_seq=record.seq,
                peer=peer.name,
                provenance=(*path, own),
                attestations=tuple(frame.attestations),
                origin_signer=chain.origin_signer,
            )
            await store.insert_provenance(tx, imported)
        await tx.notify_change()
    if batch.cursor is not None:
        await store.advance_peer(tx, peer.name, cursor=batch.cursor, lag=batch.lag)
    await journal.record(tx, batch.drafts, now=batch.now, head=batch.head)


def _record(ctx: Context, peer: PeerRecord, frame: Frame, *, seq: int, created: datetime) -> ReportRecord:
    """The imported report as stored at ``seq``: its payload encrypted under this broker's
    keyring, its label and originator as the frame carried them."""
    report = frame.report
    origin = report["originator"]
    label = json.loads(frame.label_json)
    canonical_label, canonical_payload = canonical(label), canonical(report["payload"])
    stored = envelope.encrypt_payload(
        plaintext=canonical_payload,
        report_id=report["id"],
        canonical_label=canonical_label,
        keyring=ctx.keyring,
    )
    return ReportRecord(
        seq=seq,
        id=report["id"],
        originator_node=origin["node"],
        originator_nation=origin["nation"],
        label_json=frame.label_json,
        label=label,
        label_hash=sha256_hex(canonical_label),
        topics=tuple(report["topics"]),
        created_at=created,
        payload_sha256=sha256_hex(canonical_payload),
        signature=report.get("signature"),
        request_hash=sha256_hex(canonical({"import": report["id"], "peer": peer.name})),
        ciphertext=stored.ciphertext,
        wrapped_key=stored.wrapped_key,
        kek_id=stored.kek_id,
    )


def _imported_draft(peer: PeerRecord, record: ReportRecord, chain: attest.VerifiedChain) -> AuditDraft:
    """The ``import`` event: the peer, the hop it came from, and the broker it started at."""
    last = chain.hops[-1]
    return AuditDraft(
        action="import",
        actor=peer.name,
        report=record.id,
        node=record.originator_node,
        nation=record.originator_nation,
        decision="allow",
        reason="imported",
        details={
            "peer": peer.name,
            "upstream_broker": last.broker,
            "upstream_sequence": last.sequence,
            "upstream_event_hash": last.event_hash,
            "origin": chain.hops[0].broker,
            "label_hash": record.label_hash,
        },
    )


def _lag(now: datetime, created: datetime) -> float:
    return max((now - created).total_seconds(), 0.0)


async def _originator(
    tx: Tx, peer: PeerRecord, node_id: str, nation: str, key: str | None, *, now: datetime
) -> None:
    """The node row standing for another broker's originator, marked foreign (it never
    authenticates): no role, a token nobody holds, the Ed25519 key the origin broker attested
    (so local nodes' SDKs verify the signature)."""
    existing = await tx.node(node_id)
    if existing is None:
        node = NodeRecord(
            id=node_id,
            nation=nation,
            clearance="UNCLASSIFIED",
            caveats=(),
            roles=(),
            token_hash=hash_token(secrets.token_urlsafe(32)),
            created_at=now,
            ed25519_public_key=key,
            foreign_peer=peer.name,
        )
        await tx.insert_node(node)
    elif key is not None and existing.ed25519_public_key != key:
        await tx.update_node(replace(existing, ed25519_public_key=key))


async def import_recall(ctx: Context, peer: PeerRecord, raw: Mapping[str, Any]) -> str:
    """A recall notice from a peer: verified against the origin broker that attested the report,
    then the report is recalled here (which notifies local streams and downstream links)."""
    report_id = raw.get("id")
    federation = raw.get("federation")
    chain = federation.get("attestations") if isinstance(federation, dict) else None
    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        await _still_configured(tx, peer)
        report = await tx.report(report_id) if isinstance(report_id, str) else None
        imported = None if report is None else (await store.provenance_of(tx, [report.seq])).get(report.seq)
        reason = "recalled"
        if report is None or imported is None:
            reason = "not_found"
        else:
            try:
                attest.verify_recall(
                    chain,
                    pinned_vkey=peer.broker_key,
                    report_id=report.id,
                    origin_signer=imported.origin_signer,
                )
            except attest.AttestationError as exc:
                reason = exc.reason
        now = ctx.now()
        changed = reason == "recalled" and report is not None and report.recalled_at is None
        draft = AuditDraft(
            action="recall",
            actor=peer.name,
            report=None if report is None else report.id,
            decision="allow" if reason == "recalled" else "deny",
            reason=reason,
            details={"peer": peer.name},
        )
        if changed and report is not None:
            await tx.set_recalled(report.id, at=now)
            await store.set_recall_chain(tx, report.seq, list(chain or []))
        await journal.record(tx, [draft], now=now, head=head, report_changed=changed)
    return reason
