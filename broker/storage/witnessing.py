"""Queries for witness cosignatures and per-witness state (services/witnessing.py), on a ``Tx``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Table, case, select
from sqlalchemy.engine import Connection

from broker.domain.witnessing import Cosignature, WitnessState
from broker.storage import statements as st
from broker.storage.models import WitnessCosignatureRow, WitnessStateRow
from broker.storage.repos import Tx

COSIGNATURES, STATE = st.table(WitnessCosignatureRow), st.table(WitnessStateRow)
C = COSIGNATURES.c


async def cosignatures(tx: Tx, size: int) -> list[Cosignature]:
    """The stored cosignatures on the checkpoint of ``size`` events, by witness name."""
    query = select(COSIGNATURES).where(C.size == size).order_by(C.witness)
    return [st.record_of(Cosignature, r) for r in await tx.rows(query)]


async def cosignatures_upto(tx: Tx, size: int, *, above: int = -1) -> dict[int, list[Cosignature]]:
    """Every stored cosignature on checkpoints of more than ``above`` and at most ``size``
    events, by size."""
    found: dict[int, list[Cosignature]] = {}
    query = select(COSIGNATURES).where(C.size > above, C.size <= size).order_by(C.size, C.witness)
    for row in await tx.rows(query):
        found.setdefault(row.size, []).append(st.record_of(Cosignature, row))
    return found


async def store_cosignature(tx: Tx, cosignature: Cosignature) -> None:
    """Keep one cosignature (replacing that witness's earlier line on the same checkpoint)."""
    await _upsert(tx, COSIGNATURES, st.values_of(cosignature, COSIGNATURES))


async def states(tx: Tx) -> dict[str, WitnessState]:
    return {row.witness: st.record_of(WitnessState, row) for row in await tx.rows(select(STATE))}


async def save_state(tx: Tx, state: WitnessState) -> None:
    """Replace one witness's state, except its ``cosigned_size``, which never goes down (a
    process may save a state it read before another stored a larger size)."""
    kept = STATE.c.cosigned_size
    await _upsert(tx, STATE, st.values_of(state, STATE), larger=kept)


async def _upsert(tx: Tx, table: Table, values: dict[str, Any], *, larger: Column[Any] | None = None) -> None:
    """Insert ``values``, or set them on the row with their primary key, in one statement: every
    broker process runs the witness loops, and two stores at once must both succeed (a delete
    then an insert had the second hit the primary key). ``larger`` keeps the greater of the
    stored and the new value."""
    keys = [c.name for c in table.primary_key.columns]

    def body(connection: Connection) -> None:
        upsert = st.upsert_into(connection, table)
        new = upsert.excluded
        changed: dict[str, Any] = {name: new[name] for name in values if name not in keys}
        if larger is not None:
            changed[larger.name] = case((larger > new[larger.name], larger), else_=new[larger.name])
        connection.execute(upsert.values(values).on_conflict_do_update(index_elements=keys, set_=changed))

    await tx.write(body)
