"""Peers and imported reports' provenance (migration 0014), on a ``Tx``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from broker.domain.federation import Imported, PeerRecord
from broker.storage.models import PeerRow, ReportProvenanceRow
from broker.storage.repos import Tx
from broker.storage.statements import record_of, table, values_of

PEERS = table(PeerRow)
PROVENANCE = table(ReportProvenanceRow)


async def insert_peer(tx: Tx, peer: PeerRecord) -> None:
    values = values_of(peer, PEERS)
    await tx.run(lambda c: c.execute(insert(PEERS), values))


async def peers(tx: Tx) -> list[PeerRecord]:
    rows = await tx.run(lambda c: list(c.execute(select(PEERS).order_by(PEERS.c.name))))
    return [record_of(PeerRecord, r) for r in rows]


async def peer(tx: Tx, name: str) -> PeerRecord | None:
    row = await tx.run(lambda c: c.execute(select(PEERS).where(PEERS.c.name == name)).first())
    return None if row is None else record_of(PeerRecord, row)


async def delete_peer(tx: Tx, name: str) -> bool:
    return bool(await tx.run(lambda c: c.execute(delete(PEERS).where(PEERS.c.name == name)).rowcount))


async def set_peer_state(tx: Tx, name: str, *, state: str, last_error: str | None, lag: float | None) -> None:
    values: dict[str, Any] = {"state": state, "last_error": last_error}
    if lag is not None:
        values["lag"] = lag
    await tx.run(lambda c: c.execute(update(PEERS).where(PEERS.c.name == name).values(values)))


async def advance_peer(tx: Tx, name: str, *, cursor: int, lag: float) -> None:
    """Move a peer's cursor forward (never back), in the import's transaction."""
    p = PEERS.c
    statement = update(PEERS).where(p.name == name, p.cursor < cursor).values(cursor=cursor, lag=lag)
    await tx.run(lambda c: c.execute(statement))


async def insert_provenance(tx: Tx, imported: Imported) -> None:
    values = values_of(imported, PROVENANCE)
    del values["recall"]  # SQL NULL until recalled (set_recall_chain); None would store JSON null
    await tx.run(lambda c: c.execute(insert(PROVENANCE), values))


async def provenance_of(tx: Tx, seqs: Collection[int]) -> dict[int, Imported]:
    """The imported reports among ``seqs``, by sequence (the others were published here)."""
    if not seqs:
        return {}
    statement = select(PROVENANCE).where(PROVENANCE.c.report_seq.in_(sorted(seqs)))

    def body(c: Connection) -> dict[int, Imported]:
        return {int(r.report_seq): record_of(Imported, r) for r in c.execute(statement)}

    return await tx.run(body)


async def set_recall_chain(tx: Tx, report_seq: int, chain: list[Any]) -> None:
    """The verified recall statement chain of an imported report (forwarded on by a hub)."""
    statement = update(PROVENANCE).where(PROVENANCE.c.report_seq == report_seq).values(recall=chain)
    await tx.run(lambda c: c.execute(statement))
