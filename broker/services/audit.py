"""Appending audit events to the hash chain, inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from broker.crypto import merkle
from broker.crypto.chain import event_hash
from broker.domain.records import AuditDraft, AuditEvent, Head, event_document
from broker.errors import BrokerError, Stale
from broker.services import metrics
from broker.services.context import Context
from broker.services.groupcommit import GroupCommit
from broker.storage.repos import WriteTx


def chain(
    head: Head, drafts: Sequence[AuditDraft], *, now: datetime
) -> tuple[list[AuditEvent], list[merkle.Node], Head]:
    """Give ``drafts`` sequence numbers and hashes after ``head``; return them, the Merkle
    nodes they complete, and the new head."""
    events = []
    seq, prev = head.audit_seq, head.audit_hash
    for draft in drafts:
        seq += 1
        digest = event_hash(event_document(seq=seq, time=now, draft=draft, prev_hash=prev))
        events.append(AuditEvent(seq=seq, time=now, draft=draft, prev_hash=prev, hash=digest))
        prev = digest
    frontier, nodes = merkle.append(head.frontier, [bytes.fromhex(e.hash) for e in events], head.audit_seq)
    return events, nodes, replace(head, audit_seq=seq, audit_hash=prev, frontier=tuple(frontier))


async def record(
    tx: WriteTx,
    drafts: Sequence[AuditDraft],
    *,
    now: datetime,
    head: Head | None = None,
    changed: bool = False,
    decided_at: int | None = None,
) -> None:
    """Append ``drafts`` in the transaction ``tx``. ``head`` is the already-locked head, if
    the caller took it; ``changed`` bumps the change counter other processes watch (and wakes
    them at commit).

    ``decided_at`` is the change counter the drafts' decisions were made at. Under the head lock
    it must still be current, or ``Stale`` is raised and nothing is written: no decision is
    recorded, and so none is acted on, after a change that committed while it was being made.
    With nothing to append and nothing changed, the head is not even locked."""
    if not drafts and not changed and head is None:
        return
    if head is None:
        head = await tx.lock_head()
    if decided_at is not None and head.change_counter != decided_at:
        raise Stale("the security state changed during the decision")
    events, nodes, head = chain(head, drafts, now=now)
    if changed:
        head = replace(head, change_counter=head.change_counter + 1)
        await tx.notify_change()
    await tx.insert_events(events)
    await tx.insert_nodes(nodes)
    await tx.save_head(head)
    metrics.events(drafts)


async def record_alone(ctx: Context, drafts: Sequence[AuditDraft]) -> None:
    """Append events in a transaction of their own: for acts that failed and changed nothing."""
    async with ctx.db.write_transaction() as tx:
        await record(tx, drafts, now=ctx.now())


class Batcher:
    """Group commit for audit events from many concurrent acts (stream deliveries).

    Each caller waits until its events are committed; callers that arrive while a commit is in
    flight share the next one. So a report fanned out to 100 streams costs one transaction and
    one fsync for its 100 delivery events, not 100.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._group: GroupCommit[tuple[int, list[AuditDraft]], None] = GroupCommit(ctx.db, self._append)

    async def append(self, drafts: Sequence[AuditDraft], *, decided_at: int) -> None:
        """Return once ``drafts`` are committed to the log; raise ``Stale`` (nothing written)
        when the change counter is no longer ``decided_at``, or whatever else failed."""
        if drafts:
            await self._group.submit((decided_at, list(drafts)))

    async def _append(
        self, tx: WriteTx, batch: Sequence[tuple[int, list[AuditDraft]]]
    ) -> list[BrokerError | None]:
        head = await tx.lock_head()
        current = [drafts for at, drafts in batch if at == head.change_counter]
        await record(tx, [d for drafts in current for d in drafts], now=self._ctx.now(), head=head)
        stale = Stale("the security state changed during the decision")
        return [None if at == head.change_counter else stale for at, _ in batch]


def batcher(ctx: Context) -> Batcher:
    """The process's group commit for the audit events of reads, listings and deliveries: an
    act decides in a read transaction, prepares its answer outside any transaction, and waits
    here until its events are committed (``Stale`` when the security state moved meanwhile)."""
    if ctx.audit_batcher is None:
        ctx.audit_batcher = Batcher(ctx)
    found: Batcher = ctx.audit_batcher
    return found
