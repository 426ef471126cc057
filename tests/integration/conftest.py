"""A real broker on a loopback port, and a small client for the tests to talk to it."""

from __future__ import annotations

import asyncio
import io
import json as _json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import uvloop
from aiohttp.test_utils import TestClient, TestServer

from broker.app import create_app
from broker.services import admin, auth
from broker.services.context import Context
from broker.settings import Settings
from broker.storage.database import ConnectionThread
from broker.web.handlers import CONTEXT
from tests.conftest import FakeClock
from tests.integration.helpers import Cli
from tests.integration.openapi_check import check_response

# `broker serve` runs on uvloop where it is installed (a dependency); the in-process tests run on
# asyncio's own loop. The two differ where the broker meets the transport (TLS handshakes, the
# connection guard, head deadlines): a change whose tests passed on one once broke every TLS
# handshake on the other. These modules run each async test on both loops.
ON_BOTH_LOOPS = frozenset({"test_tls.py", "test_edge_security.py"})


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    if item.path.name in ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # one factory: no id added


@dataclass
class Api:
    client: TestClient[Any, Any]
    ctx: Context

    async def node(
        self,
        node_id: str,
        nation: str,
        clearance: str = "SECRET",
        roles: tuple[str, ...] = ("publish", "subscribe"),
        caveats: tuple[str, ...] = (),
        **keys: str | int,
    ) -> str:
        spec = {
            "id": node_id,
            "nation": nation,
            "clearance": clearance,
            "roles": list(roles),
            "caveats": list(caveats),
            **keys,
        }
        return str((await admin.add_node(self.ctx, spec, actor="test"))["token"])

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            data = _json.dumps(json).encode()
            all_headers.setdefault("Content-Type", "application/json")
        stream = None if data is None else io.BytesIO(data)  # aiohttp warns on large raw bytes
        async with self.client.request(method, path, data=stream, headers=all_headers) as resp:
            if resp.content_type in ("application/json", "application/problem+json"):
                answer = await resp.json(content_type=None)
                check_response(method, path, resp.status, resp.content_type, answer)
                return resp.status, answer
            return resp.status, await resp.text()

    async def publish(self, token: str, body: dict[str, Any], **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/reports", token, json=body, **kw)

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return await self.call("GET", path, token)

    @property
    def server_ctx(self) -> Context:
        """The serving broker's own context (``ctx`` is another process's view of the database)."""
        return self.client.server.app[CONTEXT]

    async def flush_auth_failures(self) -> None:
        """Write the server's counted authentication failures now (normally once a window)."""
        await auth.flush_failures(self.server_ctx)

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


StartServer = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_server(settings: Settings, clock: FakeClock, ctx: Context) -> AsyncIterator[StartServer]:
    """Start a broker on a loopback port; keyword arguments override settings."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> Api:
        changed = replace(settings, **overrides)
        client = TestClient(TestServer(create_app(changed, clock=clock), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Api(client=client, ctx=ctx)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def api(start_server: StartServer) -> Api:
    return await start_server()


@pytest.fixture
def sqlite_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread (``sqlite-writer`` or ``sqlite-reader``) each body queued from now on went to:
    one body, one trip to the thread that owns the SQLite connection."""
    made: list[str] = []
    real = ConnectionThread.run

    def counted(self: ConnectionThread, body: Callable[..., object]) -> Awaitable[object]:
        made.append(self.name)
        return real(self, body)

    monkeypatch.setattr(ConnectionThread, "run", counted)
    return made


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`broker ARGS` in this process; no ``BROKER_*`` variable is set until ``cli.use(...)``."""
    return Cli(capsys, monkeypatch).use()
