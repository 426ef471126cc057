"""Checking the broker's checkpoints in the SDK: a witnessed note of the pinned log, and the
fields served beside it."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from broker.client.errors import WitnessError
from broker.crypto import cosignature, notes, quorum


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
