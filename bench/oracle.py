"""How much a denied read's answer time tells a prober: a 404 for a report that exists but may
not be seen, against a 404 for an id that exists nowhere.

    .venv/bin/python -m bench.oracle [--n 2000]

One ``broker serve`` process per engine on a fresh database; a publishing node stores one report
released to its own nation only, and a node of another nation asks for it and for random absent
ids, interleaved, on one kept-alive connection. Prints the medians and their difference and
appends the table to bench/RESULTS.md. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import broker_env, start_broker, stop
from bench.throughput import _commit, append_results, fresh_database
from broker.services import admin, alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db


async def _nodes(env: dict[str, str]) -> tuple[str, str]:
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        tokens = []
        for node, nation in (("usa", "USA"), ("rus", "RUS")):
            spec = {"id": node, "nation": nation, "clearance": "SECRET", "roles": ["publish", "subscribe"]}
            tokens.append((await admin.add_node(ctx, spec, actor="bench"))["token"])
        return tokens[0], tokens[1]
    finally:
        await ctx.close()


async def case(engine: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with fresh_database(engine, folder, "oracle") as url:
            env = broker_env(folder, url)
            usa, rus = await _nodes(env)
            proc, base = start_broker(folder, env)
            try:
                async with aiohttp.ClientSession() as session:
                    body = {
                        "label": {"classification": "SECRET", "releasable_to": ["USA"], "caveats": []},
                        "topics": ["t"],
                        "payload": {"x": 1},
                    }
                    headers = {"Authorization": f"Bearer {usa}"}
                    async with session.post(f"{base}/v1/reports", json=body, headers=headers) as r:
                        hidden = (await r.json())["id"]
                    times: dict[str, list[float]] = {"denied": [], "absent": []}
                    probe = {"Authorization": f"Bearer {rus}"}
                    for i in range(n + 50):
                        for kind, rid in (("denied", hidden), ("absent", str(uuid.uuid4()))):
                            start = time.perf_counter()
                            async with session.get(f"{base}/v1/reports/{rid}", headers=probe) as r:
                                assert r.status == 404
                                await r.read()
                            if i >= 50:  # warm-up
                                times[kind].append(time.perf_counter() - start)
            finally:
                stop(proc)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    for engine in ("sqlite", "postgres"):
        print(f"{engine}...", flush=True)
        rows.append((engine, await case(engine, args.n)))
    lines = [
        f"## bench.oracle at {_commit()} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; n={args.n})",
        "",
        "| engine | denied 404 median µs | absent 404 median µs | difference µs |",
        "|---|---|---|---|",
    ]
    for engine, r in rows:
        lines.append(
            f"| {engine} | {r['denied']:.0f} | {r['absent']:.0f} | {r['denied'] - r['absent']:+.0f} |"
        )
    append_results("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
