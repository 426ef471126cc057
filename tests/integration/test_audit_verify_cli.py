"""`broker audit verify` as an auditor runs it: a later export checked against a checkpoint saved
earlier, a rolled-back export, checkpoint fields that disagree with their signed note, and inputs
that cannot be checked at all (exit 2, one line, no traceback)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from pathlib import Path

import pytest

from broker.crypto import notes
from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings
from tests.integration.helpers import Cli, Ran
from tests.unit.test_verify_export import ORIGIN, PUBLIC, build


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
