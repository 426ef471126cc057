"""A fresh clone as a newcomer meets it: the README from top to bottom, each shell command as
printed, run in a temporary directory holding only what a clone brings (config/), against a
loopback port, each bounded in time. What cannot run here is listed, with the reason, so that a
new command in the README is either run or consciously left out.

`broker serve` runs as the real binary, stopped with Ctrl-C; the other commands run in processes
forked from the fork server (:class:`Forked`), each in the clone with the newcomer's environment:
the clone holds no Python module that the working directory on ``sys.path`` could bring in."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from markdown_it import MarkdownIt

from tests.conftest import CONFIG, ROOT
from tests.integration.helpers import run_forked

NOT_RUN = {
    "make demo": "builds .venv and serves until interrupted: test_first_hour runs `broker demo`'s parts",
    "make test": "the whole suite: this test is part of it",
    "broker serve --host 0.0.0.0 --port 8443 --tls-cert server.pem --tls-key server.key "
    "--tls-client-ca alliance-ca.pem --tls-client-auth optional": "needs an operator's certificates "
    "(test_tls serves TLS with the development CA)",
}


def _commands() -> list[str]:
    """Every command of the README's sh blocks, continuation lines joined, comments dropped."""
    found = []
    for token in MarkdownIt("commonmark").parse((ROOT / "README.md").read_text()):
        if token.type != "fence" or token.info.strip() != "sh":
            continue
        text = re.sub(r"\\\n\s*", "", token.content)
        for line in text.splitlines():
            line = line.split("  #", 1)[0].split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(" ".join(line.split()))
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _argv(command: str, values: dict[str, str]) -> list[str]:
    """The README's command with its placeholders filled, `broker` being this interpreter's CLI."""
    command = re.sub(r" \[[^]]*\]", "", command)  # an optional part, shown in brackets
    words = [values.get(word, word) for word in shlex.split(command)]
    if words[0] == ".venv/bin/broker" or words[0] == "broker":
        words = [sys.executable, "-m", "broker", *words[1:]]
    return words


def _serve(argv: list[str], cwd: Path, env: dict[str, str], port: int) -> str:
    """Start `broker serve`, answer GET / and /v1/health, stop it with Ctrl-C (SIGINT)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "serve ended before it served"
            if "serving on" in line:
                break
        for path in ("/", "/v1/health"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in err, err
        return err
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def test_a_fresh_clone_walks_through_the_readme(tmp_path: Path) -> None:
    clone = tmp_path / "alliance-broker"
    clone.mkdir()
    shutil.copytree(CONFIG, clone / "config")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    port = _free_port()
    values = {"8080": str(port), "REPORT_ID": "0190f7c4-0000-7000-8000-000000000000"}
    commands = _commands()
    assert commands[:2] == ["make demo", "make test"]
    ran = []
    for command in commands:
        if command in NOT_RUN:
            continue
        argv = _argv(command, values)
        if argv[3:4] == ["serve"]:
            _serve(argv, clone, env, port)
            ran.append(command)
            continue
        if argv[:3] == [sys.executable, "-m", "broker"]:
            done = run_forked(*argv[1:], cwd=clone, env=env)
        else:
            done = subprocess.run(
                argv, cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=False
            )
        ran.append(command)
        if "REPORT_ID" in command:  # a fresh install holds no report: refused in one line
            assert done.returncode == 2 and "no such report" in done.stderr, done.stderr
            continue
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        if argv[3:5] == ["audit", "verify"]:
            assert done.stdout.startswith("OK "), done.stdout
        if argv[3:5] == ["audit", "key"]:  # what the auditor pins, used by `audit verify --key B64`
            values["B64"] = next(
                line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("public_key: ")
            )
        if argv[3:5] == ["node", "keygen"]:
            assert "--ed25519-public-key" in done.stdout
    assert set(NOT_RUN) <= set(commands), set(NOT_RUN) - set(commands)
    assert len(ran) + len(NOT_RUN) == len(commands)
    # The data stayed under the clone: var/ as the README says, nothing elsewhere.
    assert (clone / "var" / "broker.db").is_file() and (clone / "var" / "keyring.json").is_file()


def test_the_readme_verifies_an_export_with_the_key_it_printed(tmp_path: Path) -> None:
    """`broker audit key` then `broker audit verify ... --key B64` as the README shows them."""
    clone = tmp_path / "alliance-broker"
    clone.mkdir()
    shutil.copytree(CONFIG, clone / "config")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}

    def broker(*args: str) -> subprocess.CompletedProcess[str]:
        return run_forked("-m", "broker", *args, cwd=clone, env=env)

    assert broker("db", "upgrade").returncode == 0
    key = json.loads(broker("audit", "key", "--json").stdout)
    assert broker("audit", "export", "audit.ndjson").returncode == 0
    for printed in (key["public_key"], key["vkey"]):
        done = broker("audit", "verify", "audit.ndjson", "--key", printed)
        assert done.returncode == 0 and done.stdout.startswith("OK "), done.stderr
