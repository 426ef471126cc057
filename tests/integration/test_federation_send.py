"""The sending side of federation through a real broker: link nodes (role ``federate``) stream
over mutual TLS with certificates from the development PKI, as a receiving broker would.

The frames are checked with an attestation verifier written here from federation-design.md
(RFC 8785 for plain values, the vkey's key id, the prefixes), not with broker.crypto.attest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.app import create_app
from broker.client import BrokerClient, Recall
from broker.crypto import pki
from broker.services import admin, alliances, ledger, reports
from broker.services.context import Context
from broker.settings import Settings, TlsSettings
from broker.waiting import wait_event
from broker.web.handlers import CONTEXT
from broker.web.tls import server_context
from tests.conftest import FakeClock
from tests.integration.federation import Originator, Upstream, import_frames, report_frame
from tests.integration.helpers import Cli, body, events

TIMEOUT = 20


def _jcs(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_signed(item: dict[str, Any], *, prefix: bytes, vkey: str) -> None:
    """``item`` names ``vkey`` as its signer and its sig verifies over prefix + JCS(item - sig)."""
    assert item["signer"] == vkey
    name, key_id, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded)
    assert name == item["broker"] and raw[0] == 1
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == key_id
    unsigned = {k: v for k, v in item.items() if k != "sig"}
    Ed25519PublicKey.from_public_bytes(raw[1:]).verify(base64.b64decode(item["sig"]), prefix + _jcs(unsigned))


def check_report_frame(frame: dict[str, Any], *, vkey: str, originator_key: str) -> None:
    """The design's checks of A0 against the frame, done independently."""
    report, fed = frame["report"], frame["federation"]
    assert "sealed" not in report and "payload" in report
    assert json.loads(fed["label_json"]) == report["label"]
    [a0] = fed["attestations"]
    check_signed(a0, prefix=b"alliance-broker/v1/attest\n", vkey=vkey)
    facts = a0["report"]
    assert facts == {
        "id": report["id"],
        "originator": report["originator"],
        "label_sha256": hashlib.sha256(fed["label_json"].encode()).hexdigest(),
        "topics": report["topics"],
        "created": report["created"],
        "payload_sha256": hashlib.sha256(_jcs(report["payload"])).hexdigest(),
        "signature": report["signature"],
    }
    assert a0["sequence"] == report["sequence"] and len(a0["event_hash"]) == 64
    assert a0["originator_key"] == originator_key
    digest = hashlib.sha256(_jcs(report["payload"])).hexdigest().encode()
    message = b"alliance-broker/v1/sign\n" + _jcs(json.loads(fed["label_json"])) + b"\n" + digest
    Ed25519PublicKey.from_public_bytes(base64.b64decode(originator_key)).verify(
        base64.b64decode(report["signature"]), message
    )


@dataclass
class Sender:
    base: str
    ctx: Context
    server_ctx: Context
    pki_dir: Path
    ca: pki.CertifiedKey

    def tls(self, node_id: str) -> ssl.SSLContext:
        cert, key = pki.save_issued(self.pki_dir, node_id, pki.issue_node_certificate(node_id, ca=self.ca))
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.pem"))
        context.load_cert_chain(str(cert), str(key))
        return context

    async def link(self, node_id: str, audience: list[str], **extra: Any) -> ssl.SSLContext:
        context = self.tls(node_id)
        spec = {
            "id": node_id,
            "nation": "BEL",
            "clearance": "SECRET",
            "roles": ["federate"],
            "audience": audience,
            "origins": ["USA"],
            "certificate": (self.pki_dir / f"{node_id}.pem").read_text(),
            **extra,
        }
        await admin.add_node(self.ctx, spec, actor="test")
        return context

    @property
    def vkey(self) -> str:
        return ledger.public_key(self.server_ctx)["vkey"]


@pytest.fixture
async def sender(settings: Settings, clock: FakeClock, ctx: Context, tmp_path: Path) -> AsyncIterator[Sender]:
    ca = pki.create_ca()
    pki.save_ca(tmp_path / "ca", ca)
    pki.save_issued(
        tmp_path / "ca", "server", pki.issue_server_certificate(["localhost"], ca=ca), chain=[ca.certificate]
    )
    tls = TlsSettings(
        cert=tmp_path / "ca" / "server.pem",
        key=tmp_path / "ca" / "server.key",
        client_ca=(tmp_path / "ca" / "ca.pem",),
        client_auth="optional",
    )
    server = TestServer(create_app(replace(settings, tls=tls), clock=clock), host="127.0.0.1")
    await server.start_server(ssl=server_context(tls))
    yield Sender(f"https://localhost:{server.port}", ctx, server.app[CONTEXT], tmp_path / "ca", ca)
    await server.close()


class Publisher:
    def __init__(self, sender: Sender, client: BrokerClient) -> None:
        self.sender, self.client = sender, client

    async def __call__(self, classification: str = "SECRET", to: list[str] | None = None, **kw: Any) -> str:
        answer = await self.client.publish(**body(classification, to=to, **kw))
        return str(answer["id"])


async def _usa(sender: Sender, stack: contextlib.AsyncExitStack) -> tuple[Publisher, str]:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    spec = {"id": "usa-1", "nation": "USA", "clearance": "TOP_SECRET", "roles": ["publish", "subscribe"]}
    token = (await admin.add_node(sender.ctx, {**spec, "ed25519_public_key": public}, actor="test"))["token"]
    ca = ssl.create_default_context(cafile=str(sender.pki_dir / "ca.pem"))
    client = await stack.enter_async_context(BrokerClient(sender.base, token, signing_key=key, tls=ca))
    return Publisher(sender, client), public


async def frames_until(ws: aiohttp.ClientWebSocketResponse, marker: str) -> list[dict[str, Any]]:
    """Every non-heartbeat frame up to and including the report ``marker``, acking reports."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, (message.type, ws.close_code)
            frame = json.loads(message.data)
            if frame["type"] == "heartbeat":
                continue
            seen.append(frame)
            if frame["type"] == "report":
                await ws.send_json({"type": "ack", "sequence": frame["report"]["sequence"]})
                if frame["report"]["id"] == marker:
                    return seen


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame that is not a heartbeat."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, (message.type, ws.close_code)
            frame: dict[str, Any] = json.loads(message.data)
            if frame["type"] != "heartbeat":
                return frame


def _ids(frames: list[dict[str, Any]]) -> list[str]:
    return [f["report"]["id"] for f in frames if f["type"] == "report"]


async def test_what_crosses_a_link_and_what_the_sender_audits(sender: Sender) -> None:
    async with contextlib.AsyncExitStack() as stack:
        publish, originator_key = await _usa(sender, stack)
        nato = await sender.link("nato-link", ["NATO"])
        fra = await sender.link("fra-link", ["FRA"])
        gbr = {"id": "gbr-1", "nation": "GBR", "clearance": "SECRET", "roles": ["publish"]}
        gbr_token = (await admin.add_node(sender.ctx, gbr, actor="test"))["token"]
        rel_nato = await publish()
        rel_usa_gbr = await publish(to=["USA", "GBR"])
        top_secret = await publish("TOP_SECRET")
        rel_fra = await publish(to=["FRA"])
        ca = ssl.create_default_context(cafile=str(sender.pki_dir / "ca.pem"))
        async with BrokerClient(sender.base, gbr_token, tls=ca) as gbr_client:
            from_gbr = (await gbr_client.publish(**body()))["id"]
        marker = await publish(to=["NATO", "FRA"])
        session = await stack.enter_async_context(aiohttp.ClientSession())
        got: dict[str, list[dict[str, Any]]] = {}
        for name, context in (("nato-link", nato), ("fra-link", fra)):
            ws = await stack.enter_async_context(
                session.ws_connect(f"{sender.base}/v1/stream?after=0", ssl=context)
            )
            got[name] = await frames_until(ws, marker)
    assert _ids(got["nato-link"]) == [rel_nato, marker]
    assert _ids(got["fra-link"]) == [rel_nato, rel_fra, marker]
    for frame in got["nato-link"] + got["fra-link"]:
        check_report_frame(frame, vkey=sender.vkey, originator_key=originator_key)
    denied = {
        e["report"]: e["reason"]
        for e in await events(sender.ctx, node="nato-link", action="deliver")
        if e["decision"] == "deny"
    }
    assert denied == {
        rel_usa_gbr: "not_releasable",
        top_secret: "insufficient_clearance",
        rel_fra: "not_releasable",  # an alliance audience only by the alliance's name
        from_gbr: "origin_not_carried",
    }


async def test_revoking_a_link_closes_its_stream_and_a_membership_change_binds_from_its_commit(
    sender: Sender,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        publish, _ = await _usa(sender, stack)
        fra = await sender.link("fra-link", ["FRA"])
        nato = await sender.link("nato-link", ["NATO"])
        session = await stack.enter_async_context(aiohttp.ClientSession())
        fra_ws = await stack.enter_async_context(session.ws_connect(f"{sender.base}/v1/stream", ssl=fra))
        nato_ws = await stack.enter_async_context(session.ws_connect(f"{sender.base}/v1/stream", ssl=nato))
        first = await publish()
        assert _ids(await frames_until(fra_ws, first)) == [first]
        await alliances.leave(sender.ctx, "NATO", "FRA", at=None, actor="test")
        after_leaving = await publish()
        marker = await publish(to=["FRA"])
        assert _ids(await frames_until(fra_ws, marker)) == [marker]
        reasons = {
            e["report"]: e["reason"] for e in await events(sender.ctx, node="fra-link", action="deliver")
        }
        assert reasons[after_leaving] == "not_releasable"
        assert _ids(await frames_until(nato_ws, after_leaving)) == [first, after_leaving]
        await admin.revoke_node(sender.ctx, "nato-link", actor="test")
        async with asyncio.timeout(TIMEOUT):
            while (await nato_ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        assert nato_ws.close_code == 4001


async def test_recall_notices_reach_subscribers_links_and_the_sdk(sender: Sender) -> None:
    async with contextlib.AsyncExitStack() as stack:
        publish, _ = await _usa(sender, stack)
        nato = await sender.link("nato-link", ["NATO"])
        swe = {"id": "swe-1", "nation": "SWE", "clearance": "SECRET", "roles": ["subscribe"]}
        swe_token = (await admin.add_node(sender.ctx, swe, actor="test"))["token"]
        ca = ssl.create_default_context(cafile=str(sender.pki_dir / "ca.pem"))
        swe_client = await stack.enter_async_context(BrokerClient(sender.base, swe_token, tls=ca))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        own = f"{sender.base}/v1/stream?broker={sender.server_ctx.settings.audit_origin}"
        looped = await stack.enter_async_context(session.ws_connect(own, ssl=nato))
        link_ws = await stack.enter_async_context(session.ws_connect(f"{sender.base}/v1/stream", ssl=nato))
        notices: list[Recall] = []
        noticed = asyncio.Event()

        def on_recall(notice: Recall) -> None:
            notices.append(notice)
            noticed.set()

        stream = swe_client.stream(after=0, on_recall=on_recall)
        doomed = await publish()
        async with asyncio.timeout(TIMEOUT):
            received = await anext(stream)
        assert received.id == doomed and doomed in swe_client.held
        assert _ids(await frames_until(link_ws, doomed)) == [doomed]
        waiting = asyncio.ensure_future(anext(stream))
        await publish.client.recall(doomed)
        assert await wait_event(noticed, TIMEOUT)
        assert notices == [Recall(id=doomed, sequence=received.sequence)]
        assert doomed not in swe_client.held
        marker = await publish()
        async with asyncio.timeout(TIMEOUT):
            assert (await waiting).id == marker
        await stream.aclose()
        # A recall notice and a later report reach a stream on separate paths: either may be first.
        link_frames = await frames_until(link_ws, marker)
        while not any(f["type"] == "recall" for f in link_frames):
            link_frames.append(await next_frame(link_ws))
        [notice] = [f for f in link_frames if f["type"] == "recall"]
        assert (notice["id"], notice["sequence"]) == (doomed, received.sequence)
        [statement] = notice["federation"]["attestations"]
        check_signed(statement, prefix=b"alliance-broker/v1/recall\n", vkey=sender.vkey)
        assert statement["recall"] == doomed
        # broker= names this broker: its own reports never go back to it, the notice still does
        async with asyncio.timeout(TIMEOUT):
            first = json.loads((await looped.receive()).data)
        assert first["type"] == "recall" and first["id"] == doomed


async def test_an_erasure_sends_no_recall_over_a_link(sender: Sender, tmp_path: Path) -> None:
    """Erasure is local: neither a report published here nor one imported from a peer sends a
    recall notice over a link once erased (downstream brokers keep their copies unless the origin
    recalls; a hub never signs a recall in the origin's place, which downstream would refuse)."""
    upstream = Upstream("usa.example/broker")
    frame = report_frame(upstream, Originator("usa-analyst", "USA"), sequence=1, label=body()["label"])
    await import_frames(sender.ctx, tmp_path / "peer", [frame], vkey=upstream.vkey)
    imported = frame["report"]["id"]
    async with contextlib.AsyncExitStack() as stack:
        publish, _ = await _usa(sender, stack)
        nato = await sender.link("nato-link", ["NATO"])
        local = await publish()
        session = await stack.enter_async_context(aiohttp.ClientSession())
        link_ws = await stack.enter_async_context(session.ws_connect(f"{sender.base}/v1/stream", ssl=nato))
        seen = await frames_until(link_ws, local)
        assert _ids(seen) == [imported, local]
        for report_id in (imported, local):
            await reports.erase(sender.ctx, report_id, actor="test")
        # a link that reconnects is owed the notices since it left, and a live one those of
        # the changes it is woken for: both are read
        resumed = f"{sender.base}/v1/stream?after={seen[-1]['report']['sequence']}"
        again = await stack.enter_async_context(session.ws_connect(resumed, ssl=nato))
        # a stream sends the notices it owes after the reports of the same pass: read on
        # until a report published once the first marker was received
        first = await publish()
        after = {ws: await frames_until(ws, first) for ws in (link_ws, again)}
        second = await publish()
        for ws in (link_ws, again):
            after[ws] += await frames_until(ws, second)
    for frames in after.values():
        assert [f["type"] for f in frames] == ["report", "report"] and _ids(frames) == [first, second]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_link_nodes_from_the_cli_and_the_admin_api(
    settings: Settings, tmp_path: Path, sender: Sender, cli: Cli
) -> None:
    cli.use(settings.database_url, settings.keyring_path)
    sender.tls("nato-link")
    cert = str(sender.pki_dir / "nato-link.pem")
    link = ["--nation", "BEL", "--clearance", "SECRET", "--roles", "federate", "--json"]
    added = await cli.run(
        "node",
        "add",
        "nato-link",
        *link,
        "--audience",
        "NATO,FRA",
        "--origins",
        "USA",
        "--certificate",
        cert,
    )
    assert added.returncode == 0, added.stderr
    mixed = await cli.run(
        "node",
        "add",
        "mixed",
        *link[:-2],
        "federate,subscribe",
        "--audience",
        "NATO",
        "--origins",
        "USA",
    )
    assert mixed.returncode != 0 and "no other role" in mixed.stderr
    bare = await cli.run("node", "add", "bare", *link)
    assert bare.returncode != 0 and "audience" in bare.stderr
    stray = await cli.run(
        "node",
        "add",
        "sub",
        "--nation",
        "SWE",
        "--clearance",
        "SECRET",
        "--roles",
        "subscribe",
        "--audience",
        "NATO",
    )
    assert stray.returncode != 0
    updated = await cli.run(
        "node", "update", "nato-link", "--audience", "NATO", "--origins", "USA,GBR", "--json"
    )
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(updated.stdout)
    assert (shown["audience"], shown["origins"]) == (["NATO"], ["USA", "GBR"])
    admin_spec = {"id": "root", "nation": "USA", "clearance": "SECRET", "roles": ["admin"]}
    token = (await admin.add_node(sender.ctx, admin_spec, actor="test"))["token"]
    ca = ssl.create_default_context(cafile=str(sender.pki_dir / "ca.pem"))
    spec = {
        "id": "fvey-link",
        "nation": "GBR",
        "clearance": "SECRET",
        "roles": ["federate"],
        "audience": ["FVEY"],
        "origins": ["USA"],
    }
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.post(f"{sender.base}/v1/admin/nodes", json=spec, ssl=ca) as resp:
            assert resp.status == 201
        async with session.patch(
            f"{sender.base}/v1/admin/nodes/fvey-link", json={"audience": []}, ssl=ca
        ) as resp:
            assert resp.status == 422
        async with session.patch(
            f"{sender.base}/v1/admin/nodes/fvey-link", json={"audience": ["FVEY", "NZL"]}, ssl=ca
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["audience"] == ["FVEY", "NZL"]
