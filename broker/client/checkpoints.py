"""Checking the broker's checkpoints in the SDK: a witnessed note of the pinned log, the fields
served beside it, and whether it extends the largest checkpoint the client verified before.

Pure: the client fetches the checkpoint and the consistency proof, these functions judge them.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from broker.client.errors import WitnessError
from broker.crypto import cosignature, merkle, notes, quorum


def verify_witnessed(
    note: str, *, log_key: str, witnesses: Sequence[str], quorum_size: int
) -> quorum.QuorumVerdict:
    """Check a checkpoint note (as ``GET /v1/audit/checkpoints/latest`` serves it): a checkpoint
    of the log ``log_key`` names (its vkey, ``broker audit key``: the note's origin must be the
    vkey's name), signed by that key and cosigned by ``quorum_size`` of the witness vkeys.
    Returns the verdict; WitnessError if it does not hold or the inputs are unusable."""
    try:
        log = cosignature.parse_vkey(log_key, kind=cosignature.NOTE_TYPE)
        verdict = quorum.check(
            note,
            log_name=log.name,
            log_public=log.public,
            witnesses=quorum.parse_witnesses(witnesses),
            quorum=quorum_size,
        )
    except (cosignature.CosignatureError, quorum.QuorumInputError) as exc:
        raise WitnessError(str(exc)) from None
    if not verdict.ok:
        raise WitnessError(verdict.message, verdict)
    return verdict


def agrees_with_note(checkpoint: Mapping[str, Any], body: notes.CheckpointBody) -> None:
    """WitnessError unless the unsigned fields served beside a verified note say what it says:
    a broker could otherwise pair a genuine witnessed note with another size or root."""

    def same_root(value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value.lower() == body.root.hex():
            return True
        try:
            return base64.b64decode(value, validate=True) == body.root
        except ValueError:  # binascii.Error, or characters outside ASCII
            return False

    checks: dict[str, Callable[[object], bool]] = {
        "size": lambda v: type(v) is int and v == body.size,
        "head": lambda v: isinstance(v, str) and v.lower() == body.root.hex(),
        "root": same_root,
        "origin": lambda v: v == body.origin,
    }
    for name, agrees in checks.items():
        if name in checkpoint and not agrees(checkpoint[name]):
            raise WitnessError(
                f"the checkpoint's {name} field does not match its signed note "
                f"(size {body.size}): the broker's answer was altered"
            )


class Remembered:
    """The note of the largest checkpoint a client verified (``note``; None before the first),
    seeded with one verified before. ``lock``: one check against it at a time, so a checkpoint
    checked concurrently never replaces a larger one."""

    def __init__(self, note: str | None) -> None:
        if note is not None:
            try:
                notes.parse(note)
            except notes.MalformedNote as exc:
                raise WitnessError(f"the trusted checkpoint is not a checkpoint note: {exc}") from None
        self.note = note
        self.lock = asyncio.Lock()

    def known(self, *, log_key: str) -> notes.CheckpointBody | None:
        """The remembered checkpoint, verified as one of the log ``log_key`` names (a seed is
        first checked here, once the log key is known); WitnessError if it is not."""
        if self.note is None:
            return None
        try:
            log = cosignature.parse_vkey(log_key, kind=cosignature.NOTE_TYPE)
        except cosignature.CosignatureError as exc:
            raise WitnessError(str(exc)) from None
        try:
            return notes.verify_checkpoint(self.note, name=log.name, public=log.public)[0]
        except notes.NoteError as exc:
            raise WitnessError(f"the trusted checkpoint is not one of the log {log.name!r}: {exc}") from None


def needs_proof(known: notes.CheckpointBody, new: notes.CheckpointBody) -> bool:
    """Whether ``new`` needs a consistency proof from ``known``, the checkpoint verified before:
    not when it is that one, nor from the empty tree; WitnessError for a smaller one (a rollback)
    or another root at the same size (a fork)."""
    if new.size < known.size:
        raise WitnessError(
            f"rollback: the broker's checkpoint has size {new.size}, smaller than the checkpoint of "
            f"size {known.size} this client verified before"
        )
    if new.size == known.size:
        if new.root != known.root:
            raise WitnessError(
                f"fork: the broker's checkpoint at size {new.size} has root {new.root.hex()}, but the "
                f"one this client verified at that size has root {known.root.hex()}: the log's key "
                f"signed two histories"
            )
        return False
    return known.size > 0  # the empty tree is a prefix of every tree


def check_consistency(known: notes.CheckpointBody, new: notes.CheckpointBody, answer: object) -> None:
    """WitnessError unless ``answer`` (the broker's ``GET /v1/audit/proofs/consistency`` from
    ``known.size`` to ``new.size``) proves that ``new`` extends ``known``. Only its ``path`` is
    used: the roots it is checked against are the two signed ones."""
    proof = _hashes(answer.get("path") if isinstance(answer, dict) else None)
    if proof is None:
        raise WitnessError(
            f"the broker's consistency proof from size {known.size} to {new.size} is malformed "
            f"(a path of hex SHA-256 hashes expected)"
        )
    if not merkle.verify_consistency(
        first=known.size, second=new.size, first_root=known.root, second_root=new.root, proof=proof
    ):
        raise WitnessError(
            f"fork: the checkpoint at size {new.size} does not extend the one at size {known.size} "
            f"this client verified before (the broker's consistency proof does not join them)"
        )


def _hashes(path: object) -> list[bytes] | None:
    """A proof's path as hashes; None unless it is a list of 64 hex digits each."""
    if not isinstance(path, list) or not all(isinstance(h, str) and len(h) == 64 for h in path):
        return None
    try:
        return [bytes.fromhex(h) for h in path]
    except ValueError:
        return None
