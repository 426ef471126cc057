"""`broker demo`'s two witnesses: France's and Germany's, each a ``broker witness serve`` process
with its own directory in the demo's, watching the demo broker's log; and the witnessed
checkpoint the demo prints once both have cosigned it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from broker.client import BrokerClient, WitnessError
from broker.crypto import keyring, notes
from broker.errors import BrokerError
from broker.settings import Settings
from broker.witness_settings import WitnessSettings

NATIONS = (("fra", "witness.fra.demo/w1"), ("deu", "witness.deu.demo/w1"))
FILES = tuple(f"witness-{nation}{suffix}" for nation, _ in NATIONS for suffix in ("", ".log"))
READY_SECONDS = 30.0


def _command() -> list[str]:
    beside = Path(sys.executable).parent / "broker"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "broker"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _init(folder: Path, name: str) -> str:
    result = subprocess.run(  # noqa: S603 - our own command, no shell
        [*_command(), "witness", "init", "--dir", str(folder), "--name", name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(f"broker witness init failed: {result.stderr.strip()}")
    return str(json.loads(result.stdout)["vkey"])


def _wait_listening(host: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"a demo witness stopped at start (see {log})")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)  # a process starting: nothing to wait on but its port
    raise BrokerError(f"a demo witness did not listen within {READY_SECONDS:.0f} s (see {log})")


def log_vkey(settings: Settings) -> str:
    """The demo broker's log vkey (its keyring must exist)."""
    private = keyring.load(settings.keyring_path).checkpoint_key
    return notes.vkey(settings.audit_origin, notes.public_key(private))


@contextlib.contextmanager
def witnesses(settings: Settings, folder: Path) -> Iterator[tuple[WitnessSettings, ...]]:
    """Start both witnesses for the broker's log; stop them at the end."""
    log = log_vkey(settings)
    host = "127.0.0.1"
    processes: list[subprocess.Popen[bytes]] = []
    configured: list[WitnessSettings] = []
    try:
        for nation, name in NATIONS:
            directory, output = folder / f"witness-{nation}", folder / f"witness-{nation}.log"
            vkey = _init(directory, name)
            port = _free_port(host)
            command = [*_command(), "witness", "serve", "--dir", str(directory), "--host", host]
            with output.open("ab") as sink:
                process = subprocess.Popen(  # noqa: S603 - our own command, no shell
                    [*command, "--port", str(port), "--log", log], stdout=sink, stderr=sink
                )
            processes.append(process)
            _wait_listening(host, port, process, output)
            configured.append(WitnessSettings(name=name, url=f"http://{host}:{port}", vkey=vkey))
        yield tuple(configured)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


async def show_witnessed(
    base: str, tls: tuple[Path, Path, Path], *, log_vkey: str, pinned: tuple[WitnessSettings, ...],
    say: Callable[[str], None] = print,
) -> None:  # fmt: skip
    """Wait (bounded) until the latest checkpoint carries both cosignatures, and print it."""
    vkeys = [w.vkey for w in pinned]
    async with BrokerClient(base, tls=tls) as auditor:
        for _ in range(300):
            try:
                checkpoint = await auditor.witnessed_checkpoint(
                    log_key=log_vkey, witnesses=vkeys, quorum_size=len(vkeys)
                )
                break
            except WitnessError:
                await asyncio.sleep(0.1)  # the witnesses answer within milliseconds
        else:
            say("witness: the latest checkpoint was not cosigned by both witnesses within 30 s")
            return
    names = ", ".join(c["name"] for c in checkpoint["cosigners"])
    say(f"witness: checkpoint at size {checkpoint['size']} cosigned by {names} (quorum 2, verified here):")
    for line in str(checkpoint["note"]).splitlines():
        say(f"witness:   {line}")
