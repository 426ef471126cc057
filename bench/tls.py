"""Publish rate over plain HTTP, TLS (token) and mutual TLS (client certificate, no token).

    .venv/bin/python -m bench.tls [--n 1000]

One ``broker serve`` process per case on a fresh SQLite database, a development CA from
``broker.crypto.pki`` for the server and client certificates. Two loads per case: sequential
publishes on one kept-alive connection, and 16 clients each opening a new connection per request
(a full TLS handshake each time, as a fleet of nodes without connection reuse would). Prints the
table and appends it to bench/RESULTS.md. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.peer import load
from bench.procs import broker_env, free_port, start_process, stop
from bench.security import REPORT, _prepare
from bench.throughput import _commit, append_results, fresh_database
from broker.crypto import pki


def _certificates(folder: Path) -> Path:
    ca = pki.create_ca()
    pki.save_ca(folder, ca)
    pki.save_issued(
        folder, "server", pki.issue_server_certificate(["127.0.0.1"], ca=ca), chain=[ca.certificate]
    )
    pki.save_issued(folder, "bench-publish", pki.issue_node_certificate("bench-publish", ca=ca))
    return folder


def _client_context(certs: Path, mutual: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if mutual:
        context.load_cert_chain(str(certs / "bench-publish.pem"), str(certs / "bench-publish.key"))
    return context


async def _sequential(base: str, headers: dict[str, str], context: ssl.SSLContext | None, n: int) -> float:
    connector = aiohttp.TCPConnector(ssl=context) if context is not None else aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(30):  # warm-up
            async with session.post(
                f"{base}/v1/reports", json={**REPORT, "payload": {"w": i}}, headers=headers
            ) as r:
                await r.read()
        start = time.perf_counter()
        for i in range(n):
            async with session.post(
                f"{base}/v1/reports", json={**REPORT, "payload": {"n": i}}, headers=headers
            ) as r:
                assert r.status == 201, await r.text()
                await r.read()
        return n / (time.perf_counter() - start)


async def case(name: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        certs = _certificates(folder / "pki") if name != "plain" else None
        async with fresh_database("sqlite", folder, "tls") as url:
            env = broker_env(folder, url)
            tokens = await _prepare(env)
            port = free_port()
            argv = [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port)]
            if certs is not None:
                argv += ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
                argv += ["--tls-client-ca", str(certs / "ca.pem"), "--tls-client-auth", "optional"]
            proc = start_process("broker", argv, port, folder / "broker.log", env=env)
            scheme = "http" if certs is None else "https"
            base = f"{scheme}://127.0.0.1:{port}"
            mutual = name == "mutual TLS"
            context = None if certs is None else _client_context(certs, mutual)
            headers = {} if mutual else {"Authorization": f"Bearer {tokens['publish']}"}
            try:
                sequential = await _sequential(base, headers, context, n)

                async def call(session: aiohttp.ClientSession, i: int) -> None:
                    body = {**REPORT, "payload": {"c": i}}
                    async with session.post(
                        f"{base}/v1/reports", json=body, headers=headers, ssl=context or True
                    ) as r:
                        assert r.status == 201, await r.text()
                        await r.read()

                concurrent = await load(n, 16, call)
            finally:
                stop(proc)
    return {"sequential": sequential, "concurrent": concurrent["rate"], "p99": concurrent["p99"]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for name in ("plain", "TLS", "mutual TLS"):
        print(f"{name}...", flush=True)
        rows.append((name, await case(name, args.n)))
    plain = rows[0][1]
    lines = [
        f"## bench.tls at {_commit()} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"SQLite; n={args.n})",
        "",
        "| transport | sequential publishes/s | vs plain | 16 clients, new connection each: "
        "publishes/s | vs plain | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['sequential']:.0f} | {r['sequential'] / plain['sequential']:.2f} "
            f"| {r['concurrent']:.0f} | {r['concurrent'] / plain['concurrent']:.2f} | {r['p99']:.1f} |"
        )
    append_results("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
