"""Fan-out over websockets: deliveries/s and publish->receive latency at 1, 10, 100 subscribers,
with and without HPKE sealing, beside the raw seal rate measured in the same run.

    .venv/bin/python -m bench.fanout [--engine sqlite|postgres] [--reports 50] [--subscribers 1,10,100]

The broker runs as ``broker serve`` in a process of its own on a loopback port with a fresh
database; publisher and subscribers run in this one. Subscribers are raw websocket clients (they
do not open sealed payloads: that cost is the recipient's). Each report carries an id chosen
before it is sent, and latency runs from that moment to the moment a subscriber has the frame.
Not a test: nothing is asserted. Results are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import broker_env, start_broker, stop
from bench.throughput import BODY, _commit, append_results, fresh_database
from broker.crypto import seal
from broker.crypto.keys import new_sealing_key, public_b64
from broker.domain.canonical import canonical
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db


def raw_seal_rate(seconds: float = 2.0) -> float:
    """Seals per second of one report payload to one recipient, the way delivery seals it."""
    key = public_b64(new_sealing_key())
    plaintext, label = canonical(BODY["payload"]), canonical(BODY["label"])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        seal.seal(plaintext=plaintext, recipient_public_key_b64=key, report_id="r", canonical_label=label)
        count += 1
    return count / (time.perf_counter() - start)


async def _subscriber(
    url: str,
    token: str,
    expected: int,
    sent: dict[str, float],
    latencies: list[float],
    ready: asyncio.Event,
    done: list[float],
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}, max_msg_size=0) as ws,
    ):
        ready.set()
        got = 0
        async for message in ws:
            frame = json.loads(message.data)
            if frame["type"] != "report":
                continue
            now = time.perf_counter()
            latencies.append(now - sent[frame["report"]["id"]])
            got += 1
            if got == expected:
                done.append(now)
                return


async def run_case(
    folder: Path, env: dict[str, str], subscribers: int, reports: int, sealed: bool, pace: float = 0.0
) -> dict[str, float]:
    """Publish ``reports`` one after another (at most ``pace`` a second when pace > 0; as fast
    as the broker answers otherwise) and time their arrival at every subscriber."""
    ctx = Context.open(Settings.load(env=env))
    tokens = []
    tag = secrets.token_hex(3)
    for i in range(subscribers):
        spec: dict[str, Any] = {
            "id": f"sub-{tag}-{i}",
            "nation": "GBR",
            "clearance": "SECRET",
            "roles": ["subscribe"],
        }
        if sealed:
            spec["x25519_public_key"] = public_b64(new_sealing_key())
        tokens.append((await admin.add_node(ctx, spec, actor="bench"))["token"])
    publisher = (
        await admin.add_node(
            ctx,
            {"id": f"pub-{tag}", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]},
            actor="bench",
        )
    )["token"]
    async with ctx.db.transaction() as tx:
        start_seq, _, _ = await tx.head_state()
    await ctx.close()
    proc, base = start_broker(folder, env)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done: list[float] = []
    try:
        readies = [asyncio.Event() for _ in tokens]
        url = f"{base}/v1/stream?after={start_seq}&topics=bench-{tag}"
        subs = [
            asyncio.create_task(_subscriber(url, t, reports, sent, latencies, r, done))
            for t, r in zip(tokens, readies, strict=True)
        ]
        await asyncio.gather(*(r.wait() for r in readies))
        await asyncio.sleep(0.3)
        start = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            for i in range(reports):
                if pace:
                    await asyncio.sleep(max(0.0, start + i / pace - time.perf_counter()))
                report_id = str(uuid.uuid4())
                body = {**BODY, "id": report_id, "topics": [f"bench-{tag}"]}
                sent[report_id] = time.perf_counter()
                async with session.post(
                    f"{base}/v1/reports", json=body, headers={"Authorization": f"Bearer {publisher}"}
                ) as resp:
                    assert resp.status == 201, await resp.text()
        await asyncio.wait_for(asyncio.gather(*subs), timeout=600)
        elapsed = max(done) - start
    finally:
        stop(proc)
    latencies.sort()
    return {
        "deliveries_per_s": subscribers * reports / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--reports", type=int, default=50)
    parser.add_argument("--subscribers", default="1,10,100")
    parser.add_argument("--pace", type=float, default=20.0, help="reports/s of the paced run")
    args = parser.parse_args()
    seal_rate = raw_seal_rate()
    print(f"raw HPKE seal rate: {seal_rate:.0f}/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        async with fresh_database(args.engine, Path(tmp), "fanout") as url:
            env = broker_env(Path(tmp), url)
            settings = Settings.load(env=env)
            ctx = Context.open(settings)
            await db.upgrade(ctx.db.engine)
            await alliances.seed_alliances(ctx, settings.alliances)
            await ctx.close()
            for n in (int(x) for x in args.subscribers.split(",")):
                for sealed in (False, True):
                    print(f"running {n} subscribers, sealed={sealed}...", flush=True)
                    result = await run_case(Path(tmp), env, n, args.reports, sealed)
                    paced = await run_case(Path(tmp), env, n, args.reports, sealed, pace=args.pace)
                    rows.append((n, sealed, result, paced))
    lines = [
        f"## fan-out, {args.engine}, {args.reports} reports, commit {_commit()}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
        "",
        f"raw HPKE seal rate (same run): {seal_rate:.0f}/s",
        "",
        f"Saturated: reports published back to back. Paced: {args.pace:g} reports/s.",
        "",
        "| subscribers | sealed | deliveries/s (saturated) | p50 ms | p99 ms "
        "| sealed deliveries / raw seal rate | p50 ms (paced) | p99 ms (paced) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, sealed, r, paced in rows:
        ratio = f"{r['deliveries_per_s'] / seal_rate:.2f}" if sealed else ""
        lines.append(
            f"| {n} | {sealed} | {r['deliveries_per_s']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {ratio} | {paced['p50_ms']:.1f} | {paced['p99_ms']:.1f} |"
        )
    append_results("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
