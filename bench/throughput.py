"""Publish and read throughput of one broker on loopback, beside a null endpoint.

    .venv/bin/python -m bench.throughput [--engine sqlite|postgres|both] [--n 500] [--concurrency 16]

Starts the broker in this process on a loopback port (a fresh database: SQLite in a temporary
folder, or a fresh PostgreSQL database created and dropped on BROKER_BENCH_PG, default the local
server), and a null aiohttp endpoint that answers 201 at once: the ceiling this load client can
see. Prints reports/s and p50/p99 latency, and ours/null ratios. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.engine import make_url

from broker.app import create_app
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BROKER_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
INDICATOR: dict[str, Any] = {
    "type": "bundle",
    "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
    "objects": [
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
            "created": "2026-11-25T12:00:00.000Z",
            "modified": "2026-11-25T12:00:00.000Z",
            "name": "C2 server",
            "pattern": "[ipv4-addr:value = '198.51.100.7']",
            "pattern_type": "stix",
            "valid_from": "2026-11-25T12:00:00Z",
        }
    ],
}
BODY = {
    "label": {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []},
    "topics": ["c2"],
    "payload": INDICATOR,
}


async def _pg(statement: str) -> None:
    import asyncpg

    url = make_url(PG)
    conn = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def bench_nodes(ctx: Context) -> tuple[str, str]:
    """Register the benchmark's publisher (USA) and subscriber (SWE, a NATO ally); their tokens."""
    tokens = []
    for node_id, nation, role in (("usa", "USA", "publish"), ("swe", "SWE", "subscribe")):
        spec = {"id": node_id, "nation": nation, "clearance": "SECRET", "roles": [role]}
        tokens.append((await admin.add_node(ctx, spec, actor="bench"))["token"])
    return tokens[0], tokens[1]


@asynccontextmanager
async def fresh_database(engine: str, folder: Path, name: str) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file in ``folder``, or a PostgreSQL database
    created on BROKER_BENCH_PG and dropped afterwards."""
    if engine == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
        return
    dbname = f"broker_{name}_{secrets.token_hex(4)}"
    await _pg(f'CREATE DATABASE "{dbname}"')
    try:
        yield make_url(PG).set(database=dbname).render_as_string(hide_password=False)
    finally:
        await _pg(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def append_results(table: str) -> None:
    """Print a results table and append it to bench/RESULTS.md."""
    print(table)
    with (ROOT / "bench" / "RESULTS.md").open("a") as fh:
        fh.write(table + "\n\n")


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _load(
    n: int, concurrency: int, call: Callable[[aiohttp.ClientSession, int], Awaitable[None]]
) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        async with aiohttp.ClientSession() as session:
            for i in counter:
                start = time.perf_counter()
                await call(session, i)
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rate": n / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def _null_endpoint() -> tuple[web.AppRunner, str]:
    async def created(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"id": "x", "sequence": 1, "created": "now"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/reports", created)
    return await _start(app)


async def _post(base: str, token: str) -> Callable[[aiohttp.ClientSession, int], Awaitable[None]]:
    async def call(session: aiohttp.ClientSession, _i: int) -> None:
        async with session.post(
            f"{base}/v1/reports", json=BODY, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 201, await r.text()

    return call


async def bench_engine(engine: str, n: int, concurrency: int, folder: Path) -> dict[str, dict[str, float]]:
    async with fresh_database(engine, folder, "bench") as url:
        return await _bench_url(engine, url, n, concurrency, folder)


async def _bench_url(
    engine: str, url: str, n: int, concurrency: int, folder: Path
) -> dict[str, dict[str, float]]:
    settings = Settings.load(
        env={
            "BROKER_CONFIG_DIR": str(ROOT / "config"),
            "BROKER_DATABASE_URL": url,
            "BROKER_KEYRING": str(folder / f"{engine}-keyring.json"),
        }
    )
    settings = Settings(**{**settings.__dict__, "publish_rate_per_second": 1e6, "publish_burst": 10**6})
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        pub, sub = await bench_nodes(ctx)
        runner, base = await _start(create_app(settings))
        try:
            results = {
                "publish sequential": await _load(n, 1, await _post(base, pub)),
                f"publish {concurrency} clients": await _load(n, concurrency, await _post(base, pub)),
            }
            ids: list[str] = []
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{base}/v1/reports?limit=100", headers={"Authorization": f"Bearer {sub}"}) as r,
            ):
                ids = [x["id"] for x in (await r.json())["reports"]]

            async def read(session: aiohttp.ClientSession, i: int) -> None:
                async with session.get(
                    f"{base}/v1/reports/{ids[i % len(ids)]}", headers={"Authorization": f"Bearer {sub}"}
                ) as r:
                    assert r.status == 200

            results["read by id sequential"] = await _load(n, 1, read)
        finally:
            await runner.cleanup()
    finally:
        await ctx.close()
    return results


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    runner, null_base = await _null_endpoint()
    try:
        null = {
            "sequential": await _load(args.n, 1, await _post(null_base, "-")),
            "concurrent": await _load(args.n, args.concurrency, await _post(null_base, "-")),
        }
    finally:
        await runner.cleanup()
    rows: list[tuple[str, str, dict[str, float], float | None]] = [
        ("null endpoint", "publish sequential", null["sequential"], None),
        ("null endpoint", f"publish {args.concurrency} clients", null["concurrent"], None),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            print(f"running {engine} ({args.n} requests per case)...", flush=True)
            for case, result in (await bench_engine(engine, args.n, args.concurrency, Path(tmp))).items():
                ceiling = null["concurrent"] if "clients" in case else null["sequential"]
                rows.append(
                    (engine, case, result, result["rate"] / ceiling["rate"] if "publish" in case else None)
                )
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, commit {_commit()}",
        "",
        "| server | case | reports/s | p50 ms | p99 ms | ours/null |",
        "|---|---|---|---|---|---|",
    ]
    for server, case, r, ratio in rows:
        lines.append(
            f"| {server} | {case} | {r['rate']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} |"
        )
    append_results("\n".join(lines))
    print(json.dumps({"appended_to": "bench/RESULTS.md"}))


if __name__ == "__main__":
    asyncio.run(main())
