"""One object by id: its versions the node may see in a collection, found through the object
index, so only the reports holding it are read and decrypted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from broker.crypto.keyring import Keyring
from broker.domain import stix, versioning
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.domain.stix import CollectionRecord, Entry, Filters, Position
from broker.domain.versioning import Held
from broker.errors import NotFound
from broker.services import audit, decisions
from broker.services.auth import recheck
from broker.services.context import Context
from broker.services.taxii.common import ensure_indexed, held, holders, may_see, readable, refuse
from broker.services.taxii.objects import Page, open_served
from broker.services.taxii.scan import page


async def by_id(
    ctx: Context,
    node: NodeRecord,
    collection_id: str,
    object_id: str,
    *,
    filters: Filters,
    limit: int,
    start: Position,
) -> Page:
    """The versions of one object the node may see in the collection that ``filters`` keep
    (only its creator's, and ``match[version]`` judged across them: ``domain.versioning``), in
    the order they were added, ``limit`` from ``start``; audited. Found through the object index:
    only the reports holding the object are read and decrypted. 404 (audited) when the node may
    be served no version of it at all."""
    fixed = {o["id"]: o for o in stix.fixed_objects()} | {
        stix.TLP_IDS[level]: stix.tlp_marking(level) for level in stix.TLP_ORDER
    }
    collection = await readable(ctx, node, collection_id)
    if object_id in fixed:
        stamp = stix.FIXED_DATE_ADDED
        return Page([Entry(fixed[object_id], stix.version_of(fixed[object_id], date_added=stamp), stamp, 0)])
    if stix.is_label_marking_id(object_id):  # the broker's own, stated by the reports themselves
        found = await page(
            ctx, node, collection_id, filters=filters, limit=limit, start=start, per_report_versions=False
        )
        found.entries = stix.select_versions(found.entries, filters.versions)
        if not found.entries and start == Position():
            await refuse(ctx, node, "read", NotFound("no such object", code="not_found"))
        return found
    attempt = partial(_by_id_once, ctx, node, collection, object_id, filters, limit, start)
    return await decisions.decided(ctx, "read", attempt)


async def _by_id_once(
    ctx: Context,
    node: NodeRecord,
    collection: CollectionRecord,
    object_id: str,
    filters: Filters,
    limit: int,
    start: Position,
) -> Page:
    await ensure_indexed(ctx)
    found, drafts = Page(), list[AuditDraft]()
    async with ctx.db.read_transaction() as tx:
        counter = await tx.change_counter()
        node = await recheck(tx, node, counter)
        directory = await ctx.directory_at(tx, counter)
        keyring = ctx.keyring
        seen = [
            (report, row)
            for report, row in await holders(ctx, tx, object_id)
            if may_see(ctx, node, collection, report, directory)
        ]
        versions = [held(report, row, filters) for report, row in seen]
        present = bool(versioning.visible(versions))
        if present:
            reports = {report.seq: report for report, _ in seen}
            shown = versioning.shown(versions, filters.versions)
            found, drafts = _versions_page(ctx, node, keyring, reports, shown, limit, start)
    await audit.batcher(ctx).append(drafts, decided_at=counter)
    if not present:
        await refuse(ctx, node, "read", NotFound("no such object", code="not_found"))
    return found


def _versions_page(
    ctx: Context,
    node: NodeRecord,
    keyring: Keyring,
    reports: Mapping[int, ReportRecord],
    shown: Sequence[Held],
    limit: int,
    start: Position,
) -> tuple[Page, list[AuditDraft]]:
    """Up to ``limit`` of the ``shown`` versions (in ``reports``), from ``start``, each report
    decrypted once; and the read each report served is recorded as."""
    found, drafts = Page(), list[AuditDraft]()
    payloads: dict[int, list[dict[str, Any]]] = {}
    for version in shown:
        if (version.seq, version.position) < (start.seq, start.index):
            continue
        report = reports[version.seq]
        if len(found.entries) == limit:
            found.more, found.next = True, Position(report.seq, version.position)
            break
        if report.seq not in payloads:
            payloads[report.seq] = open_served(ctx, report, keyring)
            drafts.append(decisions.allow_draft(node, report, "read"))
        obj = payloads[report.seq][version.position]
        refs = [m["id"] for m in stix.markings_of(report.label)]
        added = stix.timestamp(report.added)
        stamp = stix.version_of(obj, date_added=added)
        found.entries.append(Entry(stix.marked(obj, refs), stamp, added, report.seq, version.position))
    return found, drafts
