"""Appending audit events to the hash chain, inside the caller's transaction.

Needs no ``Context``: ``broker.services.context`` appends with it (the keyring binding), and
``broker.services.audit`` re-exports it for everyone else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from broker.crypto import merkle
from broker.crypto.chain import event_hash
from broker.domain.records import AuditDraft, AuditEvent, Head, event_document
from broker.errors import Stale
from broker.services import metrics
from broker.storage.repos import Tx


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
    tx: Tx,
    drafts: Sequence[AuditDraft],
    *,
    now: datetime,
    head: Head | None = None,
    changed: bool = False,
    report_changed: bool = False,
    decided_at: int | None = None,
) -> None:
    """Append ``drafts`` in the transaction ``tx``. ``head`` is the already-locked head, if
    the caller took it; ``changed`` bumps the change counter other processes watch (and wakes
    them at commit): every decision in flight is made again. ``report_changed`` (a recall, an
    erasure) bumps ``report_changes`` instead, and wakes them too: only the decisions that allowed
    a report withdrawn meanwhile are made again (``services.audit.Batcher``).

    ``decided_at`` is the change counter the drafts' decisions were made at. Under the head lock
    it must still be current, or ``Stale`` is raised and nothing is written: no decision is
    recorded, and so none is acted on, after a change that committed while it was being made.
    With nothing to append and nothing changed, the head is not even locked."""
    if not drafts and not changed and not report_changed and head is None:
        return
    if head is None:
        head = await tx.lock_head()
    if decided_at is not None and head.change_counter != decided_at:
        raise Stale("the security state changed during the decision")
    events, nodes, head = chain(head, drafts, now=now)
    if changed:
        head = replace(head, change_counter=head.change_counter + 1)
    if report_changed:
        head = replace(head, report_changes=head.report_changes + 1)
    if changed or report_changed:
        await tx.notify_change()
    await tx.insert_events(events)
    await tx.insert_nodes(nodes)
    await tx.save_head(head)
    tx.after_commit(lambda: metrics.events(drafts))
