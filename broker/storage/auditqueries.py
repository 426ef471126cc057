"""Audit-log queries for the auditor page that ``repos.Tx`` does not offer: pages newest first.

Plain functions over a ``Tx`` (its ``run`` makes one trip), so the repository stays as it is.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection

from broker.domain.records import AuditEvent
from broker.storage import statements as st
from broker.storage.repos import Tx


async def events_page(
    tx: Tx,
    *,
    after: int = 0,
    before: int | None = None,
    limit: int = 100,
    descending: bool = False,
    report: str | None = None,
    node: str | None = None,
    action: str | None = None,
    nation: str | None = None,
    decision: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AuditEvent]:
    """Audit events with ``after < seq < before`` (``before`` None: no upper bound), filtered,
    in sequence order, or newest first when ``descending``; at most ``limit``."""
    e = st.EVENTS.c
    query = select(st.EVENTS).where(e.seq > after)
    if before is not None:
        query = query.where(e.seq < before)
    for column, value in (
        (e.report, report),
        (e.node, node),
        (e.action, action),
        (e.nation, nation),
        (e.decision, decision),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(e.time >= since)
    if until is not None:
        query = query.where(e.time < until)
    query = query.order_by(e.seq.desc() if descending else e.seq).limit(limit)

    def body(connection: Connection) -> list[AuditEvent]:
        return [st.event_of(row) for row in connection.execute(query)]

    return await tx.run(body)
