"""Queries on the alliance directory and the nodes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from broker.domain.alliances import Alliance, Directory, Membership
from broker.domain.records import NodeRecord
from broker.storage import statements as st
from broker.storage.transaction import TxBase


class DirectoryQueries(TxBase):
    """Alliances, memberships and nodes."""

    async def load_directory(self) -> Directory:
        def body(c: Connection) -> Directory:
            return st.directory_of(list(c.execute(st.ALLIANCES)), list(c.execute(st.MEMBERSHIPS)))

        return await self.run(body)

    async def count_alliances(self) -> int:
        return int((await self._first(select(func.count()).select_from(st.ALLIANCE_TABLE)))[0])

    async def insert_alliance(self, alliance: Alliance, *, at: datetime) -> None:
        values = st.values_of(alliance, st.ALLIANCE_TABLE, created_at=at)
        await self.run(lambda c: c.execute(insert(st.ALLIANCE_TABLE), values))

    async def insert_membership(self, membership: Membership) -> None:
        values = st.values_of(membership, st.MEMBERSHIP_TABLE, alliance_id=membership.alliance)
        await self.run(lambda c: c.execute(insert(st.MEMBERSHIP_TABLE), values))

    async def close_membership(self, *, alliance: str, nation: str, at: datetime) -> bool:
        """Set ``left`` on the open membership period; False when there is none."""
        m = st.MEMBERSHIP_TABLE.c
        open_period = (m.alliance_id == alliance, m.nation == nation, m.left.is_(None))
        return bool(await self._count(update(st.MEMBERSHIP_TABLE).where(*open_period).values(left=at)))

    async def insert_node(self, node: NodeRecord) -> None:
        values = st.values_of(node, st.NODES)
        await self.run(lambda c: c.execute(insert(st.NODES), values))

    async def node(self, node_id: str) -> NodeRecord | None:
        row = await self._first(st.NODE_BY_ID, {"id": node_id})
        return None if row is None else st.record_of(NodeRecord, row)

    async def node_by_token_hash(self, token_hash: str) -> NodeRecord | None:
        row = await self._first(st.NODE_BY_TOKEN, {"token_hash": token_hash})
        return None if row is None else st.record_of(NodeRecord, row)

    async def nodes(self) -> list[NodeRecord]:
        return [
            st.record_of(NodeRecord, r) for r in await self._all(select(st.NODES).order_by(st.NODES.c.id))
        ]

    async def update_node(self, node: NodeRecord) -> None:
        """Store a node's clearance, caveats, roles, public keys and certificate pin."""
        values = st.values_of(node, st.NODES)
        for fixed in (
            "id",
            "nation",
            "token_hash",
            "token_expires_at",
            "created_at",
            "foreign_peer",
            "revoked_at",
        ):
            del values[fixed]
        await self._count(update(st.NODES).where(st.NODES.c.id == node.id).values(values))

    async def set_token_hash(
        self, node_id: str, token_hash: str, *, expires_at: datetime | None = None
    ) -> bool:
        """Replace a live node's token hash and expiry (the old token stops working at commit)."""
        n = st.NODES.c
        live = (n.id == node_id, n.revoked_at.is_(None))
        values = {"token_hash": token_hash, "token_expires_at": expires_at}
        return bool(await self._count(update(st.NODES).where(*live).values(values)))

    async def revoke_node(self, node_id: str, *, at: datetime) -> bool:
        n = st.NODES.c
        live = (n.id == node_id, n.revoked_at.is_(None))
        return bool(await self._count(update(st.NODES).where(*live).values(revoked_at=at)))
