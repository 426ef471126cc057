"""Publishing reports: parse and check a submission, then store it in a group-committed
transaction with its audit event and TAXII index rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from broker.crypto import cursors, envelope, signing
from broker.domain import stix
from broker.domain.canonical import canonical, sha256_hex
from broker.domain.ids import scoped_report_id
from broker.domain.labels import SecurityLabel
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.errors import AccessDenied, BrokerError, Conflict, InvalidInput, RateLimited, Stale
from broker.services import audit
from broker.services.auth import NodeGone, RoleLost, recheck, refuse_gone, require_role
from broker.services.context import Context
from broker.services.decisions import deny_draft, label_details
from broker.services.groupcommit import GroupCommit
from broker.services.wire.decode import decode
from broker.services.wire.requests import PublishRequest
from broker.storage.repos import PublishReads, Tx


@dataclass(frozen=True)
class Submission:
    """A publish request parsed at the edge; its invariants hold from here on."""

    report_id: str | None
    label_raw: dict[str, Any]
    label: SecurityLabel
    canonical_label: bytes
    topics: tuple[str, ...]
    canonical_payload: bytes
    signature: str | None
    request_hash: str


def parse_submission(body: object, *, ctx: Context, known_alliances: Collection[str]) -> Submission:
    """Validate a publish body (``wire.requests.PublishRequest``); InvalidInput (422) names the
    first problem."""
    request = decode(PublishRequest, body, context={"policy": ctx.policy, "known_alliances": known_alliances})
    label_raw, topics = request.label.raw, tuple(dict.fromkeys(request.topics))
    canonical_label, canonical_payload = canonical(label_raw), canonical(request.payload)
    request_hash = sha256_hex(
        canonical(
            {
                "id": request.id,
                "label": label_raw,
                "topics": list(topics),
                "payload": sha256_hex(canonical_payload),
                "signature": request.signature,
            }
        )
    )
    return Submission(
        request.id,
        label_raw,
        request.label.label,
        canonical_label,
        topics,
        canonical_payload,
        request.signature,
        request_hash,
    )


def _check_publisher(node: NodeRecord, sub: Submission, *, ctx: Context) -> None:
    """A node may not label above its clearance or with caveats it does not hold, and a node
    with a registered Ed25519 key must sign."""
    policy = ctx.policy
    if not policy.is_level(node.clearance) or policy.rank(node.clearance) < policy.rank(
        sub.label.classification
    ):
        raise AccessDenied("the label is above your clearance", code="label_above_clearance")
    if not sub.label.caveats <= set(node.caveats):
        raise AccessDenied("the label has a caveat you do not hold", code="caveat_not_held")
    if node.ed25519_public_key is None:
        if sub.signature is not None:
            raise InvalidInput(
                "no Ed25519 key is registered to verify this signature", code="unverifiable_signature"
            )
        return
    if sub.signature is None:
        raise InvalidInput("your node has an Ed25519 key: reports must be signed", code="signature_required")
    message = signing.signing_message(
        canonical_label=sub.canonical_label, canonical_payload=sub.canonical_payload
    )
    if not signing.verify(
        public_key_b64=node.ed25519_public_key, signature_b64=sub.signature, message=message
    ):
        raise InvalidInput("the signature does not verify", code="invalid_signature")


def _receipt(report: ReportRecord) -> dict[str, Any]:
    receipt = {"id": report.id, "sequence": report.seq, "created": report.created_at.isoformat()}
    if not report.label.get("releasable_to"):
        # Accepted (a nation may keep a report to itself), but rarely what a publisher meant.
        receipt["notice"] = (
            f"releasable_to is empty: only nodes of the originator's nation ({report.originator_nation}) "
            "can read this report"
        )
    return receipt


async def publish(
    ctx: Context,
    node: NodeRecord,
    body: object,
    *,
    idempotency_key: str | None,
    attach: Attachment | None = None,
) -> dict[str, Any]:
    """Store a report and its audit event in one transaction; return the receipt.

    The receipt is returned only after commit. A repeated idempotency key (or report id) with
    the same request returns the first receipt; with a different request, 409. ``attach``
    writes what belongs with a new report (TAXII's status resource) in that same transaction.
    """
    await require_role(ctx, node, "publish", act="publish")
    if idempotency_key is not None and not _usable_key(idempotency_key):
        raise InvalidInput(
            "Idempotency-Key must be 1 to 200 characters of UTF-8", code="invalid_idempotency_key"
        )
    try:
        sub = await _parse_fresh(ctx, body)
        _check_publisher(node, sub, ctx=ctx)
    except BrokerError as exc:
        await audit.record_alone(
            ctx,
            [
                AuditDraft(
                    action="publish",
                    actor=node.id,
                    node=node.id,
                    nation=node.nation,
                    decision="deny",
                    reason=exc.code,
                )
            ],
        )
        raise
    try:
        report = await _publisher(ctx).submit(
            PublishAct(node=node, sub=sub, idempotency_key=idempotency_key, attach=attach)
        )
    except (NodeGone, RoleLost) as exc:
        await refuse_gone(ctx, exc, act="publish")
    except BrokerError as exc:  # conflicts and rate limits are refusals too, and audited
        if not isinstance(exc, Stale) and exc.status < 500:
            await audit.record_alone(ctx, [deny_draft(node, None, exc.code, "publish")])
        raise
    return _receipt(report)


def _usable_key(key: str) -> bool:
    """1 to 200 characters the database can store. Header bytes that are not UTF-8 reach us as
    lone surrogates: refused here, they would fail the group commit's shared transaction (and so
    every other node's publish in it would be retried alone)."""
    if not 0 < len(key) <= 200:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Rows that belong with a new report, written from it in its transaction: both are stored or
# neither (a status resource apart from its report could answer for a report that is not there).
Attachment = Callable[[Tx, ReportRecord], Awaitable[None]]


@dataclass(frozen=True)
class PublishAct:
    """One checked publish request, waiting for its transaction."""

    node: NodeRecord
    sub: Submission
    idempotency_key: str | None
    attach: Attachment | None = None


@dataclass
class _Batch:
    """Reports stored so far in this transaction, for idempotency checks among them."""

    by_key: dict[tuple[str, str], ReportRecord] = field(default_factory=dict)
    by_id: dict[str, ReportRecord] = field(default_factory=dict)


def _publisher(ctx: Context) -> GroupCommit[PublishAct, ReportRecord]:
    """Concurrent publishes share a transaction (group commit); each still answers only after
    the commit that holds its report."""
    if ctx.publishes is None:
        ctx.publishes = GroupCommit(ctx.db, partial(store_publishes, ctx))
    return ctx.publishes


async def store_publishes(
    ctx: Context, tx: Tx, acts: Sequence[PublishAct]
) -> list[ReportRecord | BrokerError]:
    """Store ``acts`` (the earlier receipt for a repeat) with their audit events, in ``tx``."""
    limits = _RateWindow(ctx, ctx.now())
    reads = await limits.lock(tx, acts)
    head = reads.head
    now = ctx.now()  # read once the order is fixed: the lock is held to the commit
    stamp = head.report_created
    await ctx.directory_at(tx, head.change_counter)  # keyring fresh under the lock (see rotate_keys)
    checked: Sequence[PublishAct | BrokerError] = acts
    if any(act.node.version != head.change_counter for act in acts):
        checked = [await _current_act(ctx, tx, act, head.change_counter) for act in acts]
    seq = head.report_seq
    batch = _Batch(by_key=dict(reads.by_key), by_id=dict(reads.by_id))
    outcomes: list[ReportRecord | BrokerError] = []
    new: list[tuple[ReportRecord, str | None]] = []
    attached: list[tuple[Attachment, ReportRecord]] = []
    indexed: list[dict[str, Any]] = []
    drafts: list[AuditDraft] = []
    for act in checked:
        if isinstance(act, BrokerError):
            outcomes.append(act)
            continue
        settled = _settled(act, batch, limits)
        if settled is not None:
            outcomes.append(settled)
            continue
        seq += 1
        stamp = stamp_after(stamp, now)
        report, draft = build_report(ctx, act.node, act.sub, seq=seq, now=stamp)
        new.append((report, act.idempotency_key))
        indexed += index_rows(ctx, report, json.loads(act.sub.canonical_payload))
        drafts.append(draft)
        if act.attach is not None:
            attached.append((act.attach, report))
        batch.by_id[report.id] = report
        if act.idempotency_key is not None:
            batch.by_key[(act.node.id, act.idempotency_key)] = report
        outcomes.append(report)
    if new:
        await tx.insert_reports(new)
        await tx.insert_objects(indexed)
        for attach, report in attached:
            await attach(tx, report)
        await tx.notify_change()
        await audit.record(tx, drafts, now=now, head=replace(head, report_seq=seq, report_created=stamp))
    return outcomes


def _settled(
    act: PublishAct | BrokerError, batch: _Batch, limits: _RateWindow
) -> ReportRecord | BrokerError | None:
    """What an act gets without a new report: its refusal, or the report an earlier publish with
    its idempotency key or id stored; None when it is to be stored."""
    if isinstance(act, BrokerError):
        return act
    try:
        earlier = _earlier(act.node, act.sub, act.idempotency_key, batch)
    except BrokerError as exc:
        return exc
    if earlier is not None:
        return earlier
    if limits.exhausted(act.node.id):
        return RateLimited("too many reports per second from this node", code="rate_limited")
    return None


def index_rows(ctx: Context, report: ReportRecord, payload: object) -> list[dict[str, Any]]:
    """TAXII's object index for a report (``models.TaxiiObjectRow``), written with it."""
    key = cursors.index_key(ctx.keyring.checkpoint_key)
    found = stix.index_of(payload, key=key, date_added=stix.timestamp(report.added))
    return [
        {"report_seq": report.seq, "position": o.position, "digest": o.digest}
        | {"version": o.version, "spec_version": o.spec_version}
        for o in found
    ]


def stamp_after(previous: datetime | None, now: datetime) -> datetime:
    """A report's stamp (``created`` of a publish, ``added_at`` of an import): ``now``, or just
    after the previous report's when that is not earlier. So it strictly follows the sequence:
    TAXII's ``added_after`` reads the sequence by it, and a poller resuming from the last stamp
    it saw misses nothing even when another broker's clock is behind or this one steps back."""
    if previous is None or now > previous:
        return now
    return previous + timedelta(microseconds=1)


class _RateWindow:
    """The per-node publish limit across every broker process sharing a PostgreSQL database: at
    most ``publish_burst`` reports in any ``publish_burst / publish_rate_per_second`` seconds,
    counted in the database under the head lock (so instances cannot each grant the full rate).
    A SQLite file is served by one broker, whose own token bucket (web.handlers) is the limit:
    there ``since`` is None and nothing is counted.

    The count is a statement of its own after the lock (a round trip), and it is skipped when
    the head shows that no node can reach the limit: fewer reports in the whole log since the
    window began (bounded by ``ctx.report_marks``) than the burst leaves room for this batch."""

    def __init__(self, ctx: Context, now: datetime) -> None:
        settings = ctx.settings
        self.burst = settings.publish_burst
        window = timedelta(seconds=settings.publish_burst / settings.publish_rate_per_second)
        self.since: datetime | None = now - window if ctx.db.shared else None
        self.marks = ctx.report_marks
        self.counts: dict[str, int] = {}  # reports per node in the window, as read under the lock

    async def lock(self, tx: Tx, acts: Sequence[PublishAct]) -> PublishReads:
        """Lock the head and read what ``acts`` must be checked against, counts included."""
        head = await tx.lock_head()
        since = self.since
        if since is not None:
            self.marks.note(head.report_created, head.report_seq)
            bound = self.marks.bound(since, head.report_seq)
            if bound is not None and bound + len(acts) <= self.burst:
                since = None  # no node can reach the limit: nothing to count
        reads = await tx.publish_reads(
            keys={(a.node.id, a.idempotency_key) for a in acts if a.idempotency_key is not None},
            ids={_stored_id(a.node, a.sub) for a in acts if a.sub.report_id is not None},
            nodes={a.node.id for a in acts},
            since=since,
        )
        self.counts = dict(reads.recent)
        return reads

    def exhausted(self, node: str) -> bool:
        """True when ``node`` may not publish one more report now; else count it."""
        if self.since is None:
            return False
        if self.counts.get(node, 0) >= self.burst:
            return True
        self.counts[node] = self.counts.get(node, 0) + 1
        return False


async def _current_act(ctx: Context, tx: Tx, act: PublishAct, counter: int) -> PublishAct | BrokerError:
    """``act`` with its node read again under the head lock (something changed since it
    authenticated): refused when the node was revoked meanwhile, checked again when its
    clearance, caveats or keys changed; its credential and role are checked again too."""
    try:
        node = await recheck(tx, act.node, counter, now=ctx.now(), role="publish")
        if node.version != act.node.version:
            _check_publisher(node, act.sub, ctx=ctx)
    except BrokerError as exc:
        return exc
    return replace(act, node=node)


def build_report(
    ctx: Context, node: NodeRecord, sub: Submission, *, seq: int, now: datetime
) -> tuple[ReportRecord, AuditDraft]:
    """The stored form of a submission (payload encrypted under a fresh data key) and its
    publish event."""
    report_id = _stored_id(node, sub)
    stored = envelope.encrypt_payload(
        plaintext=sub.canonical_payload,
        report_id=report_id,
        canonical_label=sub.canonical_label,
        keyring=ctx.keyring,
    )
    report = ReportRecord(
        seq=seq,
        id=report_id,
        originator_node=node.id,
        originator_nation=node.nation,
        label_json=json.dumps(sub.label_raw),
        label=sub.label_raw,
        label_hash=sha256_hex(sub.canonical_label),
        topics=sub.topics,
        created_at=now,
        added_at=now,  # published here: added when created
        payload_sha256=sha256_hex(sub.canonical_payload),
        signature=sub.signature,
        request_hash=sub.request_hash,
        ciphertext=stored.ciphertext,
        wrapped_key=stored.wrapped_key,
        kek_id=stored.kek_id,
    )
    draft = AuditDraft(
        action="publish",
        actor=node.id,
        report=report_id,
        node=node.id,
        nation=node.nation,
        decision="allow",
        reason="accepted",
        details=label_details(report),
    )
    return report, draft


async def _parse_fresh(ctx: Context, body: object) -> Submission:
    """Parse against the cached directory; on an unknown alliance id, once more against a
    freshly read one (an alliance created by another process a moment ago)."""
    try:
        return parse_submission(body, ctx=ctx, known_alliances=(await ctx.cached_directory()).alliances)
    except InvalidInput as exc:
        if exc.code != "unknown_releasability":
            raise
    async with ctx.db.transaction() as tx:
        directory = await ctx.directory(tx)
    return parse_submission(body, ctx=ctx, known_alliances=directory.alliances)


def _earlier(
    node: NodeRecord, sub: Submission, idempotency_key: str | None, batch: _Batch
) -> ReportRecord | None:
    """The report already stored (in the database, as read under the head lock, or earlier in
    this batch) for this idempotency key or id; Conflict when it was another request."""
    earlier = None
    if idempotency_key is not None:
        earlier = batch.by_key.get((node.id, idempotency_key))
    if earlier is None and sub.report_id is not None:
        earlier = batch.by_id.get(_stored_id(node, sub))
        if earlier is not None and earlier.originator_node != node.id:  # a UUIDv5 collision
            raise Conflict("this id was used for another request", code="idempotency_key_reused")
    if earlier is not None and earlier.request_hash != sub.request_hash:
        raise Conflict(
            "this idempotency key or id was used for another request", code="idempotency_key_reused"
        )
    return earlier


def _stored_id(node: NodeRecord, sub: Submission) -> str:
    """A fresh random id, or the node's own scope of the id it chose (domain.ids)."""
    if sub.report_id is None:
        return str(uuid.uuid4())
    return scoped_report_id(node_id=node.id, client_id=sub.report_id)
