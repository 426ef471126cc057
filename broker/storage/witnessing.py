"""Queries for witness cosignatures and per-witness state (services/witnessing.py).

Functions take the caller's ``Tx`` and run plain synchronous SQLAlchemy Core through ``Tx.run``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select

from broker.domain.witnessing import Cosignature, WitnessState
from broker.storage import statements as st
from broker.storage.models import WitnessCosignatureRow, WitnessStateRow
from broker.storage.repos import Tx

COSIGNATURES, STATE = st.table(WitnessCosignatureRow), st.table(WitnessStateRow)


async def cosignatures(tx: Tx, size: int) -> list[Cosignature]:
    """The stored cosignatures on the checkpoint of ``size`` events, by witness name."""
    c = COSIGNATURES.c
    query = select(COSIGNATURES).where(c.size == size).order_by(c.witness)
    return [st.record_of(Cosignature, r) for r in await tx.run(lambda conn: conn.execute(query).all())]


async def cosignatures_upto(tx: Tx, size: int) -> dict[int, list[Cosignature]]:
    """Every stored cosignature on checkpoints of at most ``size`` events, by size."""
    c = COSIGNATURES.c
    query = select(COSIGNATURES).where(c.size <= size).order_by(c.size, c.witness)
    found: dict[int, list[Cosignature]] = {}
    for row in await tx.run(lambda conn: conn.execute(query).all()):
        found.setdefault(row.size, []).append(st.record_of(Cosignature, row))
    return found


async def store_cosignature(tx: Tx, cosignature: Cosignature) -> None:
    """Keep one cosignature (replacing that witness's earlier line on the same checkpoint)."""
    c = COSIGNATURES.c
    values = st.values_of(cosignature, COSIGNATURES)
    gone = delete(COSIGNATURES).where(c.size == cosignature.size, c.witness == cosignature.witness)

    def body(conn: Any) -> None:
        conn.execute(gone)
        conn.execute(insert(COSIGNATURES), values)

    await tx.run(body)


async def states(tx: Tx) -> dict[str, WitnessState]:
    rows = await tx.run(lambda conn: conn.execute(select(STATE)).all())
    return {row.witness: st.record_of(WitnessState, row) for row in rows}


async def save_state(tx: Tx, state: WitnessState) -> None:
    """Replace one witness's state."""
    values = st.values_of(state, STATE)
    gone = delete(STATE).where(STATE.c.witness == state.witness)

    def body(conn: Any) -> None:
        conn.execute(gone)
        conn.execute(insert(STATE), values)

    await tx.run(body)
