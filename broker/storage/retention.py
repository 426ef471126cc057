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

from sqlalchemy import select

from broker.storage import statements as st
from broker.storage.repos import Tx

REPORTS = st.REPORTS
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


async def lock_unerased(tx: Tx, seqs: Sequence[int]) -> list[StoredAge]:
    """Of the reports ``seqs``, those not erased yet, locked until commit, in sequence order.

    On PostgreSQL the rows are locked in sequence order (so two brokers cannot deadlock on them)
    and a row that another transaction erased meanwhile is re-checked once that one commits:
    it no longer matches and is left out. On SQLite the writer already holds the database."""
    if not seqs:
        return []
    query = (
        select(*_COLUMNS)
        .where(REPORTS.c.seq.in_(list(seqs)), REPORTS.c.erased_at.is_(None))
        .order_by(REPORTS.c.seq)
        .with_for_update()
    )
    return [_age_of(r) for r in await tx.run(lambda c: c.execute(query).all())]
