"""What the command line shows and writes on the operator's side: a database password given in
the URL's query is hidden like one given before the host, and a URL the broker cannot read is
one line naming no part of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.helpers import Cli

SECRET = "s3cret-pw"


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
