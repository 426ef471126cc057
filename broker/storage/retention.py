"""Queries behind retention: which reports exist, how old they are and at what classification.

Reports are walked in sequence order (the primary key): a scan reads a bounded slice of small
columns (no ciphertext), so one transaction stays short whatever the size of the store. Like
every repository method, each function is plain synchronous SQLAlchemy Core run on the caller's
``Tx`` through ``Tx.run``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, delete, or_, select, update
from sqlalchemy.engine import Connection

from broker.storage import statements as st
from broker.storage.models import TaxiiStatusRow
from broker.storage.repos import Tx

REPORTS = st.REPORTS
STATUSES = st.table(TaxiiStatusRow)
_COLUMNS = (REPORTS.c.seq, REPORTS.c.id, REPORTS.c.created_at, REPORTS.c.label_json, REPORTS.c.erased_at)


@dataclass(frozen=True)
class StoredAge:
    """What retention needs to know of a stored report."""

    seq: int
    id: str
    classification: str | None  # None: a stored label without one (never expected)
    created_at: datetime
    erased: bool


def _age_of(row: Any) -> StoredAge:
    label = json.loads(row.label_json)
    classification = label.get("classification") if isinstance(label, dict) else None
    return StoredAge(
        seq=int(row.seq),
        id=row.id,
        classification=classification if isinstance(classification, str) else None,
        created_at=row.created_at,
        erased=row.erased_at is not None,
    )


async def scan(tx: Tx, *, after: int, limit: int) -> list[StoredAge]:
    """Reports with sequence above ``after``, in sequence order, at most ``limit`` (erased
    ones included: the caller's walk passes them)."""
    query = select(*_COLUMNS).where(REPORTS.c.seq > after).order_by(REPORTS.c.seq).limit(limit)
    return [_age_of(r) for r in await tx.run(lambda c: c.execute(query).all())]


@dataclass(frozen=True)
class Wrapped:
    """A stored report's wrapped data key."""

    seq: int
    kek_id: str
    wrapped_key: bytes


async def kek_ids(tx: Tx, seqs: Sequence[int]) -> set[str]:
    """The KEKs wrapping the data keys of the reports ``seqs`` (not locked: a hint for
    ``lock_for_erasure``)."""
    query = select(REPORTS.c.kek_id).where(REPORTS.c.seq.in_(list(seqs)), REPORTS.c.kek_id.is_not(None))
    return {str(row[0]) for row in await tx.run(lambda c: c.execute(query).all())}


async def lock_for_erasure(
    tx: Tx, seqs: Sequence[int], kek_ids: set[str]
) -> list[tuple[StoredAge, str | None]]:
    """Lock, until commit, every unerased report that is one of ``seqs`` or whose data key one
    of ``kek_ids`` wraps, in one statement in sequence order (so two erasures, a retention pass
    or a recall cannot deadlock on them); return those of ``seqs`` with their KEK.

    A report re-wrapped or erased by another transaction while this one waited is read again
    once that one commits: an erased one is left out, a re-wrapped one comes with its new KEK."""
    wanted: ColumnElement[bool] = REPORTS.c.seq.in_(list(seqs))
    if kek_ids:
        wanted = or_(wanted, REPORTS.c.kek_id.in_(sorted(kek_ids)))
    query = (
        select(*_COLUMNS, REPORTS.c.kek_id)
        .where(wanted, REPORTS.c.erased_at.is_(None))
        .order_by(REPORTS.c.seq)
        .with_for_update()
    )
    chosen = set(seqs)
    rows = await tx.run(lambda c: c.execute(query).all())
    return [(_age_of(r), r.kek_id) for r in rows if r.seq in chosen]


async def shred(tx: Tx, seqs: Sequence[int], *, at: datetime) -> None:
    """Mark the reports ``seqs`` erased and drop their ciphertext and wrapped data key."""
    values = {"erased_at": at, "wrapped_key": None, "ciphertext": None, "kek_id": None}
    statement = update(REPORTS).where(REPORTS.c.seq.in_(list(seqs))).values(values)
    await tx.run(lambda c: c.execute(statement))


async def wrapped_by(tx: Tx, kek_ids: set[str]) -> list[Wrapped]:
    """Every unerased report whose data key one of ``kek_ids`` wraps."""
    r = REPORTS.c
    query = (
        select(r.seq, r.kek_id, r.wrapped_key)
        .where(r.kek_id.in_(sorted(kek_ids)), r.erased_at.is_(None))
        .order_by(r.seq)
    )
    return [
        Wrapped(int(row[0]), str(row[1]), bytes(row[2]))
        for row in await tx.run(lambda c: c.execute(query).all())
    ]


_REWRAP = (
    update(REPORTS)
    .where(REPORTS.c.seq == bindparam("b_seq"), REPORTS.c.erased_at.is_(None))
    .values(wrapped_key=bindparam("b_wrapped"), kek_id=bindparam("b_kek"))
)


async def set_wrapped(tx: Tx, rows: Sequence[Wrapped]) -> None:
    """Store re-wrapped data keys (one statement, many parameter sets)."""
    if not rows:
        return
    params = [{"b_seq": w.seq, "b_wrapped": w.wrapped_key, "b_kek": w.kek_id} for w in rows]

    def body(connection: Connection) -> None:
        connection.execute(_REWRAP, params)

    await tx.run(body)


async def delete_statuses(tx: Tx, report_ids: Sequence[str]) -> int:
    """Delete the TAXII status resources that name the reports ``report_ids``."""
    statement = delete(STATUSES).where(STATUSES.c.report_id.in_(list(report_ids)))
    return int(await tx.run(lambda c: c.execute(statement).rowcount))


async def delete_index(tx: Tx, seqs: Sequence[int]) -> int:
    """Delete the TAXII object index rows of the reports ``seqs``: an erased report's keyed
    digests would still say which objects it shared with others."""
    statement = delete(st.TAXII_OBJECTS).where(st.TAXII_OBJECTS.c.report_seq.in_(list(seqs)))
    return int(await tx.run(lambda c: c.execute(statement).rowcount))


async def lock_wrapped_not_by(tx: Tx, kek_id: str, *, limit: int) -> list[Wrapped]:
    """At most ``limit`` unerased reports whose data key a KEK other than ``kek_id`` wraps,
    locked until commit in sequence order (the order erasures lock rows in)."""
    r = REPORTS.c
    query = (
        select(r.seq, r.kek_id, r.wrapped_key)
        .where(r.kek_id.is_not(None), r.kek_id != kek_id, r.erased_at.is_(None))
        .order_by(r.seq)
        .limit(limit)
        .with_for_update()
    )
    rows = await tx.run(lambda c: c.execute(query).all())
    return [Wrapped(int(row[0]), str(row[1]), bytes(row[2])) for row in rows]
