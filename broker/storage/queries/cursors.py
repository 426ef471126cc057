"""Queries on the stream cursors: the sequence each named cursor of a node acknowledged."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from broker.storage import statements as st
from broker.storage.transaction import TxBase


class CursorQueries(TxBase):
    """A node's named stream cursors."""

    async def cursor(self, *, node: str, name: str) -> int | None:
        row = await self._first(st.CURSOR, {"node": node, "name": name})
        return None if row is None else int(row[0])

    async def cursors(self, *, node: str) -> list[tuple[str, int, datetime]]:
        """A node's stream cursors: (name, acknowledged sequence, when), by name."""
        c = st.CURSORS.c
        query = select(c.name, c.sequence, c.updated_at).where(c.node_id == node).order_by(c.name)
        return [(r.name, int(r.sequence), r.updated_at) for r in await self._all(query)]

    async def delete_cursor(self, *, node: str, name: str) -> int | None:
        """Remove a stream cursor; the sequence it held, or None when there was none."""
        c = st.CURSORS.c

        def body(connection: Connection) -> int | None:
            row = connection.execute(st.CURSOR, {"node": node, "name": name}).first()
            if row is None:
                return None
            connection.execute(delete(st.CURSORS).where(c.node_id == node, c.name == name))
            return int(row[0])

        return await self.run(body)

    async def save_cursor(self, *, node: str, name: str, sequence: int, at: datetime) -> None:
        """Store the acknowledged sequence; a cursor never moves backwards."""
        c = st.CURSORS.c

        def body(connection: Connection) -> None:
            row = connection.execute(st.CURSOR, {"node": node, "name": name}).first()
            if row is None:
                values = {"node_id": node, "name": name, "sequence": sequence, "updated_at": at}
                connection.execute(insert(st.CURSORS), values)
            elif sequence > row[0]:
                mine = update(st.CURSORS).where(c.node_id == node, c.name == name)
                connection.execute(mine.values(sequence=sequence, updated_at=at))

        await self.run(body)
