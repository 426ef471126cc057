"""TLS and mutual TLS over real handshakes on loopback, REST and websocket, on both engines.

A development CA from broker.crypto.pki issues the server's and the nodes' certificates; a node
authenticates by the SAN URI urn:alliance-broker:node:<id> of a certificate that chains to a
configured CA, with no token, and is refused when revoked, when its pin names another
certificate, or when a token sent alongside names another node. Certificates from another CA
or out of their validity never finish the handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.app import create_app
from broker.client import ApiError, BrokerClient, Unreachable
from broker.crypto import pki
from broker.services import admin, auth
from broker.services.context import Context
from broker.settings import Settings, TlsSettings
from broker.web.handlers import CONTEXT
from broker.web.tls import server_context
from tests.conftest import FakeClock
from tests.integration.helpers import body, events, keep_alive_get


@dataclass
class Pki:
    directory: Path
    ca: pki.CertifiedKey

    def node(self, node_id: str, *, ca: pki.CertifiedKey | None = None, **validity: Any) -> tuple[Path, Path]:
        issued = pki.issue_node_certificate(node_id, ca=ca or self.ca, **validity)
        return pki.save_issued(self.directory, node_id, issued)


@pytest.fixture
def dev_pki(tmp_path: Path) -> Pki:
    ca = pki.create_ca()
    pki.save_ca(tmp_path / "ca", ca)
    server = pki.issue_server_certificate(["localhost", "127.0.0.1"], ca=ca)
    pki.save_issued(tmp_path / "ca", "server", server, chain=[ca.certificate])
    return Pki(tmp_path / "ca", ca)


@dataclass
class TlsBroker:
    base: str
    ctx: Context
    ca_file: Path
    server_ctx: Context

    def client(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return context

    async def call(
        self,
        method: str,
        path: str,
        *,
        cert: tuple[Path, Path] | None = None,
        token: str | None = None,
        **kw: Any,
    ) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base + path, ssl=self.client(cert), headers=headers, **kw) as resp,
        ):
            return resp.status


@pytest.fixture
async def tls_broker(
    settings: Settings, clock: FakeClock, ctx: Context, dev_pki: Pki
) -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(client_auth: str = "optional") -> TlsBroker:
        tls = TlsSettings(
            cert=dev_pki.directory / "server.pem",
            key=dev_pki.directory / "server.key",
            client_ca=(dev_pki.directory / "ca.pem",),
            client_auth=client_auth,
        )
        server = TestServer(create_app(replace(settings, tls=tls), clock=clock), host="127.0.0.1")
        await server.start_server(ssl=server_context(tls))
        servers.append(server)
        base = f"https://localhost:{server.port}"
        return TlsBroker(base, ctx, dev_pki.directory / "ca.pem", server.app[CONTEXT])

    yield start
    for server in servers:
        await server.close()


async def _add(ctx: Context, node_id: str, nation: str, **extra: Any) -> str:
    spec = {
        "id": node_id,
        "nation": nation,
        "clearance": "SECRET",
        "roles": ["publish", "subscribe"],
        **extra,
    }
    return str((await admin.add_node(ctx, spec, actor="test"))["token"])


async def test_a_client_certificate_authenticates_its_node_without_a_token(
    tls_broker: Any, dev_pki: Pki
) -> None:
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "usa-1", "USA")
    cert = dev_pki.node("usa-1")
    assert await broker.call("POST", "/v1/reports", cert=cert, json=body()) == 201
    assert await broker.call("GET", "/v1/reports", cert=cert) == 200
    assert await broker.call("GET", "/v1/reports") == 401  # TLS alone, no identity
    publishes = await events(broker.ctx, action="publish", decision="allow")
    assert [e["actor"] for e in publishes] == ["usa-1"]


async def test_refused_certificates_and_mismatched_tokens(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker()
    usa_token = await _add(broker.ctx, "usa-1", "USA")
    gbr_token = await _add(broker.ctx, "gbr-1", "GBR")
    pinned_cert = dev_pki.node("fra-1")
    await _add(broker.ctx, "fra-1", "FRA", certificate=pinned_cert[0].read_text())
    usa = dev_pki.node("usa-1")
    assert await broker.call("GET", "/v1/reports", cert=usa, token=usa_token) == 200  # same node: fine
    assert await broker.call("GET", "/v1/reports", cert=usa, token=gbr_token) == 401  # another node's token
    assert await broker.call("GET", "/v1/reports", cert=pinned_cert) == 200  # the pinned one
    other_fra = dev_pki.node("fra-1")  # a second, valid certificate naming the pinned node
    assert await broker.call("GET", "/v1/reports", cert=other_fra) == 401
    assert await broker.call("GET", "/v1/reports", cert=dev_pki.node("nobody")) == 401  # no such node
    await admin.revoke_node(broker.ctx, "usa-1", actor="test")
    assert await broker.call("GET", "/v1/reports", cert=usa) == 401
    await auth.flush_failures(broker.server_ctx)
    async with broker.ctx.db.transaction() as tx:
        failures = await tx.events(action="authenticate")  # one per source and node, this window
    reasons: dict[str, int] = {}
    for event in failures:
        for reason, count in event.draft.details["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    # The revoked node's request is refused at authentication when this broker has already seen
    # the revocation (NOTIFY or poll), else by its act's own re-check of the node: audited either way.
    revoked_at_authentication = reasons.pop("node_revoked", 0)
    assert reasons == {"certificate_not_pinned": 1, "token_certificate_mismatch": 1, "unknown_certificate": 1}
    refused = await events(broker.ctx, node="usa-1", action="list", decision="deny")
    assert revoked_at_authentication + len(refused) == 1
    assert all(e["reason"] == "node_revoked" for e in refused)


async def test_certificates_the_handshake_refuses(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker(client_auth="required")
    await _add(broker.ctx, "usa-1", "USA")
    stranger = pki.create_ca(name="Not our alliance")
    past = datetime.now(UTC) - timedelta(days=30)
    for cert in (
        dev_pki.node("usa-1", ca=stranger),
        dev_pki.node("usa-1", not_before=past, not_after=past + timedelta(days=1)),
        None,  # required: no certificate at all
    ):
        with pytest.raises((aiohttp.ClientConnectionError, aiohttp.ClientResponseError, ssl.SSLError)):
            await broker.call("GET", "/v1/reports", cert=cert)
    assert await broker.call("GET", "/v1/reports", cert=dev_pki.node("usa-1")) == 200


async def test_streams_authenticate_by_certificate_and_close_on_revoke(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "swe-1", "SWE")
    usa_token = await _add(broker.ctx, "usa-1", "USA")
    cert = dev_pki.node("swe-1")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{broker.base}/v1/stream", ssl=broker.client(cert))
        assert await broker.call("POST", "/v1/reports", token=usa_token, json=body()) == 201
        async with asyncio.timeout(20):
            frame = await ws.receive_json()
        assert frame["type"] == "report"
        await admin.revoke_node(broker.ctx, "swe-1", actor="test")
        async with asyncio.timeout(20):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        assert ws.close_code == 4001
        await ws.close()


async def test_the_sdk_speaks_mutual_tls_and_raises_its_own_errors(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "usa-1", "USA")
    await _add(broker.ctx, "swe-1", "SWE")
    ca = dev_pki.directory / "ca.pem"
    usa_cert, usa_key = dev_pki.node("usa-1")
    swe_cert, swe_key = dev_pki.node("swe-1")
    async with (
        BrokerClient(broker.base, tls=(ca, usa_cert, usa_key)) as usa,
        BrokerClient(broker.base, tls=(ca, swe_cert, swe_key)) as swe,
    ):
        receipt = await usa.publish(label=body()["label"], payload={"n": 1})
        stream = swe.stream(after=0)
        async with asyncio.timeout(20):
            got = await anext(stream)
        assert got.id == receipt["id"] and got.payload == {"n": 1}
        await stream.aclose()
        await admin.revoke_node(broker.ctx, "swe-1", actor="test")
        with pytest.raises(ApiError) as refused:  # the handshake's problem document, not aiohttp's
            await anext(swe.stream(after=0))
        assert refused.value.status == 401 and refused.value.code == "unauthenticated"


async def test_the_sdk_gives_up_on_an_unreachable_broker() -> None:
    async with BrokerClient("http://127.0.0.1:9", "abk_x", give_up_after=0.5, reconnect_delay=0.05) as client:
        with pytest.raises(Unreachable):
            await client.list()
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unreachable, match="no connection"):
            await anext(client.stream(after=0))
        assert asyncio.get_running_loop().time() - started < 10


async def test_a_moved_pin_closes_the_stream_and_refuses_the_old_certificate(
    tls_broker: Any, dev_pki: Pki
) -> None:
    """A stream opened with a certificate while the node had no pin closes 4001 when the node is
    pinned (by another process) to another certificate; the old certificate's next REST act is
    refused even though the serving broker had it cached."""
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "swe-1", "SWE")
    usa_token = await _add(broker.ctx, "usa-1", "USA")
    old = dev_pki.node("swe-1")
    new = pki.save_issued(dev_pki.directory, "swe-1-new", pki.issue_node_certificate("swe-1", ca=dev_pki.ca))
    assert await broker.call("GET", "/v1/reports", cert=old) == 200  # cached by the server now
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{broker.base}/v1/stream?after=0", ssl=broker.client(old))
        assert await broker.call("POST", "/v1/reports", token=usa_token, json=body()) == 201
        async with asyncio.timeout(20):
            assert (await ws.receive_json())["type"] == "report"
        await admin.update_node(broker.ctx, "swe-1", {"certificate": new[0].read_text()}, actor="test")
        assert await broker.call("POST", "/v1/reports", token=usa_token, json=body()) == 201
        reports = await _reports_until_closed(ws)
        assert (ws.close_code, reports) == (4001, 0)
        await ws.close()
    assert await broker.call("GET", "/v1/reports", cert=old) == 401
    assert await broker.call("GET", "/v1/reports", cert=new) == 200
    refused = await events(broker.ctx, node="swe-1", action="stream", decision="deny")
    assert [e["reason"] for e in refused] == ["certificate_not_pinned"]


async def _reports_until_closed(ws: aiohttp.ClientWebSocketResponse) -> int:
    """How many reports a stream delivers before the broker closes it (within 20 s)."""
    reports = 0
    async with asyncio.timeout(20):
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return reports
            reports += message.json()["type"] == "report"


async def test_an_expired_certificate_authenticates_nothing_more_on_its_open_connections(
    tls_broker: Any, dev_pki: Pki, clock: FakeClock
) -> None:
    """The handshake checks a certificate's validity once, when the connection opens: past its
    notAfter, a kept-alive connection went on authenticating requests with it and a stream opened
    with it went on delivering, for as long as the client kept them open. Short-lived
    certificates (the alliance CA publishes no revocation list) bound nothing then."""
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "swe-1", "SWE")
    usa_token = await _add(broker.ctx, "usa-1", "USA")
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    issued = pki.issue_node_certificate("swe-1", ca=dev_pki.ca, not_after=ends)
    cert = pki.save_issued(dev_pki.directory, "swe-1-short", issued)
    clock.moment = ends - timedelta(minutes=1)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(broker.base.rsplit(":", 1)[1]), ssl=broker.client(cert), server_hostname="localhost"
    )
    try:
        assert await keep_alive_get(reader, writer, "/v1/reports") == 200
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{broker.base}/v1/stream?after=0", ssl=broker.client(cert))
            assert await broker.call("POST", "/v1/reports", token=usa_token, json=body()) == 201
            async with asyncio.timeout(20):
                assert (await ws.receive_json())["type"] == "report"
            clock.moment = ends  # notAfter: the certificate is no longer valid
            assert await broker.call("POST", "/v1/reports", token=usa_token, json=body()) == 201
            reports = await _reports_until_closed(ws)
            assert (ws.close_code, reports) == (4001, 0)
            await ws.close()
        assert await keep_alive_get(reader, writer, "/v1/reports") == 401  # the same connection
    finally:
        writer.close()
    refused = await events(broker.ctx, node="swe-1", action="stream", decision="deny")
    assert [e["reason"] for e in refused] == ["certificate_expired"]
