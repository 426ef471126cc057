"""Publish latency with both witnesses up against one witness down (issue 24).

    .venv/bin/python -m bench.witness [--rounds 6] [--n 200] [--down stalled|stopped]

One ``broker serve`` process on a fresh SQLite database, configured with two witnesses
(``broker witness serve`` processes, France's and Germany's) and a quorum of 2, signing a
checkpoint every 20 events so the witness loops are busy throughout. Rounds alternate: both
witnesses up, then Germany's down, ``--rounds`` times each, ``--n`` sequential publishes per
round on one kept-alive connection. "Down" is ``stalled`` (the process SIGSTOPped: connections
are accepted by the kernel and never answered, so every request runs into its deadline) or
``stopped`` (terminated: connections refused), restored after the round. Prints the median over
rounds of each round's p50 and p99, and the ratio down/up; appends the table to RESULTS.md.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.procs import broker_env, free_port, start_broker, start_process, stop
from bench.security import REPORT, _ms, _prepare
from bench.throughput import _commit, append_results
from broker.crypto import keyring, notes

NATIONS = ("witness.fra.bench/w1", "witness.deu.bench/w1")


def _init_witness(folder: Path, name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "broker", "witness", "init", "--dir", str(folder), "--name", name, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return str(json.loads(done.stdout)["vkey"])


def _witness(folder: Path, log_vkey: str, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "broker", "witness", "serve", "--dir", str(folder), "--port", str(port)]
    return start_process(folder.name, [*argv, "--log", log_vkey], port, folder.with_suffix(".log"))


def _configure(config: Path, witnesses: list[tuple[str, str, int]]) -> None:
    toml = config / "broker.toml"
    text = toml.read_text().replace("checkpoint_every_events = 1000", "checkpoint_every_events = 20")
    text = text.replace("checkpoint_every_seconds = 10", "checkpoint_every_seconds = 1\nwitness_quorum = 2")
    for name, vkey, port in witnesses:
        text += f'\n[[audit.witnesses]]\nname = "{name}"\nurl = "http://127.0.0.1:{port}"\nvkey = "{vkey}"\n'
    toml.write_text(text)


async def _round(session: aiohttp.ClientSession, base: str, token: str, n: int, tag: str) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    took = []
    for i in range(n):
        start = time.perf_counter()
        async with session.post(
            f"{base}/v1/reports", json={**REPORT, "payload": {tag: i}}, headers=headers
        ) as r:
            await r.read()
            assert r.status == 201, r.status
        took.append(time.perf_counter() - start)
    return took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--down", choices=["stalled", "stopped"], default="stalled")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-witness-") as tmp:
        folder = Path(tmp)
        env = broker_env(folder, f"sqlite+aiosqlite:///{folder / 'broker.db'}")
        tokens = await _prepare(env)
        log_vkey = notes.vkey(
            "alliance-broker.example/audit",
            notes.public_key(keyring.load(folder / "keyring.json").checkpoint_key),
        )
        ports = [free_port() for _ in NATIONS]
        dirs = [folder / f"witness-{i}" for i in range(len(NATIONS))]
        vkeys = [_init_witness(d, n) for d, n in zip(dirs, NATIONS, strict=True)]
        witnesses = [_witness(d, log_vkey, p) for d, p in zip(dirs, ports, strict=True)]
        _configure(Path(env["BROKER_CONFIG_DIR"]), list(zip(NATIONS, vkeys, ports, strict=True)))
        broker, base = start_broker(folder, env)
        results: dict[str, list[tuple[float, float]]] = {"both up": [], "one down": []}
        try:
            async with aiohttp.ClientSession() as session:
                await _round(session, base, tokens["publish"], 50, "warm")
                for r in range(args.rounds):
                    for case in ("both up", "one down") if r % 2 == 0 else ("one down", "both up"):
                        if case == "one down":
                            if args.down == "stalled":
                                os.kill(witnesses[1].pid, signal.SIGSTOP)
                            else:
                                stop(witnesses[1])
                        took = await _round(session, base, tokens["publish"], args.n, f"{case}-{r}")
                        results[case].append((_ms(took, 0.5), _ms(took, 0.99)))
                        if case == "one down":
                            if args.down == "stalled":
                                os.kill(witnesses[1].pid, signal.SIGCONT)
                            else:
                                witnesses[1] = _witness(dirs[1], log_vkey, ports[1])
        finally:
            stop(broker)
            for proc in witnesses:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)  # a stalled one must run to hear SIGTERM
                stop(proc)
    _report(results, args)


def _report(results: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    p50 = {case: statistics.median(p for p, _ in rows) for case, rows in results.items()}
    p99 = {case: statistics.median(q for _, q in rows) for case, rows in results.items()}
    lines = [
        f"### bench.witness ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
        f"commit {_commit()}): publish with two witnesses, quorum 2, checkpoint every 20 events; "
        f"Germany's witness {args.down} in the 'one down' rounds; {args.rounds} interleaved rounds of "
        f"{args.n} sequential publishes each, SQLite",
        "",
        "| case | median p50 (ms) | median p99 (ms) | p99 per round (ms) |",
        "|---|---|---|---|",
    ]
    for case, rows in results.items():
        per_round = ", ".join(f"{q:.2f}" for _, q in rows)
        lines.append(f"| {case} | {p50[case]:.2f} | {p99[case]:.2f} | {per_round} |")
    lines.append("")
    lines.append(f"p99 ratio one down / both up: {p99['one down'] / p99['both up']:.3f}")
    append_results("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
