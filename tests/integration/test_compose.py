"""docker-compose.yml and the Dockerfile, checked and then run as plain processes.

No Docker engine runs here, so the stack itself cannot come up: instead the commands it runs —
the `migrate` and `certs` one-shots, the image's CMD for both brokers, and the brokers'
healthcheck — are read from the two files and run as processes against one PostgreSQL database,
with the container paths (/keys, /tls) and port mapped into a temporary directory. The `broker`
commands run in processes forked from the fork server (:class:`Forked`); the `sh -c` one-shot
and the healthcheck as written.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CONFIG, ROOT
from tests.integration.helpers import Forked, body, run_forked

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES: dict[str, Any] = COMPOSE["services"]
BROKERS = ("broker-1", "broker-2")


def _image_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
    assert match, "the Dockerfile's CMD must be in exec form"
    return list(json.loads(match.group(1)))


def test_the_stack_is_declared_safely() -> None:
    for name in ("postgres", *BROKERS):
        assert SERVICES[name]["restart"] == "unless-stopped", name
        assert "test" in SERVICES[name]["healthcheck"], name
    for name in ("migrate", "certs"):
        assert SERVICES[name]["restart"] == "no", name
    for name in BROKERS:
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert SERVICES[name]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        assert all(port.startswith("127.0.0.1:") for port in SERVICES[name]["ports"])
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "--require-hashes -r requirements.lock" in DOCKERFILE
    assert "chown broker:broker /keys" in DOCKERFILE and "USER broker" in DOCKERFILE
    cmd = _image_cmd()
    assert "--tls-cert" in cmd and "--insecure-http" not in cmd
    lock = (ROOT / "requirements.lock").read_text()
    pinned = [line for line in lock.splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", line)]
    assert pinned and all(line.rstrip(" \\").count("==") == 1 for line in pinned)
    assert lock.count("--hash=sha256:") >= len(pinned)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mapped:
    """Container paths and the broker's port, mapped onto this machine."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.keys, self.tls = tmp / "keys", tmp / "tls"
        self.keys.mkdir(mode=0o700)
        self.tls.mkdir()
        env = dict(SERVICES["migrate"]["environment"])
        assert env["BROKER_KEYRING"].startswith("/keys/")
        self.env = {
            **os.environ,
            "BROKER_CONFIG_DIR": str(CONFIG),
            "BROKER_DATABASE_URL": database_url,
            "BROKER_KEYRING": self.path(env["BROKER_KEYRING"]),
        }

    def path(self, text: str) -> str:
        return text.replace("/keys", str(self.keys)).replace("/tls", str(self.tls))

    def argv(self, command: list[str], port: int = 8443) -> list[str]:
        words = [self.path(w).replace("8443", str(port)) for w in command]
        if words[0] == "broker":
            return [sys.executable, "-m", "broker", *words[1:]]
        if words[:2] == ["sh", "-c"]:
            return ["sh", "-c", words[2].replace("broker ", f"{shlex.quote(sys.executable)} -m broker ")]
        return words


def _start(argv: list[str], env: dict[str, str], **kw: Any) -> Forked | subprocess.Popen[bytes]:
    if argv[1:3] == ["-m", "broker"]:
        return Forked(argv[1:], env=env, **kw)
    return subprocess.Popen(argv, env=env, **kw)


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if argv[1:3] == ["-m", "broker"]:
        return run_forked(*argv[1:], env=env)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def _healthy(port: int, ca: Path) -> bool:
    """Whether the broker on ``port`` answers its health check, as the healthcheck asks it."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(f"https://localhost:{port}/v1/health", context=context, timeout=3):
            return True
    except OSError:  # not listening yet (URLError is an OSError)
        return False


def test_the_compose_commands_run_as_processes(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("the compose stack runs on PostgreSQL")
    mapped = Mapped(tmp_path, database_url)
    # migrate: twice at once, as two stacks starting together would
    both = [_start(mapped.argv(SERVICES["migrate"]["command"]), mapped.env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in both] == [0, 0]
    # certs: creates a CA and a server certificate, then is a no-op
    for _ in range(2):
        done = _run(mapped.argv(SERVICES["certs"]["command"]), mapped.env)
        assert done.returncode == 0, done.stderr
    ca = mapped.tls / "ca" / "ca.pem"
    assert (mapped.tls / "server.pem").exists() and ca.exists()
    add = ["node", "add", "usa-1", "--nation", "USA", "--clearance", "SECRET", "--json"]
    add += ["--roles", "publish,subscribe"]
    admin = json.loads(_run([sys.executable, "-m", "broker", *add], mapped.env).stdout)
    ports = [_free_port() for _ in BROKERS]
    brokers = [
        _start(
            mapped.argv(_image_cmd(), port),
            mapped.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        health = SERVICES["broker-1"]["healthcheck"]["test"]
        assert health[0] == "CMD"
        for port in ports:
            deadline = time.monotonic() + 60
            while not _healthy(port, ca):  # another process, whose readiness is polled (bounded)
                assert time.monotonic() < deadline, f"the broker on {port} did not become healthy"
                time.sleep(0.1)
            # then the healthcheck as the container runs it: healthy
            check = _run(
                [sys.executable if w == "python" else w for w in mapped.argv(health[1:], port)], mapped.env
            )
            assert check.returncode == 0, check.stderr
        context = ssl.create_default_context(cafile=str(ca))
        token = admin["token"]

        def call(port: int, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
            data = None if payload is None else json.dumps(payload).encode()
            req = urllib.request.Request(f"https://localhost:{port}{path}", data=data, method=method)
            req.add_header("Authorization", f"Bearer {token}")
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, context=context, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())

        status, receipt = call(ports[0], "POST", "/v1/reports", body())
        assert status == 201
        status, report = call(ports[1], "GET", f"/v1/reports/{receipt['id']}")  # the other broker
        assert status == 200 and report["sequence"] == receipt["sequence"]
    finally:
        for proc in brokers:
            proc.terminate()
            proc.wait(timeout=15)
