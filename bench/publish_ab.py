"""Interleaved A/B of publishing: this tree against another checkout (``--before``, e.g.
``git archive <rev> | tar -x -C /tmp/before``), on SQLite and PostgreSQL, with one and two
brokers, every server running throughout.

    .venv/bin/python -m bench.publish_ab --before /tmp/before [--rounds 8] [--seq 100] [--n 400]

Each side gets a SQLite database with one ``broker serve`` and a PostgreSQL database with two
(both checkouts must share the migration head). A round runs every case on both sides, in an
order that alternates between rounds: sequential publishes on SQLite and on PostgreSQL (one
broker), and from 16 clients on PostgreSQL to one broker and to both (request i to broker
i mod 2). Per case and side it prints the median over rounds of the rate and of the brokers'
CPU per publish (user and system time from /proc, summed over the side's PostgreSQL brokers:
on a shared machine it drifts far less than the wall clock), write transactions per publish
(from the brokers' ``/metrics``), and the ratios the targets of issue 20 are stated in, paired
round by round. A new connection per request, as ``bench.peer``. Not a test: nothing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bench.peer import WARMUP, load
from bench.procs import ROOT, broker_env, stop
from bench.scale import HOLD
from bench.taxii_ab import cpu_seconds, serve
from bench.throughput import BODY, bench_nodes, fresh_database
from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

CASES = ("sqlite sequential", "pg sequential", "pg 16 clients, 1 broker", "pg 16 clients, 2 brokers")


class Side:
    """One checkout's brokers: one on SQLite, two on one PostgreSQL database."""

    def __init__(self, name: str, tree: Path, folder: Path) -> None:
        self.name, self.tree, self.folder = name, tree, folder
        self.procs: dict[str, list[Any]] = {}
        self.bases: dict[str, list[str]] = {}
        self.tokens: dict[str, tuple[str, str]] = {}  # engine -> (publisher, auditor)

    async def start(self, stack: AsyncExitStack) -> None:
        for engine, count in (("sqlite", 1), ("postgres", 2)):
            folder = self.folder / f"{self.name}-{engine}"
            folder.mkdir()
            url = await stack.enter_async_context(fresh_database(engine, folder, f"ab_{self.name}"))
            env = broker_env(folder, url)
            self.tokens[engine] = await _seed(env)
            self.procs[engine], self.bases[engine] = [], []
            for i in range(count):
                proc, base = serve(self.tree, env, folder / f"broker-{i}.log")
                stack.callback(stop, proc)
                self.procs[engine].append(proc)
                self.bases[engine].append(base)

    def poster(self, engine: str, count: int) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[engine][0]}"}
        bases = self.bases[engine][:count]

        async def post(session: aiohttp.ClientSession, i: int) -> None:
            async with session.post(f"{bases[i % count]}/v1/reports", json=BODY, headers=headers) as r:
                assert r.status == 201, await r.text()

        return post

    def cpu(self, engine: str) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs[engine])

    async def transactions(self, engine: str) -> float:
        """Write transactions so far (``broker_write_lock_seconds``' count), summed over brokers."""
        total = 0.0
        headers = {"Authorization": f"Bearer {self.tokens[engine][1]}"}
        async with aiohttp.ClientSession() as session:
            for base in self.bases[engine]:
                async with session.get(f"{base}/metrics", headers=headers) as r:
                    total += sum(float(v) for kind, v in HOLD.findall(await r.text()) if kind == "count")
        return total


async def _seed(env: dict[str, str]) -> tuple[str, str]:
    """The publisher's token and an auditor's (for /metrics)."""
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await admin.seed_alliances(ctx, settings.alliances)
        publisher = (await bench_nodes(ctx))[0]
        spec = {"id": "aud", "nation": "BEL", "clearance": "SECRET", "roles": ["audit"]}
        return publisher, (await admin.add_node(ctx, spec, actor="bench"))["token"]
    finally:
        await ctx.close()


async def one_case(side: Side, case: str, seq: int, n: int) -> dict[str, float]:
    engine = "sqlite" if case.startswith("sqlite") else "postgres"
    count, clients = (2, 16) if "2 brokers" in case else (1, 16 if "16" in case else 1)
    total = n if clients > 1 else seq
    transactions = await side.transactions(engine)
    used = side.cpu(engine)
    result = await load(total, clients, side.poster(engine, count))
    cpu = side.cpu(engine) - used
    done = result["rate"] and total  # every request answered or the case timed out
    xact = (await side.transactions(engine) - transactions) / done
    return {"rate": result["rate"], "cpu_ms": cpu / done * 1000, "xact": xact}


async def rounds(
    sides: list[Side], n_rounds: int, seq: int, n: int
) -> dict[tuple[str, str], list[dict[str, float]]]:
    for side in sides:
        for engine, count in (("sqlite", 1), ("postgres", 2)):
            await load(WARMUP, 1, side.poster(engine, count))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for i in range(n_rounds):
        order = sides if i % 2 == 0 else list(reversed(sides))
        for case in CASES:
            for side in order:
                results.setdefault((side.name, case), []).append(await one_case(side, case, seq, n))
        print(f"  round {i + 1} of {n_rounds} done", flush=True)
    return results


def _spread(values: list[float], digits: int) -> str:
    """The median and the range of ``values``."""
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"


def _paired(above: list[dict[str, float]], below: list[dict[str, float]], key: str) -> str:
    return _spread([a[key] / b[key] for a, b in zip(above, below, strict=True)], 2)


def report(results: dict[tuple[str, str], list[dict[str, float]]], names: list[str]) -> None:
    med = statistics.median
    print(
        "\n| case | side | publishes/s, median (range) | broker CPU ms/publish | write transactions/publish |"
    )
    print("|---|---|---|---|---|")
    for case in CASES:
        for name in names:
            runs = results[(name, case)]
            rates = _spread([r["rate"] for r in runs], 0)
            print(
                f"| {case} | {name} | {rates} | {_spread([r['cpu_ms'] for r in runs], 2)} "
                f"| {med(r['xact'] for r in runs):.2f} |"
            )
    print("\n| side | PG/SQLite sequential rate | 2 brokers/1 broker CPU per publish |")
    print("|---|---|---|")
    for name in names:
        seq = _paired(results[(name, CASES[1])], results[(name, CASES[0])], "rate")
        cpu = _paired(results[(name, CASES[3])], results[(name, CASES[2])], "cpu_ms")
        print(f"| {name} | {seq} | {cpu} |")
    print("(ratios paired round by round: median and range)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seq", type=int, default=100, help="sequential publishes per case and round")
    parser.add_argument("--n", type=int, default=400, help="publishes from 16 clients per case and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sides = [Side("before", args.before.resolve(), folder), Side("after", ROOT, folder)]
        async with AsyncExitStack() as stack:
            for side in sides:
                await side.start(stack)
            results = await rounds(sides, args.rounds, args.seq, args.n)
        report(results, [s.name for s in sides])


if __name__ == "__main__":
    asyncio.run(main())
