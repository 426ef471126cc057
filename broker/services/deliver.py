"""Delivery to streams: what a node may receive above its cursor, audited in batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import Unauthenticated
from broker.services import audit
from broker.services.context import Context
from broker.services.reports import allow_draft, decide_for, document

CURSOR_NAME_MAX = 64


@dataclass(frozen=True)
class Batch:
    """Reports to send, the cursor after them, and whether more rows may be waiting."""

    reports: list[dict[str, Any]]
    cursor: int
    more: bool


async def fetch(ctx: Context, node_id: str, *, after: int, topics: Sequence[str], limit: int = 100) -> Batch:
    """Eligible reports above ``after``, decided afresh (node, clearance and memberships read
    now), with one ``deliver`` audit event each, appended in the same transaction.

    Raises Unauthenticated when the node was revoked: the stream must close.
    """
    async with ctx.db.transaction() as tx:
        node = await tx.node(node_id)
        if node is None or node.revoked_at is not None:
            raise Unauthenticated("the node was revoked", code="node_revoked")
        directory = await ctx.directory(tx)
        rows = await tx.reports_after(after=after, topics=topics, limit=limit)
        found: list[dict[str, Any]] = []
        drafts: list[AuditDraft] = []
        for report in rows:
            if report.erased_at is None and decide_for(ctx, node, report, directory).allowed:
                found.append(document(ctx, node, report))
                drafts.append(allow_draft(node, report, "deliver"))
        await audit.record(tx, drafts, now=ctx.now())
    cursor = rows[-1].seq if rows else after
    return Batch(reports=found, cursor=cursor, more=len(rows) == limit)


async def resume_point(ctx: Context, node: NodeRecord, name: str) -> int:
    """Where a stream without ``after`` starts: after the last acknowledged sequence."""
    async with ctx.db.transaction() as tx:
        return await tx.cursor(node=node.id, name=name) or 0


async def acknowledge(ctx: Context, node: NodeRecord, name: str, sequence: int) -> None:
    """Store the node's acknowledged sequence for ``name`` (never moving it backwards)."""
    async with ctx.db.transaction() as tx:
        await tx.save_cursor(node=node.id, name=name, sequence=sequence, at=ctx.now())


async def head_state(ctx: Context) -> tuple[int, int]:
    """(last report sequence, change counter): what the hub watches."""
    async with ctx.db.transaction() as tx:
        return await tx.head_state()
