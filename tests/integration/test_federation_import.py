"""What an imported report is at the receiving broker, beyond the import itself: its place in
TAXII's time (``date_added`` follows this broker's sequence, whatever ``created`` the origin
attested), and its originator (shown as foreign, never able to authenticate).

The upstream is a test double speaking the stream protocol over mutual TLS, signing as an origin
broker would (tests/integration/federation.py), so the test chooses each report's ``created``."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from broker.crypto.tokens import hash_token, new_token
from broker.services import admin, ledger, peers
from broker.services.context import Context
from broker.storage import db
from broker.storage import federation as federation_store
from tests.integration import test_federation_send as send
from tests.integration.conftest import Api, StartServer
from tests.integration.federation import (
    Originator,
    StreamDouble,
    Upstream,
    import_frames,
    make_pki,
    report_frame,
)
from tests.integration.helpers import eventually
from tests.integration.test_taxii import bundle, collection_id, indicator, raw

NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
UPSTREAM = Upstream("usa.example/broker")


async def _objects(api: Api, token: str, cid: str, query: str) -> tuple[list[str], str | None]:
    status, headers, answer = await raw(
        api, "GET", f"/taxii2/api/collections/{cid}/objects/{query}", token=token
    )
    assert status == 200, answer
    return [o["id"] for o in answer.get("objects", []) if o["type"] == "indicator"], headers.get(
        "X-TAXII-Date-Added-Last"
    )


async def test_a_taxii_poller_resuming_by_added_after_sees_an_import_older_than_what_it_saw(
    api: Api, tmp_path: Path
) -> None:
    """The origin attested ``created`` for each report; the second is an hour older than the
    first (published at the origin earlier, or by a broker whose clock is behind). A poller that
    read the first and resumes with ``added_after`` = its ``date_added`` still gets the second,
    and each report keeps the ``created`` its origin attested."""
    cid = await collection_id(api)
    fra = await api.node("fra-1", "FRA", roles=("subscribe",))
    usa = Originator("usa-analyst", "USA")
    first, second = indicator(1), indicator(2)
    newer = report_frame(
        UPSTREAM, usa, sequence=1, label=NATO, payload=bundle(first), created="2026-11-25T12:10:00+00:00"
    )
    older = report_frame(
        UPSTREAM, usa, sequence=2, label=NATO, payload=bundle(second), created="2026-11-25T11:00:00+00:00"
    )
    await import_frames(api.ctx, tmp_path, [newer], vkey=UPSTREAM.vkey)
    seen, last = await _objects(api, fra, cid, "")
    assert seen == [first["id"]] and last is not None
    await import_frames(api.ctx, tmp_path / "again", [newer, older], vkey=UPSTREAM.vkey, name="usa-again")

    resumed, after = await _objects(api, fra, cid, f"?added_after={quote(last)}")
    assert resumed == [second["id"]]
    assert after is not None and after > last
    status, _, manifest = await raw(api, "GET", f"/taxii2/api/collections/{cid}/manifest/", token=fra)
    assert status == 200, manifest
    added = {m["id"]: m["date_added"] for m in manifest["objects"]}
    assert added[second["id"]] > added[first["id"]]
    for frame in (newer, older):  # the report itself keeps what its origin attested
        status, doc = await api.get(f"/v1/reports/{frame['report']['id']}", fra)
        assert status == 200 and doc["created"].startswith(frame["report"]["created"][:19])


sender = send.sender  # a broker serving TLS with client certificates (test_federation_send)


async def test_a_foreign_originator_is_shown_foreign_and_never_authenticates(
    sender: send.Sender, tmp_path: Path
) -> None:
    """The originator of an imported report is stored for its attested key. Admins see it as
    another broker's (``foreign``, the peer it came from); a certificate that names it, from a
    CA this broker trusts, is refused, and so is a token: none can be given to it either."""
    frame = report_frame(UPSTREAM, Originator("usa-analyst", "USA"), sequence=1, label=NATO)
    await import_frames(sender.ctx, tmp_path / "peer", [frame], vkey=UPSTREAM.vkey)
    spec = {"id": "ops", "nation": "BEL", "clearance": "SECRET", "roles": ["admin"]}
    ops = {"Authorization": f"Bearer {(await admin.add_node(sender.ctx, spec, actor='test'))['token']}"}
    trust = ssl.create_default_context(cafile=str(sender.pki_dir / "ca.pem"))
    report = f"{sender.base}/v1/reports/{frame['report']['id']}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sender.base}/v1/admin/nodes", headers=ops, ssl=trust) as resp:
            listed = {n["id"]: n for n in (await resp.json())["nodes"]}
        assert listed["usa-analyst"]["foreign"] is True and listed["usa-analyst"]["peer"] == "usa"
        assert listed["usa-analyst"]["roles"] == [] and listed["ops"]["foreign"] is False
        async with session.get(report, ssl=sender.tls("usa-analyst")) as resp:
            assert resp.status == 401 and "foreign_originator" in (await resp.json())["detail"]
        for method, path, payload in (
            ("POST", "/rotate-token", None),
            ("PATCH", "", {"roles": ["subscribe"]}),
        ):
            url = f"{sender.base}/v1/admin/nodes/usa-analyst{path}"
            async with session.request(method, url, headers=ops, json=payload, ssl=trust) as resp:
                assert resp.status == 409 and (await resp.json())["type"].endswith(":foreign_originator")
        token = new_token()  # as if a token reached its row some other way: still refused
        async with sender.ctx.db.transaction() as tx:
            assert await tx.set_token_hash("usa-analyst", hash_token(token))
        bearer = {"Authorization": f"Bearer {token}"}
        async with session.get(report, headers=bearer, ssl=trust) as resp:
            assert resp.status == 401 and "foreign_originator" in (await resp.json())["detail"]


async def test_migration_0016_keeps_foreign_originators_foreign(api: Api, tmp_path: Path) -> None:
    """0014 listed foreign originators in a table of their own; 0016 moves the mark onto the
    node row and back again on downgrade."""
    frame = report_frame(UPSTREAM, Originator("usa-analyst", "USA"), sequence=1, label=NATO)
    await import_frames(api.ctx, tmp_path, [frame], vkey=UPSTREAM.vkey)

    def downgrade(connection: Connection) -> None:
        cfg = db.alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0015")

    async with api.ctx.db.engine.begin() as connection:
        await connection.run_sync(downgrade)
        held = (await connection.execute(text("SELECT node_id, peer FROM foreign_originators"))).all()
    assert [tuple(row) for row in held] == [("usa-analyst", "usa")]
    await db.upgrade(api.ctx.db.engine)
    assert await db.schema_drift(api.ctx.db.engine) == []
    listed = {n["id"]: n for n in await admin.list_nodes(api.ctx)}
    assert (listed["usa-analyst"]["foreign"], listed["usa-analyst"]["peer"]) == (True, "usa")


async def test_frames_received_together_are_imported_together_each_decided_alone(
    api: Api, tmp_path: Path
) -> None:
    """A burst from the upstream is imported in a few transactions, each acked once committed
    (so far fewer acks than frames), and every frame still gets its own decision and event: a
    replay inside the burst is a duplicate, a label widened after attestation is refused."""
    usa = Originator("usa-analyst", "USA")
    frames = [report_frame(UPSTREAM, usa, sequence=n, label=NATO) for n in range(1, 33)]
    replay = {**frames[3], "report": {**frames[3]["report"], "sequence": 33}}
    widened = report_frame(UPSTREAM, usa, sequence=34, label={**NATO, "releasable_to": ["USA"]})
    widened["report"]["label"] = NATO
    widened["federation"]["label_json"] = json.dumps(NATO)
    acks = await import_frames(api.ctx, tmp_path, [*frames, replay, widened], vkey=UPSTREAM.vkey)
    assert acks == sorted(acks) and len(acks) <= 8, acks
    async with api.ctx.db.read_transaction() as tx:
        imports = [ledger.event_json(e) for e in await tx.events(limit=100, action="import")]
    assert [(e["details"]["upstream_sequence"], e["reason"]) for e in imports] == [
        *((n, "imported") for n in range(1, 33)),
        (33, "duplicate"),
        (34, "attestation_mismatch"),
    ]
    assert len({e["time"] for e in imports}) <= len(acks)  # one audit group per transaction


# Row locks and their order are PostgreSQL's (SQLite serialises every writer at BEGIN IMMEDIATE).
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_removing_a_peer_takes_the_head_before_the_peer_row(ctx: Context, tmp_path: Path) -> None:
    """An import locks the head, then moves its peer's cursor. Removing the peer deleted the row
    first and locked the head after (for its audit event): with an import in flight, PostgreSQL
    found a deadlock and `peer remove` failed ("deadlock detected"). Here a transaction holds the
    head while the removal starts, then moves the peer's cursor as an import would."""
    found = make_pki(tmp_path)
    cert, key = found.client("nato-link")
    spec = {"name": "usa", "url": "https://127.0.0.1:1", "ca": found.ca.read_text(), "cert": cert.read_text()}
    vkey = Upstream("usa.example/broker").vkey
    await peers.add_peer(
        ctx, {**spec, "key": key.read_text(), "origins": ["USA"], "broker_key": vkey}, actor="t"
    )
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )

    async def removal_waits() -> bool:
        async with ctx.db.read_transaction() as probe:
            return bool(await probe.scalar(waiting))

    async with ctx.db.transaction() as importing:
        await importing.lock_head()
        removing = asyncio.create_task(peers.remove_peer(ctx, "usa", actor="t"))
        await eventually(removal_waits)
        await federation_store.advance_peer(importing, "usa", cursor=1, lag=0.0)
    assert await removing == {"name": "usa", "removed": True}


# Several broker processes share a PostgreSQL database; a SQLite file has one.
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_brokers_pulling_one_peer_record_each_frame_once(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Every broker process pulls every peer, so both receive each frame. The second to import a
    frame found its id held and recorded a ``duplicate`` refusal: each report was in the log as
    imported by one process and refused by the other. A frame at or below the peer's stored
    cursor (read under the head lock) was decided already: acked, not decided again."""
    first = await start_server()
    await start_server()  # a second broker process on the same database
    found = make_pki(tmp_path)
    double = StreamDouble(found, together=2)
    double.frames = [
        report_frame(UPSTREAM, Originator("usa-analyst", "USA"), sequence=n, label=NATO) for n in (1, 2, 3)
    ]
    url = await double.start()
    cert, key = found.client("nato-link")
    spec = {"name": "usa", "url": url, "ca": found.ca.read_text(), "cert": cert.read_text()}
    try:
        await peers.add_peer(
            first.ctx,
            {**spec, "key": key.read_text(), "origins": ["USA"], "broker_key": UPSTREAM.vkey},
            actor="t",
        )

        async def both_acked() -> bool:
            return double.acks.count(3) == 2

        await eventually(both_acked)
    finally:
        await double.stop()
    async with first.ctx.db.read_transaction() as tx:
        imports = [ledger.event_json(e) for e in await tx.events(limit=100, action="import")]
    assert [(e["details"]["upstream_sequence"], e["decision"]) for e in imports] == [
        (1, "allow"),
        (2, "allow"),
        (3, "allow"),
    ]
