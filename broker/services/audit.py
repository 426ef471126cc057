"""Audit events: appended alone or by group commit, and what reads them back.

``chain`` and ``record`` (appending inside the caller's transaction) live in
``broker.services.journal``, which needs no ``Context`` (so ``context`` can use it too); they are
re-exported here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from broker.crypto import signing
from broker.domain.canonical import canonical
from broker.domain.records import (
    AuditDraft,
    NodeRecord,
    ReportRecord,
    format_time,
)
from broker.errors import BrokerError, InvalidInput, NotFound, Stale
from broker.services import ledger
from broker.services.context import Context
from broker.services.groupcommit import GroupCommit
from broker.services.journal import chain as chain
from broker.services.journal import record as record
from broker.storage.repos import Tx


async def record_alone(ctx: Context, drafts: Sequence[AuditDraft]) -> None:
    """Append events in a transaction of their own: for acts that failed and changed nothing."""
    async with ctx.db.transaction() as tx:
        await record(tx, drafts, now=ctx.now())


class Batcher:
    """Group commit for audit events from many concurrent acts (stream deliveries).

    Each caller waits until its events are committed; callers that arrive while a commit is in
    flight share the next one. So a report fanned out to 100 streams costs one transaction and
    one fsync for its 100 delivery events, not 100.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._group: GroupCommit[Decided, frozenset[str]] = GroupCommit(ctx.db, self._append)

    @property
    def commits(self) -> GroupCommit[Decided, frozenset[str]]:
        """The group commit behind it: its ``acts`` and ``transactions`` counters."""
        return self._group

    async def append(
        self, drafts: Sequence[AuditDraft], *, decided_at: int, reports_at: int | None = None
    ) -> frozenset[str]:
        """Return once ``drafts`` are committed to the log.

        ``decided_at``: the change counter the decisions were made at; if it moved, ``Stale``
        (nothing written: decide again). ``reports_at``: the head's ``report_changes`` then. A
        recall or erasure since concerns one report, so it makes nothing stale: the drafts that
        allowed a report withdrawn meanwhile are recorded as denials (reason ``recalled`` or
        ``erased``) and its id is returned, for the caller to leave out of its answer. With
        ``reports_at`` None (not known) such a withdrawal is ``Stale`` instead."""
        if not drafts:
            return frozenset()
        return await self._group.submit(Decided(decided_at, reports_at, tuple(drafts)))

    async def _append(self, tx: Tx, batch: Sequence[Decided]) -> list[frozenset[str] | BrokerError]:
        head = await tx.lock_head()
        current = [d for d in batch if d.counter == head.change_counter]
        unsure = [d for d in current if d.reports_at != head.report_changes]
        withdrawn = await tx.withdrawn({r for d in unsure for r in d.allowed()}) if unsure else {}
        outcomes: list[frozenset[str] | BrokerError] = []
        recorded: list[AuditDraft] = []
        stale = Stale("the security state changed during the decision")
        for decided in batch:
            gone = frozenset(r for r in decided.allowed() if r in withdrawn)
            if decided.counter != head.change_counter or (gone and decided.reports_at is None):
                outcomes.append(stale)
                continue
            recorded.extend(_denied_if_gone(draft, withdrawn) if gone else draft for draft in decided.drafts)
            outcomes.append(gone)
        await record(tx, recorded, now=self._ctx.now(), head=head)
        return outcomes


@dataclass(frozen=True)
class Decided:
    """Audit drafts of decisions made at ``counter`` and ``reports_at`` (the head's change
    counter and report changes then)."""

    counter: int
    reports_at: int | None
    drafts: tuple[AuditDraft, ...]

    def allowed(self) -> set[str]:
        """The reports these decisions allow someone to receive."""
        return {d.report for d in self.drafts if d.decision == "allow" and d.report is not None}


def _denied_if_gone(draft: AuditDraft, withdrawn: dict[str, str]) -> AuditDraft:
    """An allowing draft for a report withdrawn after the decision, as the denial it became."""
    reason = withdrawn.get(draft.report or "") if draft.decision == "allow" else None
    return draft if reason is None else replace(draft, decision="deny", reason=reason)


def batcher(ctx: Context) -> Batcher:
    """The process's group commit for the audit events of reads, listings and deliveries: an
    act decides in a read transaction, prepares its answer outside any transaction, and waits
    here until its events are committed (``Stale`` when the security state moved meanwhile)."""
    if ctx.audit_batcher is None:
        ctx.audit_batcher = Batcher(ctx)
    return ctx.audit_batcher


# -- for the auditor page -----------------------------------------------------------------


async def events_page(
    ctx: Context,
    *,
    after: int,
    before: int | None,
    limit: int,
    descending: bool,
    filters: dict[str, Any],
) -> dict[str, Any]:
    """A page of events with ``after < seq < before``, filtered, oldest or newest first.

    ``next_after`` is the seq of the last event returned (or ``after`` for an empty page): going
    up, the next ``after``; newest first, the next ``before`` (the oldest event shown)."""
    async with ctx.db.read_transaction() as tx:
        found = await tx.events(after=after, before=before, limit=limit, descending=descending, **filters)
    next_after = found[-1].seq if found else after
    return {"events": [ledger.event_json(e) for e in found], "next_after": next_after}


async def report_metadata(ctx: Context, report_id: str) -> dict[str, Any]:
    """What an auditor may know about a report: its label, topics, originator, times, the hash
    of its payload, and whether its signature verifies against the originator's current key.
    Never the payload. NotFound when no such report was ever stored."""
    async with ctx.db.read_transaction() as tx:
        report = await tx.report(report_id)
        originator = None if report is None else await tx.node(report.originator_node)
    if report is None:
        raise NotFound("no such report", code="not_found")
    return {
        "id": report.id,
        "sequence": report.seq,
        "originator": {"node": report.originator_node, "nation": report.originator_nation},
        "label": report.label,
        "label_hash": report.label_hash,
        "topics": list(report.topics),
        "created": format_time(report.created_at),
        "recalled": None if report.recalled_at is None else format_time(report.recalled_at),
        "erased": None if report.erased_at is None else format_time(report.erased_at),
        # Not once erased: a hash of a guessable payload would outlive its crypto-shredding.
        "payload_sha256": None if report.erased_at is not None else report.payload_sha256,
        "signature": _signature_status(report, originator),
    }


def _signature_status(report: ReportRecord, originator: NodeRecord | None) -> dict[str, Any]:
    """``present``; ``verified``: True/False against the originator's current Ed25519 key, None
    when there is nothing to check it with; ``detail`` says which; ``value``: the signature (base64),
    so that an auditor can check it without the payload: the signed bytes hold only its hash."""
    if report.signature is None:
        return {"present": False, "verified": None, "detail": "unsigned", "value": None}
    key = None if originator is None else originator.ed25519_public_key
    if key is None:
        return {
            "present": True,
            "verified": None,
            "detail": "the originator has no Ed25519 key registered now",
            "value": report.signature,
        }
    # The signed bytes hold the payload only as the hex SHA-256 of its canonical form.
    message = signing.SIGN_CONTEXT + canonical(report.label) + b"\n" + report.payload_sha256.encode()
    try:
        verified = signing.verify(public_key_b64=key, signature_b64=report.signature, message=message)
    except InvalidInput:  # a malformed stored key: nothing verifies with it
        verified = False
    detail = "verifies against the originator's current key" if verified else "does NOT verify"
    return {"present": True, "verified": verified, "detail": detail, "value": report.signature}
