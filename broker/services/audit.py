"""Appending audit events to the hash chain, inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from broker.crypto.chain import event_hash
from broker.domain.records import AuditDraft, AuditEvent, Head, event_document
from broker.services.context import Context
from broker.storage.repos import Tx


def chain(head: Head, drafts: Sequence[AuditDraft], *, now: datetime) -> tuple[list[AuditEvent], Head]:
    """Give ``drafts`` sequence numbers and hashes after ``head``; return them and the new head."""
    events = []
    seq, prev = head.audit_seq, head.audit_hash
    for draft in drafts:
        seq += 1
        digest = event_hash(event_document(seq=seq, time=now, draft=draft, prev_hash=prev))
        events.append(AuditEvent(seq=seq, time=now, draft=draft, prev_hash=prev, hash=digest))
        prev = digest
    return events, replace(head, audit_seq=seq, audit_hash=prev)


async def record(
    tx: Tx,
    drafts: Sequence[AuditDraft],
    *,
    now: datetime,
    head: Head | None = None,
    changed: bool = False,
) -> None:
    """Append ``drafts`` in the transaction ``tx``. ``head`` is the already-locked head, if
    the caller took it; ``changed`` bumps the change counter other processes watch.
    With nothing to append and nothing changed, the head is not even locked."""
    if not drafts and not changed and head is None:
        return
    if head is None:
        head = await tx.lock_head()
    events, head = chain(head, drafts, now=now)
    if changed:
        head = replace(head, change_counter=head.change_counter + 1)
    await tx.insert_events(events)
    await tx.save_head(head)


async def record_alone(ctx: Context, drafts: Sequence[AuditDraft]) -> None:
    """Append events in a transaction of their own: for acts that failed and changed nothing."""
    async with ctx.db.transaction() as tx:
        await record(tx, drafts, now=ctx.now())
