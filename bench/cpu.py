"""Where the CPU goes: one PostgreSQL broker against two on one database, in alternating runs.

    .venv/bin/python -m bench.cpu [--n 3000] [--clients 16] [--repeats 2]

Each run starts ``broker serve`` processes on a fresh database (one, or two with request i
going to instance i mod 2, as ``bench.scale``), sends ``--n`` publishes from ``--clients``
clients with a new connection per request (``bench.peer``'s load client), and reads from
``/proc`` the CPU seconds each broker process, PostgreSQL's processes (every process whose name
starts with ``postgres``, so run it where no other database is busy) and this load client used,
and how long the two cores stood idle (I/O wait included). Runs alternate between one and two
brokers, ``--repeats`` times each, so that a drift in the machine's speed falls on both.
Appends its table to bench/RESULTS.md. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.peer import WARMUP, load
from bench.scale import Brokers
from bench.throughput import _commit, append_results, fresh_database

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | str, *, children: bool = False) -> float:
    """CPU seconds (user and system) a process has used, and with ``children`` those of its
    children that ended and were waited for; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if children else 0)) / TICK


def postgres_cpu() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith("postgres"):
                # Backends that ended during the run (replaced connections, autovacuum workers)
                # count in the postmaster's children's time, which the postmaster waited for.
                total += process_cpu(entry.name, children=True)
    return total


def idle_seconds() -> float:
    """Seconds all cores together spent idle since boot, waiting for I/O included (a commit's
    fsync shows as I/O wait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(fields[4]) + int(fields[5])) / TICK


async def one_run(count: int, n: int, clients: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with fresh_database("postgres", folder, "cpu") as url, Brokers(folder, url, count) as brokers:
            post = brokers.poster()
            await load(WARMUP, 1, post)
            brokers_before = [process_cpu(p.pid) for p in brokers.procs]
            pg_before, idle_before, own_before = postgres_cpu(), idle_seconds(), time.process_time()
            began = time.perf_counter()
            result = await load(n, clients, post)
            elapsed = time.perf_counter() - began
            brokers_cpu = sum(process_cpu(p.pid) for p in brokers.procs) - sum(brokers_before)
            pg, idle = postgres_cpu() - pg_before, idle_seconds() - idle_before
            own = time.process_time() - own_before
    done = result["rate"] * elapsed
    per = 1000 / done if done else float("nan")
    return {
        "rate": result["rate"],
        "p50": result["p50"],
        "broker_ms": brokers_cpu * per,
        "postgres_ms": pg * per,
        "client_ms": own * per,
        "broker_cores": brokers_cpu / elapsed,
        "idle_cores": idle / elapsed,
    }


def _table(rows: list[tuple[int, dict[str, float]]], n: int, clients: int) -> str:
    lines = [
        f"## bench.cpu, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.uname().nodename}, "
        f"{os.cpu_count()} cores, commit {_commit()}",
        "",
        f"{n} publishes from {clients} clients per run (new connection per request), PostgreSQL; "
        "runs alternate. CPU in ms per publish, summed over the broker processes; cores busy or idle "
        "over the run.",
        "",
        "| brokers | req/s | p50 ms | broker ms | PostgreSQL ms | client ms | broker cores | idle cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, r in rows:
        lines.append(
            f"| {count} | {r['rate']:.0f} | {r['p50']:.2f} | {r['broker_ms']:.3f} | {r['postgres_ms']:.3f} "
            f"| {r['client_ms']:.3f} | {r['broker_cores']:.2f} | {r['idle_cores']:.2f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows: list[tuple[int, dict[str, float]]] = []
    for _ in range(args.repeats):
        for count in (1, 2):
            result = await one_run(count, args.n, args.clients)
            print(f"  {count} broker(s): {result['rate']:.0f}/s", flush=True)
            rows.append((count, result))
    append_results(_table(rows, args.n, args.clients))


if __name__ == "__main__":
    asyncio.run(main())
