"""Offline verification of an audit export: the hash chain, the Merkle tree and the signed
checkpoints. Names the first event that was altered, inserted, removed or reordered, or says
the tail was truncated. Pure: the caller reads the file and supplies the broker's public key.

The checkpoints must be the log's: their origin is the name the key is pinned under (a vkey's
name, the local broker's ``[audit] origin``), so another log's checkpoints signed with the same
key are refused. A bare key names no log: the checkpoints (and the trusted one) must then carry
one origin, the first one read.

An export alone cannot show that it was rolled back to an earlier checkpoint (events and later
checkpoints cut off): it is a smaller, valid export. A checkpoint the auditor saved earlier (the
``trusted`` note) can: the export must reach its size and reproduce its root there.

Verdicts: ``ok`` (exit code 0); tampered (1); or the inputs cannot be checked at all (2): a key,
note or export line that is malformed, or a trusted checkpoint the key did not sign."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from broker.crypto import cosignature, merkle, notes
from broker.crypto.chain import GENESIS, event_hash
from broker.crypto.quorum import QuorumInputError
from broker.crypto.quorum import check as check_quorum
from broker.errors import InvalidInput

# Leaves folded into the tree at once (the nodes completed on the way are dropped after each).
_LEAVES_AT_ONCE = 4096
# Kinds that say the input could not be checked, not that it was tampered with.
UNCHECKABLE = frozenset({"malformed", "untrusted"})


@dataclass(frozen=True)
class Finding:
    ok: bool
    # intact; tampered: altered | inserted | removed | reordered | truncated | signature |
    # origin | checkpoint | rolled_back | inconsistent | unwitnessed; uncheckable: malformed |
    # untrusted
    kind: str
    message: str
    seq: int | None = None
    line: int | None = None
    # The note of the export's final checkpoint, cosignature lines included (not for display).
    final_note: str | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def exit_code(self) -> int:
        """0 intact, 1 tampered, 2 the input could not be checked."""
        if self.ok:
            return 0
        return 2 if self.kind in UNCHECKABLE else 1


def _fail(kind: str, message: str, seq: int | None = None, line: int | None = None) -> Finding:
    return Finding(ok=False, kind=kind, message=message, seq=seq, line=line)


class _KeyTwice(ValueError):
    """A JSON object holding one key twice: the broker writes each once, and readers disagree
    on which one counts (``json.loads`` keeps the last; a person or grep sees the first)."""

    def __init__(self, key: str, line: int = 0) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _KeyTwice(key)
        obj[key] = value
    return obj


@dataclass(frozen=True, slots=True)
class _Event:
    """What the checks need of one event line, judged as it is read: an export of a million
    events is not held as a million parsed objects."""

    line: int
    seq: Any  # as written: checked to be an integer by ``_check_order``
    hash: bytes | None  # its leaf hash, when its fields hash to the hash it carries
    links: bool  # its prev_hash is the hash carried by the event before it in the file


def _parse(lines: Iterable[str]) -> tuple[list[_Event], list[tuple[int, dict[str, Any]]]]:
    events: list[_Event] = []
    checkpoints: list[tuple[int, dict[str, Any]]] = []
    carried: Any = GENESIS  # the hash the event before carries
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_once)
        except RecursionError:
            raise ValueError(f"line {number} is nested too deeply") from None
        except _KeyTwice as exc:
            raise _KeyTwice(exc.key, number) from None
        if not isinstance(obj, dict):
            raise ValueError(f"line {number} is not a JSON object")
        if "checkpoint" in obj:
            checkpoints.append((number, obj))
            continue
        try:
            computed: str | None = event_hash(obj)
        except InvalidInput:  # a value the broker could not have hashed: NaN, a lone surrogate
            computed = None
        hashes = computed is not None and computed == obj.get("hash")
        leaf = bytes.fromhex(computed) if hashes and computed is not None else None
        events.append(_Event(number, obj.get("seq"), leaf, obj.get("prev_hash") == carried))
        carried = obj.get("hash")
    return events, checkpoints


def _check_order(events: list[_Event]) -> Finding | None:
    if all(type(event.seq) is int and event.seq == position for position, event in enumerate(events, 1)):
        return None  # in order, none missing: no seq can be there twice
    where: dict[int, int] = {}
    for event in events:
        seq, line = event.seq, event.line
        if not isinstance(seq, int) or isinstance(seq, bool):
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
    for position, event in enumerate(events, start=1):
        if event.seq == position:
            continue
        if position in where:
            return _fail(
                "reordered",
                f"line {event.line}: event {event.seq} stands where event {position} "
                f"belongs (event {position} is on line {where[position]}): events were reordered",
                event.seq,
                event.line,
            )
        return _fail(
            "removed",
            f"line {event.line}: event {position} is missing (the next present is "
            f"{event.seq}): events were removed",
            position,
            event.line,
        )
    return None


def _check_chain(events: list[_Event]) -> Finding | None:
    for event in events:
        seq, line = event.seq, event.line
        if event.hash is None:
            return _fail(
                "altered",
                f"line {line}: event {seq} was altered: its content does not match its hash",
                seq,
                line,
            )
        if not event.links and seq == 1:
            return _fail(
                "altered",
                f"line {line}: event 1 does not start the chain: its prev_hash is not the genesis "
                "value (64 zeros): event 1 was altered and re-hashed",
                seq,
                line,
            )
        if not event.links:
            return _fail(
                "altered",
                f"line {line}: event {seq} does not link to event {seq - 1}: event "
                f"{seq - 1} was altered and re-hashed, or event {seq} was inserted",
                seq - 1,
                line,
            )
    return None


def verify(
    lines: Iterable[str],
    *,
    public_key: bytes,
    origin: str | None = None,
    trusted: str | None = None,
    witnesses: Sequence[cosignature.VerifierKey] = (),
    quorum: int = 0,
) -> Finding:
    """Check an NDJSON export (event lines, then ``{"checkpoint": {...}}`` lines) of the log
    named ``origin`` (the name ``public_key`` is pinned under; None: the key names no log, and
    every note must carry the first one's origin). ``trusted``: the text of a checkpoint the
    auditor saved earlier, which the export must extend. With ``quorum`` > 0 the export's final
    checkpoint must also carry that many valid cosignatures from ``witnesses`` (kind
    ``unwitnessed`` otherwise)."""
    finding = _verify_log(lines, public_key=public_key, origin=origin, trusted=trusted)
    if not finding.ok or quorum == 0:
        return finding
    return _witnessed(finding, public_key, witnesses, quorum)


def _witnessed(
    intact: Finding, public_key: bytes, witnesses: Sequence[cosignature.VerifierKey], quorum: int
) -> Finding:
    note = intact.final_note or ""
    try:
        # The log's name: every note in the export already carries it (see _verify_log).
        name = notes.parse(note)[1].origin
        verdict = check_quorum(note, log_name=name, log_public=public_key, witnesses=witnesses, quorum=quorum)
    except notes.MalformedNote as exc:
        return _fail("malformed", f"not a checkpoint note: {exc}")
    except QuorumInputError as exc:
        return _fail("malformed", str(exc))
    if not verdict.ok:
        return _fail("unwitnessed", f"{intact.message}; but the {verdict.message}")
    return Finding(ok=True, kind="intact", message=f"{intact.message}, {verdict.message}")


def _verify_log(
    lines: Iterable[str], *, public_key: bytes, origin: str | None, trusted: str | None
) -> Finding:
    if not notes.valid_public_key(public_key):
        return _fail("malformed", "the public key is not an Ed25519 public key (32 bytes, a curve point)")
    anchor: notes.CheckpointBody | None = None
    if trusted is not None:
        checked = _trusted(trusted, public_key, origin)
        if isinstance(checked, Finding):
            return checked
        anchor, origin = checked, checked.origin
    try:
        events, checkpoint_lines = _parse(lines)
    except _KeyTwice as exc:
        return _fail(
            "altered",
            f"line {exc.line} holds the key {exc.key!r} twice: not as the broker wrote it",
            line=exc.line,
        )
    except ValueError as exc:
        return _fail("malformed", f"not an audit export: {exc}")
    if not checkpoint_lines:
        return _fail("signature", "the export carries no signed checkpoint")
    signed = _signed(checkpoint_lines, public_key, origin)
    if isinstance(signed, Finding):
        return signed
    finding = _check_order(events) or _check_chain(events)
    if finding is not None:
        return finding
    final_note = max(signed, key=lambda item: item[1].size)[2]
    checkpoints = [(line, body) for line, body, _note in signed]
    return dataclasses.replace(_check_tree(events, checkpoints, anchor), final_note=final_note)


def _signed(
    checkpoint_lines: list[tuple[int, dict[str, Any]]], public_key: bytes, origin: str | None
) -> list[tuple[int, notes.CheckpointBody, str]] | Finding:
    """Each checkpoint line's verified checkpoint and note, checkpoints of the log ``origin``
    (None: of the first line's origin); the finding for the first line that is not."""
    signed: list[tuple[int, notes.CheckpointBody, str]] = []
    for line, obj in checkpoint_lines:
        record = obj["checkpoint"]
        if not isinstance(record, dict):
            return _fail("malformed", f"line {line}: the checkpoint record is not a JSON object", line=line)
        if "note" not in record:
            return _fail("malformed", f"line {line}: the checkpoint record has no note", line=line)
        try:
            body, signature = _verify_note(record.get("note"), public_key, origin)
        except notes.MalformedNote as exc:
            return _fail("malformed", f"line {line}: malformed checkpoint note: {exc}", line=line)
        except notes.WrongOrigin as exc:
            return _fail("origin", f"line {line}: {exc}", line=line)
        except notes.NoteError as exc:
            return _fail("signature", f"line {line}: checkpoint signature invalid: {exc}", line=line)
        finding = _check_fields(line, record, body, signature)
        if finding is not None:
            return finding
        signed.append((line, body, str(record["note"])))
        origin = body.origin
    return signed


def _verify_note(note: object, public_key: bytes, origin: str | None) -> tuple[notes.CheckpointBody, bytes]:
    """The checkpoint a note states and its signature, checked as a checkpoint of the log
    ``origin`` (None: of the log its own origin names, when the key names no log)."""
    name = notes.parse(note)[1].origin if origin is None else origin
    return notes.verify_checkpoint(str(note), name=name, public=public_key)


def _trusted(text: str, public_key: bytes, origin: str | None) -> notes.CheckpointBody | Finding:
    """The checkpoint the auditor trusts: a note as the broker serves it, as it is written in an
    export (a JSON string, or its text between the quotes), or a JSON object holding one (an
    export's checkpoint line, or ``GET /v1/audit/checkpoints/latest``). Only the note counts:
    fields beside it are not signed."""
    note = _trusted_note(text)
    if note is None:
        return _fail("malformed", "the trusted checkpoint holds no checkpoint note")
    try:
        return _verify_note(note, public_key, origin)[0]
    except notes.MalformedNote as exc:
        return _fail("malformed", f"the trusted checkpoint is not a checkpoint note: {exc}")
    except notes.WrongOrigin as exc:
        return _fail("untrusted", f"the trusted checkpoint is not of the log the key is pinned for: {exc}")
    except notes.NoteError as exc:
        return _fail("untrusted", f"the trusted checkpoint does not verify under the public key: {exc}")


def _trusted_note(text: str) -> object:
    stripped = text.strip()
    if stripped.startswith(("{", '"')):
        try:
            value: object = json.loads(stripped)
        except (ValueError, RecursionError):
            return None
        if isinstance(value, dict):
            value = value.get("checkpoint", value)
            value = value.get("note") if isinstance(value, dict) else None
        return value
    if "\n" not in stripped and "\\n" in stripped:  # a JSON string's text, copied without its quotes
        try:
            decoded: object = json.loads(f'"{stripped}"')
        except ValueError:
            return stripped
        return decoded
    return stripped + "\n"  # a note file: its own final newline, whatever an editor or `jq -r` did


def _check_fields(
    line: int, record: dict[str, Any], body: notes.CheckpointBody, signature: bytes
) -> Finding | None:
    """The fields an export carries beside a note (size, head, root, signature) are not signed
    themselves: each must say what the signed note says."""

    def same_b64(value: str, wanted: bytes) -> bool:
        try:
            return base64.b64decode(value, validate=True) == wanted
        except ValueError:  # binascii.Error, or characters outside ASCII
            return False

    expected: dict[str, tuple[str, Callable[[Any], bool]]] = {
        "size": (str(body.size), lambda v: type(v) is int and v == body.size),
        "head": (body.root.hex(), lambda v: isinstance(v, str) and v.lower() == body.root.hex()),
        "root": (
            body.root.hex(),
            lambda v: isinstance(v, str) and (v.lower() == body.root.hex() or same_b64(v, body.root)),
        ),
        "signature": (
            base64.b64encode(signature).decode(),
            lambda v: isinstance(v, str) and same_b64(v, signature),
        ),
    }
    for field, (wanted, agrees) in expected.items():
        if field in record and not agrees(record[field]):
            shown = json.dumps(record[field])
            shown = shown if len(shown) <= 70 else shown[:67] + "..."
            return _fail(
                "checkpoint",
                f"line {line}: the checkpoint's {field} field says {shown} but its signed note "
                f"(size {body.size}) says {wanted}: the checkpoint record was altered",
                line=line,
            )
    return None


def _check_tree(
    events: list[_Event],
    signed: list[tuple[int, notes.CheckpointBody]],
    anchor: notes.CheckpointBody | None,
) -> Finding:
    signed.sort(key=lambda item: item[1].size)
    last = signed[-1][1]
    finding = _check_length(events, last) or _check_roots(events, signed, anchor, last)
    if finding is not None:
        return finding
    if anchor is not None and anchor.size > last.size:
        return _fail(
            "rolled_back",
            f"the export covers {last.size} events but the trusted checkpoint covers {anchor.size}: "
            f"the export was rolled back (events {last.size + 1}..{anchor.size} and the checkpoints "
            f"after size {last.size} are missing)",
            last.size + 1,
        )
    extends = "" if anchor is None else f", and extend the trusted checkpoint at size {anchor.size}"
    return Finding(
        ok=True,
        kind="intact",
        message=f"intact: {len(events)} events, chain and Merkle root match "
        f"the checkpoint signed at size {last.size}{extends}",
    )


def _check_length(events: list[_Event], last: notes.CheckpointBody) -> Finding | None:
    """The export holds exactly the events the last signed checkpoint covers."""
    if len(events) < last.size:
        after = events[-1].seq if events else 0
        return _fail(
            "truncated",
            f"the export ends at event {after} but the signed checkpoint covers "
            f"{last.size} events: the tail was truncated",
            after + 1,
        )
    if len(events) > last.size:
        event = events[last.size]
        return _fail(
            "inserted",
            f"line {event.line}: event {event.seq} and those after it are not covered by any signed "
            "checkpoint",
            event.seq,
            event.line,
        )
    return None


def _check_roots(
    events: list[_Event],
    signed: list[tuple[int, notes.CheckpointBody]],
    anchor: notes.CheckpointBody | None,
    last: notes.CheckpointBody,
) -> Finding | None:
    """Each signed checkpoint, and the trusted one within the export, is the root of the events
    up to its size."""
    # Walk the checkpoints by size, the trusted one after an export one of the same size.
    stops: list[tuple[int, bool, int | None, notes.CheckpointBody]] = [
        (body.size, False, line, body) for line, body in signed
    ]
    if anchor is not None and anchor.size <= last.size:
        stops.append((anchor.size, True, None, anchor))
    stops.sort(key=lambda stop: (stop[0], stop[1]))
    frontier: list[merkle.Node] = []
    size, verified = 0, []
    for target, is_anchor, at, body in stops:
        # A slice at a time: ``merkle.append`` also returns every node it completes. Every event
        # has its leaf here (the chain is checked first); one without would change the root.
        for start in range(size, target, _LEAVES_AT_ONCE):
            stretch = events[start : min(start + _LEAVES_AT_ONCE, target)]
            frontier, _ = merkle.append(frontier, [e.hash for e in stretch if e.hash is not None], start)
        size = target
        if merkle.root_of(frontier) == body.root:
            if not is_anchor:
                verified.append(target)
            continue
        first = max((v for v in verified if v < target), default=0) + 1
        if is_anchor:
            return _fail(
                "inconsistent",
                f"events {first}..{target} do not reproduce the root of the trusted checkpoint at "
                f"size {target}: the log was rewritten after the auditor saw it (the broker's key "
                f"signed both histories)",
                first,
            )
        return _fail(
            "altered",
            f"events {first}..{target} do not match the checkpoint signed at "
            f"size {target} (line {at}): the log was rewritten there",
            first,
            at,
        )
    return None
