"""An import is decided on the peer as it stands under the head lock, not as its puller read it.

A puller holds the peer's row (pinned key, origins) as ``Links.run`` read it, up to a scan
(``PEER_SCAN_SECONDS``) before, and in every broker process sharing the database; the import's
transaction took the head but never read the peer again. So frames that arrived after
``broker peer remove`` committed (a link being cut because its upstream was compromised, say)
were still verified against the removed peer's key and origins and stored, with ``import``
events after the ``peer_remove``; likewise after the peer was removed and added again with
another key. Under the head lock the import now finds the peer gone and stores nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.domain.federation import PeerRecord
from broker.errors import Conflict
from broker.services import importer, peers
from broker.services.context import Context
from broker.storage import federation as store
from tests.integration.federation import Originator, Upstream, make_pki, report_frame

NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
UPSTREAM = Upstream("usa.example/broker")


async def _add(ctx: Context, folder: Path, vkey: str) -> PeerRecord:
    """Peer ``usa`` pinned to ``vkey``, as its puller reads it."""
    found = make_pki(folder)
    cert, key = found.client("nato-link")
    spec: dict[str, Any] = {
        "name": "usa",
        "url": "https://usa.example:8443",
        "ca": found.ca.read_text(),
        "cert": cert.read_text(),
        "key": key.read_text(),
        "origins": ["USA"],
        "broker_key": vkey,
    }
    await peers.add_peer(ctx, spec, actor="test")
    async with ctx.db.read_transaction() as tx:
        peer = await store.peer(tx, "usa")
    assert peer is not None
    return peer


async def _import(ctx: Context, peer: PeerRecord, frame: dict[str, Any]) -> list[str]:
    """The import's decisions, or the code it was refused with as a whole."""
    try:
        return await importer.import_reports(ctx, peer, [frame])
    except Conflict as refused:
        return [str(refused.code)]


async def _stored(ctx: Context, report_id: str) -> bool:
    async with ctx.db.read_transaction() as tx:
        return await tx.report(report_id) is not None


async def test_a_frame_arriving_after_its_peer_was_removed_is_not_imported(
    ctx: Context, tmp_path: Path
) -> None:
    held = await _add(ctx, tmp_path, UPSTREAM.vkey)  # the puller's copy
    await peers.remove_peer(ctx, "usa", actor="test")
    frame = report_frame(UPSTREAM, Originator("usa-analyst", "USA"), sequence=1, label=NATO)
    assert await _import(ctx, held, frame) == ["peer_gone"]
    assert not await _stored(ctx, frame["report"]["id"])


async def test_a_frame_signed_with_a_replaced_peers_key_is_not_imported(ctx: Context, tmp_path: Path) -> None:
    """The operator removed the peer and added it again pinned to a new key (the old one leaked):
    the old puller, still running, imported what the old key signed."""
    held = await _add(ctx, tmp_path / "old", UPSTREAM.vkey)
    await peers.remove_peer(ctx, "usa", actor="test")
    await _add(ctx, tmp_path / "new", Upstream("usa.example/broker").vkey)
    frame = report_frame(UPSTREAM, Originator("usa-analyst", "USA"), sequence=1, label=NATO)
    assert await _import(ctx, held, frame) == ["peer_gone"]
    assert not await _stored(ctx, frame["report"]["id"])
