"""The first hour of a newcomer with the command line (issue 23): nothing the demo did not make
is deleted, an auditor verifies with only the export and the key, node keys come from a command,
read-only commands leave no database behind, and every error names the value and what works."""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from broker.crypto import notes
from broker.crypto.keys import load_sealing_key, load_signing_key, public_b64
from broker.demo import prepare
from broker.services.context import Context
from broker.settings import Settings
from tests.conftest import CONFIG
from tests.integration.helpers import Cli, Forked, run_forked
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
    proc = Forked(
        ["-m", "broker", "demo", "--dir", str(folder), "--port", str(_free_port())],
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
        done = run_forked(
            "-m", "broker", "demo", "--dir", ".", "--port", str(_free_port()), env=env, cwd=folder, timeout=60
        )
    else:
        done = _demo(folder, env)
    assert (folder / "broker.db").read_text() == "the operator's database"
    assert done.returncode == 2
    line = _one_error(done.stderr)
    assert "--dir" in line and "not made by broker demo" in line


def test_offline_verify_needs_only_the_export_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    export = tmp_path / "audit.ndjson"
    export.write_text("\n".join(build()) + "\n")
    elsewhere = tmp_path / "auditor-laptop"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    raw = base64.b64encode(PUBLIC).decode()  # and no BROKER_* variable is set
    for key in (raw, notes.vkey(ORIGIN, PUBLIC)):
        assert cli.ok("audit", "verify", str(export), "--key", key).stdout.startswith("OK ")
    # a vkey whose key id does not match its key is refused, naming the form expected
    name, _id, encoded = notes.vkey(ORIGIN, PUBLIC).split("+", 2)
    assert "key id" in cli.refused("audit", "verify", str(export), "--key", f"{name}+00000000+{encoded}")
    # without --key, the missing keyring is named and --key offered
    assert "--key" in cli.refused("audit", "verify", str(export))


@pytest.fixture
def broker(database_url: str, tmp_path: Path, cli: Cli) -> Cli:
    return cli.use(database_url, tmp_path / "keyring.json")


def test_node_keygen_writes_private_keys_0600_and_prints_the_public_halves(
    broker: Cli, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    code, out, err = broker("node", "keygen", "usa-9", "--out", str(keys))
    assert code == 0, err
    signing, sealing = keys / "usa-9.ed25519.key", keys / "usa-9.x25519.key"
    for path in (signing, sealing):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    flags = next(line for line in out.splitlines() if "--ed25519-public-key" in line).split()
    ed = flags[flags.index("--ed25519-public-key") + 1]
    x = flags[flags.index("--x25519-public-key") + 1]
    assert ed == public_b64(load_signing_key(signing.read_text()))
    assert x == public_b64(load_sealing_key(sealing.read_text()))
    # the printed flags are ready for node add
    added = ["node", "add", "usa-9", "--nation", "USA", "--clearance", "SECRET", "--roles", "publish"]
    code, _out, err = broker(*added, "--ed25519-public-key", ed, "--x25519-public-key", x, "--json")
    assert code == 0, err
    code, out, _err = broker("node", "list", "--json")
    node = next(n for n in json.loads(out) if n["id"] == "usa-9")
    assert (node["ed25519_public_key"], node["x25519_public_key"]) == (ed, x)
    # never over a key already there
    line = broker.refused("node", "keygen", "usa-9", "--out", str(keys))
    assert str(signing) in line and "--force" in line
    assert public_b64(load_signing_key(signing.read_text())) == ed


def test_read_only_commands_never_create_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    broker = cli  # the database is set below
    monkeypatch.setenv("BROKER_CONFIG_DIR", str(CONFIG))
    monkeypatch.setenv("BROKER_KEYRING", str(tmp_path / "keys" / "keyring.json"))
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "mistyped" / "broker.db"
    monkeypatch.setenv("BROKER_DATABASE_URL", f"sqlite+aiosqlite:///{missing}")
    for argv in (("node", "list"), ("audit", "key"), ("serve", "--port", str(_free_port()))):
        line = broker.refused(*argv)
        assert str(missing) in line and "broker db upgrade" in line, line
    # three slashes: a path relative to the working directory, which the message says
    monkeypatch.setenv("BROKER_DATABASE_URL", "sqlite+aiosqlite:///tmp/x/broker.db")
    line = broker.refused("alliance", "list")
    assert (
        str(tmp_path / "tmp" / "x" / "broker.db") in line and "sqlite+aiosqlite:////tmp/x/broker.db" in line
    ), line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url", ["sqlite:///var/broker.db", "postgres://postgres@127.0.0.1/x", "postgresql://u@h/x", "mysql://h/x"]
)
def test_a_database_url_of_another_form_names_the_forms_that_work(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    monkeypatch.setenv("BROKER_CONFIG_DIR", str(CONFIG))
    monkeypatch.setenv("BROKER_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("BROKER_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    for argv in (("node", "list"), ("db", "upgrade")):
        line = cli.refused(*argv)
        assert "sqlite+aiosqlite:///" in line and "postgresql+asyncpg://" in line, line
        assert "asyncio extension" not in line and url.split(":")[0] in line, line
    assert list(tmp_path.iterdir()) == []


def test_the_not_migrated_message_names_the_database(
    empty_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    if empty_database_url.startswith("sqlite"):
        path = Path(empty_database_url.split("///", 1)[1])
        path.parent.mkdir(parents=True)
        path.touch(mode=0o600)
    monkeypatch.setenv("BROKER_CONFIG_DIR", str(CONFIG))
    monkeypatch.setenv("BROKER_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("BROKER_DATABASE_URL", empty_database_url)
    line = cli.refused("node", "list")
    shown = empty_database_url.split("///", 1)[1] if "///" in empty_database_url else "broker_e_"
    assert "not migrated" in line and shown in line, line


def test_membership_messages_say_what_the_history_is(broker: Cli) -> None:
    code, _out, err = broker("alliance", "leave", "NATO", "GBR", "--date", "2026-06-01")
    assert code == 0, err
    line = broker.refused("alliance", "join", "NATO", "GBR", "--date", "2000-01-01")
    assert "2026-06-01" in line and "GBR" in line, line  # when it left, so when it may rejoin
    code, _out, err = broker("alliance", "join", "NATO", "GBR", "--date", "2026-07-01")
    assert code == 0, err
    code, _out, err = broker("alliance", "join", "NATO", "UKR", "--date", "2030-01-01")
    assert code == 0, err
    line = broker.refused("alliance", "join", "NATO", "UKR", "--date", "2029-01-01")
    assert "2030-01-01" in line and "already a member" not in line, line  # it joins later, not now
    line = broker.refused("alliance", "leave", "NATO", "UKR")
    assert "2030-01-01" in line, line
    line = broker.refused("alliance", "leave", "NATO", "BRA")
    assert "BRA" in line and "never" in line, line


def test_every_message_in_the_users_words(broker: Cli, tmp_path: Path) -> None:
    line = broker.refused("serve", "--port", "99999")
    assert "99999" in line and "0-65535" in line and "OverflowError" not in line, line
    line = broker.refused("audit", "export", str(tmp_path / "no-such-dir" / "x.ndjson"))
    assert "FileNotFoundError" not in line and "no-such-dir" in line and "cannot write" in line, line
    line = broker.refused("node", "update", "fra-1")
    assert "--clearance" in line and "--roles" in line and "_" not in line.split("give", 1)[1], line
    add = ("node", "add", "usa-2", "--clearance", "SECRET", "--roles", "publish")
    line = broker.refused(*add, "--nation", "usa")
    assert "'usa'" in line or "usa" in line
    assert "USA" in line and "upper case" in line, line
    code, out, err = broker(*add, "--nation", "USA", "--rolez", "x", "--json")
    assert code == 2 and out == ""
    assert json.loads(_one_error(err))["error"]["code"] == "usage", err
    assert "--rolez" in json.loads(err)["error"]["message"]


def test_a_bad_keyring_is_named_in_words(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    bad = tmp_path / "badkeyring.json"
    bad.write_text('{"current": "k1"}')
    bad.chmod(0o600)
    monkeypatch.setenv("BROKER_DATABASE_URL", database_url)
    monkeypatch.setenv("BROKER_CONFIG_DIR", str(CONFIG))
    monkeypatch.setenv("BROKER_KEYRING", str(bad))
    line = cli.refused("node", "list")
    assert "badkeyring.json" in line and "keks" in line and "'keks'" not in line and ": -:" not in line, line


async def test_the_demo_guide_names_a_cli_that_runs_and_how_to_stop_or_move_the_demo(
    ctx: Context, settings: Settings, tmp_path: Path
) -> None:
    guide, _live = await prepare(ctx, settings, tmp_path / "pki")
    lines = guide.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("export "))
    command = shlex.split(lines[at + 1])
    # not a bare `broker`, which is not on PATH after `make demo`
    assert Path(command[0]).is_absolute() and os.access(command[0], os.X_OK), command
    assert "Ctrl-C" in guide and "--port" in guide


def test_demo_reuses_a_directory_it_marked_and_keeps_what_else_is_there(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / ".broker-demo").write_text("made by `broker demo`\n")
    (folder / "broker.db").write_text("an earlier demo's database")
    (folder / "notes.txt").write_text("mine")
    proc = Forked(
        ["-m", "broker", "demo", "--dir", str(folder), "--port", str(_free_port())],
        env={**os.environ, "BROKER_CONFIG_DIR": str(CONFIG)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "demo ended"
            if "Ctrl-C stops the demo" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "broker.db").read_bytes().startswith(b"SQLite format 3")
    assert (folder / ".broker-demo").is_file() and (folder / "pki" / "ca.pem").is_file()
