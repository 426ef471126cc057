"""A hostile upstream (a test double speaking the stream protocol over mutual TLS) is refused
and audited for each forged attestation, widened label, origin it may not carry, replay and
loop, and nothing of those is stored; a well-formed report is imported with its provenance and
its originator's signature verifies at a local node's SDK against the attested key."""

from __future__ import annotations

import json
from pathlib import Path

from broker.client import BrokerClient
from broker.crypto import attest
from broker.services import ledger, peers
from tests.integration.conftest import Api
from tests.integration.federation import (
    Originator,
    StreamDouble,
    Upstream,
    make_pki,
    report_frame,
)
from tests.integration.helpers import report_count

NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}


async def test_hostile_peer_is_refused_and_audited_each_time(api: Api, tmp_path: Path) -> None:
    found = make_pki(tmp_path)
    upstream, usa, gbr = (
        Upstream("usa.example/broker"),
        Originator("usa-analyst", "USA"),
        Originator("gbr-1", "GBR"),
    )
    good = report_frame(upstream, usa, sequence=1, label=NATO)
    forger = Upstream(upstream.name)  # same name, another key
    forged = report_frame(forger, usa, sequence=2, label=NATO)
    narrow = report_frame(upstream, usa, sequence=3, label={**NATO, "releasable_to": ["USA"]})
    widened = json.loads(json.dumps(narrow))
    widened["report"]["label"] = NATO
    widened["federation"]["label_json"] = json.dumps(NATO)
    foreign = report_frame(upstream, gbr, sequence=4, label=NATO)
    replay = json.loads(json.dumps(good))
    replay["report"]["sequence"] = 5
    own = api.server_ctx.settings.audit_origin
    looped = report_frame(Upstream(own), usa, sequence=6, label=NATO)
    hop = attest.attest_hop(
        broker=upstream.name,
        sequence=6,
        event_hash="ab" * 32,
        previous=looped["federation"]["attestations"][0],
        private_key=upstream.key,
    )
    looped["federation"]["attestations"].append(hop)
    ops = await api.node("ops", "BEL", roles=("admin", "audit"))
    _, text = await api.get("/metrics", ops)
    imports_before = {d: _sample(text, d) for d in ("allow", "deny")}
    double = StreamDouble(found)
    double.frames = [good, forged, widened, foreign, replay, looped]
    url = await double.start()
    cert, key = found.client("nato-link")
    before = await report_count(api.ctx)
    try:
        await peers.add_peer(
            api.ctx,
            {
                "name": "usa",
                "url": url,
                "ca": found.ca.read_text(),
                "cert": cert.read_text(),
                "key": key.read_text(),
                "origins": ["USA"],
                "broker_key": upstream.vkey,
            },
            actor="test",
        )
        await double.wait_acked(6)
    finally:
        await double.stop()
    assert double.queries[0]["broker"] == own  # the optimisation the sender may use
    async with api.ctx.db.read_transaction() as tx:
        imports = [ledger.event_json(e) for e in await tx.events(limit=100, action="import")]
    decided = [(e["decision"], e["reason"]) for e in imports]
    assert decided == [
        ("allow", "imported"),
        ("deny", "attestation_invalid"),
        ("deny", "attestation_mismatch"),
        ("deny", "origin_not_carried"),
        ("deny", "duplicate"),
        ("deny", "loop"),
    ]
    assert await report_count(api.ctx) == before + 1
    assert imports[0]["details"]["upstream_broker"] == upstream.name
    fra = await api.node("fra-1", "FRA", roles=("subscribe",))
    async with BrokerClient(api.base_url, fra) as client:
        received = await client.read(good["report"]["id"])
        assert received.verified and received.label == NATO
    status, doc = await api.get(f"/v1/reports/{good['report']['id']}", fra)
    assert status == 200
    assert [h["broker"] for h in doc["provenance"]] == [upstream.name, own]
    assert doc["provenance"][-1]["event_hash"] == imports[0]["hash"]
    status, listed = await api.get("/v1/admin/peers", ops)
    assert status == 200
    [usa_peer] = listed["peers"]
    assert usa_peer["cursor"] == 6 and usa_peer["origins"] == ["USA"]
    assert "BEGIN" not in json.dumps(listed)  # no certificate, key or token in the answer
    status, health = await api.get("/v1/health")
    assert health["peers"]["usa"]["state"] in ("connecting", "error")  # the double is gone
    status, text = await api.get("/metrics", ops)
    assert _sample(text, "allow") - imports_before["allow"] == 1
    assert _sample(text, "deny") - imports_before["deny"] == 5
    assert 'broker_peer_state{peer="usa",state=' in text
    status, _ = await api.call("DELETE", "/v1/admin/peers/usa", ops)
    assert status == 200
    assert await peers.list_peers(api.ctx) == []


def _sample(metrics: str, decision: str) -> float:
    """broker_peer_imports_total for the peer usa and ``decision`` (0 before the first)."""
    prefix = f'broker_peer_imports_total{{decision="{decision}",peer="usa"}} '
    found = [line[len(prefix) :] for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0]) if found else 0.0
