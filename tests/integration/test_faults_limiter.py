"""The failed-authentication limiter under faults (issue 21, finding 5): behind a trusted reverse
proxy it keys on the forwarded client address (never on a header from anyone else), its memory
stays bounded whatever the number of failing sources, and a client that authenticates by a
pinned certificate is not throttled for its neighbours' failures."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.errors import ConfigError
from broker.services import admin
from broker.services.failures import AuthFailures
from broker.settings import Settings
from tests.conftest import CONFIG
from tests.integration.conftest import Api, StartServer
from tests.integration.test_edge_security import serve, tls_broker
from tests.integration.test_tls import Pki, TlsBroker, dev_pki

__all__ = ["dev_pki", "serve", "tls_broker"]  # fixtures of other modules
PROXY = "127.0.0.2"  # the reverse proxy's address (another loopback address than the tests')
SOURCES = re.compile(r"^broker_auth_failure_sources (\S+)$", re.MULTILINE)


def ipv6(i: int) -> str:
    """The i-th of many distinct IPv6 client addresses, each in a /64 of its own."""
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | (i << 64) | 1))


async def _status(
    session: aiohttp.ClientSession, api: Api, token: str, forwarded: str | None, path: str = "/v1/alliances"
) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    async with session.get(api.base_url + path, headers=headers) as resp:
        await resp.read()
        return resp.status


# The limiter is in memory, before any database: one engine is enough.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_clients_behind_a_trusted_proxy_are_limited_each_by_its_own_address(
    start_server: StartServer,
) -> None:
    cap = 100  # the smallest configurable: six times as many sources fail below
    api = await start_server(
        trusted_proxies=(f"{PROXY}/32",),
        auth_failure_max_sources=cap,
        auth_failure_burst=3,
        auth_failures_per_second=1,
    )
    swe, auditor = await api.node("swe-1", "SWE"), await api.node("aud", "BEL", roles=("audit",))
    gate = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(PROXY, 0))) as proxy:

        async def failing(i: int) -> int:
            async with gate:
                # a proxy appends the address it saw to what the client sent (here, a lie)
                return await _status(proxy, api, "abk_wrong", f"198.51.100.1, {ipv6(i)}")

        statuses = await asyncio.gather(*(failing(i) for i in range(6 * cap)))
        assert set(statuses) == {401}
        assert await _status(proxy, api, swe, "2001:db8:ffff::7") == 200  # an honest neighbour
        repeated = [await _status(proxy, api, "abk_wrong", "2001:db8:bad::1") for _ in range(5)]
        assert repeated == [401, 401, 401, 429, 429]  # the failing client is still limited
        assert await _status(proxy, api, swe, "2001:db8:ffff::8") == 200
        assert await _status(proxy, api, swe, None) == 200  # the proxy's own address is not limited
    async with aiohttp.ClientSession() as direct:  # 127.0.0.1 is no trusted proxy: header ignored
        spoofed = [await _status(direct, api, "abk_wrong", ipv6(10_000 + i)) for i in range(5)]
        assert spoofed == [401, 401, 401, 429, 429]
    # from a third address: 127.0.0.1 has used up its failures above
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))) as other,
        other.get(api.base_url + "/metrics", headers={"Authorization": f"Bearer {auditor}"}) as resp,
    ):
        status, text = resp.status, await resp.text()
    assert status == 200
    tracked = SOURCES.search(text)
    assert tracked is not None and float(tracked.group(1)) <= cap


def test_five_times_the_cap_of_failing_sources_leave_the_limiter_bounded() -> None:
    cap = 2_000  # the shape (flat once full) shows at any cap, and tracemalloc slows each note
    sources = 5 * cap
    now = datetime(2026, 12, 6, tzinfo=UTC)
    tracemalloc.start()
    try:
        limiter = AuthFailures(rate=5, burst=50, max_sources=cap)
        base = tracemalloc.get_traced_memory()[0]
        used: dict[int, int] = {}
        for i in range(sources):
            source = ipv6(i)
            assert limiter.allowed(source)
            limiter.note(source, "unknown_token", None, now=now)
            if i + 1 in (cap, 2 * cap, sources):
                used[i + 1] = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    print("limiter memory (bytes) by failing sources seen:", used)
    # Flat once full (at ``cap`` the first eviction has not happened, nor the tables' last resize).
    assert used[sources] <= used[2 * cap] * 1.02
    assert used[sources] <= 1000 * cap
    drafts = limiter.drain(now=now)
    assert len(drafts) <= cap + 1
    assert sum(d.details["failures"] for d in drafts) == sources  # every failure is still counted
    assert not limiter.pending()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_pinned_certificate_is_not_throttled_for_its_neighbours(
    tls_broker: Any, dev_pki: Pki
) -> None:
    broker: TlsBroker = await tls_broker(auth_failure_burst=3, auth_failures_per_second=1)
    pinned, unpinned = dev_pki.node("fra-1"), dev_pki.node("usa-1")
    for node_id, nation, extra in (
        ("fra-1", "FRA", {"certificate": pinned[0].read_text()}),
        ("usa-1", "USA", {}),
    ):
        spec: dict[str, Any] = {
            "id": node_id,
            "nation": nation,
            "clearance": "SECRET",
            "roles": ["subscribe"],
        }
        await admin.add_node(broker.ctx, {**spec, **extra}, actor="test")
    refused = [await broker.call("GET", "/v1/reports", token="abk_wrong") for _ in range(5)]
    assert refused == [401, 401, 401, 429, 429]  # a neighbour at the same address keeps failing
    assert await broker.call("GET", "/v1/reports", cert=pinned) == 200
    assert await broker.call("GET", "/v1/reports", cert=unpinned) == 429  # no pin: no exemption


def test_the_limiter_settings_are_read_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG, folder)
    (folder / "broker.toml").write_text(
        '[server]\nauth_failure_max_sources = 500\ntrusted_proxies = ["10.0.0.7", "fd00::/8"]\n'
    )
    settings = Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert settings.auth_failure_max_sources == 500
    assert settings.trusted_proxies == ("10.0.0.7/32", "fd00::/8")
    for bad, key in (
        ('trusted_proxies = ["everyone"]', "trusted_proxies"),
        ("auth_failure_max_sources = 1", "auth_failure_max_sources"),
    ):
        (folder / "broker.toml").write_text(f"[server]\n{bad}\n")
        with pytest.raises(ConfigError) as info:
            Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
        assert info.value.key == f"server.{key}"
