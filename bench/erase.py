"""What one erasure costs when its KEK wraps many reports: ``--n`` reports are stored under one
KEK (one period), then one of them is erased (`broker report erase`'s service: the other n - 1
data keys are re-wrapped under a replacement KEK and the old one destroyed). Prints the time of
the erasure, best and median of ``--repeats``, each on a fresh store, on each engine.

    .venv/bin/python -m bench.erase [--n 2000] [--repeats 3] [--engine sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from broker.services import admin, alliances, auth, publishing, reports
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BATCH = 250


async def _pg(statement: str) -> None:
    url = make_url(PG_SERVER)
    conn = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, database="postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _one(engine: str, n: int, workdir: Path) -> float:
    name = f"bench_erase_{secrets.token_hex(4)}"
    if engine == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / name}.db"
    else:
        await _pg(f'CREATE DATABASE "{name}"')
        url = make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    env = {"BROKER_CONFIG_DIR": str(ROOT / "config"), "BROKER_DATABASE_URL": url}
    settings = replace(
        Settings.load(env={**env, "BROKER_KEYRING": str(workdir / f"{name}.keyring.json")}),
        publish_burst=10**9,
    )
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        await ctx.check_keyring()
        spec = {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"], "caveats": []}
        token = str((await admin.add_node(ctx, spec, actor="bench"))["token"])
        node = await auth.authenticate(ctx, token, source="bench", rechecked=True)
        directory = await ctx.cached_directory()
        body = {
            "label": {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []},
            "topics": ["ransomware"],
            "payload": {"type": "indicator", "pattern": "[ipv4-addr:value = '198.51.100.7']"},
        }
        sub = publishing.parse_submission(body, ctx=ctx, known_alliances=directory.alliances)
        first: str | None = None
        for start in range(0, n, BATCH):
            acts = [publishing.PublishAct(node=node, sub=sub, idempotency_key=None)] * min(BATCH, n - start)
            async with ctx.db.transaction() as tx:
                stored = await publishing.store_publishes(ctx, tx, acts)
            if first is None:
                first = getattr(stored[0], "id")  # noqa: B009 (a report, or the error to raise)
        assert first is not None
        began = time.perf_counter()
        await reports.erase(ctx, first, actor="bench")
        return time.perf_counter() - began
    finally:
        await ctx.close()
        if engine == "postgres":
            await _pg(f'DROP DATABASE "{name}"')


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    engines = ("sqlite", "postgres") if args.engine == "both" else (args.engine,)
    print("| engine | reports under the erased report's KEK | erase, best | erase, median |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            for n in sorted({1, args.n}):
                times = [await _one(engine, n, Path(tmp)) for _ in range(args.repeats)]
                best, median = min(times) * 1000, statistics.median(times) * 1000
                print(f"| {engine} | {n} | {best:.0f} ms | {median:.0f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
