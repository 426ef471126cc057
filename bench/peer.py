"""Publish and read against the TAXII 2.1 reference server (medallion 3.0.0, memory backend) and
a null endpoint, in one run, at growing store sizes.

    .venv/bin/python -m bench.peer [--n 300] [--sizes 0,10000,100000] [--engine sqlite|postgres]
                                   [--cases all|taxii]

Everything runs on loopback, each server in a process of its own (ours as ``broker serve``,
with the shipped config but no per-node rate limit), the load client in this one. medallion is
installed into its own virtualenv under var/bench/ (first run only) and started with a config
this script writes, its store preloaded through its memory backend's data file. Our store is
preloaded through the publish path in bulk transactions (every report encrypted, indexed for
TAXII and audited like any other). The load client opens a new connection per request for
all three servers and sends the same STIX 2.1 indicator, one per request. Besides publishing,
it reads: over REST, and over TAXII a page of 100 and one object by id (``--cases taxii``: those
two alone). Prints reports/s, p50/p99 latency, each server's peak RSS and the ratios
ours/medallion and ours/null; appends the table to bench/RESULTS.md.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import broker_env, free_port, rss_kb, start_broker, start_process, stop, wait_for
from bench.throughput import BODY, INDICATOR, ROOT, _commit, append_results, bench_nodes, fresh_database
from broker.domain.records import ReportRecord
from broker.services import alliances, collections, publishing
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

PEER_VENV = ROOT / "var" / "bench" / "medallion-venv"
TAXII = "application/taxii+json;version=2.1"
COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"
Call = Callable[[aiohttp.ClientSession, int], Awaitable[None]]
PEER_BASE = 10_000_000  # medallion's preloaded objects are indicator(PEER_BASE + i)
STORED_BASE = 20_000_000  # ours: indicator(STORED_BASE + i), one per preloaded report


def indicator(i: int) -> dict[str, Any]:
    obj = dict(INDICATOR["objects"][0])
    obj["id"] = f"indicator--{uuid.UUID(int=i + 1)}"
    return obj


WARMUP = 30  # untimed requests before a fresh server's first case: caches, lazy imports
MAX_SECONDS = 20.0  # every case stops issuing requests after this long, done or not
REQUEST_TIMEOUT = 30.0  # a request slower than this counts as timed out (and stops its client)


async def load(
    n: int, concurrency: int, call: Call, *, collect: list[float] | None = None
) -> dict[str, float]:
    """At most ``n`` requests from ``concurrency`` clients, for at most MAX_SECONDS. Each
    request's seconds are also appended to ``collect``, if given."""
    latencies: list[float] = []
    timeouts: list[int] = []
    counter = iter(range(n))
    deadline = time.perf_counter() + MAX_SECONDS

    async def worker() -> None:
        # force_close: a new TCP connection per request, as a fleet of national nodes would do.
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), timeout=timeout
        ) as session:
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                try:
                    await call(session, i)
                except TimeoutError:
                    timeouts.append(i)
                    return
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    if collect is not None:
        collect.extend(latencies)
    if not latencies:
        return {"rate": 0.0, "p50": float("nan"), "p99": float("nan"), "timeouts": float(len(timeouts))}
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "timeouts": float(len(timeouts)),
    }


def ensure_medallion() -> Path:
    exe = PEER_VENV / "bin" / "medallion"
    if not exe.exists():
        print("installing medallion 3.0.0 into var/bench/medallion-venv (first run only)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", "medallion==3.0.0"], check=True)
    return exe


def start_medallion(folder: Path, stored: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    objects = [indicator(PEER_BASE + i) for i in range(stored)]
    manifest = [
        {
            "id": o["id"],
            "date_added": "2026-11-25T12:00:00.000000Z",
            "version": o["modified"],
            "media_type": "application/stix+json;version=2.1",
        }
        for o in objects
    ]
    data = {
        "/discovery": {"title": "bench", "default": f"{base}/api1/", "api_roots": [f"{base}/api1/"]},
        "api1": {
            "information": {"title": "bench", "versions": [TAXII], "max_content_length": 10_485_760},
            "status": [],
            "collections": [
                {
                    "id": COLLECTION,
                    "title": "bench",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": objects,
                    "manifest": manifest,
                }
            ],
        },
    }
    (folder / "medallion-data.json").write_text(json.dumps(data))
    config = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(folder / "medallion-data.json"),
        },
        "users": {"bench": "bench-pass"},
        "taxii": {"max_page_size": 100},
    }
    (folder / "medallion.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [
            str(ensure_medallion()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "ERROR",
            str(folder / "medallion.json"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(proc, port, "medallion")
    return proc, base


def spread(i: int, stored: int) -> int:
    """The i-th by-id lookup's object: strides through the whole store, not its first thousand."""
    return (i * 7919) % stored


def medallion_calls(base: str, stored: int = 0) -> tuple[Call, Call, Call]:
    """Publish, page of 100 and by-id calls; the by-id one reads the `stored` preloaded objects."""
    basic = "Basic " + base64.b64encode(b"bench:bench-pass").decode()
    headers = {"Accept": TAXII, "Content-Type": TAXII, "Authorization": basic}
    objects = f"{base}/api1/collections/{COLLECTION}/objects/"

    async def post(session: aiohttp.ClientSession, i: int) -> None:
        async with session.post(objects, json={"objects": [indicator(i)]}, headers=headers) as r:
            assert r.status == 202, await r.text()

    async def page(session: aiohttp.ClientSession, _i: int) -> None:
        async with session.get(objects, params={"limit": "100"}, headers=headers) as r:
            assert r.status == 200, await r.text()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        wanted = indicator(PEER_BASE + spread(i, stored))["id"]
        async with session.get(f"{objects}{wanted}/", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert [o["id"] for o in (await r.json())["objects"]] == [wanted]

    return post, page, one


async def fill_ours(ctx: Context, node_token: str, n: int, batch: int = 1000, first: int = 0) -> list[str]:
    """Store n reports through the publish path (``store_publishes``: sequence, created stamp,
    TAXII object index, audit), a thousand per transaction, without HTTP in between."""
    from broker.services.auth import authenticate

    node = await authenticate(ctx, node_token, source="bench")
    directory = await ctx.cached_directory()
    ids: list[str] = []
    for start in range(0, n, batch):
        acts = []
        for i in range(first + start, first + min(n, start + batch)):
            body = {
                **BODY,
                "payload": {
                    "type": "bundle",
                    "id": f"bundle--{uuid.UUID(int=i + 1)}",
                    "objects": [indicator(STORED_BASE + i)],
                },
            }
            sub = publishing.parse_submission(body, ctx=ctx, known_alliances=directory.alliances)
            acts.append(publishing.PublishAct(node, sub, None))
        async with ctx.db.transaction() as tx:
            outcomes = await publishing.store_publishes(ctx, tx, acts)
        for outcome in outcomes:
            if not isinstance(outcome, ReportRecord):
                raise RuntimeError(f"fill refused: {outcome}")
            ids.append(outcome.id)
        if (start // batch) % 20 == 19:
            print(f"  stored {start + batch} reports", flush=True)
    return ids


async def ours(
    folder: Path, url: str, n: int, sizes: list[int], cases: str, results: Rows, rss: dict[str, int]
) -> None:
    """Our broker as it is deployed: ``broker serve`` in a process of its own."""
    env = broker_env(folder, url)
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        pub, sub = await bench_nodes(ctx)
        spec = {"title": "bench", "topics": BODY["topics"], "label": BODY["label"]}
        collection = (await collections.add_collection(ctx, spec, actor="bench"))["id"]
        proc, base = start_broker(folder, env)
        try:
            await _ours_cases(ctx, base, pub, sub, n, sizes, cases, results, proc.pid, collection)
            rss["ours"] = rss_kb(proc.pid)
        finally:
            stop(proc)
    finally:
        await ctx.close()


async def _ours_cases(
    ctx: Context,
    base: str,
    pub: str,
    sub: str,
    n: int,
    sizes: list[int],
    cases: str,
    results: Rows,
    pid: int,
    collection: str,
) -> None:
    stored_ids: list[str] = []
    stored = 0
    taxii_headers = {"Authorization": f"Bearer {sub}", "Accept": TAXII}
    objects = f"{base}/taxii2/api/collections/{collection}/objects/"
    for size in sizes:
        if size > len(stored_ids):
            print(f"ours: filling the store to {size} reports...", flush=True)
            started = time.perf_counter()
            stored_ids += await fill_ours(ctx, pub, size - len(stored_ids), first=len(stored_ids))
            print(f"  filled in {time.perf_counter() - started:.1f} s", flush=True)
            stored = max(stored, size)

        async def post(session: aiohttp.ClientSession, _i: int) -> None:
            async with session.post(
                f"{base}/v1/reports", json=BODY, headers={"Authorization": f"Bearer {pub}"}
            ) as r:
                assert r.status == 201, await r.text()

        label = f"{size} stored"
        if size == sizes[0]:
            await load(WARMUP, 1, post)
        if cases == "all":
            results.append(("ours", f"publish sequential, {label}", pid, await load(n, 1, post)))
            results.append(("ours", f"publish 16 clients, {label}", pid, await load(n, 16, post)))
            stored += 2 * n
        if not stored_ids:
            continue
        middle = len(stored_ids) // 2
        preloaded = len(stored_ids)

        async def page(session: aiohttp.ClientSession, _i: int) -> None:
            async with session.get(
                f"{base}/v1/reports",
                params={"after": str(middle), "limit": "100"},
                headers={"Authorization": f"Bearer {sub}"},
            ) as r:
                assert r.status == 200 and len((await r.json())["reports"]) == 100

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            async with session.get(
                f"{base}/v1/reports/{stored_ids[i % len(stored_ids)]}",
                headers={"Authorization": f"Bearer {sub}"},
            ) as r:
                assert r.status == 200

        async def taxii_page(session: aiohttp.ClientSession, _i: int) -> None:
            async with session.get(objects, params={"limit": "100"}, headers=taxii_headers) as r:
                assert r.status == 200 and len((await r.json())["objects"]) == 100

        async def taxii_one(session: aiohttp.ClientSession, i: int) -> None:
            wanted = indicator(STORED_BASE + spread(i, preloaded))["id"]
            async with session.get(f"{objects}{wanted}/", headers=taxii_headers) as r:
                assert r.status == 200, await r.text()
                assert [o["id"] for o in (await r.json())["objects"]] == [wanted]

        if cases == "all":
            results.append(("ours", f"list 100, {label}", pid, await load(max(50, n // 4), 1, page)))
        results.append(("ours", f"TAXII page 100, {label}", pid, await load(max(50, n // 4), 1, taxii_page)))
        results.append(("ours", f"TAXII by id, {label}", pid, await load(n, 1, taxii_one)))
        if cases == "all":
            results.append(("ours", f"read by id, {label}", pid, await load(n, 1, one)))


def ratio(ours: dict[str, float], peer: dict[str, float] | None) -> str:
    if peer is None:
        return ""
    return f"{ours['rate'] / peer['rate']:.2f}" if peer["rate"] else "peer timed out"


class Rows(list[tuple[str, str, int, dict[str, float]]]):
    """Results, each printed the moment it is measured (a crash later loses nothing)."""

    def append(self, row: tuple[str, str, int, dict[str, float]]) -> None:
        server, case, _, r = row
        print(
            f"  {server:9} {case:40} {r['rate']:8.1f}/s p50 {r['p50']:8.2f} ms p99 {r['p99']:8.2f} ms"
            f"{' timeouts ' + str(int(r['timeouts'])) if r.get('timeouts') else ''}",
            flush=True,
        )
        super().append(row)


def _table(rows: list[tuple[str, str, int, dict[str, float]]], rss: dict[str, int], engine: str) -> str:
    by = {(s, c): r for s, c, _, r in rows}
    lines = [
        f"## peer comparison ({engine}), {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
        f"{os.uname().nodename}, {os.cpu_count()} cores, commit {_commit()}",
        "",
        "New connection per request; same STIX 2.1 indicator per request.",
        "",
        "| server | case | req/s | p50 ms | p99 ms | ours/medallion | ours/null |",
        "|---|---|---|---|---|---|---|",
    ]
    for server, case, _, r in rows:
        peer = by.get(("medallion", case))
        null = by.get(("null", case.split(",")[0] + ", 0 stored"))
        ratio_m = ratio(r, peer) if server == "ours" else ""
        ratio_n = ratio(r, null) if server == "ours" and "publish" in case else ""
        rate = f"{r['rate']:.0f}" if r["rate"] >= 10 else f"{r['rate']:.2f}"
        numbers = f"{rate} | {r['p50']:.2f} | {r['p99']:.2f}"
        late = f" ({r['timeouts']:.0f} timed out at {REQUEST_TIMEOUT:.0f} s)" if r.get("timeouts") else ""
        lines.append(f"| {server} | {case}{late} | {numbers} | {ratio_m} | {ratio_n} |")
    lines += ["", "Peak RSS (MB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in rss.items())]
    return "\n".join(lines)


async def null_cases(n: int, rows: Rows, folder: Path) -> None:
    port = free_port()
    null = start_process(
        "null endpoint", [sys.executable, "-m", "bench.null_server", str(port)], port, folder / "null.log"
    )
    try:

        async def null_post(session: aiohttp.ClientSession, _i: int) -> None:
            async with session.post(f"http://127.0.0.1:{port}/v1/reports", json=BODY) as r:
                assert r.status == 201

        await load(WARMUP, 1, null_post)
        for clients, case in ((1, "sequential"), (16, "16 clients")):
            rows.append(
                ("null", f"publish {case}, 0 stored", null.pid, await load(n * 3, clients, null_post))
            )
    finally:
        stop(null)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--sizes", default="0,10000,100000")
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--cases",
        choices=["all", "taxii"],
        default="all",
        help="taxii: only the TAXII page of 100 and the TAXII by-id lookup (no null endpoint, no publish)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = Rows()
    rss: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.cases == "all":
            await null_cases(args.n, rows, folder)
        for size in sizes:
            print(f"medallion: {size} stored...", flush=True)
            proc, base = start_medallion(folder, size)
            try:
                post, page, one = medallion_calls(base, size)
                label = f"{size} stored"
                if args.cases == "all":
                    if size == 0:  # with a store, each request costs far more than any warm-up saves
                        await load(WARMUP, 1, post)
                    for clients, case in ((1, "sequential"), (16, "16 clients")):
                        result = await load(args.n, clients, post)
                        rows.append(("medallion", f"publish {case}, {label}", proc.pid, result))
                if size:
                    page_result = await load(max(50, args.n // 4), 1, page)
                    one_result = await load(args.n, 1, one)
                    if args.cases == "all":
                        # medallion has TAXII alone: our REST cases are compared with its TAXII
                        rows.append(("medallion", f"list 100, {label}", proc.pid, page_result))
                        rows.append(("medallion", f"read by id, {label}", proc.pid, one_result))
                    rows.append(("medallion", f"TAXII page 100, {label}", proc.pid, page_result))
                    rows.append(("medallion", f"TAXII by id, {label}", proc.pid, one_result))
                rss[f"medallion at {size}"] = rss_kb(proc.pid)
            finally:
                stop(proc)
        async with fresh_database(args.engine, folder, "peer") as url:
            await ours(folder, url, args.n, sizes, args.cases, rows, rss)
    order = {"null": 0, "medallion": 1, "ours": 2}
    rows.sort(key=lambda r: (r[1].split(", ")[-1].split()[0].zfill(9), r[1], order[r[0]]))
    append_results(_table(rows, rss, args.engine))


if __name__ == "__main__":
    asyncio.run(main())
