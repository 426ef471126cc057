"""What a hostile upstream could do to the receiving broker beyond the report it sends, each
through the stream double (tests/integration/federation.py):

- re-key (or re-nationalise) an originator another peer introduced, so that the other peer's
  reports no longer verify at local SDKs and its own verify under that originator's id;
- stop retention for good with one report whose attested ``created`` lies far in the future
  (retention walks reports in sequence order and stopped at the first not yet expired)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from broker.client import BrokerClient
from broker.services import ledger, retention
from broker.settings import Settings
from tests.conftest import FakeClock
from tests.integration.conftest import Api, StartServer
from tests.integration.federation import Originator, Upstream, import_frames, report_frame
from tests.integration.helpers import body

NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}


async def _import_decisions(api: Api) -> list[tuple[str, str | None]]:
    async with api.ctx.db.read_transaction() as tx:
        imports = [ledger.event_json(e) for e in await tx.events(limit=100, action="import")]
    return [(e["decision"], e["reason"]) for e in imports]


async def test_a_peer_cannot_rekey_an_originator_another_peer_introduced(api: Api, tmp_path: Path) -> None:
    usa, hub, gbr = (
        Upstream("usa.example/broker"),
        Upstream("hub.example/broker"),
        Upstream("gbr.example/broker"),
    )
    analyst = Originator("usa-analyst", "USA")
    genuine = report_frame(usa, analyst, sequence=1, label=NATO)
    await import_frames(api.ctx, tmp_path / "usa", [genuine], vkey=usa.vkey)
    # Another peer carrying USA claims the same originator id under a key of its own ...
    same_nation = report_frame(hub, Originator("usa-analyst", "USA"), sequence=1, label=NATO)
    await import_frames(api.ctx, tmp_path / "hub", [same_nation], vkey=hub.vkey, name="hub")
    # ... and one that may only speak for GBR claims it as a GBR originator.
    other_nation = report_frame(gbr, Originator("usa-analyst", "GBR"), sequence=1, label=NATO)
    await import_frames(
        api.ctx, tmp_path / "gbr", [other_nation], vkey=gbr.vkey, name="gbr", origins=("GBR",)
    )

    assert await _import_decisions(api) == [
        ("allow", "imported"),
        ("deny", "originator_conflict"),
        ("deny", "originator_conflict"),
    ]
    async with api.ctx.db.read_transaction() as tx:
        node = await tx.node("usa-analyst")
        assert node is not None
        assert (node.nation, node.ed25519_public_key, node.foreign_peer) == ("USA", analyst.public, "usa")
        for frame in (same_nation, other_nation):
            assert await tx.report(frame["report"]["id"]) is None
    fra = await api.node("fra-1", "FRA", roles=("subscribe",))
    async with BrokerClient(api.base_url, fra) as client:
        assert (await client.read(genuine["report"]["id"])).verified


async def test_a_created_far_in_the_future_does_not_stop_retention(
    start_server: StartServer, settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    day = timedelta(days=1)
    api = await start_server(policy=replace(settings.policy, retention=(("RESTRICTED", 30 * day),)))
    upstream = Upstream("usa.example/broker")
    restricted = {"classification": "RESTRICTED", "releasable_to": ["NATO"], "caveats": []}
    future = report_frame(
        upstream,
        Originator("usa-analyst", "USA"),
        sequence=1,
        label=restricted,
        created="9999-12-31T00:00:00+00:00",
    )
    await import_frames(api.ctx, tmp_path, [future], vkey=upstream.vkey)
    assert await _import_decisions(api) == [("allow", "imported")]
    usa = await api.node("usa-1", "USA")
    status, receipt = await api.publish(usa, body(classification="RESTRICTED"))
    assert status == 201, receipt
    clock.advance(days=40)  # both are 40 days at this broker; the local one 40 days old

    await retention.expire(api.server_ctx)
    async with api.ctx.db.read_transaction() as tx:
        local = await tx.report(receipt["id"])
        imported = await tx.report(future["report"]["id"])
    assert local is not None and local.erased_at is not None  # its period ran out here
    assert imported is not None and imported.erased_at is not None  # held 40 days here
    assert imported.created_at.year == 9999  # the origin's created is kept as attested
