"""`broker witness` processes for the broker's witnessing tests: init, serve on a port of its
choosing (read from its "serving on" line), stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from broker.crypto.cosignature import NOTE_TYPE, parse_vkey
from broker.witness import directory, protocol, server
from tests.conftest import ROOT
from tests.integration import c2sp

SERVING = re.compile(r"serving on (https?)://[^:]+:(\d+)")


@dataclass
class WitnessProcess:
    name: str
    vkey: str
    url: str
    port: int


def init(folder: Path, name: str) -> str:
    """``broker witness init``: the witness's vkey."""
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "broker", "witness", "init", "--dir", str(folder), "--name", name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["vkey"])


@asynccontextmanager
async def serve(
    folder: Path, name: str, vkey: str, log_vkey: str, port: int = 0, tls: tuple[str, ...] = ()
) -> AsyncIterator[WitnessProcess]:
    """``broker witness serve`` until the block ends (SIGTERM, then waited for, bounded)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "witness", "serve", "--dir", str(folder),
        "--port", str(port), "--log", log_vkey, *tls,
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "the witness ended before serving"
                if found := SERVING.search(line):
                    break
        drain = asyncio.create_task(_drain(proc.stderr))
        scheme, bound = found.group(1), int(found.group(2))
        yield WitnessProcess(name=name, vkey=vkey, url=f"{scheme}://127.0.0.1:{bound}", port=bound)
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(30):
                await proc.wait()
        if drain is not None:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@asynccontextmanager
async def never_answering() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A witness that accepts connections and then reads nothing, answers nothing and keeps the
    socket open: its port, and the connections accepted so far."""
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    stalled = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    try:
        yield stalled.sockets[0].getsockname()[1], accepted
    finally:
        stalled.close()
        for writer in accepted:
            writer.close()
        await stalled.wait_closed()


@asynccontextmanager
async def in_process(folder: Path, origin: str) -> AsyncIterator[tuple[str, c2sp.Log, aiohttp.ClientSession]]:
    """A witness in ``folder`` served in this process, for one reference log named ``origin``:
    its base URL, the log (to sign checkpoints) and a client session with a deadline."""
    directory.init(folder, name=f"witness.example/{origin.rsplit('/', 1)[-1]}")
    log = c2sp.Log(origin)
    logs = protocol.logs_by_origin([parse_vkey(log.vkey, kind=NOTE_TYPE)])
    identity, state = directory.load(folder)
    running = server.Witness(identity, logs, state)
    runner, port = await server.start(running, host="127.0.0.1", port=0, ssl_context=None)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield f"http://127.0.0.1:{port}", log, session
    finally:
        await runner.cleanup()
        running.close()
