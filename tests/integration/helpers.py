"""Helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any

from broker.services.context import Context


async def events(ctx: Context, **filters: Any) -> list[dict[str, Any]]:
    """Audit events as plain dicts (seq, action, decision, reason, report, node)."""
    async with ctx.db.transaction() as tx:
        found = await tx.events(limit=10_000, **filters)
    return [
        {
            "seq": e.seq,
            "action": e.draft.action,
            "decision": e.draft.decision,
            "reason": e.draft.reason,
            "report": e.draft.report,
            "node": e.draft.node,
            "actor": e.draft.actor,
        }
        for e in found
    ]


async def report_count(ctx: Context) -> int:
    async with ctx.db.transaction() as tx:
        return len(await tx.reports_after(after=0, topics=[], limit=100_000))


def body(
    classification: str = "SECRET",
    to: list[str] | None = None,
    caveats: list[str] | None = None,
    topics: list[str] | None = None,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "label": {
            "classification": classification,
            "releasable_to": ["NATO"] if to is None else to,
            "caveats": caveats or [],
        },
        "topics": topics or ["ransomware"],
        "payload": payload or {"type": "indicator", "pattern": "[ipv4-addr:value = '198.51.100.7']"},
    }
