"""Interleaved A/B of the TAXII page of 100 and the by-id lookup: this tree against another
checkout (``--before``, e.g. ``git archive <rev> | tar -x -C /tmp/before``), both as ``broker
serve`` on one database filled once (through this tree's publish path), in alternating rounds so
that the machine's drift falls on both alike.

    .venv/bin/python -m bench.taxii_ab --before /tmp/before [--stored 10000] [--rounds 10]
                                       [--engine sqlite|postgres]

The two checkouts must share the schema (the same migration head). One request at a time, a new
connection each, as bench.peer does. Prints the rate and p50 of each side per case, and the
after/before ratio of the medians over rounds. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.peer import STORED_BASE, TAXII, Call, fill_ours, indicator, load, spread
from bench.procs import ROOT, broker_env, free_port, rss_kb, stop, wait_for
from bench.throughput import BODY, bench_nodes, fresh_database
from broker.services import alliances, collections
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

PER_ROUND = 20  # requests per side, case and round
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far: on a shared machine, the server's
    own work per request drifts far less than the wall time does."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def serve(tree: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, env={**env, "PYTHONPATH": str(tree)}, cwd=tree, stdout=out, stderr=subprocess.STDOUT
        )
    wait_for(proc, port, f"broker from {tree}")
    return proc, f"http://127.0.0.1:{port}"


async def rounds(servers: dict[str, tuple[int, str]], sub: str, collection: str, stored: int, n: int) -> None:
    headers = {"Authorization": f"Bearer {sub}", "Accept": TAXII}

    def calls(base: str) -> dict[str, Call]:
        objects = f"{base}/taxii2/api/collections/{collection}/objects/"

        async def page(session: aiohttp.ClientSession, _i: int) -> None:
            async with session.get(objects, params={"limit": "100"}, headers=headers) as r:
                assert r.status == 200 and len((await r.json())["objects"]) == 100

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            wanted = indicator(STORED_BASE + spread(i, stored))["id"]
            async with session.get(f"{objects}{wanted}/", headers=headers) as r:
                assert r.status == 200, await r.text()

        return {"TAXII page 100": page, "TAXII by id": one}

    sides = {name: calls(base) for name, (_, base) in servers.items()}
    for side in sides.values():  # warm both: lazy imports, caches, the index state check
        await load(30, 1, side["TAXII page 100"])
    p50: dict[tuple[str, str], list[float]] = {}
    rate: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for i in range(n):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for case in ("TAXII page 100", "TAXII by id"):
            for name in order:
                used = cpu_seconds(servers[name][0])
                result = await load(PER_ROUND, 1, sides[name][case])
                cpu.setdefault((name, case), []).append(
                    (cpu_seconds(servers[name][0]) - used) / PER_ROUND * 1000
                )
                p50.setdefault((name, case), []).append(result["p50"])
                rate.setdefault((name, case), []).append(result["rate"])
    for case in ("TAXII page 100", "TAXII by id"):
        print(f"\n{case}, {stored} stored, {n} rounds of {PER_ROUND} requests per side:")
        for name in sides:
            r, p, c = rate[(name, case)], p50[(name, case)], cpu[(name, case)]
            print(
                f"  {name:6} rate median {statistics.median(r):7.1f}/s (min {min(r):.1f}, max {max(r):.1f}),"
                f" p50 median {statistics.median(p):6.2f} ms,"
                f" server CPU {statistics.median(c):6.2f} ms a request"
            )
        after, before = statistics.median(rate[("after", case)]), statistics.median(rate[("before", case)])
        wins = sum(a > b for a, b in zip(rate[("after", case)], rate[("before", case)], strict=True))
        print(f"  after/before {after / before:.2f}; after faster in {wins} of {n} rounds")
        used = statistics.median(cpu[("after", case)]) / statistics.median(cpu[("before", case)])
        print(f"  server CPU per request, after/before {used:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--stored", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with fresh_database(args.engine, folder, "taxii_ab") as url:
            env = broker_env(folder, url)
            settings = Settings.load(env=env)
            ctx = Context.open(settings)
            try:
                await db.upgrade(ctx.db.engine)
                await alliances.seed_alliances(ctx, settings.alliances)
                pub, sub = await bench_nodes(ctx)
                spec = {"title": "bench", "topics": BODY["topics"], "label": BODY["label"]}
                collection = (await collections.add_collection(ctx, spec, actor="bench"))["id"]
                await fill_ours(ctx, pub, args.stored)
            finally:
                await ctx.close()
            procs = {}
            try:
                for name, tree in (("before", args.before.resolve()), ("after", ROOT)):
                    procs[name] = serve(tree, env, folder / f"{name}.log")
                servers = {k: (proc.pid, base) for k, (proc, base) in procs.items()}
                await rounds(servers, sub, collection, args.stored, args.rounds)
                print(
                    "peak RSS (MB): "
                    + ", ".join(f"{k} {rss_kb(p.pid) / 1024:.0f}" for k, (p, _) in procs.items())
                )
            finally:
                for proc, _ in procs.values():
                    stop(proc)


if __name__ == "__main__":
    asyncio.run(main())
