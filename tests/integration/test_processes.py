"""The broker as a process: demo, serve, kill -9 durability, bad configuration, health. The
processes are forked from the fork server (:class:`Forked`): processes of their own, which kill -9
kills, without a new interpreter importing the broker for each."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from broker.settings import Settings
from tests.conftest import CONFIG
from tests.integration.helpers import Cli, Forked, cli_env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(
    method: str, url: str, token: str | None = None, body: Any = None, context: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 -- loopback URL we built
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_healthy(
    base: str, proc: Forked, seconds: float = 30, context: ssl.SSLContext | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"broker exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if _http("GET", f"{base}/v1/health", context=context)[0] == 200:
                return
        except OSError:  # not listening yet: another process, whose readiness is polled (bounded)
            time.sleep(0.1)
    raise AssertionError("broker did not become healthy")


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    return cli_env(url, tmp_path / "keyring.json")


@contextlib.contextmanager
def _serving(
    env: dict[str, str], port: int, *, kill: bool = False, log: list[str] | None = None
) -> Iterator[Forked]:
    """`broker serve` on ``port`` until the block ends (SIGKILL with ``kill``, else SIGTERM);
    what it printed goes into ``log``."""
    proc = Forked(
        ["-m", "broker", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield proc
    finally:
        if kill:
            proc.send_signal(signal.SIGKILL)
        else:
            proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            if log is not None:
                log.append(proc.stdout.read())
            proc.stdout.close()


def test_kill_9_after_201_loses_nothing(database_url: str, tmp_path: Path, cli: Cli) -> None:
    env = _env(database_url, tmp_path)
    cli.use(database_url, tmp_path / "keyring.json")
    cli.ok("db", "upgrade")
    add = ("node", "add", "usa-1", "--nation", "USA", "--clearance", "SECRET", "--roles", "publish,subscribe")
    token = json.loads(cli.ok(*add, "--json").stdout)["token"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    label = {"classification": "SECRET", "releasable_to": ["NATO"]}
    with _serving(env, port, kill=True):
        receipts = []
        for i in range(20):
            status, receipt = _http(
                "POST", f"{base}/v1/reports", token, {"label": label, "payload": {"n": i}}
            )
            assert status == 201
            receipts.append(receipt)
    log: list[str] = []
    with _serving(env, port, log=log):  # a new process on the same files: everything acknowledged is there
        _, page = _http("GET", f"{base}/v1/reports?limit=100", token)
        refused, _ = _http("GET", f"{base}/v1/reports?limit=5&token={token}")  # a token where none belongs
    assert refused == 401
    assert "event loop: uvloop)" in log[0]  # the default, where uvloop is installed (a dependency)
    assert '"GET /v1/reports?limit=100 HTTP/1.1" 200' in log[0] and token not in log[0]  # no secrets
    assert '"GET /v1/reports?limit=5&token=REDACTED HTTP/1.1" 401' in log[0]
    assert re.search(
        r'"GET /v1/reports\?limit=100 HTTP/1.1" 200 \d+ [0-9.]+ node=\S+ request_id=[0-9a-f]{16}', log[0]
    )
    assert [r["id"] for r in page["reports"]] == [r["id"] for r in receipts]
    assert [r["payload"]["n"] for r in page["reports"]] == list(range(20))


def test_demo_command_starts_a_broker_with_printed_tokens(tmp_path: Path) -> None:
    port = _free_port()
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    shutil.copytree(CONFIG, workdir / "config")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    proc = Forked(
        ["-m", "broker", "demo", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"https://127.0.0.1:{port}"
    ca = workdir / "var" / "demo" / "pki" / "ca.pem"
    try:
        deadline = time.monotonic() + 60
        while not ca.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        trust = ssl.create_default_context(cafile=str(ca))
        _wait_healthy(base, proc, seconds=60, context=trust)
        lines = []
        assert proc.stdout is not None
        while not any("API description" in line for line in lines):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        tokens = dict(re.findall(r"^\s+(\S+)\s+.*token (abk_\S+)$", text, re.MULTILINE))
        assert {"usa-cyber", "swe-cert", "nga-cert", "auditor", "admin"} <= set(tokens)
        # The printed curl lines, run as printed: mutual TLS with the demo CA's certificates.
        publish = text[text.index("Publish a") :].splitlines()[1:5]
        done = subprocess.run(
            ["bash", "-c", "\n".join(publish)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
        )
        receipt = json.loads(done.stdout)
        swe_curl = text[text.index("Sweden") :].splitlines()[1]
        page = json.loads(
            subprocess.run(["bash", "-c", swe_curl], capture_output=True, text=True, timeout=30).stdout
        )
        stored = [r["payload"]["pattern"] for r in page["reports"] if r["id"] == receipt["id"]]
        assert stored == ["[ipv4-addr:value = '198.51.100.7']"]
        nga_curl = text[text.index("Sweden") :].splitlines()[2]
        nga = json.loads(
            subprocess.run(["bash", "-c", nga_curl], capture_output=True, text=True, timeout=30).stdout
        )
        assert nga["reports"] == []
        status, receipt = _http(
            "POST",
            f"{base}/v1/reports",
            tokens["usa-cyber"],
            {"label": {"classification": "CONFIDENTIAL", "releasable_to": ["NATO"]}, "payload": {"x": 1}},
            context=trust,
        )
        assert status == 201
        assert _http("GET", f"{base}/v1/reports/{receipt['id']}", tokens["swe-cert"], context=trust)[0] == 200
        assert _http("GET", f"{base}/v1/reports/{receipt['id']}", tokens["nga-cert"], context=trust)[0] == 404
        assert (workdir / "var" / "demo" / "broker.db").exists()
        live = []
        deadline = time.monotonic() + 20
        while len(live) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("live:"):
                live.append(line)
        assert "published report" in live[0]
        assert "sealed=True signature verified=True" in live[1], live
        witnessed = ""
        deadline = time.monotonic() + 40
        while not witnessed.startswith("witness: checkpoint") and time.monotonic() < deadline:
            witnessed = proc.stdout.readline()
        # Two nations' witnesses (broker witness serve processes) cosigned, the SDK verified it.
        assert "cosigned by witness.deu.demo/w1, witness.fra.demo/w1 (quorum 2" in witnessed, witnessed
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _config_dir(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG, folder)
    (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize(
    ("name", "text", "key", "problem"),
    [
        ("broker.toml", "[server]\nport = 'eighty'\n", "server.port", "integer"),
        ("broker.toml", "[server\n", "-", "not valid TOML"),
        ("broker.toml", "[server]\nevent_loop = 'tokio'\n", "server.event_loop", "auto, asyncio"),
        (
            "broker.toml",
            "[server]\nmax_body_byte = 5\n",
            "server.max_body_byte",
            "did you mean max_body_bytes",
        ),
        ("broker.toml", "[servre]\nport = 1\n", "servre", "unknown table (did you mean server?)"),
        ("policy.toml", "levels = []\n", "levels", "non-empty"),
        ("policy.toml", "levels = ['A', 'B']\nrequire_sealing_at_or_above = 'C'\n", "levels", "not a level"),
        (
            "alliances.toml",
            "[alliances.NATO]\nname = 'N'\nmembers = [{nation = 'XXX', joined = 2020-01-01}]\n",
            "alliances.NATO.members[0].nation",
            "ISO 3166",
        ),
        (
            "alliances.toml",
            "[alliances.NATO]\nname = 'N'\nmembers = [{nation = 'USA', joined = 'soon'}]\n",
            "alliances.NATO.members[0].joined",
            "date",
        ),
        ("alliances.toml", "[alliances.USA]\nname = 'N'\n", "alliances.USA", "nation code"),
        (
            "alliances.toml",
            "[alliances.X1]\nname = 'N'\nhistory = 'some'\n",
            "alliances.X1.history",
            "must be",
        ),
    ],
)
def test_bad_configuration_names_file_key_and_problem(
    tmp_path: Path, name: str, text: str, key: str, problem: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _config_dir(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"BROKER_CONFIG_DIR": str(folder)})
    assert info.value.file.endswith(name) and info.value.key == key and problem in info.value.problem
    monkeypatch.chdir(tmp_path)
    line = cli.use(CONFIG_DIR=str(folder)).refused("db", "upgrade")
    assert name in line and key in line


def test_environment_overrides_the_files(tmp_path: Path) -> None:
    settings = Settings.load(
        env={
            "BROKER_CONFIG_DIR": str(CONFIG),
            "BROKER_DATABASE_URL": "sqlite+aiosqlite:///x.db",
            "BROKER_KEYRING": "keys/k.json",
        }
    )
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
    assert str(settings.keyring_path) == "keys/k.json"
    assert settings.max_body_bytes == 1024 * 1024


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, cli: Cli) -> None:
    cli.use(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", tmp_path / "keyring.json")
    assert "broker db upgrade" in cli.refused("serve", "--port", str(_free_port()))


async def test_health_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from broker.app import create_app

    settings = Settings.load(
        env={
            "BROKER_CONFIG_DIR": str(CONFIG),
            "BROKER_KEYRING": str(tmp_path / "k.json"),
            "BROKER_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        }
    )
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/v1/health") as resp:
            assert resp.status == 503
            assert (await resp.json(content_type=None))["type"].endswith("unavailable")
    finally:
        await client.close()
