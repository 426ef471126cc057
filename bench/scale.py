"""Scale-out on PostgreSQL against one instance and against SQLite, in one run, with the same load
client and the same peer as ``bench.peer``:

    .venv/bin/python -m bench.scale [--n 300] [--rounds 5] [--rate 10] [--seconds 20] [--listing 500]

- publish, sequential and 16 clients, new connection per request (as ``bench.peer``): medallion
  3.0.0 (memory backend), our broker on SQLite, on PostgreSQL with one instance, and with two
  instances on one database (request i goes to instance i mod 2). Every server runs throughout;
  each case runs in ``--rounds`` rounds of n/rounds requests per server, the servers taking
  turns, so that a drift in the machine's speed falls on all of them alike;
- the write lock each publish holds: every broker reports, in ``broker_write_lock_seconds`` on
  /metrics, how long each write transaction held the write lock (on PostgreSQL the ``log_head``
  row, from when its lock was granted through the commit; on SQLite the whole write
  transaction). Printed per publish (sum / publishes) and per transaction (sum / count);
- cross-instance delivery: a subscriber's websocket on instance B, reports published to
  instance A at ``--rate`` per second for ``--seconds``; publish-to-frame p50/p99/max (and the same
  on one instance, for reference);
- a listing of ``--listing`` reports for a node that receives them sealed (HPKE): its answer time
  and the write lock it held (its read events' group commit; it decides in a read transaction).

Every broker is ``broker serve`` in a process of its own on a fresh database. Appends its table
to bench/RESULTS.md. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.peer import WARMUP, load, medallion_calls, ratio, start_medallion
from bench.procs import broker_env, rss_kb, start_broker, stop
from bench.throughput import BODY, _commit, append_results, bench_nodes, fresh_database
from broker.crypto.keys import new_sealing_key, public_b64
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

Result = dict[str, float]
HOLD = re.compile(r"^broker_write_lock_seconds_(sum|count) (\S+)$", re.MULTILINE)
ACCEPTED = re.compile(
    r'^broker_audit_events_total\{action="publish",decision="allow",reason="accepted"\} (\S+)$', re.MULTILINE
)


class Brokers:
    """``count`` broker processes on one database, with the benchmark's nodes."""

    def __init__(self, folder: Path, url: str, count: int) -> None:
        self.folder, self.url, self.count = folder, url, count
        self.env = broker_env(folder, url)
        self.procs: list[Any] = []
        self.bases: list[str] = []
        self.tokens: dict[str, str] = {}

    async def __aenter__(self) -> Brokers:
        settings = Settings.load(env=self.env)
        ctx = Context.open(settings)
        try:
            await db.upgrade(ctx.db.engine)
            await alliances.seed_alliances(ctx, settings.alliances)
            self.tokens["pub"], self.tokens["sub"] = await bench_nodes(ctx)
            for node_id, nation, roles, keys in (
                ("aud", "BEL", ["audit"], {}),
                ("gbr", "GBR", ["subscribe"], {"x25519_public_key": public_b64(new_sealing_key())}),
            ):
                spec = {"id": node_id, "nation": nation, "clearance": "SECRET", "roles": roles, **keys}
                self.tokens[node_id] = (await admin.add_node(ctx, spec, actor="bench"))["token"]
        finally:
            await ctx.close()
        for i in range(self.count):
            folder = self.folder / f"broker-{i}"
            folder.mkdir(exist_ok=True)
            proc, base = start_broker(folder, self.env)
            self.procs.append(proc)
            self.bases.append(base)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            stop(proc)

    def poster(self) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens['pub']}"}

        async def post(session: aiohttp.ClientSession, i: int) -> None:
            async with session.post(
                f"{self.bases[i % self.count]}/v1/reports", json=BODY, headers=headers
            ) as r:
                assert r.status == 201, await r.text()

        return post

    async def hold(self) -> tuple[float, float, float]:
        """(seconds of write lock held, write transactions, publishes accepted), summed over the
        instances."""
        total, count, accepted = 0.0, 0.0, 0.0
        async with aiohttp.ClientSession() as session:
            for base in self.bases:
                async with session.get(
                    f"{base}/metrics", headers={"Authorization": f"Bearer {self.tokens['aud']}"}
                ) as r:
                    text = await r.text()
                for kind, value in HOLD.findall(text):
                    if kind == "sum":
                        total += float(value)
                    else:
                        count += float(value)
                accepted += sum(float(v) for v in ACCEPTED.findall(text))
        return total, count, accepted


Post = Any  # a bench.peer.Call


class Target:
    """One server under load: how to publish to it, and (brokers) how to read its lock metric."""

    def __init__(self, name: str, post: Post, brokers: Brokers | None = None) -> None:
        self.name, self.post, self.brokers = name, post, brokers
        self.latencies: list[float] = []
        self.seconds = 0.0
        self.rates: list[float] = []
        self.hold = [0.0, 0.0, 0.0]  # lock seconds, write transactions, publishes accepted

    async def chunk(self, n: int, clients: int) -> None:
        before = await self.brokers.hold() if self.brokers else None
        began = time.perf_counter()
        done = len(self.latencies)
        result = await load(n, clients, self.post, collect=self.latencies)
        self.seconds += time.perf_counter() - began
        self.rates.append(result["rate"])
        if before is not None and self.brokers is not None:
            after = await self.brokers.hold()
            for i, (a, b) in enumerate(zip(after, before, strict=True)):
                self.hold[i] += a - b
        assert len(self.latencies) > done, f"{self.name}: no request answered"

    def result(self) -> Result:
        ms = sorted(x * 1000 for x in self.latencies)
        r: Result = {
            "rate": len(ms) / self.seconds,
            "p50": statistics.median(ms),
            "p99": ms[max(0, int(len(ms) * 0.99) - 1)],
            "round_min": min(self.rates),
            "round_max": max(self.rates),
        }
        if self.brokers is not None:
            held, transactions, accepted = self.hold
            r["hold_per_publish_ms"] = held / accepted * 1000 if accepted else 0.0
            r["hold_per_tx_ms"] = held / transactions * 1000 if transactions else 0.0
            r["publishes_per_tx"] = accepted / transactions if transactions else 0.0
        return r


async def publishes(
    targets: Sequence[Target], n: int, rounds: int, rows: list[tuple[str, str, Result]]
) -> None:
    """Each case in ``rounds`` rounds of n/rounds requests per server, the servers taking turns
    (in a rotated order each round): a drift in the machine's speed (other work, CPU steal on a
    shared host) then falls on every server alike instead of on whichever ran at the time."""
    for target in targets:
        await load(WARMUP, 1, target.post)
    for clients, case in ((1, "sequential"), (16, "16 clients")):
        fresh = [Target(t.name, t.post, t.brokers) for t in targets]
        for r in range(rounds):
            for target in fresh[r % len(fresh) :] + fresh[: r % len(fresh)]:
                await target.chunk(max(1, n // rounds), clients)
        for target in fresh:
            result = target.result()
            rows.append((target.name, f"publish {case}", result))
            _print(target.name, f"publish {case}", result)


async def cross_instance(brokers: Brokers, rate: float, seconds: float, *, across: bool) -> Result:
    """Publish on instance 0 at ``rate``/s; the subscriber listens on instance 1 (or 0)."""
    listen = brokers.bases[1 if across else 0].replace("http://", "ws://")
    sent: dict[str, float] = {}
    # By report id, when its frame arrived: a frame may come before the publish's own answer
    # has been read (then its id is not in ``sent`` yet), so latencies are taken at the end.
    arrived: dict[str, float] = {}
    count = int(rate * seconds)
    headers = {"Authorization": f"Bearer {brokers.tokens['pub']}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{brokers.bases[0]}/v1/reports", json=BODY, headers=headers) as r:
            head = (await r.json())["sequence"]  # the stream starts after it: no replay
        ws = await session.ws_connect(
            f"{listen}/v1/stream?after={head}", headers={"Authorization": f"Bearer {brokers.tokens['sub']}"}
        )
        await asyncio.sleep(0.5)  # the stream is live

        async def receive() -> None:
            while len(arrived) < count:
                message = await ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    return
                frame = json.loads(message.data)
                if frame.get("type") == "report":
                    arrived.setdefault(frame["report"]["id"], time.perf_counter())

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            began = time.perf_counter()
            async with session.post(f"{brokers.bases[0]}/v1/reports", json=BODY, headers=headers) as r:
                receipt = await r.json()
            sent[receipt["id"]] = began
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver, timeout=10)
        await ws.close()
    latencies = sorted(arrived[i] - began for i, began in sent.items() if i in arrived)
    ms = [x * 1000 for x in latencies]
    return {
        "received": float(len(ms)),
        "sent": float(count),
        "p50": statistics.median(ms) if ms else float("nan"),
        "p99": ms[max(0, int(len(ms) * 0.99) - 1)] if ms else float("nan"),
        "max": ms[-1] if ms else float("nan"),
    }


async def listing(brokers: Brokers, size: int) -> Result:
    """Fill ``size`` reports, then list them in one page for the sealing node (gbr)."""
    post = brokers.poster()
    await load(size, 8, post)
    async with aiohttp.ClientSession() as session:
        before = await brokers.hold()
        began = time.perf_counter()
        async with session.get(
            f"{brokers.bases[0]}/v1/reports",
            params={"after": "0", "limit": str(size)},
            headers={"Authorization": f"Bearer {brokers.tokens['gbr']}"},
        ) as r:
            page = await r.json()
        took = time.perf_counter() - began
        after = await brokers.hold()
    return {
        "reports": float(len(page.get("reports", []))),
        "answer_ms": took * 1000,
        "hold_ms": (after[0] - before[0]) * 1000,
        "transactions": after[1] - before[1],
    }


def _print(name: str, case: str, r: Result) -> None:
    extra = ""
    if "hold_per_publish_ms" in r:
        extra = (
            f" lock/publish {r['hold_per_publish_ms']:.3f} ms, lock/tx {r['hold_per_tx_ms']:.3f} ms,"
            f" {r['publishes_per_tx']:.1f} publishes/tx"
        )
    spread = f" (rounds {r['round_min']:.0f}-{r['round_max']:.0f}/s)" if "round_min" in r else ""
    rate = f"{r['rate']:8.1f}/s{spread}"
    print(f"  {name:26} {case:22} {rate} p50 {r['p50']:7.2f} ms p99 {r['p99']:7.2f} ms{extra}", flush=True)


def _table(
    rows: Sequence[tuple[str, str, Result]],
    latency: dict[str, Result],
    listings: dict[str, Result],
    rss: dict[str, int],
    load_average: str,
    rounds: int,
) -> str:
    peer = {case: r for name, case, r in rows if name == "medallion"}
    sqlite = {case: r for name, case, r in rows if name == "ours, SQLite"}
    lines = [
        f"## scale-out, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.uname().nodename}, "
        f"{os.cpu_count()} cores, commit {_commit()}, load average before {load_average}",
        "",
        "New connection per request; same report per request. Two instances: requests alternate.",
        f"Each case in {rounds} rounds, the servers taking turns; req/s over all rounds, and the slowest",
        "and fastest round's.",
        "Write lock: what `broker_write_lock_seconds` summed over the run, per publish and per transaction.",
        "",
        "| server | case | req/s | rounds req/s | p50 ms | p99 ms | /medallion | /SQLite | lock ms/publish "
        "| lock ms/tx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case, r in rows:
        vs_peer = ratio(r, peer.get(case)) if name != "medallion" else ""
        vs_sqlite = ratio(r, sqlite.get(case)) if name.startswith("ours, PostgreSQL") else ""
        hold = f"{r['hold_per_publish_ms']:.3f}" if "hold_per_publish_ms" in r else ""
        per_tx = f"{r['hold_per_tx_ms']:.3f}" if "hold_per_tx_ms" in r else ""
        lines.append(
            f"| {name} | {case} | {r['rate']:.0f} | {r['round_min']:.0f} to {r['round_max']:.0f} "
            f"| {r['p50']:.2f} | {r['p99']:.2f} "
            f"| {vs_peer} | {vs_sqlite} | {hold} | {per_tx} |"
        )
    lines += ["", "| publish-to-frame | received/sent | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for name, r in latency.items():
        lines.append(
            f"| {name} | {r['received']:.0f}/{r['sent']:.0f} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |"
        )
    lines += [
        "",
        "| sealed listing | reports | answer ms | write lock held ms | write transactions |",
        "|---|---|---|---|---|",
    ]
    for name, r in listings.items():
        lines.append(
            f"| {name} | {r['reports']:.0f} | {r['answer_ms']:.1f} "
            f"| {r['hold_ms']:.2f} | {r['transactions']:.0f} |"
        )
    lines += ["", "Peak RSS (MB): " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in rss.items())]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--listing", type=int, default=500)
    args = parser.parse_args()
    load_average = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[tuple[str, str, Result]] = []
    latency: dict[str, Result] = {}
    listings: dict[str, Result] = {}
    rss: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            proc, base = start_medallion(folder, 0)
            stack.callback(stop, proc)
            targets = [Target("medallion", medallion_calls(base)[0])]
            setups: dict[str, Brokers] = {}
            for engine, count in (("sqlite", 1), ("postgres", 1), ("postgres", 2)):
                name = "ours, SQLite" if engine == "sqlite" else f"ours, PostgreSQL x{count}"
                sub = folder / f"{engine}-{count}"
                sub.mkdir()
                url = await stack.enter_async_context(fresh_database(engine, sub, f"scale{count}"))
                setups[name] = await stack.enter_async_context(Brokers(sub, url, count))
                targets.append(Target(name, setups[name].poster(), setups[name]))
            print(f"publishing: {args.n} per case and server, in {args.rounds} rounds", flush=True)
            await publishes(targets, args.n, args.rounds, rows)
            rss["medallion"] = rss_kb(proc.pid)
            two = setups["ours, PostgreSQL x2"]
            for across in (False, True):
                where = "across instances" if across else "same instance"
                key = f"PostgreSQL, {where}, {args.rate:g}/s"
                latency[key] = await cross_instance(two, args.rate, args.seconds, across=across)
                print(f"  {key}: {latency[key]}", flush=True)
            key = f"SQLite, one instance, {args.rate:g}/s"
            latency[key] = await cross_instance(setups["ours, SQLite"], args.rate, args.seconds, across=False)
            print(f"  {key}: {latency[key]}", flush=True)
            for name in ("ours, SQLite", "ours, PostgreSQL x1"):
                listings[name] = await listing(setups[name], args.listing)
                print(f"  listing, {name}: {listings[name]}", flush=True)
            for name, brokers in setups.items():
                for i, broker in enumerate(brokers.procs):
                    rss[f"{name} #{i}"] = rss_kb(broker.pid)
    append_results(_table(rows, latency, listings, rss, load_average, args.rounds))


if __name__ == "__main__":
    asyncio.run(main())
