"""Queries for TAXII collections and status resources, and the report scan behind a collection,
on the caller's ``Tx`` (the transaction its act decides and audits in)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from broker.domain.records import ReportRecord
from broker.domain.stix import CollectionRecord, Indexed
from broker.storage import statements as st
from broker.storage.models import CollectionRow, TaxiiIndexStateRow, TaxiiStatusRow
from broker.storage.repos import Tx

COLLECTIONS, STATUSES = st.table(CollectionRow), st.table(TaxiiStatusRow)
REPORTS, TOPICS, OBJECTS = st.REPORTS, st.TOPICS, st.TAXII_OBJECTS
INDEX_STATE = st.table(TaxiiIndexStateRow)


def _record(row: Any) -> CollectionRecord:
    return st.record_of(CollectionRecord, row, label=json.loads(row.label_json))


async def insert_collection(tx: Tx, collection: CollectionRecord) -> None:
    values = st.values_of(collection, COLLECTIONS, label_json=json.dumps(collection.label))
    await tx.execute(insert(COLLECTIONS), values)


async def collections(tx: Tx) -> list[CollectionRecord]:
    query = select(COLLECTIONS).order_by(COLLECTIONS.c.created_at, COLLECTIONS.c.id)
    return [_record(r) for r in await tx.rows(query)]


async def collection(tx: Tx, collection_id: str) -> CollectionRecord | None:
    row = await tx.row(select(COLLECTIONS).where(COLLECTIONS.c.id == collection_id))
    return None if row is None else _record(row)


async def delete_collection(tx: Tx, collection_id: str) -> bool:
    return bool(await tx.execute(delete(COLLECTIONS).where(COLLECTIONS.c.id == collection_id)))


async def first_seq_added_after(tx: Tx, moment: datetime) -> int | None:
    """The lowest sequence of a report added after ``moment`` (index ix_reports_added)."""
    value = await tx.scalar(select(func.min(REPORTS.c.seq)).where(REPORTS.c.added_at > moment))
    return None if value is None else int(value)


async def reports_from(tx: Tx, *, start: int, topics: Sequence[str], limit: int) -> list[ReportRecord]:
    """Reports with sequence >= ``start`` carrying one of ``topics``, in sequence order, at most
    ``limit``. Each topic is read as a range of the report_topics primary key (topic,
    report_seq) from ``start``, so the cost of a page does not grow with the store."""

    def body(connection: Connection) -> list[Any]:
        seqs: set[int] = set()
        for topic in topics:
            query = (
                select(TOPICS.c.report_seq)
                .where(TOPICS.c.topic == topic, TOPICS.c.report_seq >= start)
                .order_by(TOPICS.c.report_seq)
                .limit(limit)
            )
            seqs.update(int(s) for s in connection.execute(query).scalars())
        wanted = sorted(seqs)[:limit]
        query = select(REPORTS).where(REPORTS.c.seq.in_(wanted)).order_by(REPORTS.c.seq)
        return list(connection.execute(query)) if wanted else []

    return [st.report_of(r) for r in await tx.run(body)]


async def reports_at(tx: Tx, seqs: Sequence[int]) -> list[ReportRecord]:
    """The reports with these sequences, in sequence order."""
    return await tx.reports(REPORTS.c.seq.in_(sorted(set(seqs)))) if seqs else []


async def insert_status(
    tx: Tx,
    *,
    status_id: str,
    node: str,
    collection_id: str,
    report_id: str | None,
    at: datetime,
    outcome: dict[str, Any],
) -> None:
    values = {
        "id": status_id,
        "node_id": node,
        "collection_id": collection_id,
        "report_id": report_id,
        "created_at": at,
        "outcome": outcome,
    }
    await tx.execute(insert(STATUSES), values)


async def status(tx: Tx, status_id: str) -> tuple[str, str, dict[str, Any]] | None:
    """(node, collection id, outcome) of a status resource."""
    row = await tx.row(select(STATUSES).where(STATUSES.c.id == status_id))
    return None if row is None else (row.node_id, row.collection_id, dict(row.outcome))


# -- the object index (models.TaxiiObjectRow) ----------------------------------------------------
async def indexed(tx: Tx, digests: Sequence[str]) -> list[tuple[int, Indexed]]:
    """Every (report sequence, object) the index holds under ``digests`` (ix_taxii_objects_digest)."""
    return await _indexed(tx, OBJECTS.c.digest.in_(sorted(set(digests)))) if digests else []


async def indexed_with(tx: Tx, seqs: Sequence[int]) -> list[tuple[int, Indexed]]:
    """Every version the index holds of every object the reports ``seqs`` carry (theirs among
    them), in one query: the reports' digests by the primary key, their rows by
    ix_taxii_objects_digest."""
    if not seqs:
        return []
    carried = select(OBJECTS.c.digest).where(OBJECTS.c.report_seq.in_(sorted(set(seqs))))
    return await _indexed(tx, OBJECTS.c.digest.in_(carried))


async def _indexed(tx: Tx, wanted: ColumnElement[bool]) -> list[tuple[int, Indexed]]:
    o = OBJECTS.c
    rows = await tx.rows(select(OBJECTS).where(wanted).order_by(o.report_seq, o.position))
    return [(int(r.report_seq), st.record_of(Indexed, r, excluded=r.excluded_at is not None)) for r in rows]


async def exclude(tx: Tx, places: Sequence[tuple[int, int]], *, at: datetime) -> None:
    """Mark the objects at (report sequence, position) ``places`` removed."""
    o = OBJECTS.c

    def body(connection: Connection) -> None:
        for seq, position in places:
            where = (o.report_seq == seq, o.position == position)
            connection.execute(update(OBJECTS).where(*where).values(excluded_at=at))

    await tx.write(body)


async def pending_below(tx: Tx, *, lock: bool = False) -> int:
    """The sequence below which reports still wait to be indexed (0: none)."""
    query = select(INDEX_STATE.c.pending_below).where(INDEX_STATE.c.id == 1)
    return int(await tx.scalar(query.with_for_update() if lock else query) or 0)


async def unindexed(tx: Tx, *, after: int, below: int, limit: int) -> list[ReportRecord]:
    """Unerased reports with ``after`` < sequence < ``below`` holding a payload, in sequence
    order, at most ``limit``, locked FOR SHARE until commit: an erasure under way is waited for
    (and its report then left out), a later one waits for this transaction and deletes the index
    rows it wrote. A row lock counts as a write (``Tx.lock_head``). Fewer than ``limit`` does
    not mean the last: a report erased while this waited is left out of its page."""
    r = REPORTS.c
    where = (r.seq > after, r.seq < below, r.ciphertext.is_not(None), r.erased_at.is_(None))
    query = select(REPORTS).where(*where).order_by(r.seq).limit(limit).with_for_update(read=True)
    return [st.report_of(row) for row in await tx.write(lambda c: list(c.execute(query)))]


async def add_indexed(tx: Tx, rows: Sequence[dict[str, object]]) -> None:
    if rows:
        await tx.execute(insert(OBJECTS), list(rows))


async def set_pending_below(tx: Tx, value: int) -> None:
    await tx.execute(update(INDEX_STATE).where(INDEX_STATE.c.id == 1).values(pending_below=value))
