"""Hostile input, authentication, encryption at rest, provenance and sealing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.engine import make_url

from broker.crypto import seal, signing
from broker.domain.canonical import canonical
from broker.services import admin, reports
from broker.settings import Settings
from broker.storage import retention
from tests.integration.conftest import Api
from tests.integration.helpers import body, events, report_count

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
MARKER = "MARKER-7f3c2a-plaintext-must-never-be-stored"


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
async def test_hostile_bodies_get_a_problem_and_store_nothing(api: Api, path: Path) -> None:
    usa = await api.node("usa-1", "USA")
    expected = int(path.name[:3])
    status, problem = await api.call(
        "POST", "/v1/reports", usa, data=path.read_bytes(), headers={"Content-Type": "application/json"}
    )
    assert status == expected
    assert problem["status"] == expected and problem["type"].startswith("urn:alliance-broker:problem:")
    assert await report_count(api.ctx) == 0


async def test_oversized_body_is_413(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    big = body(payload={"blob": "x" * (1024 * 1024 + 10)})
    status, problem = await api.publish(usa, big)
    assert status == 413 and problem["type"].endswith("payload_too_large")
    assert await report_count(api.ctx) == 0


async def test_authentication_and_roles(api: Api) -> None:
    publisher = await api.node("pub", "USA", roles=("publish",))
    reader = await api.node("reader", "USA", roles=("subscribe",))
    assert (await api.get("/v1/reports"))[0] == 401
    assert (await api.get("/v1/reports", "abk_" + "A" * 43))[0] == 401
    assert (await api.call("GET", "/v1/reports", headers={"Authorization": "Basic dXNlcjpwYXNz"}))[0] == 401
    assert (await api.get("/v1/reports", publisher))[0] == 403
    assert (await api.publish(reader, body()))[0] == 403
    assert (await api.call("POST", "/v1/admin/nodes", reader, json={}))[0] == 403
    assert not await events(api.ctx, action="authenticate")  # counted, not yet written
    await api.flush_auth_failures()
    (failures,) = await events(api.ctx, action="authenticate")  # one event per source and window
    assert failures["reason"] == "missing_token" and failures["node"] is None
    async with api.ctx.db.transaction() as tx:
        (event,) = await tx.events(action="authenticate")
    assert event.draft.details["failures"] == 3
    assert event.draft.details["reasons"] == {"missing_token": 2, "unknown_token": 1}
    assert event.draft.details["source"] == "127.0.0.1"
    assert {(e["node"], e["reason"]) for e in await events(api.ctx) if e["reason"] == "missing_role"} == {
        ("pub", "missing_role"),
        ("reader", "missing_role"),
    }


async def test_revoked_node_is_refused_at_once(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    root = await api.node("root", "BEL", roles=("admin",))
    assert (await api.get("/v1/reports", usa))[0] == 200  # its token is now cached by the server
    assert (await api.call("POST", "/v1/admin/nodes/usa-1/revoke", root))[0] == 200
    status, problem = await api.get("/v1/reports", usa)
    assert status == 401 and problem["type"].endswith("unauthenticated")
    await api.flush_auth_failures()
    assert (await events(api.ctx, action="authenticate"))[-1]["reason"] == "node_revoked"


async def test_revocation_by_another_process_applies_at_once(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert (await api.get("/v1/reports", usa))[0] == 200
    assert (await api.publish(usa, body()))[0] == 201
    await admin.revoke_node(api.ctx, "usa-1", actor="cli")  # api.ctx is not the server's: another process
    # No wait for any poll: every act re-checks the node in its own transaction.
    assert (await api.get("/v1/reports", usa))[0] == 401
    assert (await api.publish(usa, body()))[0] == 401
    assert (await api.get("/v1/alliances", usa))[0] == 401
    assert await report_count(api.ctx) == 1


async def test_admin_api_adds_nodes_and_tokens_are_stored_hashed(api: Api, settings: Settings) -> None:
    root = await api.node("root", "BEL", roles=("admin",))
    spec = {"id": "fra-1", "nation": "FRA", "clearance": "SECRET", "roles": ["subscribe"]}
    status, created = await api.call("POST", "/v1/admin/nodes", root, json=spec)
    assert status == 201 and created["id"] == "fra-1"
    assert (await api.get("/v1/reports", created["token"]))[0] == 200
    assert (await api.call("POST", "/v1/admin/nodes", root, json=spec))[0] == 409
    bad = {**spec, "id": "fra-2", "clearance": "COSMIC"}
    assert (await api.call("POST", "/v1/admin/nodes", root, json=bad))[0] == 422
    _, listed = await api.get("/v1/admin/nodes", root)
    assert created["token"] not in json.dumps(listed)
    assert created["token"] not in _database_text(settings)


def _database_text(settings: Settings) -> str:
    """Everything the database holds, as text: the SQLite files, or a pg_dump."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        base = Path(str(url.database))
        files = [p for p in (base, base.with_name(base.name + "-wal")) if p.exists()]
        return "".join(p.read_bytes().decode("latin-1") for p in files)
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "--data-only",
            str(url.database),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    return dump.stdout


async def test_database_never_holds_the_payload_in_plaintext(api: Api, settings: Settings) -> None:
    usa = await api.node("usa-1", "USA")
    status, receipt = await api.publish(usa, body(payload={"description": MARKER, "marker": MARKER}))
    assert status == 201
    text = _database_text(settings)
    assert receipt["id"] in text  # the dump is real: metadata is there
    assert MARKER not in text
    assert base64.b64encode(MARKER.encode()).decode()[:20] not in text


async def test_erase_shreds_the_report(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    _, receipt = await api.publish(usa, body())
    await reports.erase(api.ctx, receipt["id"], actor="test")
    assert (await api.get(f"/v1/reports/{receipt['id']}", usa))[0] == 404
    async with api.ctx.db.transaction() as tx:
        row = await tx.report(receipt["id"])
    assert row is not None and row.wrapped_key is None and row.ciphertext is None
    assert (await events(api.ctx, report=receipt["id"]))[-1]["reason"] == "erased"


async def test_a_rewrap_never_gives_an_erased_report_its_key_back(api: Api) -> None:
    # Before: `keys rotate --rewrap` that read a report just before it was erased wrote the
    # re-wrapped data key back onto the shredded row.
    usa = await api.node("usa-1", "USA")
    _, receipt = await api.publish(usa, body())
    async with api.ctx.db.transaction() as tx:
        before = await tx.report(receipt["id"])
    assert before is not None and before.wrapped_key is not None
    await reports.erase(api.ctx, receipt["id"], actor="test")
    async with api.ctx.db.transaction() as tx:
        await retention.set_wrapped(tx, [retention.Wrapped(before.seq, "kek-x", before.wrapped_key)])
        after = await tx.report(receipt["id"])
    assert after is not None and after.wrapped_key is None and after.kek_id is None


async def test_erasing_twice_at_once_erases_once(api: Api) -> None:
    # Before: both erasures read the report unerased and each appended an erasing event; now one
    # erases, and the others are on the record as refused (nothing left to erase).
    usa = await api.node("usa-1", "USA")
    _, receipt = await api.publish(usa, body())
    other = api.server_ctx  # another process's view of the same database
    await asyncio.gather(
        *(reports.erase(ctx, receipt["id"], actor="test") for ctx in (api.ctx, other, api.ctx))
    )
    erasures = await events(api.ctx, action="erase", report=receipt["id"])
    assert [(e["decision"], e["reason"]) for e in erasures] == [
        ("allow", "erased"),
        ("deny", "already_erased"),
        ("deny", "already_erased"),
    ]


async def test_key_rotation_with_rewrap_keeps_reports_readable(api: Api, settings: Settings) -> None:
    usa = await api.node("usa-1", "USA")
    ids = [(await api.publish(usa, body()))[1]["id"] for _ in range(3)]
    old = api.ctx.keyring.current
    result = await admin.rotate_keys(api.ctx, rewrap=True, batch=2)
    assert result["rewrapped"] == 3 and result["kek_id"] != old
    ring = json.loads(settings.keyring_path.read_text())
    assert list(ring["keks"]) == [result["kek_id"]]  # retired KEK destroyed
    new_id = (await api.publish(usa, body()))[1]["id"]
    for report_id in [*ids, new_id]:
        assert (await api.get(f"/v1/reports/{report_id}", usa))[0] == 200


def _public(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


async def test_signed_reports(api: Api) -> None:
    key = Ed25519PrivateKey.generate()
    usa = await api.node("usa-1", "USA", ed25519_public_key=_public(key))
    sent = body()
    message = signing.signing_message(
        canonical_label=canonical(sent["label"]), canonical_payload=canonical(sent["payload"])
    )
    unsigned = await api.publish(usa, sent)
    assert unsigned[0] == 422 and unsigned[1]["type"].endswith("signature_required")
    forged = signing.sign(private_key=Ed25519PrivateKey.generate(), message=message)
    assert (await api.publish(usa, {**sent, "signature": forged}))[1]["type"].endswith("invalid_signature")
    signature = signing.sign(private_key=key, message=message)
    status, receipt = await api.publish(usa, {**sent, "signature": signature})
    assert status == 201
    _, got = await api.get(f"/v1/reports/{receipt['id']}", usa)
    assert got["signature"] == signature
    resigned = signing.signing_message(
        canonical_label=canonical(got["label"]), canonical_payload=canonical(got["payload"])
    )
    assert signing.verify(public_key_b64=_public(key), signature_b64=got["signature"], message=resigned)
    assert [e["reason"] for e in await events(api.ctx, action="publish")] == [
        "signature_required",
        "invalid_signature",
        "accepted",
    ]


async def test_payload_is_sealed_to_a_node_with_an_x25519_key(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    private = X25519PrivateKey.generate()
    gbr = await api.node("gbr-1", "GBR", x25519_public_key=_public(private))
    sent = body()
    _, receipt = await api.publish(usa, sent)
    _, got = await api.get(f"/v1/reports/{receipt['id']}", gbr)
    assert "payload" not in got and set(got["sealed"]) == {"enc", "ct"}
    opened = seal.open_sealed(
        sealed=got["sealed"],
        private_key=private,
        report_id=receipt["id"],
        canonical_label=canonical(got["label"]),
    )
    assert opened == canonical(sent["payload"])
    with pytest.raises(Exception):  # noqa: B017,PT011 -- cryptography's opaque error
        seal.open_sealed(
            sealed=got["sealed"],
            private_key=X25519PrivateKey.generate(),
            report_id=receipt["id"],
            canonical_label=canonical(got["label"]),
        )
