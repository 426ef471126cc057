"""The HTTP edge against a browser and against slow or greedy clients (issue 19, findings 7, 10).

Cross-site request forgery: a page the holder of a client certificate visits can make the
browser send requests that the certificate alone authorises. Requests that carry a foreign
``Origin`` or ``Sec-Fetch-Site: cross-site``/``same-site`` are refused (403
``cross_origin_request``) before anything is read, and a JSON body must say it is JSON (415).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from broker.app import create_app
from broker.services import admin, auth
from broker.services.context import Context
from broker.settings import Settings, TlsSettings
from broker.web.handlers import CONTEXT
from broker.web.tls import server_context
from tests.conftest import FakeClock
from tests.integration.helpers import body, events, report_count
from tests.integration.test_tls import Pki, TlsBroker, dev_pki

__all__ = ["dev_pki"]  # the development CA fixture of test_tls


@pytest.fixture
async def tls_broker(
    settings: Settings, clock: FakeClock, ctx: Context, dev_pki: Pki
) -> AsyncIterator[Callable[..., Any]]:
    """A broker with mutual TLS (client certificates optional); keywords override settings."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> TlsBroker:
        tls = TlsSettings(
            cert=dev_pki.directory / "server.pem",
            key=dev_pki.directory / "server.key",
            client_ca=(dev_pki.directory / "ca.pem",),
            client_auth="optional",
        )
        changed = replace(settings, tls=tls, **overrides)
        server = TestServer(create_app(changed, clock=clock), host="127.0.0.1")
        await server.start_server(ssl=server_context(tls))
        servers.append(server)
        base = f"https://localhost:{server.port}"
        return TlsBroker(base, ctx, dev_pki.directory / "ca.pem", server.app[CONTEXT])

    yield start
    for server in servers:
        await server.close()


async def _send(
    broker: TlsBroker,
    method: str,
    path: str,
    *,
    cert: tuple[Path, Path] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, broker.base + path, ssl=broker.client(cert), data=data, headers=headers or {}
        ) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text) if text.startswith("{") else text


async def _add(ctx: Context, node_id: str, nation: str, roles: list[str]) -> str:
    spec = {"id": node_id, "nation": nation, "clearance": "SECRET", "roles": roles}
    return str((await admin.add_node(ctx, spec, actor="test"))["token"])


async def _node_exists(ctx: Context, node_id: str) -> bool:
    return any(n["id"] == node_id for n in await admin.list_nodes(ctx))


JSON = {"Content-Type": "application/json"}
NEW_NODE = json.dumps({"id": "fra-9", "nation": "FRA", "clearance": "SECRET", "roles": ["subscribe"]})


async def test_a_json_body_must_say_it_is_json(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "usa-1", "USA", ["publish", "subscribe"])
    cert = dev_pki.node("usa-1")
    raw = json.dumps(body()).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, problem = await _send(
            broker, "POST", "/v1/reports", cert=cert, data=raw, headers={"Content-Type": kind}
        )
        assert status == 415, kind
        assert problem["type"].endswith("unsupported_media_type")
    status, _ = await _send(broker, "POST", "/v1/reports", cert=cert, data=raw)  # no Content-Type at all
    assert status == 415
    assert await report_count(broker.ctx) == 0
    assert (await _send(broker, "POST", "/v1/reports", cert=cert, data=raw, headers=JSON))[0] == 201
    vendor = {"Content-Type": "application/vnd.example+json; charset=utf-8"}
    assert (await _send(broker, "POST", "/v1/reports", cert=cert, data=raw, headers=vendor))[0] == 201
    assert await report_count(broker.ctx) == 2


@pytest.mark.parametrize(
    "foreign",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a data: URL
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling host is another application
    ],
)
async def test_a_foreign_page_cannot_use_an_admin_certificate(
    tls_broker: Any, dev_pki: Pki, foreign: dict[str, str]
) -> None:
    broker: TlsBroker = await tls_broker()
    await _add(broker.ctx, "adm-1", "USA", ["admin"])
    await _add(broker.ctx, "usa-2", "USA", ["publish", "subscribe"])
    cert = dev_pki.node("adm-1")
    status, problem = await _send(
        broker, "POST", "/v1/admin/nodes", cert=cert, data=NEW_NODE.encode(), headers={**JSON, **foreign}
    )
    assert status == 403 and problem["type"].endswith("cross_origin_request")
    assert not await _node_exists(broker.ctx, "fra-9")
    status, _ = await _send(broker, "POST", "/v1/admin/nodes/usa-2/revoke", cert=cert, headers=foreign)
    assert status == 403
    assert not any(n["revoked"] for n in await admin.list_nodes(broker.ctx) if n["id"] == "usa-2")
    # Reads with the ambient certificate are refused too (the response is the secret).
    assert (await _send(broker, "GET", "/v1/admin/nodes", cert=cert, headers=foreign))[0] == 403
    await auth.flush_failures(broker.server_ctx)
    refused = await events(broker.ctx, action="authenticate", decision="deny")
    assert [e["reason"] for e in refused] == ["cross_origin_request"]


async def test_same_origin_and_non_browser_requests_work(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker()
    admin_token = await _add(broker.ctx, "adm-1", "USA", ["admin"])
    cert = dev_pki.node("adm-1")
    own = {"Origin": broker.base, "Sec-Fetch-Site": "same-origin"}
    spec = json.loads(NEW_NODE)
    for number, headers in enumerate([{**JSON, **own}, JSON, {**JSON, "Sec-Fetch-Site": "none"}]):
        data = json.dumps({**spec, "id": f"fra-{number}"}).encode()
        assert (await _send(broker, "POST", "/v1/admin/nodes", cert=cert, data=data, headers=headers))[
            0
        ] == 201
    bearer = {**JSON, "Authorization": f"Bearer {admin_token}"}
    data = json.dumps({**spec, "id": "fra-5"}).encode()
    assert (await _send(broker, "POST", "/v1/admin/nodes", data=data, headers=bearer))[0] == 201
    # A link from another site to a page opens it (a top-level navigation reads nothing).
    navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert (await _send(broker, "GET", "/audit/", cert=cert, headers=navigate))[0] == 200
    # A bearer token is no ambient credential, but a state change from a foreign page is refused.
    foreign = {**bearer, "Origin": "https://evil.example"}
    data = json.dumps({**spec, "id": "fra-6"}).encode()
    assert (await _send(broker, "POST", "/v1/admin/nodes", data=data, headers=foreign))[0] == 403
    for number in (0, 1, 2, 5):
        assert await _node_exists(broker.ctx, f"fra-{number}")


async def test_configured_origins_are_allowed(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker(allowed_origins=("https://console.example",))
    await _add(broker.ctx, "adm-1", "USA", ["admin"])
    cert = dev_pki.node("adm-1")
    headers = {**JSON, "Origin": "https://console.example", "Sec-Fetch-Site": "cross-site"}
    status, _ = await _send(
        broker, "POST", "/v1/admin/nodes", cert=cert, data=NEW_NODE.encode(), headers=headers
    )
    assert status == 201
