"""The keyring a database is bound to (table ``keyring_binding``, migration 0007).

One row (id = 1) holds the raw Ed25519 checkpoint public key of the keyring that first opened
the database, base64. The services compare it with the keyring they were given
(``broker.services.context.Context.open_bound``); this module only reads and writes the row.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import Connection

from broker.storage import statements as st
from broker.storage.models import KeyringBindingRow
from broker.storage.repos import Tx

BINDING = st.table(KeyringBindingRow)
_ROW = select(BINDING.c.checkpoint_public_key, BINDING.c.bound_at).where(BINDING.c.id == 1)


@dataclass(frozen=True)
class Binding:
    checkpoint_public_key: bytes
    bound_at: datetime


async def binding(tx: Tx, *, if_migrated: bool = False) -> Binding | None:
    """The database's binding; None when it is not bound yet, or (``if_migrated``: for the check
    made before the keyring is loaded) when it has no binding table yet (empty, or not migrated
    to 0007)."""

    def body(connection: Connection) -> Binding | None:
        if if_migrated and not inspect(connection).has_table(BINDING.name):
            return None
        row = connection.execute(_ROW).first()
        return None if row is None else Binding(base64.b64decode(row[0]), row[1])

    return await tx.run(body)


async def holds_data(tx: Tx) -> bool:
    """Whether the database holds what only its own keyring can serve: a report (its data key is
    wrapped by that keyring) or a signed checkpoint (signed by it). Seeded alliances alone are
    not: a fresh database is seeded before it is bound."""

    def body(connection: Connection) -> bool:
        inspector = inspect(connection)
        return any(
            inspector.has_table(stored.name)
            and connection.execute(select(stored).limit(1)).first() is not None
            for stored in (st.REPORTS, st.CHECKPOINTS)
        )

    return await tx.run(body)


# The distinct KEK ids of reports still holding a wrapped key (erasing nulls kek_id), one index
# probe per id (a loose index scan on ix_reports_kek_id) instead of reading every report.
_KEK_IDS = text(
    """
    WITH RECURSIVE used(kek_id) AS (
        SELECT min(kek_id) FROM reports
        UNION ALL
        SELECT (SELECT min(r.kek_id) FROM reports r WHERE r.kek_id > used.kek_id)
        FROM used WHERE used.kek_id IS NOT NULL
    )
    SELECT kek_id FROM used WHERE kek_id IS NOT NULL
    """
)


async def kek_ids_in_use(tx: Tx) -> list[str]:
    """Every KEK id that wraps a stored report's data key."""
    return [str(row[0]) for row in await tx.rows(_KEK_IDS)]


async def bind(tx: Tx, *, checkpoint_public_key: bytes, at: datetime) -> None:
    """Bind the database to a keyring. The caller holds the head lock and found no binding; a
    second binder that did not would fail on the primary key rather than rebind."""
    key = base64.b64encode(checkpoint_public_key).decode()
    await tx.execute(insert(BINDING), {"id": 1, "checkpoint_public_key": key, "bound_at": at})
