"""What the command line shows and writes on the operator's side: a database password given in
the URL's query is hidden like one given before the host, a URL the broker cannot read is one
line naming no part of it, and an audit export is written like the broker's other files (a new
file, 0600, renamed into place), never through a link someone else planted at its name."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from broker.crypto import notes
from tests.integration.helpers import Cli
from tests.unit.test_verify_export import ORIGIN, PUBLIC, build

SECRET = "s3cret-pw"
VKEY = notes.vkey(ORIGIN, PUBLIC)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://broker@127.0.0.1:1/broker?password={SECRET}",
        f"postgresql+asyncpg://broker@127.0.0.1:1/broker?ssl=require&password={SECRET}",
    ],
    ids=["alone", "beside ssl"],
)
def test_config_check_hides_a_password_given_in_the_query(url: str, tmp_path: Path, cli: Cli) -> None:
    """asyncpg takes ``?password=`` as the password (SQLAlchemy passes the query on)."""
    cli.use(url, tmp_path / "keyring.json")
    for as_json in ([], ["--json"]):
        done = cli.ok("config", "check", *as_json)
        assert SECRET not in done.stdout + done.stderr
    shown = json.loads(cli.ok("config", "check", "--json").stdout)["database"]
    assert shown.startswith("postgresql+asyncpg://broker@127.0.0.1:1/broker?")
    assert "password=" in shown


def test_a_url_that_does_not_parse_is_one_line_without_its_password(tmp_path: Path, cli: Cli) -> None:
    """An '@' left unencoded in the password: SQLAlchemy reads what follows it as the port, and
    its error quotes that text."""
    cli.use(f"postgresql+asyncpg://broker:p@ss:{SECRET}@db:5432/broker", tmp_path / "keyring.json")
    for command in (["config", "check"], ["node", "list"]):
        line = cli.refused(*command)
        assert SECRET not in line and "BROKER_DATABASE_URL" in line, line


# What an export is written through plays no part in the engine: SQLite only.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_audit_export_refuses_a_planted_link_and_is_private(
    database_url: str, tmp_path: Path, cli: Cli
) -> None:
    """Someone who may write in the export's directory (a shared exports folder) links the
    export's name to a file of the operator's, here the keyring: the export must not write
    through the link (that would destroy every key), and what it writes only its owner reads."""
    keyring = tmp_path / "keyring.json"
    cli.use(database_url, keyring)
    cli.ok("audit", "key")  # the keyring exists and is bound
    before = keyring.read_bytes()
    shared = tmp_path / "exports"
    shared.mkdir()
    planted = shared / "audit.ndjson"
    planted.symlink_to(keyring)
    assert "symbolic link" in cli.refused("audit", "export", str(planted))
    assert keyring.read_bytes() == before
    planted.unlink()

    planted.write_text("an earlier export\n")
    planted.chmod(0o644)  # readable by all
    old = os.stat(planted).st_ino
    cli.ok("audit", "export", str(planted))
    assert json.loads(planted.read_text().splitlines()[-1])["checkpoint"]["size"] > 0
    assert stat.S_IMODE(planted.stat().st_mode) == 0o600
    assert os.stat(planted).st_ino != old
    assert sorted(p.name for p in shared.iterdir()) == ["audit.ndjson"]  # no temporary file left


@pytest.mark.parametrize("case", ["not UTF-8", "nested too deeply", "not a JSON object"])
def test_audit_trace_of_a_hostile_export_is_a_problem(case: str, tmp_path: Path, cli: Cli) -> None:
    """`audit trace` reads exports someone else made: one that is not text, whose checkpoint
    line nests deeper than Python's parser goes, or whose checkpoint is not an object, is reported
    like any unusable export."""
    lines = build()
    if case == "not UTF-8":
        body = ("\n".join(lines) + "\n").encode().replace(b'"read"', b'"r\xffad"', 1)
    elif case == "nested too deeply":
        body = ("\n".join(lines) + "\n" + '{"checkpoint": {"note": ' + "[" * 100_000 + "\n").encode()
    else:
        body = ("\n".join(lines) + "\n" + '{"checkpoint": "a note"}\n').encode()
    export = tmp_path / "export.ndjson"
    export.write_bytes(body)
    cli.use(KEYRING=str(tmp_path / "absent-keyring.json"), CONFIG_DIR=str(tmp_path / "absent"))
    done = cli("audit", "trace", "r0", str(export), "--key", VKEY)
    assert "Traceback" not in done.stderr and "Error" not in done.stdout + done.stderr, done.stderr
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.endswith("NOT VERIFIED\n")
    assert case in done.stdout, done.stdout
