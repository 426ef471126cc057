"""Queries on the stored reports: reading, recall and erasure, key re-wrapping."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from broker.domain.records import ReportRecord
from broker.storage import statements as st
from broker.storage.transaction import TxBase


class ReportQueries(TxBase):
    """Reports, their topics and TAXII's object index rows; which were withdrawn."""

    async def insert_reports(self, reports: Sequence[tuple[ReportRecord, str | None]]) -> None:
        """Insert reports (with their idempotency keys) and their topics (queued)."""
        rows, topics = st.report_rows(reports)
        self._queue(st.INSERT_REPORTS, rows)
        self._queue(st.INSERT_TOPICS, topics)

    async def insert_objects(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of TAXII's object index (``models.TaxiiObjectRow``), queued."""
        self._queue(st.INSERT_OBJECTS, rows)

    async def report(self, report_id: str) -> ReportRecord | None:
        row = await self._first(st.REPORT_BY_ID, {"id": report_id})
        return None if row is None else st.report_of(row)

    async def reports_after(self, *, after: int, topics: Sequence[str], limit: int) -> list[ReportRecord]:
        r = st.REPORTS.c
        query = select(st.REPORTS).where(r.seq > after).order_by(r.seq).limit(limit)
        if topics:
            tagged = select(st.TOPICS.c.report_seq).where(st.TOPICS.c.topic.in_(topics))
            query = query.where(r.seq.in_(tagged))
        return [st.report_of(row) for row in await self._all(query)]

    async def set_recalled(self, report_id: str, *, at: datetime) -> None:
        await self._count(update(st.REPORTS).where(st.REPORTS.c.id == report_id).values(recalled_at=at))

    async def withdrawn(self, ids: Collection[str]) -> dict[str, str]:
        """Of the reports ``ids``, those recalled or erased: id -> ``erased`` or ``recalled``."""
        if not ids:
            return {}
        statement = select(st.REPORTS.c.id, st.REPORTS.c.erased_at).where(
            st.REPORTS.c.id.in_(sorted(ids)),
            or_(st.REPORTS.c.recalled_at.is_not(None), st.REPORTS.c.erased_at.is_not(None)),
        )
        rows = await self._all(statement)
        return {str(row.id): "recalled" if row.erased_at is None else "erased" for row in rows}

    async def withdrawn_after(self, after: int) -> dict[int, tuple[datetime | None, datetime | None]]:
        """Every report above ``after`` that was recalled or erased, as ``withdrawn``."""
        statement = select(st.REPORTS.c.seq, st.REPORTS.c.recalled_at, st.REPORTS.c.erased_at).where(
            st.REPORTS.c.seq > after,
            or_(st.REPORTS.c.recalled_at.is_not(None), st.REPORTS.c.erased_at.is_not(None)),
        )
        return {int(row.seq): (row.recalled_at, row.erased_at) for row in await self._all(statement)}

    async def withdrawn_since(self, since: datetime, *, upto: int) -> list[ReportRecord]:
        """Reports up to sequence ``upto`` recalled or erased at or after ``since``, by sequence:
        what a stream that has passed them must send recall notices for."""
        r = st.REPORTS.c
        query = (
            select(st.REPORTS)
            .where(r.seq <= upto, or_(r.recalled_at >= since, r.erased_at >= since))
            .order_by(r.seq)
        )
        return [st.report_of(row) for row in await self._all(query)]
