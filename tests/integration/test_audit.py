"""The audit log through the server: auditor API, checkpoints, proofs, export and offline verify,
concurrent writers, and refusal to sign an inconsistent log."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.crypto import merkle, notes
from broker.services import ledger, publishing
from broker.services.auth import authenticate
from broker.services.context import Context
from broker.settings import Settings
from tests.integration.conftest import Api
from tests.integration.helpers import Cli, body, chain_holds


async def test_auditor_queries_with_filters_and_pages(api: Api) -> None:
    usa, nga = await api.node("usa-1", "USA"), await api.node("nga-1", "NGA")
    auditor = await api.node("aud", "BEL", roles=("audit",))
    _, receipt = await api.publish(usa, body())
    await api.get(f"/v1/reports/{receipt['id']}", nga)  # a denial
    status, page = await api.get(f"/v1/audit/events?report={receipt['id']}", auditor)
    assert status == 200
    assert [(e["action"], e["node"], e["decision"], e["reason"]) for e in page["events"]] == [
        ("publish", "usa-1", "allow", "accepted"),
        ("read", "nga-1", "deny", "not_releasable"),
    ]
    _, denials = await api.get("/v1/audit/events?decision=deny&nation=NGA", auditor)
    assert {e["reason"] for e in denials["events"]} == {"not_releasable"}
    seen, after = [], 0
    while True:
        _, chunk = await api.get(f"/v1/audit/events?after={after}&limit=2&action=node_add", auditor)
        if not chunk["events"]:
            break
        seen += [e["node"] for e in chunk["events"]]
        after = chunk["next_after"]
    assert seen == ["usa-1", "nga-1", "aud"]
    _, window = await api.get(
        "/v1/audit/events?since=2026-11-25T11:00:00Z&until=2026-11-25T13:00:00Z", auditor
    )
    assert window["events"]  # the fixed test clock stands at 12:00
    _, empty = await api.get("/v1/audit/events?since=2030-01-01T00:00:00Z", auditor)
    assert empty["events"] == []
    assert (await api.get("/v1/audit/events?since=yesterday", auditor))[0] == 422
    assert "payload" not in json.dumps(page)  # metadata only
    assert (await api.get("/v1/audit/events", usa))[0] == 403
    assert (await api.get("/v1/audit/checkpoints/latest", usa))[0] == 403
    _, own = await api.get("/v1/audit/events?action=audit_query", auditor)
    assert own["events"] and own["events"][0]["actor"] == "aud"


async def test_checkpoints_and_proofs_verify(api: Api) -> None:
    usa, auditor = await api.node("usa-1", "USA"), await api.node("aud", "BEL", roles=("audit",))
    for _ in range(3):
        await api.publish(usa, body())
    status, first = await api.call("POST", "/v1/audit/checkpoints", auditor)
    assert status == 201
    for _ in range(4):
        await api.publish(usa, body())
    _, second = await api.call("POST", "/v1/audit/checkpoints", auditor)
    assert second["size"] > first["size"]
    _, latest = await api.get("/v1/audit/checkpoints/latest", auditor)
    assert latest == second
    _, key = await api.get("/.well-known/alliance-broker/checkpoint-key")
    public = base64.b64decode(key["public_key"])
    checked = notes.verify(second["note"], name=key["name"], public=public)
    assert (checked.size, checked.root.hex()) == (second["size"], second["head"])
    assert key["key_id"] == second["key_id"]
    _, proof = await api.get(
        f"/v1/audit/proofs/consistency?first={first['size']}&second={second['size']}", auditor
    )
    assert merkle.verify_consistency(
        first=first["size"],
        second=second["size"],
        first_root=bytes.fromhex(first["head"]),
        second_root=bytes.fromhex(second["head"]),
        proof=[bytes.fromhex(p) for p in proof["path"]],
    )
    for seq in (1, first["size"], second["size"]):
        _, inc = await api.get(f"/v1/audit/proofs/inclusion?seq={seq}", auditor)
        assert inc["root"] == second["head"]
        assert merkle.verify_inclusion(
            index=seq - 1,
            size=second["size"],
            leaf_hash=bytes.fromhex(inc["leaf_hash"]),
            proof=[bytes.fromhex(p) for p in inc["path"]],
            root=bytes.fromhex(inc["root"]),
        )
    assert (await api.get(f"/v1/audit/proofs/inclusion?seq={second['size'] + 50}", auditor))[0] == 404


async def test_broker_refuses_to_sign_an_inconsistent_log(ctx: Context) -> None:
    first = await ledger.sign_checkpoint(ctx)
    assert first.size > 0
    async with ctx.db.engine.begin() as conn:  # an operator rewrites event 1 and every node above it
        await conn.execute(text("UPDATE merkle_nodes SET hash = :h WHERE idx = 0"), {"h": "00" * 32})
    async with ctx.db.transaction() as tx:  # and appends something so a new checkpoint is due
        from broker.domain.records import AuditDraft
        from broker.services import audit

        await audit.record(tx, [AuditDraft(action="noise")], now=ctx.now())
    with pytest.raises(ledger.LogInconsistent):
        await ledger.sign_checkpoint(ctx)


async def test_concurrent_writers_on_two_brokers_keep_one_chain(settings: Settings, ctx: Context) -> None:
    from broker.services import admin

    token = (
        await admin.add_node(
            ctx, {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}, actor="t"
        )
    )["token"]
    other = Context.open(settings)  # a second broker process's connections to the same database
    try:
        nodes = [await authenticate(c, token, source="test") for c in (ctx, other)]

        async def writer(c: Context, node: object) -> None:
            for _ in range(15):
                await publishing.publish(c, node, body(), idempotency_key=None)  # type: ignore[arg-type]

        await asyncio.gather(
            *(writer(c, n) for c, n in zip((ctx, other, ctx, other), nodes * 2, strict=True))
        )
    finally:
        await other.close()
    async with ctx.db.transaction() as tx:
        reports = await tx.reports_after(after=0, topics=[], limit=1000)
    assert [r.seq for r in reports] == list(range(1, 61))
    await chain_holds(ctx)


async def test_export_and_offline_verify_by_cli(
    api: Api, settings: Settings, tmp_path: Path, cli: Cli
) -> None:
    cli.use(settings.database_url, settings.keyring_path)
    usa, auditor = await api.node("usa-1", "USA"), await api.node("aud", "BEL", roles=("audit",))
    for _ in range(5):
        await api.publish(usa, body())
    export = tmp_path / "export.ndjson"
    await asyncio.to_thread(cli.ok, "audit", "export", str(export), "--json")
    verified = await cli.run("audit", "verify", str(export))
    assert verified.returncode == 0 and verified.stdout.startswith("OK intact")
    key = (await api.get("/.well-known/alliance-broker/checkpoint-key"))[1]["public_key"]
    lines = export.read_text().splitlines()
    lines[3] = lines[3].replace('"decision":"allow"', '"decision":"deny"')
    export.write_text("\n".join(lines) + "\n")
    tampered = await cli.run("audit", "verify", str(export), "--key", key, "--json")
    assert tampered.returncode == 1
    assert json.loads(tampered.stdout)["kind"] == "altered" and json.loads(tampered.stdout)["seq"] == 4
    status, served = await api.call("GET", "/v1/audit/export", auditor)
    assert status == 200
    served_lines = served.splitlines()
    assert json.loads(served_lines[-1])["checkpoint"]["size"] == len(
        [x for x in served_lines if '"checkpoint"' not in x]
    )
