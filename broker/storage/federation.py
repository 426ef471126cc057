"""Peers and imported reports' provenance (migration 0014), on a ``Tx``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from broker.domain.federation import Imported, PeerRecord
from broker.storage.models import PeerRow, ReportProvenanceRow
from broker.storage.repos import Tx
from broker.storage.statements import table

PEERS = table(PeerRow)
PROVENANCE = table(ReportProvenanceRow)


def _peer_of(row: Any) -> PeerRecord:
    return PeerRecord(
        name=row.name,
        url=row.url,
        ca_pem=row.ca_pem,
        cert_pem=row.cert_pem,
        key_sealed=bytes(row.key_sealed),
        token_sealed=None if row.token_sealed is None else bytes(row.token_sealed),
        origins=tuple(row.origins),
        broker_key=row.broker_key,
        cursor=int(row.cursor),
        state=row.state,
        lag=float(row.lag),
        last_error=row.last_error,
        created_at=row.created_at,
    )


async def insert_peer(tx: Tx, peer: PeerRecord) -> None:
    values = {
        "name": peer.name,
        "url": peer.url,
        "ca_pem": peer.ca_pem,
        "cert_pem": peer.cert_pem,
        "key_sealed": peer.key_sealed,
        "token_sealed": peer.token_sealed,
        "origins": list(peer.origins),
        "broker_key": peer.broker_key,
        "cursor": peer.cursor,
        "state": peer.state,
        "lag": peer.lag,
        "last_error": peer.last_error,
        "created_at": peer.created_at,
    }
    await tx.run(lambda c: c.execute(insert(PEERS), values))


async def peers(tx: Tx) -> list[PeerRecord]:
    return [
        _peer_of(r) for r in await tx.run(lambda c: list(c.execute(select(PEERS).order_by(PEERS.c.name))))
    ]


async def peer(tx: Tx, name: str) -> PeerRecord | None:
    row = await tx.run(lambda c: c.execute(select(PEERS).where(PEERS.c.name == name)).first())
    return None if row is None else _peer_of(row)


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
    values = {
        "report_seq": imported.report_seq,
        "peer": imported.peer,
        "provenance": list(imported.provenance),
        "attestations": list(imported.attestations),
        "origin_signer": imported.origin_signer,
    }
    await tx.run(lambda c: c.execute(insert(PROVENANCE), values))


async def provenance_of(tx: Tx, seqs: Collection[int]) -> dict[int, Imported]:
    """The imported reports among ``seqs``, by sequence (the others were published here)."""
    if not seqs:
        return {}
    statement = select(PROVENANCE).where(PROVENANCE.c.report_seq.in_(sorted(seqs)))

    def body(c: Connection) -> dict[int, Imported]:
        return {
            int(r.report_seq): Imported(
                report_seq=int(r.report_seq),
                peer=r.peer,
                provenance=tuple(r.provenance),
                attestations=tuple(r.attestations),
                origin_signer=r.origin_signer,
                recall=None if r.recall is None else tuple(r.recall),
            )
            for r in c.execute(statement)
        }

    return await tx.run(body)


async def set_recall_chain(tx: Tx, report_seq: int, chain: list[Any]) -> None:
    """The verified recall statement chain of an imported report (forwarded on by a hub)."""
    statement = update(PROVENANCE).where(PROVENANCE.c.report_seq == report_seq).values(recall=chain)
    await tx.run(lambda c: c.execute(statement))
