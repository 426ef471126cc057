"""The command line as a user meets it: one line and exit 2 for every failure, --json anywhere
(errors included), --version, and a configuration check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import CONFIG
from tests.integration.helpers import cli_env, run_cli


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_version() -> None:
    done = run_cli("--version", env=dict(os.environ))
    assert done.returncode == 0 and done.stdout.startswith("broker ")


def test_json_anywhere_and_json_errors(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path / "keyring.json")
    before = run_cli("--json", "alliance", "list", env=env)
    after = run_cli("alliance", "list", "--json", env=env)
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)
    failed = run_cli("--json", "node", "revoke", "nobody", env=env)
    assert failed.returncode == 2
    assert json.loads(_one_line(failed.stderr))["error"]["code"] == "not_found"


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = cli_env("postgresql+asyncpg://postgres@127.0.0.1:1/nothing", tmp_path / "keyring.json")
    done = run_cli("node", "list", env=env)
    assert done.returncode == 2
    assert "database unavailable" in _one_line(done.stderr)


def test_a_port_in_use_is_one_line_before_anything_is_printed(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path / "keyring.json")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        serve = run_cli("serve", "--port", port, env=env)
        demo = run_cli("demo", "--port", port, "--dir", str(tmp_path / "demo"), env=env)
    for done in (serve, demo):
        assert done.returncode == 2
        assert "already in use" in _one_line(done.stderr)
        assert "token" not in done.stdout


def test_config_check_names_an_unknown_key(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    for source in CONFIG.glob("*.toml"):
        (folder / source.name).write_text(source.read_text())
    good = run_cli("config", "check", "--json", env={**os.environ, "BROKER_CONFIG_DIR": str(folder)})
    assert good.returncode == 0 and json.loads(good.stdout)["valid"] is True
    broker_toml = folder / "broker.toml"
    broker_toml.write_text(broker_toml.read_text().replace("max_body_bytes", "max_body_byte"))
    bad = run_cli("config", "check", env={**os.environ, "BROKER_CONFIG_DIR": str(folder)})
    assert bad.returncode == 2
    line = _one_line(bad.stderr)
    assert "broker.toml" in line and "server.max_body_byte" in line and "did you mean max_body_bytes" in line


def test_outside_the_project_the_missing_config_directory_is_named(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    done = run_cli("node", "list", env=env, cwd=tmp_path)
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert "BROKER_CONFIG_DIR" in line and "not a directory" not in line


def test_serve_logs_json_lines_at_the_level_asked(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path / "keyring.json")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--port",
            port,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            record = json.loads(line)  # every line is one JSON object
            assert {"time", "level", "logger", "message"} <= set(record)
            if record["message"].startswith("serving on"):
                break
        else:
            raise AssertionError("no 'serving on' line")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()
