"""The command line as a user meets it: one line and exit 2 for every failure, --json anywhere
(errors included), --version, and a configuration check. Commands run in this process through
``main(argv)``; in a process of their own where its logging on stderr is the point, forked
(:class:`Forked`); the real binary where its start-up or the working directory on its
``sys.path`` is."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import build_parser
from broker.demo import DEMO_NODES, prepare
from broker.domain.access import ROLES
from broker.services.context import Context
from broker.settings import Settings
from tests.conftest import CONFIG
from tests.integration.helpers import Cli, Forked, Ran, cli_env, one_line, run_cli


def test_version() -> None:
    done = run_cli("--version", env=dict(os.environ))
    assert done.returncode == 0 and done.stdout.startswith("broker ")


def test_json_anywhere_and_json_errors(database_url: str, tmp_path: Path, cli: Cli) -> None:
    cli.use(database_url, tmp_path / "keyring.json")
    before = cli("--json", "alliance", "list")
    after = cli("alliance", "list", "--json")
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(cli.refused("--json", "node", "revoke", "nobody"))["error"]["code"] == "not_found"


def test_an_unreachable_database_isone_line(tmp_path: Path, cli: Cli) -> None:
    cli.use("postgresql+asyncpg://postgres@127.0.0.1:1/nothing", tmp_path / "keyring.json")
    assert "database unavailable" in cli.refused("node", "list")


# The engine plays no part in a taken port: SQLite only.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_port_in_use_is_one_line_before_anything_is_printed(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path / "keyring.json")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        commands = (["serve", "--port", port], ["demo", "--port", port, "--dir", str(tmp_path / "demo")])
        procs = [
            Forked(["-m", "broker", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for args in commands
        ]  # both at once, processes of their own: their logging on stderr included
        outcomes = [(proc.wait(timeout=120), *proc.communicate()) for proc in procs]
    for code, out, err in outcomes:
        assert code == 2
        assert "already in use" in one_line(err.decode())
        assert b"token" not in out


def test_config_check_names_an_unknown_key(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    for source in CONFIG.glob("*.toml"):
        (folder / source.name).write_text(source.read_text())
    cli.use(CONFIG_DIR=str(folder))
    assert json.loads(cli.ok("config", "check", "--json").stdout)["valid"] is True
    broker_toml = folder / "broker.toml"
    broker_toml.write_text(broker_toml.read_text().replace("max_body_bytes", "max_body_byte"))
    line = cli.refused("config", "check")
    assert "broker.toml" in line and "server.max_body_byte" in line and "did you mean max_body_bytes" in line


def test_outside_the_project_the_missing_config_directory_is_named(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    line = cli.refused("node", "list")
    assert "BROKER_CONFIG_DIR" in line and "not a directory" not in line


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # logging, whatever the engine
def test_serve_logs_json_lines_at_the_level_asked(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path / "keyring.json")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    proc = Forked(
        [
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


def _human(done: Ran | subprocess.CompletedProcess[str]) -> str:
    """Human output: exit 0, and no Python reprs (brackets, quotes, None, True/False)."""
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), done.args
    for marker in ("[", "]", "'", "None", "True", "False"):
        assert marker not in done.stdout, (done.args, marker, done.stdout)
    return done.stdout


def test_human_output_shows_no_python_reprs(database_url: str, tmp_path: Path, cli: Cli) -> None:
    cli.use(database_url, tmp_path / "keyring.json")
    label = json.dumps({"classification": "SECRET", "releasable_to": ["NATO", "SWE"]})
    added = _human(
        cli(
            "node", "add", "usa-1", "--nation", "USA", "--clearance", "SECRET",
            "--roles", "publish,subscribe", "--caveats", "CT-OPS,NOFORN",
        )
    )  # fmt: skip
    assert "token: abk_" in added
    listed = _human(cli("node", "list")).splitlines()
    header = listed[0].split()
    assert header[:5] == ["id", "nation", "clearance", "caveats", "roles"], listed
    assert listed[1].split()[:5] == ["usa-1", "USA", "SECRET", "CT-OPS,NOFORN", "publish,subscribe"]
    updated = _human(cli("node", "update", "usa-1", "--roles", "subscribe,audit"))
    assert "roles: subscribe, audit" in updated.splitlines()
    assert "ed25519_public_key: -" in updated.splitlines()  # nothing is shown as -
    _human(cli("alliance", "create", "TST", "--name", "Test alliance"))
    _human(cli("alliance", "join", "TST", "USA"))
    alliances = _human(cli("alliance", "list"))
    assert "TST      Test alliance (1 members, history full): USA" in alliances.splitlines()
    assert any(line.startswith("NATO ") and ": ALB, BEL, " in line for line in alliances.splitlines())
    _human(cli("collection", "add", "--title", "C2", "--topics", "c2,ransomware", "--label", label))
    collections = _human(cli("collection", "list"))
    assert "c2,ransomware" in collections and "classification=SECRET releasable_to=NATO,SWE" in collections
    rotated = _human(cli("keys", "rotate"))
    assert "retired_destroyed: no" in rotated.splitlines()
    assert "classification_levels: UNCLASSIFIED, RESTRICTED" in _human(cli("config", "check"))
    assert "migrated: yes" in _human(cli("db", "upgrade")).splitlines()


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subcommands(child, (*path, name))
            return
    yield path


def _leaf(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_every_option_names_its_default_and_valid_values() -> None:
    """Every argument is explained; every optional one says what happens without it; every one
    with choices names them."""
    root = build_parser()
    commands = list(_subcommands(root))
    assert ("node", "add") in commands and ("pki", "init-ca") in commands and ("serve",) in commands
    for path in commands:
        for action in _leaf(root, path)._actions:
            if action.dest in ("help", "version", "json"):
                continue
            where = f"broker {' '.join(path)} {action.option_strings or action.dest}"
            assert action.help, f"{where}: no help"
            if action.option_strings and not action.required:
                assert "default" in action.help, f"{where}: no default named"
            for choice in action.choices or ():
                assert str(choice) in action.help, f"{where}: {choice} not named"


def test_help_names_the_policy_levels_and_the_roles(tmp_path: Path, cli: Cli) -> None:
    folder = tmp_path / "config"
    shutil.copytree(CONFIG, folder)
    policy = folder / "policy.toml"
    policy.write_text(policy.read_text().replace('"TOP_SECRET"', '"TOP_SECRET", "COSMIC_TOP_SECRET"', 1))
    cli.use(CONFIG_DIR=str(folder))
    configured = Settings.load(env={"BROKER_CONFIG_DIR": str(folder)}).policy.levels
    assert "COSMIC_TOP_SECRET" in configured
    for args in (("node", "add", "--help"), ("node", "update", "--help"), ("collection", "add", "--help")):
        text = " ".join(cli.ok(*args).stdout.split())
        assert ", ".join(configured) in text, (args, text)
    roles = " ".join(cli.ok("node", "add", "--help").stdout.split())
    assert all(role in roles for role in ROLES)
    serve = " ".join(cli.ok("serve", "--help").stdout.split())
    assert "off, optional (a certificate or a token) or required (default: off" in serve


async def test_the_demo_guide_says_what_each_token_is_for_and_how_to_reach_its_data(
    ctx: Context, settings: Settings, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    guide, _live = await prepare(ctx, settings, tmp_path / "pki")
    lines = guide.splitlines()
    for spec in DEMO_NODES:
        at = next(
            i for i, line in enumerate(lines) if line.split()[:1] == [spec["id"]] and "token abk_" in line
        )
        assert lines[at + 1].split()[0] == "for:" and len(lines[at + 1].split()) > 3, lines[at : at + 2]
    export = next(line.split() for line in lines if line.strip().startswith("export "))
    env = dict(shlex.split(word)[0].split("=", 1) for word in export[1:])
    assert set(env) == {"BROKER_DATABASE_URL", "BROKER_KEYRING", "BROKER_CONFIG_DIR"}
    assert all(Path(env[name]).is_absolute() for name in ("BROKER_KEYRING", "BROKER_CONFIG_DIR"))
    # The printed environment is enough for the CLI to manage the demo's data.
    cli.use(**{name.removeprefix("BROKER_"): value for name, value in env.items()})
    monkeypatch.chdir(tmp_path)
    listed = await asyncio.to_thread(cli.ok, "node", "list")
    assert {spec["id"] for spec in DEMO_NODES} <= {line.split()[0] for line in listed.stdout.splitlines()}


# Which `migrations` package is imported does not depend on the engine: SQLite only.
@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def test_db_upgrade_runs_its_own_migrations_from_any_working_directory(
    empty_database_url: str, tmp_path: Path, cli: Cli
) -> None:
    # `python -m broker` puts the working directory first on sys.path: run from another
    # project's directory, that project's `migrations` package must not be taken for ours.
    project = tmp_path / "project"
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "migrations" / "__init__.py").write_text("")
    (project / "migrations" / "env.py").write_text("raise SystemExit('another project migrated')\n")
    env = cli_env(empty_database_url, tmp_path / "keys" / "keyring.json")
    done = run_cli("db", "upgrade", env=env, cwd=project)
    assert "migrated: yes" in _human(done).splitlines()
    cli.use(empty_database_url, tmp_path / "keys" / "keyring.json")
    assert "migrated: yes" in _human(cli("db", "upgrade")).splitlines()
