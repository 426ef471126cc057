"""Queries behind retention and erasure: which reports exist, how old they are and at what
classification, and their wrapped data keys, on the caller's ``Tx``.

Reports are walked in sequence order (the primary key): a scan reads a bounded slice of small
columns (no ciphertext), so one transaction stays short whatever the size of the store. Rows are
locked in sequence order too, so two erasures, a retention pass, a re-wrap or a recall cannot
deadlock on them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, or_, select, update

from broker.storage import statements as st
from broker.storage.models import TaxiiStatusRow
from broker.storage.repos import Tx

REPORTS, R = st.REPORTS, st.REPORTS.c
STATUSES = st.table(TaxiiStatusRow)
_COLUMNS = (R.seq, R.id, R.created_at, R.added_at, R.label_json, R.erased_at)


@dataclass(frozen=True)
class StoredAge:
    """What retention needs to know of a stored report."""

    seq: int
    id: str
    classification: str | None  # None: a stored label without one (never expected)
    created_at: datetime
    erased: bool
    added_at: datetime | None = None  # when this broker stored it (an import: not its created)

    @property
    def aged_from(self) -> datetime:
        """What its retention period counts from: ``created``, but never after this broker
        stored it. An imported report's ``created`` is what its origin attested, which may lie
        anywhere (far in the future: it would never expire, and the walk, which stops at the
        first report not yet expired, would stop there for good); the stamp this broker gave it
        follows the sequence, so no report can hold the walk back longer than its own period."""
        if self.added_at is None:
            return self.created_at
        return min(self.created_at, self.added_at)


@dataclass(frozen=True)
class Wrapped:
    """A stored report's wrapped data key."""

    seq: int
    kek_id: str
    wrapped_key: bytes


def _age_of(row: Any) -> StoredAge:
    label = json.loads(row.label_json)
    level = label.get("classification") if isinstance(label, dict) else None
    level = level if isinstance(level, str) else None
    return st.record_of(StoredAge, row, classification=level, erased=row.erased_at is not None)


async def scan(tx: Tx, *, after: int, limit: int) -> list[StoredAge]:
    """Reports with sequence above ``after``, in sequence order, at most ``limit`` (erased
    ones included: the caller's walk passes them)."""
    query = select(*_COLUMNS).where(R.seq > after).order_by(R.seq).limit(limit)
    return [_age_of(r) for r in await tx.rows(query)]


async def kek_ids(tx: Tx, seqs: Sequence[int]) -> set[str]:
    """The KEKs wrapping the data keys of the reports ``seqs`` (not locked: a hint for
    ``lock_for_erasure``)."""
    query = select(R.kek_id).where(R.seq.in_(list(seqs)), R.kek_id.is_not(None))
    return {str(row[0]) for row in await tx.rows(query)}


async def lock_for_erasure(
    tx: Tx, seqs: Sequence[int], kek_ids: set[str]
) -> list[tuple[StoredAge, str | None]]:
    """Lock, until commit, every unerased report that is one of ``seqs`` or whose data key one
    of ``kek_ids`` wraps, in one statement; return those of ``seqs`` with their KEK.

    A report re-wrapped or erased by another transaction while this one waited is read again
    once that one commits: an erased one is left out, a re-wrapped one comes with its new KEK.
    On SQLite the writer already holds the database."""
    wanted: ColumnElement[bool] = R.seq.in_(list(seqs))
    if kek_ids:
        wanted = or_(wanted, R.kek_id.in_(sorted(kek_ids)))
    query = select(*_COLUMNS, R.kek_id).where(wanted, R.erased_at.is_(None)).order_by(R.seq)
    chosen = set(seqs)
    rows = await tx.write(lambda c: list(c.execute(query.with_for_update())))  # a row lock: a write
    return [(_age_of(r), r.kek_id) for r in rows if r.seq in chosen]


async def shred(tx: Tx, seqs: Sequence[int], *, at: datetime) -> None:
    """Mark the reports ``seqs`` erased and drop their ciphertext and wrapped data key."""
    values = {"erased_at": at, "wrapped_key": None, "ciphertext": None, "kek_id": None}
    await tx.execute(update(REPORTS).where(R.seq.in_(list(seqs))).values(values))


async def wrapped_by(tx: Tx, kek_ids: set[str]) -> list[Wrapped]:
    """Every unerased report whose data key one of ``kek_ids`` wraps."""
    return await _wrapped(tx, R.kek_id.in_(sorted(kek_ids)))


async def lock_wrapped_not_by(tx: Tx, kek_id: str, *, limit: int) -> list[Wrapped]:
    """At most ``limit`` unerased reports whose data key a KEK other than ``kek_id`` wraps,
    locked until commit."""
    return await _wrapped(tx, R.kek_id.is_not(None), R.kek_id != kek_id, limit=limit, lock=True)


async def _wrapped(
    tx: Tx, *where: ColumnElement[bool], limit: int | None = None, lock: bool = False
) -> list[Wrapped]:
    query = select(R.seq, R.kek_id, R.wrapped_key).where(*where, R.erased_at.is_(None)).order_by(R.seq)
    query = query.limit(limit)
    if lock:  # a row lock counts as a write (``Tx.lock_head``)
        rows = await tx.write(lambda c: list(c.execute(query.with_for_update())))
    else:
        rows = await tx.rows(query)
    return [Wrapped(int(row[0]), str(row[1]), bytes(row[2])) for row in rows]


_REWRAP = (
    update(REPORTS)
    .where(R.seq == bindparam("b_seq"), R.erased_at.is_(None))
    .values(wrapped_key=bindparam("b_wrapped"), kek_id=bindparam("b_kek"))
)


async def set_wrapped(tx: Tx, rows: Sequence[Wrapped]) -> None:
    """Store re-wrapped data keys (one statement, many parameter sets); an erased report is
    left as it is (a shredded report never gets a wrapped key back)."""
    if rows:
        await tx.execute(
            _REWRAP, [{"b_seq": w.seq, "b_wrapped": w.wrapped_key, "b_kek": w.kek_id} for w in rows]
        )


async def delete_statuses(tx: Tx, report_ids: Sequence[str]) -> int:
    """Delete the TAXII status resources that name the reports ``report_ids``."""
    return await tx.execute(delete(STATUSES).where(STATUSES.c.report_id.in_(list(report_ids))))


async def delete_index(tx: Tx, seqs: Sequence[int]) -> int:
    """Delete the TAXII object index rows of the reports ``seqs``: an erased report's keyed
    digests would still say which objects it shared with others."""
    return await tx.execute(delete(st.TAXII_OBJECTS).where(st.TAXII_OBJECTS.c.report_seq.in_(list(seqs))))
