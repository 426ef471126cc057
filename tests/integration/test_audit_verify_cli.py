"""`broker audit verify` as an auditor runs it: a later export checked against a checkpoint saved
earlier, a rolled-back export, checkpoint fields that disagree with their signed note, checkpoints
of another log signed with the same key, and inputs that cannot be checked at all (exit 2, one
line, no traceback)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
from pathlib import Path

import pytest

from broker.crypto import notes
from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings
from tests.conftest import CONFIG
from tests.integration.helpers import Cli, Ran
from tests.unit.test_verify_export import KEY as LOG_PRIVATE
from tests.unit.test_verify_export import ORIGIN, PUBLIC, build

OTHER = "other-broker.example/audit"


async def _add_nodes(ctx: Context, *names: str) -> None:
    for name in names:
        spec = {"id": name, "nation": "USA", "clearance": "SECRET", "roles": ["publish"], "caveats": []}
        await admin.add_node(ctx, spec, actor="test")


async def _export(cli: Cli, path: Path) -> list[str]:
    await asyncio.to_thread(cli.ok, "audit", "export", str(path), "--json")
    return path.read_text().splitlines()


async def test_rolled_back_export_and_altered_checkpoint_fields_are_caught(
    ctx: Context, settings: Settings, tmp_path: Path, cli: Cli
) -> None:
    cli.use(settings.database_url, settings.keyring_path)
    await _add_nodes(ctx, "usa-1", "usa-2", "usa-3")
    early = tmp_path / "early.ndjson"
    early_lines = await _export(cli, early)
    await _add_nodes(ctx, "usa-4", "usa-5")
    late = tmp_path / "late.ndjson"
    late_lines = await _export(cli, late)
    early_size = json.loads(early_lines[-1])["checkpoint"]["size"]
    late_size = json.loads(late_lines[-1])["checkpoint"]["size"]
    assert early_size < late_size

    # What the auditor kept: the raw note of the early export, the late export's checkpoint line.
    early_note = tmp_path / "early.note"
    early_note.write_text(json.loads(early_lines[-1])["checkpoint"]["note"])
    late_checkpoint = tmp_path / "late.checkpoint"
    late_checkpoint.write_text(late_lines[-1] + "\n")

    grown = await asyncio.to_thread(
        cli, "audit", "verify", str(late), "--trusted-checkpoint", str(early_note)
    )
    assert (grown.returncode, grown.stderr) == (0, ""), grown.stderr
    assert grown.stdout.startswith("OK intact") and f"trusted checkpoint at size {early_size}" in grown.stdout

    # The early export is the late one rolled back to its earlier checkpoint.
    rolled = await asyncio.to_thread(
        cli,
        "audit",
        "verify",
        str(early),
        "--trusted-checkpoint",
        str(late_checkpoint),
        "--json",
    )
    assert rolled.returncode == 1, rolled.stderr
    finding = json.loads(rolled.stdout)
    assert (finding["ok"], finding["kind"], finding["seq"]) == (False, "rolled_back", early_size + 1)
    assert "rolled back" in finding["message"]

    # A checkpoint whose head field no longer matches the root its note signs.
    record = json.loads(late_lines[-1])
    record["checkpoint"]["head"] = "00" * 32
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_text("\n".join([*late_lines[:-1], json.dumps(record)]) + "\n")
    caught = await asyncio.to_thread(cli, "audit", "verify", str(tampered))
    assert caught.returncode == 1, caught.stderr
    assert caught.stdout.startswith(f"TAMPERED line {len(late_lines)}: the checkpoint's head")


def _offline(cli: Cli, tmp_path: Path, *args: str) -> Ran:
    """The CLI with no database and no keyring behind it: verification is offline."""
    cli.use(f"sqlite+aiosqlite:///{tmp_path / 'absent.db'}", tmp_path / "absent-keyring.json")
    return cli(*args)


def _export_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(lines) + "\n")
    return path


KEY = base64.b64encode(PUBLIC).decode()
VKEY = notes.vkey(ORIGIN, PUBLIC)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("short key", "--key"),
        ("key not a point", "--key"),
        ("key not ASCII", "--key"),
        ("note not text", "line 13"),
        ("note garbled", "line 13"),
        ("trusted garbled", "trusted checkpoint"),
        ("trusted by another key", "trusted checkpoint"),
        ("trusted missing", "absent.note"),
        ("export missing", "absent.ndjson"),
    ],
)
def test_unusable_input_exits_2_with_one_line(tmp_path: Path, case: str, expected: str, cli: Cli) -> None:
    lines = build()
    key = KEY
    extra: list[str] = []
    if case == "short key":
        key = "AAAA"
    elif case == "key not ASCII":
        key = "\u00e9" * 44
    elif case == "key not a point":
        key = base64.b64encode((2).to_bytes(32, "little")).decode()
    elif case.startswith("note"):
        record = json.loads(lines[12])
        record["checkpoint"]["note"] = 5 if case == "note not text" else "hello\n\nworld\n"
        lines[12] = json.dumps(record)
    elif case.startswith("trusted"):
        note = tmp_path / ("absent.note" if case == "trusted missing" else "trusted.note")
        extra = ["--trusted-checkpoint", str(note)]
        if case == "trusted garbled":
            note.write_text("alliance\n12\n")
        elif case == "trusted by another key":
            body = notes.CheckpointBody(ORIGIN, 12, bytes(32))
            note.write_text(notes.sign(body, name=ORIGIN, private_key=secrets.token_bytes(32))[0])
    path = _export_file(tmp_path, lines)
    if case == "export missing":
        path = tmp_path / "absent.ndjson"
    result = _offline(cli, tmp_path, "audit", "verify", str(path), "--key", key, *extra, "--json")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1  # with --json, one JSON error object
    assert expected in json.loads(result.stderr)["error"]["message"]


def test_offline_verdicts_and_json(tmp_path: Path, cli: Cli) -> None:
    lines = build()
    path = _export_file(tmp_path, lines)
    intact = _offline(cli, tmp_path, "audit", "verify", str(path), "--key", KEY, "--json")
    assert (intact.returncode, intact.stderr) == (0, "")
    assert json.loads(intact.stdout)["kind"] == "intact"

    del lines[8]
    path = _export_file(tmp_path, lines)
    removed = _offline(cli, tmp_path, "audit", "verify", str(path), "--key", KEY)
    assert removed.returncode == 1
    assert removed.stdout.startswith("TAMPERED line 9: event 9 is missing")


def _of_log(line: str, origin: str) -> str:
    """An export's checkpoint line signed again, with the same key, as a checkpoint of the log
    named ``origin`` (a key reused by another broker, or another instance with another origin)."""
    record = json.loads(line)
    body = notes.parse(record["checkpoint"]["note"])[1]
    moved = notes.CheckpointBody(origin, body.size, body.root)
    note, signature = notes.sign(moved, name=origin, private_key=LOG_PRIVATE)
    record["checkpoint"].update(
        note=note,
        origin=origin,
        key_id=notes.key_id(origin, PUBLIC).hex(),
        signature=base64.b64encode(signature).decode(),
    )
    return json.dumps(record)


def test_checkpoints_of_another_log_are_refused(tmp_path: Path, cli: Cli) -> None:
    """A vkey names the log: an export whose checkpoints are another log's is refused (exit 1,
    kind ``origin``), and so is a trusted checkpoint of another log (exit 2). A bare base64 key
    names no log: the export's checkpoints must then be of one log."""
    lines = build()  # events on lines 1-12, checkpoints on lines 13 and 14
    path = _export_file(tmp_path, [*lines[:12], *(_of_log(line, OTHER) for line in lines[12:])])
    other = _offline(cli, tmp_path, "audit", "verify", str(path), "--key", VKEY, "--json")
    assert other.returncode == 1, other.stderr
    finding = json.loads(other.stdout)
    assert (finding["kind"], finding["line"]) == ("origin", 13)
    assert f"origin {OTHER!r} is not {ORIGIN!r}" in finding["message"]
    assert _offline(cli, tmp_path, "audit", "verify", str(path), "--key", KEY).returncode == 0

    mixed = _export_file(tmp_path, [*lines[:13], _of_log(lines[13], OTHER)])
    result = _offline(cli, tmp_path, "audit", "verify", str(mixed), "--key", KEY, "--json")
    assert result.returncode == 1, result.stderr
    assert (json.loads(result.stdout)["kind"], json.loads(result.stdout)["line"]) == ("origin", 14)

    own = _export_file(tmp_path, lines)
    assert _offline(cli, tmp_path, "audit", "verify", str(own), "--key", VKEY).stdout.startswith("OK ")
    trusted = tmp_path / "trusted.note"
    trusted.write_text(json.loads(_of_log(lines[12], OTHER))["checkpoint"]["note"])
    refused = _offline(
        cli, tmp_path, "audit", "verify", str(own), "--key", VKEY, "--trusted-checkpoint", str(trusted)
    )
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout
    assert "trusted checkpoint" in refused.stderr and "origin" in refused.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_without_key_the_local_brokers_origin_is_pinned(
    ctx: Context, settings: Settings, tmp_path: Path, cli: Cli
) -> None:
    """Without --key the local keyring's key is pinned under this broker's [audit] origin: an
    export under another origin is not this broker's log, though the key signed it."""
    cli.use(settings.database_url, settings.keyring_path)
    await _add_nodes(ctx, "usa-1")
    export = tmp_path / "export.ndjson"
    await _export(cli, export)
    assert (await cli.run("audit", "verify", str(export))).returncode == 0
    config = tmp_path / "config"
    shutil.copytree(CONFIG, config)
    toml = config / "broker.toml"
    pinned = f'origin = "{settings.audit_origin}"'
    assert pinned in toml.read_text()
    toml.write_text(toml.read_text().replace(pinned, f'origin = "{OTHER}"'))
    cli.use(settings.database_url, settings.keyring_path, CONFIG_DIR=str(config))
    renamed = await cli.run("audit", "verify", str(export), "--json")
    assert renamed.returncode == 1, renamed.stderr
    assert json.loads(renamed.stdout)["kind"] == "origin"
