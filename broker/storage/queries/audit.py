"""Queries on the audit log, its Merkle tree and its checkpoints."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from broker.domain.records import AuditEvent, Checkpoint
from broker.storage import statements as st
from broker.storage.transaction import TxBase


class AuditQueries(TxBase):
    """Audit events, Merkle nodes and checkpoints."""

    async def events(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        report: str | None = None,
        node: str | None = None,
        action: str | None = None,
        nation: str | None = None,
        decision: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        upto: int | None = None,
        before: int | None = None,
        descending: bool = False,
    ) -> list[AuditEvent]:
        """Audit events above ``after`` (at most ``upto``, below ``before``), filtered, in
        sequence order or, ``descending``, newest first."""
        e = st.EVENTS.c
        order = e.seq.desc() if descending else e.seq
        query = select(st.EVENTS).where(e.seq > after).order_by(order).limit(limit)
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
        if upto is not None:
            query = query.where(e.seq <= upto)
        return [st.event_of(r) for r in await self._all(query)]

    async def insert_events(self, events: Sequence[AuditEvent]) -> None:
        self._queue(st.INSERT_EVENTS, st.event_rows(events))

    async def event(self, seq: int) -> AuditEvent | None:
        row = await self._first(select(st.EVENTS).where(st.EVENTS.c.seq == seq))
        return None if row is None else st.event_of(row)

    async def audit_size(self) -> int:
        """Events in the log (without locking the head)."""
        row = await self._first(select(st.HEAD.c.audit_seq).where(st.HEAD.c.id == 1))
        return 0 if row is None else int(row[0])

    async def publish_event_hash(self, report_id: str) -> str | None:
        """The hash of the audit event that accepted ``report_id``'s publication."""
        a = st.EVENTS.c
        query = (
            select(a.hash)
            .where(a.report == report_id, a.action == "publish", a.decision == "allow")
            .order_by(a.seq)
            .limit(1)
        )
        row = await self._first(query)
        return None if row is None else str(row[0])

    async def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._queue(st.INSERT_NODES, st.node_rows(nodes))

    async def merkle_nodes(self, coords: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored Merkle nodes by (level, index); absent ones are simply missing."""
        by_level: dict[int, list[int]] = {}
        for lvl, idx in coords:
            by_level.setdefault(lvl, []).append(idx)
        m = st.MERKLE.c

        def body(connection: Connection) -> dict[tuple[int, int], bytes]:
            found: dict[tuple[int, int], bytes] = {}
            for lvl, indexes in by_level.items():
                query = select(st.MERKLE).where(m.level == lvl, m.idx.in_(indexes))
                for row in connection.execute(query):
                    found[(row.level, row.idx)] = bytes.fromhex(row.hash)
            return found

        return await self.run(body)

    async def latest_checkpoint(self) -> Checkpoint | None:
        row = await self._first(select(st.CHECKPOINTS).order_by(st.CHECKPOINTS.c.size.desc()).limit(1))
        return None if row is None else st.checkpoint_of(row)

    async def checkpoints(self, *, upto: int) -> list[Checkpoint]:
        c = st.CHECKPOINTS.c
        query = select(st.CHECKPOINTS).where(c.size <= upto).order_by(c.size)
        return [st.checkpoint_of(r) for r in await self._all(query)]

    async def insert_checkpoint(self, checkpoint: Checkpoint) -> None:
        values = st.values_of(checkpoint, st.CHECKPOINTS, root=checkpoint.root.hex())
        await self.run(lambda c: c.execute(insert(st.CHECKPOINTS), values))
