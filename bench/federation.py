"""Federation: publish-to-frame latency and throughput across one hop and two hops.

Three `broker serve` processes (usa, nato, fra), each with its own database and keyring, linked
over mutual TLS with certificates from the development PKI: nato pulls from usa, fra pulls from
nato. A USA node publishes SECRET REL NATO reports at usa; a node at nato (one hop) and a node at
fra (two hops) stream them. Latency: ``--n`` reports at ``--rate`` per second, from just before
the publish request to the frame's arrival at each subscriber (p50, p99). Throughput: ``--burst``
reports from 16 publishers at once; reports/s from the first publish to the last arrival.

    .venv/bin/python -m bench.federation [--engine sqlite|postgres] [--n 200] [--rate 20] [--burst 400]

Not a test: nothing is asserted. Results are appended to bench/RESULTS.md. About a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.throughput import append_results, fresh_database
from broker.client import BrokerClient
from broker.crypto.keys import new_signing_key, public_b64
from broker.services import admin
from broker.services.context import Context
from tests.integration.federation import BrokerProcess, add_link, add_peer, make_pki

LABEL = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
LIMITS = (
    ("publish_rate_per_second = 200", "publish_rate_per_second = 1000000"),
    (
        "publish_burst = 400",
        "publish_burst = 1000000",
    ),
)


async def _setup(folder: Path, engine: str, stack: contextlib.AsyncExitStack) -> dict[str, Any]:
    found = make_pki(folder / "pki")
    brokers = {}
    for name in ("usa", "nato", "fra"):
        url = await stack.enter_async_context(fresh_database(engine, folder, f"fed_{name}"))
        broker = BrokerProcess(name, folder / name, url, found)
        broker.prepare()
        toml = broker.folder / "config" / "broker.toml"
        text = toml.read_text()
        for old, new in LIMITS:
            text = text.replace(old, new)
        toml.write_text(text)
        upgrade = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "db", "upgrade", env=broker.env, stdout=asyncio.subprocess.DEVNULL
        )
        assert await upgrade.wait() == 0, f"db upgrade failed for {name}"
        brokers[name] = broker
    key, tokens = new_signing_key(), {}

    async def node(broker: str, spec: dict[str, Any]) -> None:
        ctx = Context.open(brokers[broker].settings())
        try:
            tokens[spec["id"]] = (await admin.add_node(ctx, spec, actor="bench"))["token"]
        finally:
            await ctx.close()

    usa_spec = {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}
    await node("usa", {**usa_spec, "ed25519_public_key": public_b64(key)})
    await node("nato", {"id": "nato-1", "nation": "BEL", "clearance": "SECRET", "roles": ["subscribe"]})
    await node("fra", {"id": "fra-1", "nation": "FRA", "clearance": "SECRET", "roles": ["subscribe"]})
    links = {}
    for at, link, nation, audience in (
        ("usa", "nato-link", "BEL", "NATO"),
        ("nato", "fra-link", "FRA", "FRA"),
    ):
        ctx = Context.open(brokers[at].settings())
        try:
            links[at] = await add_link(ctx, found, link, nation=nation, audience=[audience], origins=["USA"])
        finally:
            await ctx.close()
    for broker in brokers.values():
        broker.start()
        stack.callback(broker.stop)
    await asyncio.gather(*(b.healthy() for b in brokers.values()))
    for at, upstream in (("nato", "usa"), ("fra", "nato")):
        ctx = Context.open(brokers[at].settings())
        try:
            await add_peer(ctx, found, brokers[upstream], links[upstream], ["USA"])
        finally:
            await ctx.close()
    tls = ssl.create_default_context(cafile=str(found.ca))
    return {"brokers": brokers, "tokens": tokens, "key": key, "tls": tls}


@contextlib.asynccontextmanager
async def _arrivals(env: dict[str, Any], broker: str, node: str) -> AsyncIterator[dict[str, float]]:
    seen: dict[str, float] = {}
    async with BrokerClient(env["brokers"][broker].url, env["tokens"][node], tls=env["tls"]) as client:

        async def consume() -> None:
            async for received in client.stream(name="bench", after=0):
                seen[received.id] = time.perf_counter()

        task = asyncio.create_task(consume())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until(seen: dict[str, float], ids: list[str], seconds: float) -> None:
    """Poll (a benchmark measures arrivals, it does not wait on them) until every id is seen."""
    deadline = time.perf_counter() + seconds
    while any(i not in seen for i in ids) and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000 if ordered else float("nan")


def _row(path: str, sent: int, latencies: list[float], rate: float) -> str:
    p50, p99 = _pct(latencies, 0.5), _pct(latencies, 0.99)
    return f"| {path} | {sent} | {len(latencies)} | {p50:.1f} | {p99:.1f} | {rate:.0f} |"


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            env = await _setup(Path(tmp), args.engine, stack)
            usa = await stack.enter_async_context(
                BrokerClient(
                    env["brokers"]["usa"].url, env["tokens"]["usa-1"], tls=env["tls"], signing_key=env["key"]
                )
            )
            one = await stack.enter_async_context(_arrivals(env, "nato", "nato-1"))
            two = await stack.enter_async_context(_arrivals(env, "fra", "fra-1"))
            # Steady state: the pullers find their new peers on their next scan, and the first
            # reports wait for the links to come up; warm-up reports, not counted, cover that.
            warm = [
                str((await usa.publish(label=LABEL, payload={"warm": n}, topics=["bench"]))["id"])
                for n in range(5)
            ]
            await _until(two, warm, 60)
            sent: dict[str, float] = {}
            for n in range(args.n):
                start = time.perf_counter()
                receipt = await usa.publish(label=LABEL, payload={"n": n}, topics=["bench"])
                sent[str(receipt["id"])] = start
                await asyncio.sleep(max(0.0, start + 1 / args.rate - time.perf_counter()))
            await _until(two, list(sent), 60)
            lat1 = [one[i] - t for i, t in sent.items() if i in one]
            lat2 = [two[i] - t for i, t in sent.items() if i in two]
            burst: list[str] = []
            first = time.perf_counter()

            async def publisher(k: int) -> None:
                for n in range(args.burst // 16):
                    receipt = await usa.publish(label=LABEL, payload={"k": k, "n": n}, topics=["bench"])
                    burst.append(str(receipt["id"]))

            await asyncio.gather(*(publisher(k) for k in range(16)))
            published = time.perf_counter()
            await _until(two, burst, 120)
            rate1 = len(burst) / (max(one[i] for i in burst if i in one) - first)
            rate2 = len(burst) / (max(two[i] for i in burst if i in two) - first)
            lines = [
                f"### bench.federation ({args.engine}, {time.strftime('%Y-%m-%d')})",
                "",
                "| path | reports | received | p50 ms | p99 ms | burst reports/s |",
                "|---|---|---|---|---|---|",
                _row("usa → nato (1 hop)", len(sent), lat1, rate1),
                _row("usa → nato → fra (2 hops)", len(sent), lat2, rate2),
                "",
                f"Latency at {args.rate} reports/s, after 5 warm-up reports reached fra; "
                f"burst: {len(burst)} reports from 16 publishers, "
                f"published at {len(burst) / (published - first):.0f}/s. Mean 2-hop latency "
                f"{statistics.fmean(lat2) * 1000 if lat2 else float('nan'):.1f} ms.",
            ]
            append_results("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=400)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
