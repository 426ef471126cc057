"""The first hour of a newcomer with the command line (issue 23): nothing the demo did not make
is deleted, an auditor verifies with only the export and the key, node keys come from a command,
read-only commands leave no database behind, and every error names the value and what works."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from broker import __main__ as cli
from broker.crypto import notes
from tests.conftest import CONFIG
from tests.unit.test_verify_export import ORIGIN, PUBLIC, build


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _demo(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`broker demo --dir FOLDER`, stopped after 60 s if it starts serving (the old behaviour)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "demo", "--dir", str(folder), "--port", str(_free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("what", ["a data directory", "the working directory"])
def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path, what: str) -> None:
    folder = tmp_path / "var"
    folder.mkdir()
    (folder / "broker.db").write_text("the operator's database")
    (folder / "keyring.json").write_text("{}")
    env = {**os.environ, "BROKER_CONFIG_DIR": str(CONFIG)}
    if what == "the working directory":
        done = subprocess.run(
            [sys.executable, "-m", "broker", "demo", "--dir", ".", "--port", str(_free_port())],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    else:
        done = _demo(folder, env)
    assert (folder / "broker.db").read_text() == "the operator's database"
    assert done.returncode == 2
    line = _one_error(done.stderr)
    assert "--dir" in line and "not made by broker demo" in line


def test_offline_verify_needs_only_the_export_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "audit.ndjson"
    export.write_text("\n".join(build()) + "\n")
    elsewhere = tmp_path / "auditor-laptop"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in [n for n in os.environ if n.startswith("BROKER_")]:
        monkeypatch.delenv(name)
    raw = base64.b64encode(PUBLIC).decode()
    for key in (raw, notes.vkey(ORIGIN, PUBLIC)):
        assert cli.main(["audit", "verify", str(export), "--key", key]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith("OK ")
    # a vkey whose key id does not match its key is refused, naming the form expected
    name, _id, encoded = notes.vkey(ORIGIN, PUBLIC).split("+", 2)
    assert cli.main(["audit", "verify", str(export), "--key", f"{name}+00000000+{encoded}"]) == 2
    assert "key id" in _one_error(capsys.readouterr().err)
    # without --key, the missing keyring is named and --key offered
    assert cli.main(["audit", "verify", str(export)]) == 2
    assert "--key" in _one_error(capsys.readouterr().err)
