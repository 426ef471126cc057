"""Retention: reports older than their classification's retention period are crypto-shredded.

The periods come from ``policy.toml`` (``[retention]``, see ``Policy.is_expired``). A pass walks
the reports in sequence order once per level that has a period, in bounded slices, and erases
each expired report exactly as ``broker report erase`` does (``shred.erase``: the KEK that
wrapped its data key is replaced and destroyed, the ciphertext and wrapped key dropped), with
one ``erase`` audit event per report (actor ``retention``, reason ``retention_expired``) in the
same transaction: no shred without its event.

Several brokers may run the task against one PostgreSQL database: the reports to erase are
locked and read again (``erased_at IS NULL``) in the erasing transaction, so a report another
broker erased meanwhile is left out, and no report is erased or audited twice.

``plan`` is the pure core: given a slice of stored reports, which ones to erase and how far the
walk may advance. The walk for a level stops at the first report (of any level) that a report of
that level would not yet have outlived; everything before it is settled for that level for good
(its period is fixed and time only moves on), so a later pass resumes there (``Progress``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.domain.labels import Policy
from broker.domain.records import AuditDraft, format_time
from broker.services import audit, metrics, shred
from broker.services.context import Context
from broker.storage import retention as store
from broker.storage.retention import StoredAge
from broker.waiting import wait_event

log = logging.getLogger(__name__)

# Stable codes. Auditors filter on these; never rename one.
ACTOR = "retention"
REASON = "retention_expired"


@dataclass(frozen=True)
class Step:
    """What to do with one slice of the walk for one level."""

    erase: tuple[StoredAge, ...]  # reports of the level, expired and not erased yet
    after: int  # the walk may resume above this sequence once ``erase`` is done
    done: bool  # nothing more is due for this level now


def plan(
    policy: Policy, level: str, rows: Sequence[StoredAge], *, after: int, now: datetime, full: bool
) -> Step:
    """Walk ``rows`` (the slice above ``after``, in sequence order; ``full``: the slice was as
    long as asked, so more may follow) for ``level`` at ``now``."""
    due: list[StoredAge] = []
    for row in rows:
        # A report aged from row.aged_from with this level's period: not yet expired means
        # nothing from here on is due yet (reports are stored in sequence order, and none is
        # aged from after it was stored: an import's attested created may lie anywhere).
        if not policy.is_expired(level, row.aged_from, now):
            return Step(tuple(due), after, done=True)
        after = row.seq
        if row.classification == level and not row.erased:
            due.append(row)
    return Step(tuple(due), after, done=not full)


@dataclass
class Progress:
    """Per level, the sequence up to which this process has settled retention. Kept in memory:
    after a restart the first pass walks the store again from the start, one slice at a time."""

    after: dict[str, int] = field(default_factory=dict)


def _draft(policy: Policy, row: StoredAge) -> AuditDraft:
    details: dict[str, str | None] = {
        "classification": row.classification,
        "created": format_time(row.created_at),
    }
    expiry = None if row.classification is None else policy.expires_at(row.classification, row.aged_from)
    details["expired"] = None if expiry is None else format_time(expiry)
    return AuditDraft(
        action="erase", actor=ACTOR, report=row.id, decision="allow", reason=REASON, details=details
    )


async def _shred(ctx: Context, due: Sequence[StoredAge]) -> int:
    """Erase ``due`` (those still unerased) with their audit events, in one transaction."""
    async with ctx.db.transaction() as tx:
        now = ctx.now()
        rows = await shred.erase(ctx, tx, [row.seq for row in due], now=now)
        if not rows:
            return 0
        # changed=True: every process's feeds drop their cached copies at once, as for `erase`
        # (a KEK was replaced: publishers reload the keyring under the head lock).
        await audit.record(tx, [_draft(ctx.policy, row) for row in rows], now=now, changed=True)
    await shred.destroy_retiring(ctx, actor=ACTOR)
    return len(rows)


async def expire(ctx: Context, *, progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """One retention pass: erase every report whose retention period has run out. Returns how
    many this call erased. Each slice of at most ``retention_batch_size`` reports is read in a
    transaction of its own and its expired reports erased in another; with ``stop`` set, the
    pass ends after the transaction it is in."""
    progress = Progress() if progress is None else progress
    batch = ctx.settings.retention_batch_size
    erased = 0
    for level, _period in ctx.policy.retention:
        done = False
        while not done:
            if stop is not None and stop.is_set():
                return erased
            after = progress.after.get(level, 0)
            now = ctx.now()
            async with ctx.db.read_transaction() as tx:
                rows = await store.scan(tx, after=after, limit=batch)
            step = plan(ctx.policy, level, rows, after=after, now=now, full=len(rows) == batch)
            if step.erase:
                erased += await _shred(ctx, step.erase)
            progress.after[level] = step.after
            done = step.done
    metrics.retention_ran()
    if erased:
        log.info("retention_erased count=%s", erased)
    return erased


async def expirer(ctx: Context, stop: asyncio.Event) -> None:
    """A retention pass every ``retention_interval_seconds`` until ``stop`` (the transaction in
    flight is finished first). Nothing to do, and so no task, without retention periods."""
    if not ctx.policy.retention:
        return
    progress = Progress()
    while not stop.is_set():
        if await wait_event(stop, ctx.settings.retention_interval_seconds):
            return
        try:
            await expire(ctx, progress=progress, stop=stop)
        except Exception:  # the database may be down: try again next time
            log.warning("retention_failed", exc_info=True)
