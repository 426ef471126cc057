"""A database is bound to the keyring that first opened it (issue 11): another keyring, or none,
is refused by `broker serve` and every command with one line and exit 2; rotation keeps the
binding; two brokers starting together on a new database with different keyrings agree."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from broker.crypto import keyring
from broker.services import ledger
from broker.services.context import Context
from broker.storage import keyringcheck
from tests.integration.conftest import Api
from tests.integration.helpers import Cli, Forked, Ran, body, cli_env, one_line, run_forked


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _command(cli: Cli, *args: str) -> Ran | subprocess.CompletedProcess[str]:
    """The command in this process, in the environment ``cli.use`` set; `serve` in a process of
    its own, whose run times out if a refusal regressed into serving (here it would not end)."""
    if args[0] == "serve":
        return run_forked("-m", "broker", *args, env=dict(os.environ))
    return cli(*args)


def _fingerprint(path: Path) -> str:
    return keyring.fingerprint(keyring.load(path).checkpoint_public_key)


def _other_keyring(tmp_path: Path) -> Path:
    path = tmp_path / "other" / "keyring.json"
    keyring.load_or_create(path)
    return path


def test_another_keyring_is_refused_by_every_command_and_serve(
    empty_database_url: str, tmp_path: Path, cli: Cli
) -> None:
    if empty_database_url.startswith("postgresql"):  # trust authentication ignores the password
        empty_database_url = make_url(empty_database_url).set(password="s3cret-pw").render_as_string(False)
    mine = tmp_path / "keys" / "keyring.json"
    cli.use(empty_database_url, mine).ok("db", "upgrade")
    other = _other_keyring(tmp_path)
    cli.use(empty_database_url, other)
    for args in (
        ("db", "upgrade"),
        ("node", "list"),
        ("alliance", "list"),
        ("audit", "key"),
        ("serve", "--port", _free_port()),
    ):
        done = _command(cli, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        line = one_line(done.stderr)
        assert _fingerprint(mine) in line and _fingerprint(other) in line, line
        assert str(other) in line and "BROKER_KEYRING" in line and "s3cret-pw" not in line
        assert "serving on" not in done.stderr and done.stdout == ""
    as_json = cli.refused("node", "list", "--json")
    assert json.loads(as_json)["error"]["code"] == "keyring_mismatch"
    # The right keyring still works, and nothing was rebound meanwhile.
    cli.use(empty_database_url, mine).ok("node", "list")


def test_a_missing_keyring_is_refused_and_not_created_for_a_bound_database(
    empty_database_url: str, tmp_path: Path, cli: Cli
) -> None:
    mine = tmp_path / "keys" / "keyring.json"
    cli.use(empty_database_url, mine).ok("db", "upgrade")
    fingerprint = _fingerprint(mine)
    moved = mine.rename(mine.with_name("moved.json"))
    for args in (("node", "list"), ("db", "upgrade"), ("serve", "--port", _free_port())):
        done = _command(cli, *args)
        assert done.returncode == 2, (args, done.stderr)
        line = one_line(done.stderr)
        assert f"no keyring at {mine}" in line and fingerprint in line and "BROKER_KEYRING" in line
        assert not mine.exists()  # no new keyring was made for a database bound to another
    moved.rename(mine)
    cli.ok("node", "list")


def test_keys_rotate_keeps_the_binding(empty_database_url: str, tmp_path: Path, cli: Cli) -> None:
    mine = tmp_path / "keys" / "keyring.json"
    cli.use(empty_database_url, mine).ok("db", "upgrade")
    before = keyring.load(mine)
    for args in (("keys", "rotate"), ("keys", "rotate", "--rewrap")):
        cli.ok(*args)
    after = keyring.load(mine)
    assert after.current != before.current and before.current not in after.keks  # retired
    for args in (("node", "list"), ("db", "upgrade"), ("audit", "key")):
        cli.ok(*args)


def test_two_upgrades_with_different_keyrings_started_together_agree(
    empty_database_url: str, tmp_path: Path, cli: Cli
) -> None:
    """One binds the new database, the other is refused: never both, never neither."""
    rings = [tmp_path / f"k{i}" / "keyring.json" for i in range(2)]
    for ring in rings:
        keyring.load_or_create(ring)
    procs = [  # two processes: the race between two brokers is the point
        Forked(
            ["-m", "broker", "db", "upgrade"],
            env=cli_env(empty_database_url, ring),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ring in rings
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _out, _err in outcomes)
    assert codes == [0, 2], outcomes
    winner = rings[[code for code, _o, _e in outcomes].index(0)]
    loser_err = next(err for code, _o, err in outcomes if code == 2)
    assert _fingerprint(winner) in one_line(loser_err)
    for ring in rings:
        done = cli.use(empty_database_url, ring)("node", "list")
        assert done.returncode == (0 if ring == winner else 2), done.stderr


async def test_an_unbound_database_is_bound_unless_its_checkpoints_say_otherwise(
    ctx: Context, database_url: str, tmp_path: Path, cli: Cli
) -> None:
    """A database from before the binding (like the test template) is bound on its first start,
    after its newest checkpoint, if any, verified with the keyring given."""
    await ledger.sign_checkpoint(ctx)  # signed by the fixture's keyring, ctx.keyring_path
    other = _other_keyring(tmp_path)
    line = await asyncio.to_thread(cli.use(database_url, other).refused, "node", "list")
    assert "did not sign the newest audit checkpoint" in line and _fingerprint(other) in line
    async with ctx.db.read_transaction() as tx:
        assert await keyringcheck.binding(tx) is None  # a refusal binds nothing
    await asyncio.to_thread(cli.use(database_url, ctx.keyring_path).ok, "node", "list")
    async with ctx.db.read_transaction() as tx:
        bound = await keyringcheck.binding(tx)
    assert bound is not None and bound.checkpoint_public_key == ctx.keyring.checkpoint_public_key


async def test_an_older_copy_of_the_keyring_lacking_a_kek_is_refused(
    api: Api, tmp_path: Path, cli: Cli
) -> None:
    """Same checkpoint key, but a KEK that wraps stored reports is missing (a backup taken before
    `keys rotate --rewrap`): refused, naming the KEK."""
    ctx = api.ctx
    usa = await api.node("usa-1", "USA")
    status, _receipt = await api.publish(usa, body())
    assert status == 201
    backup = tmp_path / "backup" / "keyring.json"
    keyring.save(backup, keyring.load(ctx.keyring_path))
    cli.use(ctx.settings.database_url, ctx.keyring_path)
    rotated = await asyncio.to_thread(cli.ok, "keys", "rotate", "--rewrap", "--json")
    new_kek = json.loads(rotated.stdout)["kek_id"]
    assert json.loads(rotated.stdout)["rewrapped"] == 1
    line = await asyncio.to_thread(cli.use(ctx.settings.database_url, backup).refused, "node", "list")
    assert f"lacks the key-encryption key {new_kek}" in line and str(backup) in line
    await asyncio.to_thread(cli.use(ctx.settings.database_url, ctx.keyring_path).ok, "node", "list")


async def test_no_keyring_is_made_for_an_unbound_database_that_was_used(
    api: Api, tmp_path: Path, cli: Cli
) -> None:
    # A database from before the binding, holding a report, and no keyring file: before, a new
    # keyring was written at BROKER_KEYRING (refused only later, and left behind).
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    missing = tmp_path / "elsewhere" / "keyring.json"
    line = await asyncio.to_thread(cli.use(api.ctx.settings.database_url, missing).refused, "node", "list")
    assert f"no keyring at {missing}" in line and "already holds reports or signed checkpoints" in line
    assert not missing.exists()


def test_the_binding_is_in_the_audit_log(empty_database_url: str, tmp_path: Path, cli: Cli) -> None:
    # Binding decides which keyring the database trusts from then on: like every change to what
    # it trusts, it is an audit event (once: later commands find the binding and add nothing),
    # and the exported log still verifies.
    mine = tmp_path / "keys" / "keyring.json"
    cli.use(empty_database_url, mine)
    for args in (("db", "upgrade"), ("node", "list"), ("db", "upgrade")):
        cli.ok(*args)
    export = tmp_path / "audit.ndjson"
    cli.ok("audit", "export", str(export))
    events = [json.loads(line) for line in export.read_text().splitlines()]
    bound = [e for e in events if e.get("action") == "keyring_bind"]
    assert len(bound) == 1, bound
    assert bound[0]["details"] == {"keyring": _fingerprint(mine)}
    assert bound[0]["actor"] == "broker" and bound[0]["decision"] == "allow"
    cli.ok("audit", "verify", str(export))
