"""``broker audit trace``: a report's path across several brokers' audit exports, offline.

Each export is verified as ``broker audit verify`` does, under the checkpoint key given for the
broker it names (its checkpoint's origin). In each, the report's ``publish`` (at its origin) or
allowed ``import`` (at every later hop) is found; each import names the upstream broker and the
hash of the upstream's event, which must be that event in the upstream's export. The path is
printed origin first. It holds when every export verifies, the report has one origin, and every
import's upstream event is found where it says."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.crypto import notes, verify_export


@dataclass(frozen=True)
class Hop:
    broker: str
    sequence: int  # the audit event's sequence in that broker's log
    event_hash: str
    action: str
    upstream: str | None = None  # the broker it was imported from
    upstream_event_hash: str | None = None


@dataclass(frozen=True)
class Trace:
    hops: tuple[Hop, ...]
    problems: tuple[str, ...]
    exports: dict[str, str]  # file -> "<broker>: <verification message>"

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.hops)


def _lines(path: Path) -> Iterator[str]:
    """An export's lines, read as they are needed, as ``broker audit verify`` reads them (an
    export may be larger than memory; each pass reads the file again)."""
    with path.open(encoding="utf-8") as fh:
        yield from fh


def _origin(lines: Iterable[str]) -> str | None:
    """The broker an export belongs to: its last checkpoint note's origin line."""
    origin = None
    for line in lines:
        if "checkpoint" not in line and "\\" not in line:  # an event line (a key spelled with
            continue  # escapes has a backslash): not parsed here
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # verify names the line
            continue
        checkpoint = record.get("checkpoint") if isinstance(record, dict) else None
        note = checkpoint.get("note") if isinstance(checkpoint, dict) else None
        if isinstance(note, str):
            origin = note.split("\n", 1)[0]
    return origin


def _event_of(lines: Iterable[str], broker: str, report_id: str) -> Hop | None:
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (
            not isinstance(event, dict)
            or event.get("report") != report_id
            or event.get("decision") != "allow"
        ):
            continue
        details = event.get("details") or {}
        if event.get("action") == "publish":
            return Hop(broker, int(event["seq"]), str(event["hash"]), "publish")
        if event.get("action") == "import":
            return Hop(
                broker,
                int(event["seq"]),
                str(event["hash"]),
                "import",
                details.get("upstream_broker"),
                details.get("upstream_event_hash"),
            )
    return None


def trace(report_id: str, files: Sequence[Path], keys: Mapping[str, bytes]) -> Trace:
    """Follow ``report_id`` through the exports ``files``; ``keys``: raw checkpoint public key
    by broker name (a broker without one cannot be verified: a problem)."""
    found: dict[str, Hop] = {}
    problems: list[str] = []
    exports: dict[str, str] = {}
    for path in files:
        try:
            followed = _follow(path, report_id, keys)
        except UnicodeDecodeError:
            problems.append(f"{path}: not UTF-8 text, so not an audit export")
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        if isinstance(followed, str):
            problems.append(followed)
            continue
        broker, finding, hop = followed
        exports[str(path)] = f"{broker}: {'OK' if finding.ok else 'TAMPERED'} {finding.message}"
        if not finding.ok:
            problems.append(f"{path} ({broker}) does not verify: {finding.message}")
        elif hop is not None:
            found[broker] = hop
    return Trace(_ordered(found, problems), tuple(problems), exports)


def _follow(
    path: Path, report_id: str, keys: Mapping[str, bytes]
) -> tuple[str, verify_export.Finding, Hop | None] | str:
    """One export's broker, verification and the report's event in it; or the problem that
    stops it. Raises what reading the file raises."""
    broker = _origin(_lines(path))
    if broker is None:
        return f"{path}: no signed checkpoint, so no broker to name"
    key = keys.get(broker)
    if key is None:
        return f"{path}: no --key for broker {broker}"
    finding = verify_export.verify(_lines(path), public_key=key)
    return broker, finding, _event_of(_lines(path), broker, report_id) if finding.ok else None


def _ordered(found: dict[str, Hop], problems: list[str]) -> tuple[Hop, ...]:
    origins = [h for h in found.values() if h.action == "publish"]
    if len(origins) != 1:
        problems.append(f"the report has {len(origins)} origins among the exports (1 expected)")
        return tuple(sorted(found.values(), key=lambda h: h.broker))
    path, placed = [origins[0]], {origins[0].broker}
    while len(placed) < len(found):
        ready = [h for h in found.values() if h.broker not in placed and h.upstream in placed]
        if not ready:
            break
        for hop in sorted(ready, key=lambda h: h.broker):
            upstream = found[str(hop.upstream)]
            if hop.upstream_event_hash != upstream.event_hash:
                problems.append(
                    f"{hop.broker} imported from {hop.upstream} event {hop.upstream_event_hash}, "
                    f"which is not the event {upstream.event_hash} in {hop.upstream}'s export"
                )
            path.append(hop)
            placed.add(hop.broker)
    for hop in found.values():
        if hop.broker not in placed:
            problems.append(f"{hop.broker} imported from {hop.upstream}, whose export was not given")
            path.append(hop)
    return tuple(path)


def key_of(text: str) -> tuple[str | None, bytes]:
    """A ``--key`` value: a vkey (its name is the broker), a raw public key in base64 (no name),
    or ``BROKER=`` either. ValueError when it is none of these."""
    try:
        return _key(text)
    except (ValueError, binascii.Error):
        if "=" not in text:
            raise ValueError("neither a checkpoint vkey nor an Ed25519 public key in base64") from None
    name, key = text.split("=", 1)
    return name, _key(key)[1]


def _key(text: str) -> tuple[str | None, bytes]:
    if (found := _raw_key(text)) is not None:  # base64 has '+' too: a raw key may hold two
        return None, found
    if text.count("+") >= 2:
        name, key_id, encoded = text.split("+", 2)
        raw = base64.b64decode(encoded, validate=True)
        if len(raw) != 33 or raw[0] != 1 or notes.key_id(name, raw[1:]).hex() != key_id.lower():
            raise ValueError("not a checkpoint vkey (NAME+KEYID+BASE64, type 0x01)")
        return name, raw[1:]
    raw = base64.b64decode(text, validate=True)
    if not notes.valid_public_key(raw):
        raise ValueError("not an Ed25519 public key")
    return None, raw


def _raw_key(text: str) -> bytes | None:
    """``text`` as a raw Ed25519 public key in base64 (44 characters), or None. A vkey never
    decodes to 32 bytes (it is at least 55 characters), so trying this first is unambiguous."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == 32 and notes.valid_public_key(raw) else None


def as_json(result: Trace) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "hops": [h.__dict__ for h in result.hops],
        "problems": list(result.problems),
        "exports": result.exports,
    }
