"""The HTTP edge against a browser and against slow or greedy clients (issue 19, findings 7, 10).

Cross-site request forgery: a page the holder of a client certificate visits can make the
browser send requests that the certificate alone authorises. Requests that carry a foreign
``Origin`` or ``Sec-Fetch-Site: cross-site``/``same-site`` are refused (403
``cross_origin_request``) before anything is read, and a JSON body must say it is JSON (415).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.app import create_app, start_serving
from broker.errors import ConfigError
from broker.services import admin, auth
from broker.services.context import Context
from broker.settings import Settings, TlsSettings
from broker.waiting import wait_event
from broker.web.handlers import CONTEXT
from broker.web.tls import server_context
from tests.conftest import CONFIG, FakeClock
from tests.integration.helpers import body, events, eventually, keep_alive_get, report_count
from tests.integration.test_tls import Pki, TlsBroker, dev_pki

__all__ = ["dev_pki"]  # the development CA fixture of test_tls
# The HTTP edge answers before any database is asked: one engine is enough.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
Serve = Callable[..., Awaitable[tuple[int, web.Application]]]


@pytest.fixture
async def serve(settings: Settings, clock: FakeClock) -> AsyncIterator[Serve]:
    """Start a broker the way ``broker serve`` does (broker.app.start_serving) on a loopback
    port; keywords override settings. Answers the port and the app."""
    runners: list[web.AppRunner] = []

    async def start(
        ssl_context: ssl.SSLContext | None = None, **overrides: Any
    ) -> tuple[int, web.Application]:
        app = create_app(replace(settings, **overrides), clock=clock)
        runner, site = await start_serving(app, host="127.0.0.1", port=0, ssl_context=ssl_context)
        runners.append(runner)
        return site.port, app

    yield start
    for runner in runners:
        await runner.cleanup()


def _tls(dev_pki: Pki) -> TlsSettings:
    return TlsSettings(
        cert=dev_pki.directory / "server.pem",
        key=dev_pki.directory / "server.key",
        client_ca=(dev_pki.directory / "ca.pem",),
        client_auth="optional",
    )


@pytest.fixture
def tls_broker(serve: Serve, ctx: Context, dev_pki: Pki) -> Callable[..., Awaitable[TlsBroker]]:
    """A broker with mutual TLS (client certificates optional); keywords override settings."""

    async def start(**overrides: Any) -> TlsBroker:
        tls = _tls(dev_pki)
        port, app = await serve(server_context(tls), tls=tls, **overrides)
        return TlsBroker(f"https://localhost:{port}", ctx, dev_pki.directory / "ca.pem", app[CONTEXT])

    return start


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


@SQLITE_ONLY
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
@SQLITE_ONLY
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


@SQLITE_ONLY
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


@SQLITE_ONLY
async def test_configured_origins_are_allowed(tls_broker: Any, dev_pki: Pki) -> None:
    broker: TlsBroker = await tls_broker(allowed_origins=("https://console.example",))
    await _add(broker.ctx, "adm-1", "USA", ["admin"])
    cert = dev_pki.node("adm-1")
    headers = {**JSON, "Origin": "https://console.example", "Sec-Fetch-Site": "cross-site"}
    status, _ = await _send(
        broker, "POST", "/v1/admin/nodes", cert=cert, data=NEW_NODE.encode(), headers=headers
    )
    assert status == 201


# Finding 10: connections that never finish a request head, and too many from one address.

HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n"
HEAD_SECONDS = 1.0
MARGIN = 2.0  # closed within HEAD_SECONDS + MARGIN


async def _closed_by_server(reader: asyncio.StreamReader, within: float, since: float | None = None) -> float:
    """Seconds until the server closes the connection (EOF or reset), counted from ``since`` (a
    ``time.monotonic()``; by default now); fails after ``within``."""
    started = time.monotonic() if since is None else since
    async with asyncio.timeout(within):
        try:
            while await reader.read(4096):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


async def _health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One keep-alive GET /v1/health on an open connection: its status."""
    return await keep_alive_get(reader, writer, "/v1/health")


async def _trickle(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """A request head that never ends: a header byte every 0.2 s (the attack itself)."""
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
    with contextlib.suppress(ConnectionError):
        while not await wait_event(stop, 0.2):
            writer.write(b"a")
            await writer.drain()


async def _last_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """GET /v1/health with ``Connection: close``: its status, once the server has closed."""
    writer.write(HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    async with asyncio.timeout(5):
        answer = await reader.read()  # to EOF: the server closed its side, and counted it
    return int(answer.split()[1])


@SQLITE_ONLY
async def test_a_request_head_must_arrive_in_time(serve: Serve) -> None:
    port, _app = await serve(request_head_timeout_seconds=HEAD_SECONDS)
    normal = await asyncio.open_connection("127.0.0.1", port)
    assert await _health(*normal) == 200  # a complete head: this connection is not timed any more
    # Each connection's head is timed from when it began (no earlier than these moments): counted
    # from later, a busy machine's setup would make the server's close look early.
    half_reader, half_writer = await asyncio.open_connection("127.0.0.1", port)
    half_since = time.monotonic()
    half_writer.write(HEALTH[:20])  # half a request head, never finished
    later_reader, later_writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _health(later_reader, later_writer) == 200
    later_since = time.monotonic()
    later_writer.write(HEALTH[:20])  # then half of the next one on the kept-alive connection
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_since = time.monotonic()
    stop = asyncio.Event()
    trickling = asyncio.create_task(_trickle(slow_writer, stop))
    try:
        heads = ((half_reader, half_since), (slow_reader, slow_since), (later_reader, later_since))
        within = HEAD_SECONDS + MARGIN
        closing = [asyncio.create_task(_closed_by_server(reader, within, since)) for reader, since in heads]
        while not all(task.done() for task in closing):  # the broker answers others meanwhile
            fresh = await asyncio.open_connection("127.0.0.1", port)
            assert await _health(*fresh) == 200
            fresh[1].close()
            await asyncio.wait(closing, timeout=0.1)
        for task in closing:
            assert HEAD_SECONDS * 0.9 <= await task <= HEAD_SECONDS + MARGIN
        # The idle keep-alive connection outlived the head deadline and still works.
        assert await _health(*normal) == 200
    finally:
        stop.set()
        await trickling
        for writer in (normal[1], half_writer, slow_writer, later_writer):
            writer.close()


@SQLITE_ONLY
async def test_a_tls_handshake_must_finish_in_time(serve: Serve, dev_pki: Pki) -> None:
    tls = _tls(dev_pki)
    port, _app = await serve(server_context(tls), tls=tls, request_head_timeout_seconds=HEAD_SECONDS)
    # Each connection's time counts from before it was opened: the server's deadline starts at
    # the accept, and the second connection's handshake may take a while on a busy machine.
    silent_since = time.monotonic()
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)  # no ClientHello
    trust = ssl.create_default_context(cafile=str(dev_pki.directory / "ca.pem"))
    head_since = time.monotonic()
    head_reader, head_writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=trust, server_hostname="localhost"
    )
    head_writer.write(HEALTH[:20])  # a finished handshake, then half a head
    try:
        closing = [
            _closed_by_server(silent_reader, HEAD_SECONDS + MARGIN, since=silent_since),
            _closed_by_server(head_reader, HEAD_SECONDS + MARGIN, since=head_since),
        ]
        for seconds in await asyncio.gather(*closing):
            assert seconds >= HEAD_SECONDS * 0.9
    finally:
        silent_writer.close()
        head_writer.close()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _left_open(connections: list[Connection], *, closed: int) -> list[Connection]:
    """The connections the broker leaves open once it has closed ``closed`` of them (within
    MARGIN, without a request being sent)."""
    watch = {asyncio.create_task(_closed_by_server(c[0], 30)): n for n, c in enumerate(connections)}
    done: set[asyncio.Task[float]] = set()
    async with asyncio.timeout(MARGIN):
        while len(done) < closed:
            finished, _ = await asyncio.wait(set(watch) - done, return_when=asyncio.FIRST_COMPLETED)
            done |= finished
    pending = set(watch) - done
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [c for n, c in enumerate(connections) if n not in {watch[t] for t in done}]


@SQLITE_ONLY
async def test_connections_per_source_are_capped(serve: Serve) -> None:
    cap, extra = 4, 3
    port, _app = await serve(max_connections_per_source=cap, request_head_timeout_seconds=30)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap + extra)]
    try:
        kept = await _left_open(connections, closed=extra)  # the excess is closed at once
        assert len(kept) == cap
        for reader, writer in kept:  # the admitted ones are open and served
            assert await _health(reader, writer) == 200
        for reader, writer in kept:
            assert await _last_request(reader, writer) == 200
    finally:
        for _reader, writer in connections:
            writer.close()
    # Connections the server closed no longer count: a fresh one is served.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _health(reader, writer) == 200
    writer.close()


@SQLITE_ONLY
async def test_exempt_networks_are_not_capped(serve: Serve) -> None:
    port, _app = await serve(max_connections_per_source=2, connection_cap_exempt=("127.0.0.0/8",))
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    try:
        for reader, writer in connections:
            assert await _health(reader, writer) == 200
    finally:
        for _reader, writer in connections:
            writer.close()


def test_the_connection_settings_are_read_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG, folder)
    (folder / "broker.toml").write_text(
        "[server]\nrequest_head_timeout_seconds = 5\nmax_connections_per_source = 8\n"
        'connection_cap_exempt = ["10.0.0.7", "fd00::/8"]\n'
    )
    settings = Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert (settings.request_head_timeout_seconds, settings.max_connections_per_source) == (5.0, 8)
    assert settings.connection_cap_exempt == ("10.0.0.7/32", "fd00::/8")
    (folder / "broker.toml").write_text('[server]\nconnection_cap_exempt = ["everyone"]\n')
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert info.value.key == "server.connection_cap_exempt"


@SQLITE_ONLY
async def test_connections_in_their_tls_handshake_count_against_the_cap(serve: Serve, dev_pki: Pki) -> None:
    """A TLS connection was counted only once its handshake was done: a source that opened TCP
    connections and sent no ClientHello held as many descriptors as it could open within the
    handshake deadline, whatever ``max_connections_per_source`` said."""
    cap, extra = 3, 4
    tls = _tls(dev_pki)
    port, _app = await serve(
        server_context(tls), tls=tls, max_connections_per_source=cap, request_head_timeout_seconds=30
    )
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap + extra)]
    trust = ssl.create_default_context(cafile=str(dev_pki.directory / "ca.pem"))
    try:
        kept = await _left_open(silent, closed=extra)  # closed at once, before any handshake
        assert len(kept) == cap
        for reader, writer in kept:  # the admitted ones finish their handshake and are served
            await writer.start_tls(trust, server_hostname="localhost")
            assert await _health(reader, writer) == 200
    finally:
        for _reader, writer in silent:
            writer.close()

    async def served_again() -> bool:  # closed connections, handshaken or not, count no more
        fresh = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
        try:
            for reader, writer in fresh:
                await writer.start_tls(trust, server_hostname="localhost")
                assert await _health(reader, writer) == 200
            return True
        except (ConnectionError, ssl.SSLError):
            return False
        finally:
            for _reader, writer in fresh:
                writer.close()

    await eventually(served_again)
