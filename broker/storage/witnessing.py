"""Queries for witness cosignatures and per-witness state (services/witnessing.py), on a ``Tx``."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Table, delete, insert, select
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


async def cosignatures_upto(tx: Tx, size: int) -> dict[int, list[Cosignature]]:
    """Every stored cosignature on checkpoints of at most ``size`` events, by size."""
    found: dict[int, list[Cosignature]] = {}
    for row in await tx.rows(select(COSIGNATURES).where(C.size <= size).order_by(C.size, C.witness)):
        found.setdefault(row.size, []).append(st.record_of(Cosignature, row))
    return found


async def store_cosignature(tx: Tx, cosignature: Cosignature) -> None:
    """Keep one cosignature (replacing that witness's earlier line on the same checkpoint)."""
    mine = (C.size == cosignature.size, C.witness == cosignature.witness)
    await _replace(tx, COSIGNATURES, mine, st.values_of(cosignature, COSIGNATURES))


async def states(tx: Tx) -> dict[str, WitnessState]:
    return {row.witness: st.record_of(WitnessState, row) for row in await tx.rows(select(STATE))}


async def save_state(tx: Tx, state: WitnessState) -> None:
    """Replace one witness's state."""
    await _replace(tx, STATE, (STATE.c.witness == state.witness,), st.values_of(state, STATE))


async def _replace(
    tx: Tx, table: Table, where: tuple[ColumnElement[bool], ...], values: dict[str, object]
) -> None:
    def body(connection: Connection) -> None:
        connection.execute(delete(table).where(*where))
        connection.execute(insert(table), values)

    await tx.write(body)
