"""The tlog-witness ``add-checkpoint`` rules (C2SP tlog-witness), as pure functions.

A request is read in two steps. ``read`` needs no state: the body's shape (400), the log it names
(404) and the log's signature (403). ``check`` runs inside the state's transaction, against the
latest checkpoint this witness cosigned for the log: the old size (400 above the new size, 409
unlike the stored one), then consistency (409: the same size with another root; 422: a size-0
checkpoint whose root is not the empty tree's, a proof with old size 0, a proof that fails).
Each refusal is a ``Refused`` carrying the status the specification names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.crypto import cosignature, merkle, notes
from broker.crypto.cosignature import VerifierKey

EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962 section 2.1: the hash of the empty string


class Refused(Exception):
    """An add-checkpoint request the witness does not cosign: ``status`` is the HTTP answer;
    ``latest_size`` the size it last cosigned (the 409 body); ``signed``: the log's signature
    verified, so the request is evidence about the log worth keeping; ``fork``: the log signed a
    checkpoint that cannot extend the one cosigned (another root at its size, an impossible empty
    tree, a consistency proof that fails): evidence that it signed two histories."""

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        latest_size: int | None = None,
        signed: bool = False,
        fork: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.latest_size = latest_size
        self.signed = signed
        self.fork = fork


@dataclass(frozen=True)
class Latest:
    """The latest checkpoint the witness cosigned for one log: what ``check`` compares against."""

    size: int
    root: bytes


@dataclass(frozen=True)
class Submission:
    """An add-checkpoint request whose shape, log and log signature are good."""

    origin: str
    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: notes.CheckpointBody
    text: str  # the note text the cosignature covers (extension lines included)
    log_lines: tuple[str, ...]  # the log's signature lines that verified


def logs_by_origin(keys: Sequence[VerifierKey]) -> dict[str, list[VerifierKey]]:
    """The trusted log keys per origin (the vkey's name is the log's origin; a log may have
    several keys, during a rotation)."""
    logs: dict[str, list[VerifierKey]] = {}
    for key in keys:
        logs.setdefault(key.name, []).append(key)
    return logs


def read(body: bytes, logs: Mapping[str, Sequence[VerifierKey]]) -> Submission:
    """Parse and authenticate a request body; Refused with 400, 404 or 403."""
    try:
        request = cosignature.parse_add_checkpoint(body)
        text, checkpoint, _ = notes.parse(request.note)
    except (cosignature.CosignatureError, notes.MalformedNote) as exc:
        raise Refused(400, f"malformed request: {exc}") from None
    keys = logs.get(checkpoint.origin)
    if not keys:
        raise Refused(404, "unknown log origin")
    try:
        _, lines = notes.signed_by(request.note, [(key.name, key.public) for key in keys])
    except notes.NoteError as exc:
        raise Refused(403, str(exc)) from None
    return Submission(
        origin=checkpoint.origin,
        old_size=request.old_size,
        proof=request.proof,
        checkpoint=checkpoint,
        text=text,
        log_lines=tuple(lines),
    )


def check(submission: Submission, latest: Latest | None) -> None:
    """Whether ``submission`` may be cosigned given the ``latest`` cosigned checkpoint (None:
    never cosigned one for this log). Refused (400, 409 or 422, all ``signed``) if not."""
    old, new = submission.old_size, submission.checkpoint
    stored = latest.size if latest is not None else 0
    if old > new.size:
        raise Refused(400, f"old size {old} is above the checkpoint's size {new.size}", signed=True)
    if old != stored:
        raise Refused(409, f"old size {old} is not {stored}", latest_size=stored, signed=True)
    if new.size == 0 and new.root != EMPTY_ROOT:
        raise Refused(422, "a checkpoint of size 0 must have the empty tree's root", signed=True, fork=True)
    if old == 0:
        if submission.proof:
            raise Refused(422, "a consistency proof from size 0 must be empty", signed=True)
        return
    if latest is None:  # old == stored > 0 implies a stored checkpoint
        raise AssertionError("a stored size without a stored checkpoint")
    if old == new.size and new.root != latest.root:  # C2SP tlog-witness: a 409, naming the size held
        raise Refused(409, f"size {old} again, with another root", latest_size=old, signed=True, fork=True)
    consistent = merkle.verify_consistency(
        first=old, second=new.size, first_root=latest.root, second_root=new.root, proof=submission.proof
    )
    if not consistent:
        raise Refused(
            422, f"the consistency proof from size {old} to {new.size} does not verify", signed=True
        )
