"""Interleaved A/B of publishing: this tree against another checkout (``--before``, e.g.
``git archive <rev> | tar -x -C /tmp/before``), on SQLite and PostgreSQL, with one and two
brokers, every server running throughout.

    .venv/bin/python -m bench.publish_ab --before /tmp/before [--rounds 8] [--seq 200] [--n 800]

Each side gets a SQLite database with one ``broker serve``, a PostgreSQL database with two, and
a second PostgreSQL database with one more (both checkouts must share the migration head). A
round runs every case on both sides, in an order that alternates between rounds: sequential
publishes and publishes from 16 clients on SQLite, sequential publishes on PostgreSQL (one
broker), and from 16 clients on PostgreSQL to one
broker, to two on one database (request i to broker i mod 2) and, as controls, to two brokers on
two databases (processes that share nothing: what they cost beyond one broker is the load's
split over two processes on the same cores, not work one adds for the other) and from 8 clients
to one broker (the concurrency each of two brokers sees at 16).

Per case and side it prints the median over rounds of the rate, of the CPU the brokers used per
publish (user and system time from /proc, summed over the brokers of the case: on a shared
machine it drifts far less than the wall clock) and of the write transactions per publish (from
the brokers' ``/metrics``), then the ratios the targets of issue 20 are stated in, paired round
by round. A new connection per request, as ``bench.peer``. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.peer import WARMUP, load
from bench.procs import ROOT, broker_env, stop
from bench.scale import HOLD
from bench.taxii_ab import cpu_seconds, serve
from bench.throughput import BODY, bench_nodes, fresh_database
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

# Each case: the brokers it publishes to (request i to the i mod n-th) and how many clients.
CASES = {
    "sqlite sequential": (("sqlite",), 1),
    "sqlite 16 clients": (("sqlite",), 16),
    "pg sequential": (("pg0",), 1),
    "pg 16 clients, 1 broker": (("pg0",), 16),
    "pg 8 clients, 1 broker": (("pg0",), 8),
    "pg 16 clients, 2 brokers": (("pg0", "pg1"), 16),
    "pg 16 clients, 2 brokers, 2 databases": (("pg0", "apart"), 16),
}
# Databases of a side and the brokers serving each.
DATABASES = (("sqlite", ("sqlite",)), ("postgres", ("pg0", "pg1")), ("postgres", ("apart",)))


@dataclass
class Broker:
    proc: Any
    base: str
    publisher: str  # tokens on its database
    auditor: str


class Side:
    """One checkout's brokers: one on SQLite, two on one PostgreSQL database and, as a control
    (two processes that share nothing), one on a second PostgreSQL database."""

    def __init__(self, name: str, tree: Path, folder: Path) -> None:
        self.name, self.tree, self.folder = name, tree, folder
        self.brokers: dict[str, Broker] = {}

    async def start(self, stack: AsyncExitStack) -> None:
        for engine, names in DATABASES:
            folder = self.folder / f"{self.name}-{names[0]}"
            folder.mkdir()
            url = await stack.enter_async_context(fresh_database(engine, folder, f"ab_{self.name}"))
            env = broker_env(folder, url)
            publisher, auditor = await _seed(env)
            for name in names:
                proc, base = serve(self.tree, env, folder / f"{name}.log")
                stack.callback(stop, proc)
                self.brokers[name] = Broker(proc, base, publisher, auditor)

    def poster(self, names: Sequence[str]) -> Any:
        targets = [self.brokers[name] for name in names]

        async def post(session: aiohttp.ClientSession, i: int) -> None:
            broker = targets[i % len(targets)]
            headers = {"Authorization": f"Bearer {broker.publisher}"}
            async with session.post(f"{broker.base}/v1/reports", json=BODY, headers=headers) as r:
                assert r.status == 201, await r.text()

        return post

    def cpu(self, names: Sequence[str]) -> float:
        return sum(cpu_seconds(self.brokers[name].proc.pid) for name in names)

    async def transactions(self, names: Sequence[str]) -> float:
        """Write transactions so far (``broker_write_lock_seconds``' count), summed over brokers."""
        total = 0.0
        async with aiohttp.ClientSession() as session:
            for broker in (self.brokers[name] for name in names):
                headers = {"Authorization": f"Bearer {broker.auditor}"}
                async with session.get(f"{broker.base}/metrics", headers=headers) as r:
                    total += sum(float(v) for kind, v in HOLD.findall(await r.text()) if kind == "count")
        return total


async def _seed(env: dict[str, str]) -> tuple[str, str]:
    """The publisher's token and an auditor's (for /metrics)."""
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        publisher = (await bench_nodes(ctx))[0]
        spec = {"id": "aud", "nation": "BEL", "clearance": "SECRET", "roles": ["audit"]}
        return publisher, (await admin.add_node(ctx, spec, actor="bench"))["token"]
    finally:
        await ctx.close()


async def one_case(side: Side, case: str, seq: int, n: int) -> dict[str, float]:
    names, clients = CASES[case]
    total = n * clients // 16 if clients > 1 else seq
    transactions = await side.transactions(names)
    used = side.cpu(names)
    result = await load(total, clients, side.poster(names))
    cpu = side.cpu(names) - used
    done = result["rate"] and total  # every request answered or the case timed out
    xact = (await side.transactions(names) - transactions) / done
    return {"rate": result["rate"], "cpu_ms": cpu / done * 1000, "xact": xact}


async def rounds(
    sides: list[Side], cases: Sequence[str], n_rounds: int, seq: int, n: int
) -> dict[tuple[str, str], list[dict[str, float]]]:
    for side in sides:
        for name in side.brokers:
            await load(WARMUP, 1, side.poster([name]))
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for i in range(n_rounds):
        order = sides if i % 2 == 0 else list(reversed(sides))
        for case in cases:
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


def report(
    results: dict[tuple[str, str], list[dict[str, float]]], names: list[str], cases: Sequence[str]
) -> None:
    med = statistics.median
    print(
        "\n| case | side | publishes/s, median (range) | broker CPU ms/publish | write transactions/publish |"
    )
    print("|---|---|---|---|---|")
    for case in cases:
        for name in names:
            runs = results[(name, case)]
            rates = _spread([r["rate"] for r in runs], 0)
            print(
                f"| {case} | {name} | {rates} | {_spread([r['cpu_ms'] for r in runs], 2)} "
                f"| {med(r['xact'] for r in runs):.2f} |"
            )
    columns = ["PG/SQLite sequential rate"]
    if "pg 16 clients, 1 broker" in cases:
        columns += [
            "CPU per publish, 2 brokers / 1 broker",
            "the same, 2 brokers on 2 databases",
            "the same, 1 broker at 8 clients",
        ]
    print(f"\n| side | {' | '.join(columns)} |")
    print("|---" * (len(columns) + 1) + "|")
    for name in names:
        seq = _paired(results[(name, "pg sequential")], results[(name, "sqlite sequential")], "rate")
        ratios = [seq]
        if (name, "pg 16 clients, 1 broker") in results:
            one = results[(name, "pg 16 clients, 1 broker")]
            for case in (
                "pg 16 clients, 2 brokers",
                "pg 16 clients, 2 brokers, 2 databases",
                "pg 8 clients, 1 broker",
            ):
                ratios.append(_paired(results[(name, case)], one, "cpu_ms"))
        print(f"| {name} | {' | '.join(ratios)} |")
    print("(ratios paired round by round: median and range)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seq", type=int, default=200, help="sequential publishes per case and round")
    parser.add_argument("--sequential", action="store_true", help="only the two sequential cases")
    parser.add_argument("--n", type=int, default=800, help="publishes from 16 clients per case and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sides = [Side("before", args.before.resolve(), folder), Side("after", ROOT, folder)]
        async with AsyncExitStack() as stack:
            for side in sides:
                await side.start(stack)
            cases = [c for c in CASES if "sequential" in c or not args.sequential]
            results = await rounds(sides, cases, args.rounds, args.seq, args.n)
        report(results, [s.name for s in sides], cases)


if __name__ == "__main__":
    asyncio.run(main())
