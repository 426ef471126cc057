"""A soak: does the broker's memory plateau at its configured bounds under steady traffic?

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 150] [--publishers 4] [--subscribers 20]
        [--engine sqlite|postgres] [--sample 10] [--print-only]

``broker serve`` in a process of its own on a fresh database. ``--publishers`` nodes publish
``--rate`` reports a second between them (paced, each with its own connection); ``--subscribers``
nodes each hold a stream and ack every frame. Every ``--sample`` seconds: the broker's resident
memory (RSS, from /proc) and what it reports of its stream feed window
(``broker_stream_feed_bytes`` on /metrics, where the build has it). At the end: every subscriber
must have received every report once, in order (checked from the sequences), and the table gives
the RSS curve, the first and last third's maxima and the feed window's. Appends its table to
bench/RESULTS.md. Not a test: nothing is asserted; every loop stops by itself at ``--minutes``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import broker_env, rss_kb, start_broker, stop
from bench.throughput import _commit, append_results, fresh_database
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

REPORT = {
    "label": {"classification": "UNCLASSIFIED", "releasable_to": ["NATO"], "caveats": []},
    "topics": ["soak"],
}
FEED_METRIC = re.compile(r"^broker_stream_feed_bytes\s+([0-9.e+]+)$", re.M)
TIMEOUT = aiohttp.ClientTimeout(total=30)


async def _prepare(
    env: dict[str, str], publishers: int, subscribers: int
) -> tuple[list[str], list[str], str]:
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)

        async def add(node_id: str, role: str) -> str:
            spec = {"id": node_id, "nation": "GBR", "clearance": "SECRET", "roles": [role]}
            return str((await admin.add_node(ctx, spec, actor="bench"))["token"])

        pubs = [await add(f"pub-{i}", "publish") for i in range(publishers)]
        subs = [await add(f"sub-{i}", "subscribe") for i in range(subscribers)]
        return pubs, subs, await add("auditor", "audit")  # /metrics needs the audit role
    finally:
        await ctx.close()


async def _publisher(base: str, token: str, rate: float, until: float, sent: list[int]) -> None:
    interval = 1 / rate
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        due = time.monotonic()
        i = 0
        while time.monotonic() < until:
            due += interval
            async with session.post(
                f"{base}/v1/reports",
                json={**REPORT, "payload": {"n": i, "pad": "x" * 512}},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                if r.status == 201:
                    sent.append((await r.json())["sequence"])
            i += 1
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def _subscriber(base: str, token: str, until: float, got: list[int], closes: list[int | None]) -> None:
    ws_url = base.replace("http", "ws") + "/v1/stream?after=0"
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.ws_connect(ws_url, headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        while time.monotonic() < until:
            try:
                async with asyncio.timeout(max(0.1, until - time.monotonic())):
                    message = await ws.receive()
            except TimeoutError:
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                closes.append(ws.close_code)
                return
            frame = message.json()
            if frame["type"] == "report":
                sequence = frame["report"]["sequence"]
                got.append(sequence)
                await ws.send_json({"type": "ack", "sequence": sequence})


async def _feed_bytes(session: aiohttp.ClientSession, base: str, token: str) -> float | None:
    try:
        async with session.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
            found = FEED_METRIC.search(await r.text())
    except aiohttp.ClientError:
        return None
    return float(found.group(1)) if found else None


async def soak(args: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with fresh_database(args.engine, folder, "soak") as url:
            env = broker_env(folder, url)
            pubs, subs, auditor = await _prepare(env, args.publishers, args.subscribers)
            proc, base = start_broker(folder, env)
            try:
                start = time.monotonic()
                until = start + args.minutes * 60
                sent: list[int] = []
                received: list[list[int]] = [[] for _ in subs]
                closes: list[int | None] = []
                tasks = [
                    asyncio.create_task(_subscriber(base, token, until, got, closes))
                    for token, got in zip(subs, received, strict=True)
                ]
                await asyncio.sleep(1)  # streams open before the first report
                tasks += [
                    asyncio.create_task(_publisher(base, token, args.rate / len(pubs), until, sent))
                    for token in pubs
                ]
                samples: list[tuple[float, int, float | None]] = []
                async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                    while time.monotonic() < until:
                        await asyncio.sleep(args.sample)
                        sample = (
                            time.monotonic() - start,
                            rss_kb(proc.pid),
                            await _feed_bytes(session, base, auditor),
                        )
                        samples.append(sample)
                        feed = "n/a" if sample[2] is None else f"{sample[2] / 2**20:.1f} MiB"
                        print(
                            f"  {sample[0]:7.0f} s  rss {sample[1] / 1024:7.1f} MiB  feed {feed}  "
                            f"reports {len(sent)}",
                            flush=True,
                        )
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                stop(proc)
    published = set(sent)

    def whole(got: list[int]) -> bool:
        """Strictly increasing (no duplicate, in order) and no gap: every report published up to
        the last one received (a subscriber may lag at the end)."""
        last = got[-1] if got else 0
        ordered = all(a < b for a, b in itertools.pairwise(got))
        return ordered and set(got) == {seq for seq in published if seq <= last}

    complete = sum(1 for got in received if whole(got))
    duplicates = sum(len(got) - len(set(got)) for got in received)
    return {
        "samples": samples,
        "sent": len(sent),
        "deliveries": sum(len(got) for got in received),
        "in_order": complete,
        "duplicates": duplicates,
        "closes": closes,
    }


def _table(result: dict[str, Any], args: Any) -> str:
    samples = result["samples"]
    third = max(1, len(samples) // 3)
    first = max(s[1] for s in samples[:third]) / 1024 if samples else float("nan")
    last = max(s[1] for s in samples[-third:]) / 1024 if samples else float("nan")
    feeds = [s[2] for s in samples if s[2] is not None]
    lines = [
        f"## soak: {args.minutes} min, {args.rate} reports/s from {args.publishers} publishers, "
        f"{args.subscribers} subscribers acking, {args.engine}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.uname().nodename}, "
        f"{os.cpu_count()} cores, commit {_commit()}",
        "",
        f"Reports {result['sent']}, deliveries {result['deliveries']}, subscribers with every report "
        f"once, in order, no gap {result['in_order']} of {args.subscribers}, "
        f"duplicates {result['duplicates']}, streams closed early {result['closes'] or 'none'}.",
        f"RSS max in the first third {first:.1f} MiB, in the last third {last:.1f} MiB; feed window "
        f"max {max(feeds) / 2**20:.1f} MiB"
        if feeds
        else "feed window: not reported by this build",
        "",
        "| seconds | RSS MiB | feed window MiB |",
        "|---|---|---|",
    ]
    step = max(1, len(samples) // 30)
    for at, rss, feed in samples[::step]:
        lines.append(f"| {at:.0f} | {rss / 1024:.1f} | {'n/a' if feed is None else f'{feed / 2**20:.1f}'} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=150)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--sample", type=float, default=10)
    parser.add_argument("--print-only", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    result = await soak(args)
    table = _table(result, args)
    if args.print_only:
        print(table)
    else:
        append_results(table)


if __name__ == "__main__":
    asyncio.run(main())
