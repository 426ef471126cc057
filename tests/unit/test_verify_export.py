"""Offline export verification: every kind of tampering is caught and named."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
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
        lines.append(json.dumps({"checkpoint": {"size": size, "note": note}}))
    return lines


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
