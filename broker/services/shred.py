"""Crypto-shredding that holds against backups: an erased report's KEK is destroyed.

Nulling the ciphertext and wrapped data key is not enough on its own: the old row stays in the
SQLite WAL and free pages, in the PostgreSQL heap until VACUUM, and in every database backup.
What makes those copies useless is that the KEK which wrapped the erased report's data key no
longer exists anywhere the broker keeps keys. So an erasure (``erase``, for `broker report
erase` and for retention alike), in one transaction:

1. locks the erased reports and every other unerased report their KEKs wrap (rows first, in
   sequence order, then the head: the order every erasing path takes them in);
2. writes to the keyring file, durably and under its lock, a fresh replacement for each such KEK
   (current in its place if it was current) and marks the old one ``retiring``;
3. re-wraps the other reports' data keys under the replacement and erases the chosen ones.

After the commit ``destroy_retiring`` deletes the retiring KEKs from the keyring file, under the
head lock and only once no stored report uses them. A crash between the commit and that step
leaves a retiring KEK in the file; the next erasure (of any report, the same one included), the
KEK task of every running broker (``destroy_left_behind``) or `broker keys rotate --rewrap`
deletes it. A KEK leaves the file before its ``keys_destroy`` event commits, its id kept in the
file (``unrecorded``) until the event is logged; a crash between the two is logged by the same
paths (``record_unrecorded``).

A re-wrap costs one AES key unwrap and wrap per report sharing the KEK, so new reports are
wrapped under a KEK per period (``rotate_if_due``): an erasure re-wraps at most one period's.
Making a KEK current and destroying one both happen under the head lock with the change counter
moved, and publishers reload the keyring when the counter moves (under that lock), so no
process wraps a new data key under a KEK once it is retiring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from broker.crypto import envelope
from broker.crypto import keyring as keyring_file
from broker.crypto.keyring import Keyring
from broker.domain.records import AuditDraft
from broker.errors import BrokerError
from broker.services import journal
from broker.services.context import Context
from broker.storage import keyringcheck
from broker.storage import retention as store
from broker.storage.repos import Tx
from broker.storage.retention import StoredAge
from broker.waiting import wait_event

log = logging.getLogger(__name__)

# How often `broker serve` looks whether the current KEK's period is over.
CHECK_SECONDS = 60.0
# How many of the newest keys_destroy events are searched for a destruction the file says may be
# unrecorded (one process killed between the two at a time leaves one such event at most).
RECENT_DESTROY_EVENTS = 100


async def erase(ctx: Context, tx: Tx, seqs: Sequence[int], *, now: datetime) -> list[StoredAge]:
    """Crypto-shred the reports ``seqs`` that are not erased yet, in ``tx``, and return them.

    The caller records their ``erase`` events in ``tx`` with ``changed=True`` (the re-wrapped
    reports need the new keyring in every process) and, once ``tx`` committed, calls
    ``destroy_retiring``. The head is locked first (``Tx.lock_head``), then the rows."""
    await tx.lock_head()
    keks = await store.kek_ids(tx, seqs)
    while True:
        locked = await store.lock_for_erasure(tx, seqs, keks)
        found = {kek for _age, kek in locked if kek is not None}
        if found <= keks:
            break
        keks |= found  # re-wrapped by another transaction since the hint: lock those too
    if not locked:
        return []
    doomed = {kek for _age, kek in locked if kek is not None}
    replacements = {kek: keyring_file.new_kek_id(now) for kek in sorted(doomed)}
    ring = await asyncio.to_thread(
        keyring_file.update, ctx.keyring_path, lambda r: _replaced(r, replacements)
    )
    ctx.keyring = ring
    erased = [age for age, _kek in locked]
    await store.shred(tx, [age.seq for age in erased], at=now)
    if doomed:
        others = await store.wrapped_by(tx, doomed)
        await store.set_wrapped(tx, [_rewrapped(w, ring, replacements[w.kek_id]) for w in others])
    await store.delete_statuses(tx, [age.id for age in erased])
    await store.delete_index(tx, [age.seq for age in erased])
    return erased


def _replaced(ring: Keyring, replacements: dict[str, str]) -> Keyring:
    for old, new in replacements.items():
        try:
            ring = ring.replacing(old, new)
        except KeyError:
            raise BrokerError(
                f"the keyring lacks the key-encryption key {old} that wraps the reports to erase",
                code="keyring_mismatch",
            ) from None
    return ring


def _rewrapped(row: store.Wrapped, ring: Keyring, to: str) -> store.Wrapped:
    # The ciphertext stays as it is: only its data key is wrapped again.
    stored = envelope.StoredPayload(b"", row.wrapped_key, row.kek_id)
    new = envelope.rewrap(stored=stored, keyring=ring, to=to)
    return store.Wrapped(seq=row.seq, kek_id=new.kek_id, wrapped_key=new.wrapped_key)


async def destroy_retiring(ctx: Context, *, actor: str, every_unused: bool = False) -> list[str]:
    """Delete from the keyring file every retiring KEK no stored report uses (with
    ``every_unused``: every KEK but the current one that no stored report uses); audited, change
    counter moved; return their ids. Under the head lock, so no erasure or re-wrap can wrap a
    data key under a KEK between the check and the deletion."""
    await record_unrecorded(ctx, actor=actor)  # one an earlier process deleted, then was killed
    destroyed: list[str] = []
    used: set[str] = set()

    def change(ring: Keyring) -> Keyring:
        doomed = frozenset((set(ring.keks) if every_unused else ring.retiring) - used - {ring.current})
        destroyed[:] = sorted(doomed & set(ring.keks))
        return ring.destroying(doomed)  # their ids stay in the file until the event is logged

    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        used.update(await keyringcheck.kek_ids_in_use(tx))
        ctx.keyring = await asyncio.to_thread(keyring_file.update, ctx.keyring_path, change)
        if destroyed:
            draft = _destroy_event(actor, destroyed)
            await journal.record(tx, [draft], now=ctx.now(), head=head, changed=True)
    if destroyed:
        await _logged(ctx, destroyed)
    return destroyed


def _destroy_event(actor: str, kek_ids: list[str], reason: str | None = None) -> AuditDraft:
    return AuditDraft(
        action="keys_destroy", actor=actor, decision="allow", reason=reason, details={"kek_ids": kek_ids}
    )


async def _logged(ctx: Context, kek_ids: list[str]) -> None:
    """Their destruction is in the audit log: no longer ``unrecorded`` in the keyring file."""
    gone = frozenset(kek_ids)
    ctx.keyring = await asyncio.to_thread(keyring_file.update, ctx.keyring_path, lambda r: r.recorded(gone))


async def record_unrecorded(ctx: Context, *, actor: str) -> list[str]:
    """Log the destruction of KEKs the keyring file says were deleted without their event known
    to be committed (a process killed between the two), unless the log has it already (killed
    after the commit); return the ids recorded now. Under the head lock, so processes doing it
    at once record each once. Cheap when there is none: a file read."""
    if not (await asyncio.to_thread(keyring_file.load, ctx.keyring_path)).unrecorded:
        return []
    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        pending = (await asyncio.to_thread(keyring_file.load, ctx.keyring_path)).unrecorded
        if not pending:
            return []
        logged = {
            str(k)
            for event in await tx.events(action="keys_destroy", limit=RECENT_DESTROY_EVENTS, descending=True)
            for k in (event.draft.details or {}).get("kek_ids", [])
        }
        missing = sorted(pending - logged)
        if missing:
            # ``changed``: the killed process never moved the counter, so others may still hold
            # the deleted KEKs in memory; this makes every process reload the file.
            draft = _destroy_event(actor, missing, reason="recorded_late")
            await journal.record(tx, [draft], now=ctx.now(), head=head, changed=True)
    await _logged(ctx, sorted(pending))
    return missing


async def destroy_left_behind(ctx: Context, *, actor: str) -> list[str]:
    """``destroy_retiring``, when the keyring file holds a retiring KEK no stored report uses:
    one an erasure left behind when its process died between its commit and
    ``destroy_retiring``. Cheap when there is none: a file read, and a read transaction only
    when some KEK is retiring."""
    await record_unrecorded(ctx, actor=actor)
    ring = await asyncio.to_thread(keyring_file.load, ctx.keyring_path)
    if not ring.retiring:
        return []
    async with ctx.db.read_transaction() as tx:
        used = set(await keyringcheck.kek_ids_in_use(tx))
    if ring.retiring <= used:
        return []  # an erasure that never committed: its KEK still wraps reports
    return await destroy_retiring(ctx, actor=actor)


async def rewrap_all(ctx: Context, *, batch: int) -> int:
    """Re-wrap every stored data key under the keyring's current KEK, ``batch`` reports per
    transaction; return how many. Each batch locks the head, then its rows, and reads the
    keyring file again under that lock: an erasure that made another KEK current (or condemned
    this one) meanwhile is seen, and no data key is ever written under a KEK that is gone."""
    rewrapped = 0
    while True:
        async with ctx.db.transaction() as tx:
            await tx.lock_head()
            target = ctx.keyring.current
            rows = await store.lock_wrapped_not_by(tx, target, limit=batch)
            if not rows:
                return rewrapped
            ring = await asyncio.to_thread(keyring_file.load, ctx.keyring_path)
            ctx.keyring = ring
            if ring.current != target:
                continue  # the current KEK changed: look again for what it does not wrap
            await store.set_wrapped(tx, [_rewrapped(w, ring, target) for w in rows])
            rewrapped += len(rows)


async def rotate_if_due(ctx: Context, *, period: timedelta, actor: str = "broker") -> str | None:
    """Make a fresh KEK current when the current one was made ``period`` or longer ago (by
    ``ctx.now()``); return its id, or None when the current one is still in its period. Several
    processes doing it at once make one new KEK (the keyring file is read again under its lock)."""
    if not _due(ctx.keyring, ctx.now(), period):
        return None
    return await rotate(ctx, actor=actor, reason="period", unless_younger_than=period)


async def rotate(
    ctx: Context, *, actor: str, reason: str | None = None, unless_younger_than: timedelta = timedelta(0)
) -> str | None:
    """Make a fresh KEK current (unless the current one is younger than
    ``unless_younger_than``); return its id, or None when none was made. The keyring file is
    written under the head lock and the change counter moves in the same transaction, so every
    publisher reloads the keyring before it wraps its next data key: no process keeps wrapping
    under a KEK that is no longer current once this commits."""
    now = ctx.now()
    made: list[str] = []

    def change(ring: Keyring) -> Keyring:
        if not _due(ring, now, unless_younger_than):
            return ring
        fresh = ring.with_new_kek(at=now)
        made.append(fresh.current)
        return fresh

    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        ctx.keyring = await asyncio.to_thread(keyring_file.update, ctx.keyring_path, change)
        if not made:
            return None
        draft = AuditDraft(
            action="keys_rotate", actor=actor, decision="allow", reason=reason, details={"kek_id": made[0]}
        )
        await journal.record(tx, [draft], now=now, head=head, changed=True)
    return made[0]


def _due(ring: Keyring, now: datetime, period: timedelta) -> bool:
    made = keyring_file.created_at(ring.current)
    # A KEK "made" after now (a clock set back, or another host's clock ahead) starts afresh.
    return made is None or made > now or now - made >= period


async def rotator(ctx: Context, stop: asyncio.Event) -> None:
    """``rotate_if_due`` and ``destroy_left_behind`` every ``CHECK_SECONDS`` (or period, if
    shorter) until ``stop``."""
    period = timedelta(seconds=ctx.settings.kek_period_seconds)
    while not stop.is_set():
        if await wait_event(stop, min(CHECK_SECONDS, period.total_seconds())):
            return
        try:
            await rotate_if_due(ctx, period=period)
            await destroy_left_behind(ctx, actor="broker")
        except Exception:  # the database may be down: try again next time
            log.warning("kek_rotation_failed", exc_info=True)
