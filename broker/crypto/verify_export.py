"""Offline verification of an audit export: the hash chain, the Merkle tree and the signed
checkpoints. Names the first event that was altered, inserted, removed or reordered, or says
the tail was truncated. Pure: the caller reads the file and supplies the broker's public key."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from broker.crypto import merkle, notes
from broker.crypto.chain import GENESIS, event_hash


@dataclass(frozen=True)
class Finding:
    ok: bool
    kind: str  # intact | altered | inserted | removed | reordered | truncated | signature | malformed
    message: str
    seq: int | None = None
    line: int | None = None


def _fail(kind: str, message: str, seq: int | None = None, line: int | None = None) -> Finding:
    return Finding(ok=False, kind=kind, message=message, seq=seq, line=line)


def _parse(lines: Iterable[str]) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, dict[str, Any]]]]:
    events: list[tuple[int, dict[str, Any]]] = []
    checkpoints: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError(f"line {number} is not a JSON object")
        (checkpoints if "checkpoint" in obj else events).append((number, obj))
    return events, checkpoints


def _check_order(events: list[tuple[int, dict[str, Any]]]) -> Finding | None:
    where: dict[int, int] = {}
    for line, event in events:
        seq = event.get("seq")
        if not isinstance(seq, int):
            return _fail("malformed", f"line {line}: event without an integer seq", line=line)
        if seq in where:
            return _fail(
                "inserted",
                f"line {line}: a second event with seq {seq} (the first is on line "
                f"{where[seq]}): an event was inserted",
                seq,
                line,
            )
        where[seq] = line
    for position, (line, event) in enumerate(events, start=1):
        if event["seq"] == position:
            continue
        if position in where:
            return _fail(
                "reordered",
                f"line {line}: event {event['seq']} stands where event {position} "
                f"belongs (event {position} is on line {where[position]}): events were reordered",
                event["seq"],
                line,
            )
        return _fail(
            "removed",
            f"line {line}: event {position} is missing (the next present is "
            f"{event['seq']}): events were removed",
            position,
            line,
        )
    return None


def _check_chain(events: list[tuple[int, dict[str, Any]]]) -> Finding | None:
    prev = GENESIS
    for line, event in events:
        seq = event["seq"]
        if event_hash(event) != event.get("hash"):
            return _fail(
                "altered",
                f"line {line}: event {seq} was altered: its content does not match its hash",
                seq,
                line,
            )
        if event.get("prev_hash") != prev:
            return _fail(
                "altered",
                f"line {line}: event {seq} does not link to event {seq - 1}: event "
                f"{seq - 1} was altered and re-hashed, or event {seq} was inserted",
                seq - 1,
                line,
            )
        prev = event["hash"]
    return None


def verify(lines: Iterable[str], *, public_key: bytes) -> Finding:
    """Check an NDJSON export (event lines, then ``{"checkpoint": {...}}`` lines)."""
    try:
        events, checkpoint_lines = _parse(lines)
    except ValueError as exc:
        return _fail("malformed", f"not an audit export: {exc}")
    if not checkpoint_lines:
        return _fail("signature", "the export carries no signed checkpoint")
    signed: list[tuple[int, notes.CheckpointBody]] = []
    for line, obj in checkpoint_lines:
        note = obj["checkpoint"].get("note", "") if isinstance(obj["checkpoint"], dict) else ""
        origin = note.split("\n", 1)[0]
        try:
            signed.append((line, notes.verify(note, name=origin, public=public_key)))
        except notes.NoteError as exc:
            return _fail("signature", f"line {line}: checkpoint signature invalid: {exc}", line=line)
    finding = _check_order(events) or _check_chain(events)
    if finding is not None:
        return finding
    return _check_tree(events, signed)


def _check_tree(
    events: list[tuple[int, dict[str, Any]]], signed: list[tuple[int, notes.CheckpointBody]]
) -> Finding:
    signed.sort(key=lambda item: item[1].size)
    last = signed[-1][1]
    if len(events) < last.size:
        after = events[-1][1]["seq"] if events else 0
        return _fail(
            "truncated",
            f"the export ends at event {after} but the signed checkpoint covers "
            f"{last.size} events: the tail was truncated",
            after + 1,
        )
    if len(events) > last.size:
        line, event = events[last.size]
        return _fail(
            "inserted",
            f"line {line}: event {event['seq']} and those after it are not covered by any signed checkpoint",
            event["seq"],
            line,
        )
    frontier: list[merkle.Node] = []
    size, previous = 0, 0
    for line, body in signed:
        leaves = [bytes.fromhex(e["hash"]) for _, e in events[size : body.size]]
        frontier, _ = merkle.append(frontier, leaves, size)
        size = body.size
        if merkle.root_of(frontier) != body.root:
            return _fail(
                "altered",
                f"events {previous + 1}..{body.size} do not match the checkpoint signed at "
                f"size {body.size} (line {line}): the log was rewritten there",
                previous + 1,
                line,
            )
        previous = body.size
    return Finding(
        ok=True,
        kind="intact",
        message=f"intact: {len(events)} events, chain and Merkle root match "
        f"the checkpoint signed at size {last.size}",
    )
