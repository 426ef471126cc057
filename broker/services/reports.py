"""Publishing, reading, listing, recalling and erasing reports."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from broker.crypto import cursors, envelope, seal, signing
from broker.crypto import keyring as keyring_file
from broker.crypto.keyring import Keyring
from broker.domain import stix
from broker.domain.access import Decision, decide, receiving_role
from broker.domain.canonical import canonical, sha256_hex
from broker.domain.ids import canonical_report_id, scoped_report_id
from broker.domain.labels import SecurityLabel
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.errors import AccessDenied, BrokerError, Conflict, InvalidInput, NotFound, RateLimited, Stale
from broker.services import audit, metrics, shred
from broker.services.auth import NodeGone, RoleLost, recheck, refuse_gone, require_role
from broker.services.context import Context
from broker.services.groupcommit import GroupCommit
from broker.services.scanhints import ScanHint
from broker.services.wire.decode import decode
from broker.services.wire.requests import PublishRequest
from broker.storage.federation import provenance_of
from broker.storage.repos import PublishReads, WriteTx

# How often an act is decided again when the security state changed under it (services.audit
# raises Stale) before the client is told to retry (503).
STALE_RETRIES = 5
SEAL_SLICE = 8  # reports sealed between two yields to the event loop
T = TypeVar("T")


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
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
        raise InvalidInput("Idempotency-Key must be 1 to 200 characters", code="invalid_idempotency_key")
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
            await audit.record_alone(ctx, [_deny_draft(node, None, exc.code, "publish")])
        raise
    return _receipt(report)


# Rows that belong with a new report, written from it in its transaction: both are stored or
# neither (a status resource apart from its report could answer for a report that is not there).
Attachment = Callable[[WriteTx, ReportRecord], Awaitable[None]]


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
    ctx: Context, tx: WriteTx, acts: Sequence[PublishAct]
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
        try:
            earlier = _earlier(act.node, act.sub, act.idempotency_key, batch)
        except BrokerError as exc:
            outcomes.append(exc)
            continue
        if earlier is not None:
            outcomes.append(earlier)
            continue
        if limits.exhausted(act.node.id):
            outcomes.append(RateLimited("too many reports per second from this node", code="rate_limited"))
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

    async def lock(self, tx: WriteTx, acts: Sequence[PublishAct]) -> PublishReads:
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


async def _current_act(ctx: Context, tx: WriteTx, act: PublishAct, counter: int) -> PublishAct | BrokerError:
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
        details=_label_details(report),
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


def _label_details(report: ReportRecord) -> dict[str, Any]:
    """Metadata an auditor may see: the label's hash and classification, never content."""
    return {
        "label_hash": report.label_hash,
        "classification": report.label.get("classification"),
        "originator": report.originator_node,
    }


def _deny_draft(node: NodeRecord, report_id: str | None, reason: str, action: str) -> AuditDraft:
    return AuditDraft(
        action=action,
        actor=node.id,
        report=report_id,
        node=node.id,
        nation=node.nation,
        decision="deny",
        reason=reason,
    )


def allow_draft(node: NodeRecord, report: ReportRecord, action: str) -> AuditDraft:
    return AuditDraft(
        action=action,
        actor=node.id,
        report=report.id,
        node=node.id,
        nation=node.nation,
        decision="allow",
        reason="allowed",
        details={"label_hash": report.label_hash, "sequence": report.seq},
    )


def decide_for(ctx: Context, node: NodeRecord, report: ReportRecord, directory: Any) -> Decision:
    """The access rule for ``node`` receiving ``report`` now, under the role it receives with
    (a federation link by its audience and origins, any other node by its nation)."""
    return decide(
        node=node.subject(),
        report=report.facts(),
        directory=directory,
        policy=ctx.policy,
        now=ctx.now(),
        role=receiving_role(node.roles),
    )


def open_payload(ctx: Context, report: ReportRecord, keyring: Keyring | None = None) -> bytes:
    """The report's canonical payload bytes, decrypted; NotFound when it was erased. ``keyring``:
    the one current when ``report`` was read (a re-wrap may retire its KEK from the process's
    keyring meanwhile); the process's own by default."""
    if report.ciphertext is None or report.wrapped_key is None or report.kek_id is None:
        raise NotFound("no such report", code="not_found")
    keyring = ctx.keyring if keyring is None else keyring
    if report.kek_id not in keyring.keks:
        # Wrapped by a KEK made after this keyring was loaded: an erasure in another process
        # re-wrapped its period's data keys (services/shred.py) between the counter read and the
        # row read. The file holds it.
        keyring = keyring_file.load(ctx.keyring_path)
    return envelope.decrypt_payload(
        stored=envelope.StoredPayload(report.ciphertext, report.wrapped_key, report.kek_id),
        report_id=report.id,
        canonical_label=canonical(report.label),
        keyring=keyring,
    )


def document(
    ctx: Context,
    node: NodeRecord,
    report: ReportRecord,
    *,
    plaintext: bytes | None = None,
    canonical_label: bytes | None = None,
    keyring: Keyring | None = None,
) -> dict[str, Any]:
    """The report as the contract shows it to ``node``: payload decrypted (or ``plaintext``, when
    the caller already holds it), then sealed to the node's X25519 key when it has one (the access
    rule already refused nodes without a key where the policy requires sealing)."""
    if plaintext is None:
        plaintext = open_payload(ctx, report, keyring)
    doc: dict[str, Any] = {
        "id": report.id,
        "sequence": report.seq,
        "originator": {"node": report.originator_node, "nation": report.originator_nation},
        "label": report.label,
        "topics": list(report.topics),
        "created": report.created_at.isoformat(),
        "signature": report.signature,
    }
    if node.x25519_public_key:
        with metrics.SEAL_SECONDS.time():
            doc["sealed"] = seal.seal(
                plaintext=plaintext,
                recipient_public_key_b64=node.x25519_public_key,
                report_id=report.id,
                canonical_label=canonical(report.label) if canonical_label is None else canonical_label,
            )
    else:
        doc["payload"] = json.loads(plaintext)
    return doc


async def documents(
    ctx: Context, node: NodeRecord, reports: Sequence[ReportRecord], keyring: Keyring
) -> list[dict[str, Any]]:
    """``document`` for each report, outside any transaction, yielding to the event loop every
    ``SEAL_SLICE`` reports so a long page does not stall other requests while it is sealed.
    ``keyring``: the one current in the transaction that read ``reports``."""
    found: list[dict[str, Any]] = []
    for index, report in enumerate(reports):
        if index and index % SEAL_SLICE == 0:
            await asyncio.sleep(0)
        found.append(document(ctx, node, report, keyring=keyring))
    return found


async def decided(ctx: Context, act: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` (one transaction that decides and records its decision) again while the
    security state changes under it; a node revoked meanwhile is refused and audited."""
    for _ in range(STALE_RETRIES):
        try:
            return await attempt()
        except Stale:
            continue
        except (NodeGone, RoleLost) as exc:
            await refuse_gone(ctx, exc, act=act)
    raise Stale("the security state keeps changing: retry")


async def read(ctx: Context, node: NodeRecord, report_id: str) -> dict[str, Any]:
    """One report, if ``node`` may see it; otherwise 404 (audited with the reason and the
    canonical id). Absent and refused reports take the same path, in one transaction."""
    canonical_id = canonical_report_id(report_id)
    return await decided(ctx, "read", partial(_read_once, ctx, node, canonical_id))


async def _read_once(ctx: Context, node: NodeRecord, report_id: str | None) -> dict[str, Any]:
    """Decide in a read transaction (no write lock), decrypt and seal outside it, and answer
    once the decision's audit event is committed by the shared group commit, which refuses it
    (``Stale``: decided again) when the security state changed after the decision was made."""
    async with ctx.db.read_transaction() as tx:
        counter, reports_at = await tx.decision_state()
        node = await recheck(tx, node, counter, now=ctx.now(), role="subscribe")
        directory = await ctx.directory_at(tx, counter)
        keyring = ctx.keyring  # as of this read: it can open what was read
        report = None if report_id is None else await tx.report(report_id)
        imported = None if report is None else await provenance_of(tx, [report.seq])
    reason = _read_denial(ctx, node, report, directory)
    log = audit.batcher(ctx)
    if reason is None and report is not None:
        doc = document(ctx, node, report, keyring=keyring)
        if imported:  # an imported report shows the path it came by, origin first
            doc["provenance"] = list(imported[report.seq].provenance)
        if not await log.append(
            [allow_draft(node, report, "read")], decided_at=counter, reports_at=reports_at
        ):
            return doc
        raise NotFound("no such report", code="not_found")  # recalled or erased meanwhile: recorded so
    await log.append([_deny_draft(node, report_id, reason or "not_found", "read")], decided_at=counter)
    raise NotFound("no such report", code="not_found")


def _read_denial(ctx: Context, node: NodeRecord, report: ReportRecord | None, directory: Any) -> str | None:
    if report is None:
        return "not_found"
    if report.erased_at is not None:
        return "erased"
    decision = decide_for(ctx, node, report, directory)
    return None if decision.allowed else decision.reason


def _size_of(report: ReportRecord) -> int:
    """A report document's size in an answer, from what is stored (no encoding twice): the
    payload as JSON or as a sealed base64 string, the label, and the fixed fields."""
    return len(report.ciphertext or b"") * 4 // 3 + len(report.label_json) + 512


async def listing(
    ctx: Context, node: NodeRecord, *, after: int, limit: int, topics: Sequence[str]
) -> dict[str, Any]:
    """Reports above ``after`` that ``node`` may see: at most ``limit``, and about
    ``max_page_bytes``.

    ``next_after`` is the sequence of the last report returned (``after`` when none): the answer
    depends only on what the node may see, never on how many hidden reports lie in between. At
    most ``max_scan_rows`` stored rows are examined per call; where that ran out, the next call
    with the same ``after`` resumes the scan where this one stopped (a hint kept here).
    """
    await require_role(ctx, node, "subscribe", act="list")
    return await decided(ctx, "list", partial(_list_once, ctx, node, after, limit, tuple(topics)))


async def _list_once(
    ctx: Context, node: NodeRecord, after: int, limit: int, topics: tuple[str, ...]
) -> dict[str, Any]:
    """One attempt: scan and decide in a read transaction, decrypt and seal after it, then
    commit the ``read`` events through the group commit (``Stale`` when the state moved)."""
    allowed: list[ReportRecord] = []
    size, scanned, last = 0, 0, after
    chunk = max(limit, 50)
    now = ctx.now()
    async with ctx.db.read_transaction() as tx:
        counter, reports_at = await tx.decision_state()
        node = await recheck(tx, node, counter, now=ctx.now(), role="subscribe")
        directory = await ctx.directory_at(tx, counter)
        keyring = ctx.keyring  # as of this read: it can open what was read
        key = (node.id, topics, after)
        cursor = ctx.scan_hints.get(key, counter=counter, now=now, directory=directory) or after
        full = False
        while not full and scanned < ctx.settings.max_scan_rows:
            take = min(chunk, ctx.settings.max_scan_rows - scanned)
            rows = await tx.reports_after(after=cursor, topics=topics, limit=take)
            for report in rows:
                cursor, scanned = report.seq, scanned + 1
                if report.erased_at is None and decide_for(ctx, node, report, directory).allowed:
                    allowed.append(report)
                    last, size = report.seq, size + _size_of(report)
                    full = len(allowed) == limit or size >= ctx.settings.max_page_bytes
                    if full:
                        break
            if len(rows) < take:
                break
    found = await documents(ctx, node, allowed, keyring)
    drafts = [allow_draft(node, report, "read") for report in allowed]
    gone = await audit.batcher(ctx).append(drafts, decided_at=counter, reports_at=reports_at)
    if cursor > last:
        ctx.scan_hints.put((node.id, topics, last), ScanHint(cursor, counter, now))
    return {"reports": [doc for doc in found if doc["id"] not in gone], "next_after": last}


async def recall(ctx: Context, node: NodeRecord, report_id: str) -> dict[str, Any]:
    """Recall a report (originator only). Nodes that may not see it get 404, others 403; each
    refusal is audited with the canonical id. At most ``recall_burst`` recalls per node, then
    ``recall_rate_per_second`` (429 before anything is read or written).

    A recall changes one report: it moves no counter that other acts are decided at (only the
    decisions that allowed that report are decided again, see ``services.audit``), and recalling
    a report already recalled changes nothing, so it moves nothing at all."""
    if not ctx.recalls.take(node.id):
        raise RateLimited("too many recalls from this node", code="rate_limited")
    canonical_id = canonical_report_id(report_id)
    return await decided(ctx, "recall", partial(_recall_once, ctx, node, canonical_id))


async def _recall_once(ctx: Context, node: NodeRecord, report_id: str | None) -> dict[str, Any]:
    async with ctx.db.transaction() as tx:
        counter = await tx.change_counter()
        node = await recheck(tx, node, counter, now=ctx.now(), role="publish")
        directory = await ctx.directory_at(tx, counter)
        report = None if report_id is None else await tx.report(report_id)
        now = ctx.now()
        if report is not None and report.originator_node == node.id:
            draft = allow_draft(node, report, "recall")
            if report.recalled_at is not None:  # nothing changes: on the record, nothing moves
                await audit.record(tx, [replace(draft, reason="already_recalled")], now=now)
                return {"id": report.id, "recalled": True}
            await tx.set_recalled(report.id, at=now)
            await audit.record(tx, [draft], now=now, report_changed=True, decided_at=counter)
            return {"id": report.id, "recalled": True}
        visible = report is not None and _read_denial(ctx, node, report, directory) is None
        reason = "not_originator" if visible else "not_found"
        await audit.record(tx, [_deny_draft(node, report_id, reason, "recall")], now=now, decided_at=counter)
    if visible:
        raise AccessDenied("only the originator may recall a report", code="not_originator")
    raise NotFound("no such report", code="not_found")


async def erase(ctx: Context, report_id: str, *, actor: str) -> str:
    """Crypto-shred a report: its ciphertext and wrapped data key are dropped and the KEK that
    wrapped it destroyed (services/shred.py). ``report_id`` may be any spelling of the UUID;
    returns the canonical id."""
    canonical_id = canonical_report_id(report_id)
    async with ctx.db.transaction() as tx:
        report = None if canonical_id is None else await tx.report(canonical_id)
        if report is None:
            raise NotFound("no such report", code="not_found")
        # Locked, and read again under the lock: of two erasures at once (another process, the
        # retention task) only the first writes; the other finds it erased and adds nothing.
        now = ctx.now()
        if not await shred.erase(ctx, tx, [report.seq], now=now):
            # Nothing to destroy, but the attempt is an admin act on a report: on the record.
            draft = AuditDraft(
                action="erase", actor=actor, report=report.id, decision="deny", reason="already_erased"
            )
            await audit.record(tx, [draft], now=now)
            return report.id
        await audit.record(
            tx,
            [AuditDraft(action="erase", actor=actor, report=report.id, decision="allow", reason="erased")],
            now=now,
            changed=True,  # a KEK was replaced (services/shred.py): every process reloads its keyring
        )
    await shred.destroy_retiring(ctx, actor=actor)
    return report.id
