"""Security paths under time: how soon a revocation or a token rotation closes the node's open
stream, what a flood of bad bearer tokens does to everyone else's publish latency, and what one
node recalling as fast as it can does to another node's listings and stream.

    .venv/bin/python -m bench.security [--quick] [--repeats 30] [--publishes 500] [--flood 2000]
        [--storm 200]

1. Revoke to stream close. For one broker (SQLite, then PostgreSQL) and for two brokers on one
   PostgreSQL database (two ``broker serve`` processes, which learn of each other's changes by
   LISTEN/NOTIFY), ``--repeats`` times: add a subscribing node through ``POST /v1/admin/nodes``,
   open ``GET /v1/stream`` with its token on broker X, let it idle 100 ms, revoke the node with
   ``POST /v1/admin/nodes/{id}/revoke`` through broker Y (Y = X with one broker; the other one,
   alternating, with two), and time from the moment the revoke's answer is in to the moment the
   close frame (4001) is. A negative figure means the close frame came first. The same again with
   ``POST /v1/admin/nodes/{id}/rotate-token`` (the stream keeps the old token: it must close too).
2. Publish under a bad-token flood. One broker (SQLite, then PostgreSQL), one publishing node:
   ``--publishes`` sequential ``POST /v1/reports`` on one kept-alive connection, alone and then
   while another process (source address 127.0.0.2, so it is not the publisher's address) sends
   ``--flood`` ``GET /v1/reports`` with random well-formed tokens over 8 connections as fast as
   the broker answers. The broker refuses a source that keeps failing with 429 before looking at
   its token, and writes failures as one audit event per source and window: the authenticate
   events are counted in the database once the broker has stopped (it writes the last window
   at shutdown).
3. Recall storm. One broker (SQLite, PostgreSQL) and two on one PostgreSQL database: a node
   publishes ``--storm`` reports, then recalls each twice (a real change, then one that changes
   nothing) as fast as answered, recall limits lifted; meanwhile another node lists
   ``GET /v1/reports?limit=50`` in a loop on the other broker, and a third node's stream there
   must receive 20 reports published during the storm. Listing success rate and p50/p99, frames
   received, close code.

Every broker runs as ``broker serve`` in a process of its own with a fresh database; the clients
run in this process (the flood in a second one). Prints the tables and appends them to
bench/RESULTS.md. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import broker_env, start_broker, stop
from bench.throughput import _commit, append_results, fresh_database
from broker.services import admin, alliances, ledger
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

CLOSE_REVOKED = 4001
IDLE = 0.1  # the stream idles this long before the revoke
CLOSE_TIMEOUT = 10.0  # a close frame later than this counts as missing
CASE_SECONDS = 90.0  # every loop stops after this long, done or not
FLOOD_SOURCE = "127.0.0.2"  # loopback, but not the publisher's address
FLOOD_CONNECTIONS = 8
TIMEOUT = aiohttp.ClientTimeout(total=30)
REPORT = {
    "label": {"classification": "UNCLASSIFIED", "releasable_to": ["NATO"], "caveats": []},
    "topics": ["t"],
}


def _ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)] * 1000


async def _prepare(env: dict[str, str]) -> dict[str, str]:
    """Migrate the fresh database and register the benchmark's own nodes; their tokens."""
    settings = Settings.load(env=env)
    ctx = Context.open(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
        tokens = {}
        for role, nation in (("admin", "USA"), ("audit", "USA"), ("publish", "USA")):
            spec = {"id": f"bench-{role}", "nation": nation, "clearance": "SECRET", "roles": [role]}
            tokens[role] = (await admin.add_node(ctx, spec, actor="bench"))["token"]
        return tokens
    finally:
        await ctx.close()


# --- 1. revoke to stream close -------------------------------------------------------------


async def _revoke_once(
    session: aiohttp.ClientSession, x: str, y: str, admin_token: str, i: int, act: str = "revoke"
) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {admin_token}"}
    node_id = f"sub-{secrets.token_hex(4)}-{i}"
    spec = {"id": node_id, "nation": "GBR", "clearance": "SECRET", "roles": ["subscribe"]}
    async with session.post(f"{x}/v1/admin/nodes", json=spec, headers=bearer) as r:
        assert r.status == 201, await r.text()
        token = (await r.json())["token"]
    async with session.ws_connect(f"{x}/v1/stream", headers={"Authorization": f"Bearer {token}"}) as ws:

        async def closed() -> float:
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return time.perf_counter()

        reader = asyncio.create_task(closed())
        await asyncio.sleep(IDLE)
        sent = time.perf_counter()
        async with session.post(f"{y}/v1/admin/nodes/{node_id}/{act}", headers=bearer) as r:
            assert r.status == 200, await r.text()
            await r.read()
        answered = time.perf_counter()
        try:
            closed_at = await asyncio.wait_for(reader, timeout=CLOSE_TIMEOUT)
        except TimeoutError:
            return {"code": None, "answer": answered - sent}
        return {"code": ws.close_code, "close": closed_at - answered, "answer": answered - sent}


async def revoke_case(
    bases: list[str], admin_token: str, repeats: int, act: str = "revoke"
) -> dict[str, Any]:
    """``repeats`` revocations (or token rotations, ``act`` "rotate-token"); with two brokers the
    stream and the change alternate between them."""
    closes: list[float] = []
    answers: list[float] = []
    codes: Counter[str] = Counter()
    deadline = time.perf_counter() + CASE_SECONDS
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        await _revoke_once(session, bases[0], bases[-1], admin_token, -1)  # warm-up, not counted
        for i in range(repeats):
            if time.perf_counter() > deadline:
                break
            x, y = bases[i % len(bases)], bases[(i + 1) % len(bases)]
            result = await _revoke_once(session, x, y, admin_token, i, act)
            codes[str(result["code"])] += 1
            answers.append(result["answer"])
            if result["code"] == CLOSE_REVOKED:
                closes.append(result["close"])
    return {
        "n": len(closes),
        "p50": _ms(closes, 0.5),
        "p99": _ms(closes, 0.99),
        "max": max(closes) * 1000 if closes else float("nan"),
        "min": min(closes) * 1000 if closes else float("nan"),
        "early": sum(c < 0 for c in closes),
        "answer_p50": _ms(answers, 0.5),
        "codes": dict(codes),
    }


async def revocations(repeats: int, rows: list[tuple[str, dict[str, Any]]]) -> None:
    for engine, brokers in (("sqlite", 1), ("postgres", 1), ("postgres", 2)):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            async with fresh_database(engine, folder, "security") as url:
                env = broker_env(folder, url)
                tokens = await _prepare(env)
                procs = []
                try:
                    for _ in range(brokers):
                        procs.append(start_broker(folder, env))
                    where = f"{engine}, {'one broker' if brokers == 1 else 'two brokers (X != Y)'}"
                    for act in ("revoke", "rotate-token"):
                        case = f"{act}, {where}"
                        print(f"{act} -> close: {where}...", flush=True)
                        bases = [base for _, base in procs]
                        result = await revoke_case(bases, tokens["admin"], repeats, act)
                        print(
                            f"  {case:45} p50 {result['p50']:7.2f} ms p99 {result['p99']:7.2f} ms "
                            f"max {result['max']:7.2f} ms  close codes {result['codes']}",
                            flush=True,
                        )
                        rows.append((case, result))
                finally:
                    for proc, _ in procs:
                        stop(proc)


# --- 2. publish under a bad-token flood ----------------------------------------------------


def _flood_process(base: str, n: int, ready: Any, go: Any, results: Any) -> None:
    results.put(asyncio.run(_flood(base, n, ready, go)))


async def _flood(base: str, n: int, ready: Any, go: Any) -> dict[str, Any]:
    """``n`` GET /v1/reports with random well-formed tokens from FLOOD_SOURCE, as fast as answered."""
    statuses: Counter[int] = Counter()
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(local_addr=(FLOOD_SOURCE, 0), limit=FLOOD_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:

        async def worker() -> None:
            for _ in counter:
                headers = {"Authorization": f"Bearer abk_{secrets.token_urlsafe(32)}"}
                async with session.get(f"{base}/v1/reports", headers=headers) as r:
                    await r.read()
                    statuses[r.status] += 1

        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait, 30)
        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(FLOOD_CONNECTIONS)))
        end = time.monotonic()
    return {"statuses": dict(statuses), "start": start, "end": end}


async def _publishes(base: str, token: str, n: int) -> list[tuple[float, float]]:
    """``n`` sequential publishes on one connection; (monotonic end, latency) of each."""
    done: list[tuple[float, float]] = []
    deadline = time.monotonic() + CASE_SECONDS
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for i in range(n):
            if time.monotonic() > deadline:
                break
            start = time.monotonic()
            async with session.post(
                f"{base}/v1/reports",
                json={**REPORT, "payload": {"n": i}},
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status == 201, await r.text()
                await r.read()
            end = time.monotonic()
            done.append((end, end - start))
    return done


async def flood_case(engine: str, publishes: int, flood: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with fresh_database(engine, folder, "security") as url:
            env = broker_env(folder, url)
            tokens = await _prepare(env)
            proc, base = start_broker(folder, env)
            try:
                await _publishes(base, tokens["publish"], 30)  # warm-up
                alone = [latency for _, latency in await _publishes(base, tokens["publish"], publishes)]
                spawn = multiprocessing.get_context("spawn")
                ready, go, results = spawn.Event(), spawn.Event(), spawn.Queue()
                flooder = spawn.Process(target=_flood_process, args=(base, flood, ready, go, results))
                flooder.start()
                try:
                    await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
                    go.set()
                    during = await _publishes(base, tokens["publish"], publishes)
                    outcome = await asyncio.get_running_loop().run_in_executor(None, results.get, True, 120)
                finally:
                    flooder.join(timeout=10)
                    if flooder.is_alive():
                        flooder.kill()
            finally:
                stop(proc)  # the broker writes the last window's failures as it stops
            ctx = Context.open(Settings.load(env=env))
            try:
                found = await ledger.events(ctx, after=0, limit=1000, filters={"action": "authenticate"})
            finally:
                await ctx.close()
    events = found["events"]
    overlapped = [latency for end, latency in during if end <= outcome["end"]]
    statuses = outcome["statuses"]
    return {
        "alone": alone,
        "during": [latency for _, latency in during],
        "overlapped": overlapped,
        "ok401": statuses.get(401, 0),
        "r429": statuses.get(429, 0),
        "other": sum(v for k, v in statuses.items() if k not in (401, 429)),
        "flood_s": outcome["end"] - outcome["start"],
        "events": len(events),
        "failures_in_events": sum(e["details"].get("failures", 0) for e in events),
    }


async def floods(publishes: int, flood: int, rows: list[tuple[str, dict[str, Any]]]) -> None:
    for engine in ("sqlite", "postgres"):
        print(f"publish under a bad-token flood: {engine}...", flush=True)
        r = await flood_case(engine, publishes, flood)
        print(
            f"  alone p50 {_ms(r['alone'], 0.5):.2f} p99 {_ms(r['alone'], 0.99):.2f} ms; "
            f"flood p50 {_ms(r['during'], 0.5):.2f} p99 {_ms(r['during'], 0.99):.2f} ms "
            f"({len(r['overlapped'])} overlapped: p50 {_ms(r['overlapped'], 0.5):.2f} "
            f"p99 {_ms(r['overlapped'], 0.99):.2f}); 401 {r['ok401']} 429 {r['r429']} other {r['other']} "
            f"in {r['flood_s']:.2f} s; {r['events']} audit events ({r['failures_in_events']} failures)",
            flush=True,
        )
        rows.append((engine, r))


# --- 3. recall storm -----------------------------------------------------------------------


async def _node(
    session: aiohttp.ClientSession, base: str, admin_token: str, node_id: str, nation: str
) -> str:
    spec = {"id": node_id, "nation": nation, "clearance": "SECRET", "roles": ["publish", "subscribe"]}
    async with session.post(
        f"{base}/v1/admin/nodes", json=spec, headers={"Authorization": f"Bearer {admin_token}"}
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])


async def storm_case(bases: list[str], admin_token: str, storm: int) -> dict[str, Any]:
    """The storm runs against ``bases[0]``; the listings and the stream against ``bases[-1]``."""
    x, y = bases[0], bases[-1]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        fra = await _node(session, x, admin_token, "storm-fra", "FRA")
        usa = await _node(session, x, admin_token, "pub-usa", "USA")
        swe = await _node(session, y, admin_token, "list-swe", "SWE")
        gbr = await _node(session, y, admin_token, "stream-gbr", "GBR")
        ids = []
        for i in range(storm):
            async with session.post(
                f"{x}/v1/reports",
                json={**REPORT, "payload": {"n": i}},
                headers={"Authorization": f"Bearer {fra}"},
            ) as r:
                ids.append((await r.json())["id"])
        recall_statuses: Counter[int] = Counter()
        list_statuses: Counter[int] = Counter()
        latencies: list[float] = []
        stop_listing = asyncio.Event()
        deadline = time.monotonic() + CASE_SECONDS

        async def recalls() -> None:
            for report_id in [*ids, *ids]:
                if time.monotonic() > deadline:
                    return
                async with session.post(
                    f"{x}/v1/reports/{report_id}/recall", headers={"Authorization": f"Bearer {fra}"}
                ) as r:
                    await r.read()
                    recall_statuses[r.status] += 1

        async def listings() -> None:
            while not stop_listing.is_set() and time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.get(
                    f"{y}/v1/reports?limit=50", headers={"Authorization": f"Bearer {swe}"}
                ) as r:
                    await r.read()
                    list_statuses[r.status] += 1
                latencies.append(time.perf_counter() - start)

        received = 0
        async with session.ws_connect(
            f"{y}/v1/stream?after={storm}", headers={"Authorization": f"Bearer {gbr}"}
        ) as ws:
            storming, listing = asyncio.create_task(recalls()), asyncio.create_task(listings())
            for i in range(20):
                async with session.post(
                    f"{x}/v1/reports",
                    json={**REPORT, "payload": {"m": i}},
                    headers={"Authorization": f"Bearer {usa}"},
                ) as r:
                    await r.read()
                await asyncio.sleep(0.05)
            try:
                async with asyncio.timeout(30):
                    while received < 20:
                        message = await ws.receive()
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        received += message.json()["type"] == "report"
            except TimeoutError:
                pass
            await storming
            stop_listing.set()
            await listing
            close_code = ws.close_code
    total = sum(list_statuses.values())
    return {
        "recalls": dict(recall_statuses),
        "listings": total,
        "ok": list_statuses.get(200, 0) / total if total else float("nan"),
        "statuses": dict(list_statuses),
        "p50": _ms(latencies, 0.5),
        "p99": _ms(latencies, 0.99),
        "received": received,
        "close": close_code,
    }


async def storms(storm: int, rows: list[tuple[str, dict[str, Any]]]) -> None:
    for engine, brokers in (("sqlite", 1), ("postgres", 1), ("postgres", 2)):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            async with fresh_database(engine, folder, "security") as url:
                env = broker_env(folder, url)
                tokens = await _prepare(env)
                procs = [start_broker(folder, env) for _ in range(brokers)]
                try:
                    case = f"{engine}, {'one broker' if brokers == 1 else 'two brokers'}"
                    print(f"recall storm: {case}...", flush=True)
                    r = await storm_case([base for _, base in procs], tokens["admin"], storm)
                finally:
                    for proc, _ in procs:
                        stop(proc)
        print(
            f"  {case:25} listings {r['listings']} ok {r['ok']:.3f} "
            f"p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms; stream {r['received']}/20 "
            f"(close {r['close']}); recalls {r['recalls']}",
            flush=True,
        )
        rows.append((case, r))


def _tables(
    revokes: list[tuple[str, dict[str, Any]]],
    flooded: list[tuple[str, dict[str, Any]]],
    stormed: list[tuple[str, dict[str, Any]]],
    args: Any,
) -> str:
    lines = [
        f"## security: revoke to close, publish under a bad-token flood, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.uname().nodename}, "
        f"{os.cpu_count()} cores, commit {_commit()}",
        "",
        "Load average (1 min) at the start and the end of the run: "
        f"{args.load_start:.2f}, {os.getloadavg()[0]:.2f} (other work on the machine shows here).",
        "",
        f"Revoke answer to close frame (4001) of the revoked node's idle stream, {args.repeats} "
        "repeats; negative: the close frame came before the answer.",
        "",
        "| case | closes | p50 ms | p99 ms | max ms | min ms | close first | revoke answer p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, r in revokes:
        missing = "" if set(r["codes"]) == {str(CLOSE_REVOKED)} else f" (codes {r['codes']})"
        lines.append(
            f"| {case}{missing} | {r['n']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | "
            f"{r['min']:.2f} | {r['early']} | {r['answer_p50']:.2f} |"
        )
    lines += [
        "",
        f"{args.publishes} sequential publishes (one kept-alive connection), alone and while "
        f"{args.flood} GET /v1/reports with bad tokens come from {FLOOD_SOURCE} over "
        f"{FLOOD_CONNECTIONS} connections; 'overlapped': the publishes done before the flood ended.",
        "",
        "| engine | alone p50 / p99 ms | flood p50 / p99 ms | overlapped n, p50 / p99 ms "
        "| flood 401 / 429 / other | flood s | authenticate audit events (failures in them) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, r in flooded:
        lines.append(
            f"| {engine} | {_ms(r['alone'], 0.5):.2f} / {_ms(r['alone'], 0.99):.2f} | "
            f"{_ms(r['during'], 0.5):.2f} / {_ms(r['during'], 0.99):.2f} | {len(r['overlapped'])}, "
            f"{_ms(r['overlapped'], 0.5):.2f} / {_ms(r['overlapped'], 0.99):.2f} | "
            f"{r['ok401']} / {r['r429']} / {r['other']} | {r['flood_s']:.2f} | "
            f"{r['events']} ({r['failures_in_events']}) |"
        )
    lines += [
        "",
        f"Recall storm: one node recalls its {args.storm} reports twice each (limits lifted) as fast "
        "as answered; another node lists (limit 50) in a loop on the other broker; a third node's "
        "stream there must receive 20 reports published meanwhile.",
        "",
        "| case | recalls (status: n) | listings | 200 share | p50 / p99 ms | stream frames / 20 "
        "| close code |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, r in stormed:
        lines.append(
            f"| {case} | {r['recalls']} | {r['listings']} | {r['ok']:.3f} | "
            f"{r['p50']:.1f} / {r['p99']:.1f} | {r['received']} | {r['close']} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="10 repeats, 100 publishes, 500 bad tokens; print only"
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--publishes", type=int, default=500)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--storm", type=int, default=200)
    parser.add_argument("--cases", default="revoke,flood,storm", help="which of revoke,flood,storm to run")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    if args.quick:
        args.repeats, args.publishes, args.flood, args.storm = 10, 100, 500, 100
    args.load_start = os.getloadavg()[0]
    revokes: list[tuple[str, dict[str, Any]]] = []
    flooded: list[tuple[str, dict[str, Any]]] = []
    stormed: list[tuple[str, dict[str, Any]]] = []
    if "revoke" in cases:
        await revocations(args.repeats, revokes)
    if "flood" in cases:
        await floods(args.publishes, args.flood, flooded)
    if "storm" in cases:
        await storms(args.storm, stormed)
    table = _tables(revokes, flooded, stormed, args)
    if args.quick:  # a look, not a result
        print(table)
    else:
        append_results(table)


if __name__ == "__main__":
    asyncio.run(main())
