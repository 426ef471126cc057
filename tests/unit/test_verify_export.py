"""Offline export verification: every kind of tampering is caught and named."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.crypto import merkle, notes
from broker.crypto.chain import GENESIS, event_hash
from broker.crypto.verify_export import verify
from broker.domain.records import AuditDraft, Head, event_document
from broker.services.audit import chain

KEY = secrets.token_bytes(32)
PUBLIC = notes.public_key(KEY)
ORIGIN = "test.example/audit"


def build(n: int = 12, checkpoints: tuple[int, ...] = (5, 12)) -> list[str]:
    head = Head(report_seq=0, audit_seq=0, audit_hash=GENESIS, change_counter=0)
    drafts = [AuditDraft(action="read", actor=f"n{i}", report=f"r{i}", decision="allow") for i in range(n)]
    events, _, _ = chain(head, drafts, now=datetime(2026, 1, 1, tzinfo=UTC))
    lines = [
        json.dumps(
            {**event_document(seq=e.seq, time=e.time, draft=e.draft, prev_hash=e.prev_hash), "hash": e.hash}
        )
        for e in events
    ]
    for size in checkpoints:
        frontier, _ = merkle.append([], [bytes.fromhex(e.hash) for e in events[:size]], 0)
        note, _ = notes.sign(
            notes.CheckpointBody(ORIGIN, size, merkle.root_of(frontier)), name=ORIGIN, private_key=KEY
        )
        lines.append(json.dumps({"checkpoint": _fields(note)}))
    return lines


def _fields(note: str) -> dict[str, Any]:
    """A checkpoint record as the broker exports it: the note and the fields beside it."""
    body = notes.verify(note, name=ORIGIN, public=PUBLIC)
    stamp = base64.b64decode(note.rsplit(" ", 1)[-1])
    return {
        "size": body.size,
        "head": body.root.hex(),
        "time": "2026-01-01T00:00:00Z",
        "key_id": stamp[:4].hex(),
        "signature": base64.b64encode(stamp[4:]).decode(),
        "origin": ORIGIN,
        "note": note,
    }


def rehash(line: str, **changes: Any) -> str:
    event = {**json.loads(line), **changes}
    event["hash"] = event_hash(event)
    return json.dumps(event)


def test_intact_export_verifies() -> None:
    finding = verify(build(), public_key=PUBLIC)
    assert finding.ok and finding.kind == "intact"


def test_altered_content_is_named() -> None:
    lines = build()
    event = json.loads(lines[6])
    event["decision"] = "deny"
    lines[6] = json.dumps(event)
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq, finding.line) == ("altered", 7, 7)


def test_altered_and_rehashed_is_named_by_the_broken_link() -> None:
    lines = build()
    lines[3] = rehash(lines[3], reason="forged")
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq) == ("altered", 4)


def test_the_first_event_re_linked_and_rehashed_is_named_itself() -> None:
    # Its prev_hash must be the genesis value: there is no event 0 to blame for the broken link.
    lines = build()
    lines[0] = rehash(lines[0], prev_hash="1" * 64)
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq, finding.line) == ("altered", 1, 1)
    assert "event 0" not in finding.message and "genesis" in finding.message, finding.message


def test_rewritten_tail_is_caught_by_the_checkpoint_root() -> None:
    lines = build()
    prev = json.loads(lines[7])["prev_hash"]
    for i in range(7, 12):  # rewrite events 8..12 consistently: the chain alone cannot tell
        line = rehash(lines[i], prev_hash=prev, actor="mallory")
        lines[i], prev = line, json.loads(line)["hash"]
    finding = verify(lines, public_key=PUBLIC)
    assert finding.kind == "altered"
    assert finding.seq == 6  # events 6..12: after the intact checkpoint at 5
    assert "rewritten" in finding.message


def test_inserted_event_is_named() -> None:
    lines = build()
    lines.insert(4, lines[3])
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq, finding.line) == ("inserted", 4, 5)


def test_removed_event_is_named() -> None:
    lines = build()
    del lines[8]
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq) == ("removed", 9)


def test_reordered_events_are_named() -> None:
    lines = build()
    lines[2], lines[5] = lines[5], lines[2]
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.line) == ("reordered", 3)
    assert "event 6 stands where event 3 belongs" in finding.message


def test_truncated_tail_is_caught() -> None:
    lines = build()
    del lines[10:12]  # drop events 11 and 12, keep the checkpoints
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq) == ("truncated", 11)


def test_events_beyond_the_checkpoint_are_not_trusted() -> None:
    lines = build(n=12, checkpoints=(10,))
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.seq) == ("inserted", 11)


@pytest.mark.parametrize("case", ["wrong key", "forged note", "no checkpoint"])
def test_signature_problems(case: str) -> None:
    lines = build()
    public = PUBLIC
    if case == "wrong key":
        public = notes.public_key(secrets.token_bytes(32))
    elif case == "forged note":
        cp = json.loads(lines[-1])
        cp["checkpoint"]["note"] = cp["checkpoint"]["note"].replace("\n12\n", "\n11\n")
        lines[-1] = json.dumps(cp)
    else:
        lines = lines[:-2]
    assert verify(lines, public_key=public).kind == "signature"


def test_signed_note_format() -> None:
    body = notes.CheckpointBody(ORIGIN, 3, bytes(32))
    note, signature = notes.sign(body, name=ORIGIN, private_key=KEY)
    text, _, sig_line = note.partition("\n\n")
    assert text + "\n" == f"{ORIGIN}\n3\n{'A' * 43}=\n"
    assert sig_line.startswith(f"\u2014 {ORIGIN} ") and sig_line.endswith("\n")
    assert notes.verify(note, name=ORIGIN, public=PUBLIC) == body
    assert notes.vkey(ORIGIN, PUBLIC).startswith(f"{ORIGIN}+{notes.key_id(ORIGIN, PUBLIC).hex()}+")
    assert len(signature) == 64


# Rollback, the fields beside each note, and inputs that cannot be checked at all.


def _events(lines: list[str]) -> list[str]:
    return [line for line in lines if "checkpoint" not in json.loads(line)]


def _note_at(lines: list[str], size: int, key: bytes = KEY, root: bytes | None = None) -> str:
    """A note signed over the first ``size`` events of the export (or over ``root``)."""
    if root is None:
        frontier, _ = merkle.append(
            [], [bytes.fromhex(json.loads(e)["hash"]) for e in _events(lines)[:size]], 0
        )
        root = merkle.root_of(frontier)
    return notes.sign(notes.CheckpointBody(ORIGIN, size, root), name=ORIGIN, private_key=key)[0]


def _rolled_back(lines: list[str], size: int) -> list[str]:
    """The export as it stood at its checkpoint of ``size``: later events and checkpoints cut off."""
    kept = [line for line in lines if json.loads(line).get("checkpoint", {}).get("size", 0) <= size]
    return _events(kept)[:size] + [line for line in kept if "checkpoint" in json.loads(line)]


def test_export_rolled_back_to_an_earlier_checkpoint_is_caught_by_a_trusted_checkpoint() -> None:
    full = build()
    rolled = _rolled_back(full, 5)
    assert verify(rolled, public_key=PUBLIC).ok  # on its own it is a valid, smaller export
    finding = verify(rolled, public_key=PUBLIC, trusted=_note_at(full, 12))
    assert (finding.ok, finding.kind, finding.seq, finding.exit_code) == (False, "rolled_back", 6, 1)
    assert "rolled back" in finding.message and "12" in finding.message


@pytest.mark.parametrize("size", [1, 5, 7, 12])
def test_export_extending_the_trusted_checkpoint_is_intact(size: int) -> None:
    lines = build()
    finding = verify(lines, public_key=PUBLIC, trusted=_note_at(lines, size))
    assert (finding.ok, finding.kind, finding.exit_code) == (True, "intact", 0)
    assert "trusted" in finding.message


@pytest.mark.parametrize(("size", "first"), [(3, 1), (5, 1), (7, 6), (12, 6)])
def test_export_that_does_not_reproduce_the_trusted_root_is_caught(size: int, first: int) -> None:
    lines = build()
    trusted = _note_at(lines, size, root=secrets.token_bytes(32))  # the broker signed another history
    finding = verify(lines, public_key=PUBLIC, trusted=trusted)
    assert (finding.ok, finding.kind, finding.seq, finding.exit_code) == (False, "inconsistent", first, 1)
    assert f"trusted checkpoint at size {size}" in finding.message


def test_trusted_checkpoint_is_checked_after_the_events_themselves() -> None:
    lines = _rolled_back(build(), 5)
    event = json.loads(lines[2])
    event["decision"] = "deny"
    lines[2] = json.dumps(event)
    finding = verify(lines, public_key=PUBLIC, trusted=_note_at(build(), 12))
    assert (finding.kind, finding.seq) == ("altered", 3)


@pytest.mark.parametrize(
    "form", ["note", "note and newline", "JSON string", "escaped text", "export line", "checkpoint object"]
)
def test_trusted_checkpoint_is_accepted_as_written(form: str) -> None:
    lines = build()
    note = _note_at(lines, 12)
    quoted = json.dumps(note)
    text = {
        "note": note,
        "note and newline": note + "\n",  # as `jq -r .note` writes it
        "JSON string": quoted,
        "escaped text": quoted[1:-1],  # copied from between the quotes in the export
        "export line": lines[-1],
        "checkpoint object": json.dumps(json.loads(lines[-1])["checkpoint"], indent=2),
    }[form]
    finding = verify(lines, public_key=PUBLIC, trusted=text)
    assert finding.ok, finding.message


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("garbage", "malformed"),
        ("no note", "malformed"),
        ("bad size", "malformed"),
        ("other key", "untrusted"),
        ("forged", "untrusted"),
    ],
)
def test_unusable_trusted_checkpoint_is_not_tampering(case: str, kind: str) -> None:
    lines = build()
    note = _note_at(lines, 12)
    text = {
        "garbage": "hello\n",
        "no note": json.dumps({"size": 12, "head": "00" * 32}),
        "bad size": note.replace("\n12\n", "\ntwelve\n"),
        "other key": _note_at(lines, 12, key=secrets.token_bytes(32)),
        "forged": note.replace("\n12\n", "\n13\n"),
    }[case]
    finding = verify(lines, public_key=PUBLIC, trusted=text)
    assert (finding.ok, finding.kind, finding.exit_code) == (False, kind, 2)
    assert "trusted checkpoint" in finding.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", 11),
        ("size", 13),
        ("size", "12"),
        ("size", None),
        ("head", "00" * 32),
        ("head", "not hex"),
        ("head", "\u00e9"),
        ("root", "00" * 32),
        ("signature", base64.b64encode(bytes(64)).decode()),
        ("signature", "\u00e9"),
    ],
)
def test_checkpoint_fields_must_agree_with_the_signed_note(field: str, value: Any) -> None:
    lines = build()
    record = json.loads(lines[-1])
    record["checkpoint"][field] = value
    lines[-1] = json.dumps(record)
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.ok, finding.kind, finding.line, finding.exit_code) == (False, "checkpoint", 14, 1)
    assert f"line 14: the checkpoint's {field}" in finding.message
    assert "signed note" in finding.message


@pytest.mark.parametrize("field", ["head", "root"])
def test_checkpoint_fields_that_agree_in_another_spelling_pass(field: str) -> None:
    lines = build()
    record = json.loads(lines[-1])
    root = notes.verify(record["checkpoint"]["note"], name=ORIGIN, public=PUBLIC).root
    record["checkpoint"][field] = root.hex().upper() if field == "head" else base64.b64encode(root).decode()
    lines[-1] = json.dumps(record)
    assert verify(lines, public_key=PUBLIC).ok


def _bad_note(note: str, case: str) -> Any:
    text = note.partition("\n\n")[0]
    origin, size, root = text.split("\n")
    return {
        "not text": 5,
        "missing": None,
        "empty": "",
        "garbage": "hello",
        "no blank line": note.replace("\n\n", "\n"),
        "size not a number": note.replace(f"\n{size}\n", "\ntwelve\n"),
        "negative size": note.replace(f"\n{size}\n", f"\n-{size}\n"),
        "leading zero": note.replace(f"\n{size}\n", f"\n0{size}\n"),
        "short root": note.replace(root, "AAAA"),
        "root not base64": note.replace(root, "!" * 44),
        "root not ASCII": note.replace(root, "\u00e9" * 44),
        "signature not ASCII": f"{text}\n\n\u2014 {origin} \u00e9\u00e9\u00e9\u00e9\n",
        "lone surrogate": note.replace(origin, origin + "\ud800", 1),
        "no signature line": f"{text}\n\n",
        "signature line garbled": f"{text}\n\nnot a signature\n",
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "not text",
        "missing",
        "empty",
        "garbage",
        "no blank line",
        "size not a number",
        "negative size",
        "leading zero",
        "short root",
        "root not base64",
        "root not ASCII",
        "signature not ASCII",
        "lone surrogate",
        "no signature line",
        "signature line garbled",
    ],
)
def test_malformed_note_in_the_export_is_not_tampering(case: str) -> None:
    lines = build()
    record = json.loads(lines[12])
    record["checkpoint"]["note"] = _bad_note(record["checkpoint"]["note"], case)
    if case == "missing":
        del record["checkpoint"]["note"]
    lines[12] = json.dumps(record)
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.ok, finding.kind, finding.line, finding.exit_code) == (False, "malformed", 13, 2)
    assert finding.message.startswith("line 13: ")


def test_checkpoint_record_that_is_not_an_object_is_malformed() -> None:
    lines = build()
    lines[12] = json.dumps({"checkpoint": 5})
    finding = verify(lines, public_key=PUBLIC)
    assert (finding.kind, finding.line, finding.exit_code) == ("malformed", 13, 2)


# y = 2 is not the y-coordinate of any point on edwards25519: no x satisfies the curve equation.
NOT_A_POINT = (2).to_bytes(32, "little")


@pytest.mark.parametrize(
    "public",
    [b"", b"\x00\x00\x00", PUBLIC + b"\x00", NOT_A_POINT],
    ids=["empty", "3 bytes", "33 bytes", "no point"],
)
def test_malformed_public_key_is_not_tampering(public: bytes) -> None:
    finding = verify(build(), public_key=public)
    assert (finding.ok, finding.kind, finding.exit_code) == (False, "malformed", 2)
    assert "public key" in finding.message
    assert not notes.valid_public_key(public)
    assert notes.valid_public_key(PUBLIC)


def test_exit_codes_name_tampering_only() -> None:
    lines = build()
    assert verify(lines, public_key=PUBLIC).exit_code == 0
    assert verify(lines[:-2], public_key=PUBLIC).exit_code == 1  # no checkpoint: unverifiable, tampered
    del lines[8]
    assert verify(lines, public_key=PUBLIC).exit_code == 1
    assert verify(["not json"], public_key=PUBLIC).exit_code == 2


@pytest.mark.parametrize(
    ("at", "key", "forged"),
    [(0, "action", "publish"), (3, "actor", "gbr-1"), (12, "checkpoint", {"size": 999})],
    ids=["event action", "event actor", "checkpoint record"],
)
def test_a_key_written_twice_is_not_intact(at: int, key: str, forged: object) -> None:
    """The broker writes every key once. A line that holds one twice says two things, and a
    reader that takes the first (a person, grep, a strict parser) sees the forged one, while
    json.loads kept the last, the genuine one, and found its hash intact."""
    lines = build()
    lines[at] = "{" + json.dumps(key) + ": " + json.dumps(forged) + ", " + lines[at][1:]
    finding = verify(lines, public_key=PUBLIC)
    assert not finding.ok, finding.message
    assert (finding.kind, finding.line, finding.exit_code) == ("altered", at + 1, 1)
    assert f"'{key}' twice" in finding.message


def test_an_export_is_verified_without_holding_its_events() -> None:
    """What is kept of each event is what the checks need, not the parsed event, and the tree is
    folded a slice at a time: an export of a million events is verified in a few hundred MB."""
    import tracemalloc

    n = 10_000
    lines = build(n, (n // 2, n))
    tracemalloc.start()
    try:
        finding = verify(iter(lines), public_key=PUBLIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert finding.ok, finding
    assert peak < 1_000 * n, f"{peak / n:.0f} bytes an event at the peak"


def test_a_trace_reads_each_export_as_it_goes(tmp_path: Path) -> None:
    """`broker audit trace` reads its exports line by line, as `audit verify` does, never a whole
    file as text and a list of lines."""
    import tracemalloc

    from broker.crypto.trace import trace

    n = 10_000
    export = tmp_path / "export.ndjson"
    export.write_text("\n".join(build(n, (n // 2, n))) + "\n")
    tracemalloc.start()
    try:
        found = trace("r7", [export], {ORIGIN: PUBLIC})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.exports == {
        str(export): f"{ORIGIN}: OK intact: {n} events, chain and Merkle root match "
        f"the checkpoint signed at size {n}"
    }, found
    assert peak < 500 * n, f"{peak / n:.0f} bytes an event at the peak"


def test_a_trace_finds_a_checkpoint_key_written_with_escapes(tmp_path: Path) -> None:
    # JSON may spell the key "checkpoint" with escapes; `audit verify` reads it, and so must trace.
    from broker.crypto.trace import trace

    lines = [line.replace('"checkpoint"', '"\\u0063heckpoint"', 1) for line in build()]
    export = tmp_path / "export.ndjson"
    export.write_text("\n".join(lines) + "\n")
    verified = verify(lines, public_key=PUBLIC)
    assert verified.ok, verified
    found = trace("r7", [export], {ORIGIN: PUBLIC})
    assert list(found.exports.values()) == [f"{ORIGIN}: OK {verified.message}"], found
