"""Servers for the benchmarks, each in a process of its own, as they are deployed: our broker
(``broker serve``), the null endpoint, and any peer. The load client stays in the benchmark's
process, so a server never shares its interpreter (or its GIL) with the load it is measured by.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_kb(pid: int) -> int:
    """Peak resident set size of a running process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(proc: subprocess.Popen[bytes], port: int, name: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not start")


def start_process(
    name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(proc, port, name)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}") from None
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_config(folder: Path) -> Path:
    """A copy of config/ with the per-node publish and recall limits out of the way (one node
    sends every request here) and checkpoints at their default cadence."""
    target = folder / "config"
    target.mkdir(exist_ok=True)
    for source in (ROOT / "config").glob("*.toml"):
        text = source.read_text()
        if source.name == "broker.toml":
            text = text.replace("publish_rate_per_second = 200", "publish_rate_per_second = 1000000")
            text = text.replace("publish_burst = 400", "publish_burst = 1000000")
            assert "publish_burst = 1000000" in text, "config/broker.toml changed: update bench_config"
            # recalls too (bench.security's recall storm wants real changes, not 429s)
            text = text.replace(
                "publish_burst = 1000000",
                "publish_burst = 1000000\nrecall_rate_per_second = 1000000\nrecall_burst = 1000000",
            )
        (target / source.name).write_text(text)
    return target


def broker_env(folder: Path, database_url: str) -> dict[str, str]:
    """Environment for a broker (and for the benchmark's own Context on the same database)."""
    return {
        **os.environ,
        "BROKER_CONFIG_DIR": str(bench_config(folder)),
        "BROKER_DATABASE_URL": database_url,
        "BROKER_KEYRING": str(folder / "keyring.json"),
    }


def start_broker(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``broker serve`` on a free loopback port (the schema must be migrated); its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return start_process("broker", argv, port, folder / "broker.log", env=env), f"http://127.0.0.1:{port}"
