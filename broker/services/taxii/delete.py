"""Deleting an object: the whole reports of the node that carry it (a recall), or, when
``match[version]`` or ``match[spec_version]`` names some versions, those versions alone, marked
excluded in the object index."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

from broker.domain import versioning
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.domain.stix import CollectionRecord, Filters
from broker.domain.versioning import Held
from broker.errors import AccessDenied, BrokerError, NotFound
from broker.services import audit, decisions, reports
from broker.services.auth import recheck
from broker.services.collections import can_read
from broker.services.context import Context
from broker.services.taxii.common import collection as collection_of
from broker.services.taxii.common import counts, ensure_indexed, held, holders, may_see, refuse, spec_ok
from broker.storage import collections as store


async def delete(
    ctx: Context, node: NodeRecord, collection_id: str, object_id: str, *, filters: Filters
) -> None:
    """Recall the reports of ``node`` that carry the object (the whole report: every object posted
    with it). 403 when only other nodes' reports carry it, 404 when none the node may see does."""
    collection = await collection_of(ctx, node, collection_id, act="recall")
    if not can_read(node) or "publish" not in node.roles:
        await refuse(
            ctx, node, "recall", AccessDenied("this act needs the 'publish' role", code="missing_role")
        )
    if "all" not in filters.versions or filters.spec_versions:
        # Removing some versions of an object must leave its others (and the rest of their
        # reports): a recall would take the whole report, whatever version it also holds.
        await decisions.decided(
            ctx, "recall", partial(_exclude_once, ctx, node, collection, object_id, filters)
        )
        return
    carriers = await decisions.decided(
        ctx, "recall", partial(_carriers, ctx, node, collection, object_id, filters)
    )
    own = [r for r in carriers if r.originator_node == node.id]
    if not own and carriers:
        await reports.recall(ctx, node, carriers[0].id)  # refuses (403) and audits it
    if not own:
        await refuse(ctx, node, "recall", NotFound("no such object", code="not_found"))
    for report in own:
        await reports.recall(ctx, node, report.id)


async def _exclude_once(
    ctx: Context, node: NodeRecord, collection: CollectionRecord, object_id: str, filters: Filters
) -> None:
    """Remove the versions of an object ``match[version]`` names among those reads serve the node
    (``domain.versioning``: only the object's creator's count): each is marked excluded in the
    object index, its report untouched (one signed, encrypted unit), and recorded as a ``recall``
    with reason ``version_excluded``. 403 when only other nodes' reports hold them, 404 when
    none the node may see does (both recorded)."""
    await ensure_indexed(ctx)
    async with ctx.db.transaction() as tx:
        counter = (await tx.lock_head()).change_counter  # first: ``Tx.lock_head``'s lock order
        node = await recheck(tx, node, counter, now=ctx.now(), role="publish")
        directory = await ctx.directory_at(tx, counter)
        seen = [
            (report, row)
            for report, row in await holders(ctx, tx, object_id)
            if not report.recalled_at and may_see(ctx, node, collection, report, directory)
        ]
        reports_at = {report.seq: report for report, _ in seen}
        chosen = versioning.shown([held(report, row, filters) for report, row in seen], filters.versions)
        own = [version for version in chosen if version.publisher == node.id]
        now = ctx.now()
        if own:
            await store.exclude(tx, [(version.seq, version.position) for version in own], at=now)
            drafts = [
                replace(decisions.allow_draft(node, reports_at[seq], "recall"), reason="version_excluded")
                for seq in sorted({version.seq for version in own})
            ]
            await audit.record(tx, drafts, now=now, report_changed=True, decided_at=counter)
            return
        refusal = _refusal(chosen)
        first = reports_at[chosen[0].seq] if chosen else None
        await audit.record(tx, [_denied(node, refusal, first)], now=now, decided_at=counter)
    raise refusal


def _refusal(chosen: Sequence[Held]) -> BrokerError:
    """Why removing versions of which the node owns none is refused."""
    if chosen:
        return AccessDenied("only the originator may remove a version", code="not_originator")
    return NotFound("no such object", code="not_found")


def _denied(node: NodeRecord, refusal: BrokerError, report: ReportRecord | None) -> AuditDraft:
    return AuditDraft(
        action="recall",
        actor=node.id,
        node=node.id,
        nation=node.nation,
        decision="deny",
        reason=refusal.code,
        report=None if report is None else report.id,
    )


async def _carriers(
    ctx: Context, node: NodeRecord, collection: CollectionRecord, object_id: str, filters: Filters
) -> list[ReportRecord]:
    """The reports the node may see in the collection that carry the object under ``filters``
    (``match[spec_version]``, ``added_after``), found through the object index: nothing is
    decrypted or served, so nothing is recorded; the recall records itself."""
    await ensure_indexed(ctx)
    async with ctx.db.read_transaction() as tx:
        counter = await tx.change_counter()
        node = await recheck(tx, node, counter)
        directory = await ctx.directory_at(tx, counter)
        held = await holders(ctx, tx, object_id)
    found = {
        report.seq: report
        for report, row in held
        if not row.excluded
        and spec_ok(filters, row.spec_version)
        and counts(ctx, node, collection, report, directory, filters)
    }
    return list(found.values())
