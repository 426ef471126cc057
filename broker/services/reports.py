"""Reading, listing, recalling and erasing reports (publishing: services.publishing; what
they share: services.decisions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from broker.domain.ids import canonical_report_id
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.errors import AccessDenied, NotFound, RateLimited
from broker.services import audit, shred
from broker.services.auth import recheck, require_role
from broker.services.context import Context
from broker.services.decisions import (
    allow_draft,
    decide_for,
    decided,
    deny_draft,
    document,
    documents,
)
from broker.services.scanhints import ScanHint
from broker.storage.federation import provenance_of


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
    await log.append([deny_draft(node, report_id, reason or "not_found", "read")], decided_at=counter)
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
        counter = (await tx.lock_head()).change_counter  # first: ``Tx.lock_head``'s lock order
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
        await audit.record(tx, [deny_draft(node, report_id, reason, "recall")], now=now, decided_at=counter)
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
        else:
            draft = AuditDraft(
                action="erase", actor=actor, report=report.id, decision="allow", reason="erased"
            )
            # changed: a KEK was replaced (services/shred.py): every process reloads its keyring
            await audit.record(tx, [draft], now=now, changed=True)
    # Also when it was erased already: an erasure killed after its commit left its KEK in the
    # keyring file, and erasing again is what an operator does about it.
    await shred.destroy_retiring(ctx, actor=actor)
    return report.id
