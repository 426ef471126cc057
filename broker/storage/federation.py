"""Peers and imported reports' provenance (migration 0014), on a ``Tx``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, insert, select, update

from broker.domain.federation import Imported, PeerRecord
from broker.storage.models import PeerRow, ReportProvenanceRow
from broker.storage.repos import Tx
from broker.storage.statements import record_of, table, values_of

PEERS, PROVENANCE = table(PeerRow), table(ReportProvenanceRow)
P = PEERS.c


async def insert_peer(tx: Tx, peer: PeerRecord) -> None:
    await tx.execute(insert(PEERS), values_of(peer, PEERS))


async def peers(tx: Tx) -> list[PeerRecord]:
    return [record_of(PeerRecord, r) for r in await tx.rows(select(PEERS).order_by(P.name))]


async def peer(tx: Tx, name: str) -> PeerRecord | None:
    row = await tx.row(select(PEERS).where(P.name == name))
    return None if row is None else record_of(PeerRecord, row)


async def delete_peer(tx: Tx, name: str) -> bool:
    return bool(await tx.execute(delete(PEERS).where(P.name == name)))


async def set_peer_state(tx: Tx, name: str, *, state: str, last_error: str | None, lag: float | None) -> None:
    values: dict[str, Any] = {"state": state, "last_error": last_error}
    if lag is not None:
        values["lag"] = lag
    await tx.execute(update(PEERS).where(P.name == name).values(values))


async def advance_peer(tx: Tx, name: str, *, cursor: int, lag: float) -> None:
    """Move a peer's cursor forward (never back), in the import's transaction."""
    await tx.execute(update(PEERS).where(P.name == name, P.cursor < cursor).values(cursor=cursor, lag=lag))


async def insert_provenance(tx: Tx, imported: Imported) -> None:
    values = values_of(imported, PROVENANCE)
    del values["recall"]  # SQL NULL until recalled (set_recall_chain); None would store JSON null
    await tx.execute(insert(PROVENANCE), values)


async def provenance_of(tx: Tx, seqs: Collection[int]) -> dict[int, Imported]:
    """The imported reports among ``seqs``, by sequence (the others were published here)."""
    if not seqs:
        return {}
    rows = await tx.rows(select(PROVENANCE).where(PROVENANCE.c.report_seq.in_(sorted(seqs))))
    return {int(r.report_seq): record_of(Imported, r) for r in rows}


async def set_recall_chain(tx: Tx, report_seq: int, chain: list[Any]) -> None:
    """The verified recall statement chain of an imported report (forwarded on by a hub)."""
    await tx.execute(update(PROVENANCE).where(PROVENANCE.c.report_seq == report_seq).values(recall=chain))
