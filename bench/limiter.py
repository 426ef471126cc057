"""The failed-authentication limiter against many failing sources behind a trusted proxy.

    .venv/bin/python -m bench.limiter [--sources 100000] [--cap 20000]

One ``broker serve`` (SQLite, fresh database) with ``trusted_proxies = ["127.0.0.2/32"]`` and
``auth_failure_max_sources = --cap``. This process connects from 127.0.0.2 (the "proxy") and
sends ``--sources`` ``GET /v1/alliances`` with a wrong token, each with an ``X-Forwarded-For``
naming a distinct IPv6 address, over 32 connections. Every tenth of the way it records the
broker's resident memory (VmRSS), the limiter's tracked sources (``broker_auth_failure_sources``
from /metrics) and the status an honest client behind the same proxy gets. Prints the table.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import re
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import bench_config, broker_env, start_broker, stop
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

PROXY, SCRAPER = "127.0.0.2", "127.0.0.3"
CONNECTIONS = 32
SOURCES = re.compile(r"^broker_auth_failure_sources (\S+)$", re.MULTILINE)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ipv6(i: int) -> str:
    return str(ipaddress.IPv6Address((0x20010DB8 << 96) | (i << 64) | 1))


async def _prepare(env: dict[str, str]) -> dict[str, str]:
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        tokens = {}
        for role in ("audit", "subscribe"):
            spec = {"id": f"bench-{role}", "nation": "USA", "clearance": "SECRET", "roles": [role]}
            tokens[role] = str((await admin.add_node(ctx, spec, actor="bench"))["token"])
        return tokens
    finally:
        await ctx.close()


async def _get(session: aiohttp.ClientSession, url: str, token: str, forwarded: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    async with session.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status


async def run(sources: int, cap: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = broker_env(folder, f"sqlite+aiosqlite:///{folder / 'limiter.db'}")
        toml = bench_config(folder) / "broker.toml"
        text = toml.read_text()
        settings = f'[server]\ntrusted_proxies = ["{PROXY}/32"]\nauth_failure_max_sources = {cap}\n'
        toml.write_text(text.replace("[server]\n", settings, 1))
        tokens = await _prepare(env)
        proc, base = start_broker(folder, env)
        rows = [("failing sources sent", "broker RSS (MiB)", "limiter sources", "honest client", "req/s")]
        try:
            proxy = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(PROXY, 0), limit=CONNECTIONS)
            )
            scraper = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(SCRAPER, 0)))
            async with proxy, scraper:

                async def sample(sent: int, rate: float) -> None:
                    async with scraper.get(
                        f"{base}/metrics", headers={"Authorization": f"Bearer {tokens['audit']}"}
                    ) as resp:
                        found = SOURCES.search(await resp.text())
                    honest = await _get(
                        proxy, f"{base}/v1/alliances", tokens["subscribe"], "2001:db8:ffff::7"
                    )
                    tracked = found.group(1) if found else "?"
                    rows.append(
                        (str(sent), f"{rss_kib(proc.pid) / 1024:.1f}", tracked, str(honest), f"{rate:.0f}")
                    )

                await sample(0, 0.0)
                step = max(1, sources // 10)
                gate = asyncio.Semaphore(CONNECTIONS)

                async def failing(i: int) -> int:
                    async with gate:
                        return await _get(proxy, f"{base}/v1/alliances", "abk_wrong", ipv6(i))

                for start in range(0, sources, step):
                    began = time.perf_counter()
                    statuses = await asyncio.gather(
                        *(failing(i) for i in range(start, min(sources, start + step)))
                    )
                    assert set(statuses) <= {401}, set(statuses)
                    await sample(min(sources, start + step), len(statuses) / (time.perf_counter() - began))
        finally:
            stop(proc)
    for row in rows:
        print(" | ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=int, default=100_000)
    parser.add_argument("--cap", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(run(args.sources, args.cap))


if __name__ == "__main__":
    main()
