"""Does a checkpoint carry a quorum of witness cosignatures? One pure check, used by
``broker audit verify --witness ... --quorum K``, the SDK and the tests.

Fails closed: a note the log key did not sign, or one whose origin is not the log's name (another
log's, maybe signed with the same key), is never witnessed, whatever cosigns it; a cosignature
line that names a pinned witness and its key id but does not verify makes the note malformed
(C2SP signed-note), not merely one cosigner short; lines by witnesses nobody pinned are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from broker.crypto import cosignature, notes


@dataclass(frozen=True)
class QuorumVerdict:
    ok: bool
    size: int
    quorum: int
    cosigners: dict[str, int]  # witness name -> cosignature timestamp
    missing: tuple[str, ...]  # pinned witnesses without a valid cosignature
    message: str


class QuorumInputError(ValueError):
    """The note is not a checkpoint note, or the quorum cannot be met by the pinned witnesses."""


def parse_witnesses(vkeys: Sequence[str]) -> list[cosignature.VerifierKey]:
    """Pinned witness vkeys (type 0x04); QuorumInputError naming the bad one."""
    keys: list[cosignature.VerifierKey] = []
    for vkey in vkeys:
        try:
            key = cosignature.parse_vkey(vkey, kind=cosignature.COSIGNATURE_TYPE)
        except cosignature.CosignatureError as exc:
            raise QuorumInputError(f"witness vkey {vkey[:40]!r}: {exc}") from None
        if any(k.name == key.name for k in keys):
            raise QuorumInputError(f"witness {key.name!r} is pinned twice")
        keys.append(key)
    return keys


def check(
    note: str,
    *,
    log_name: str,
    log_public: bytes,
    witnesses: Sequence[cosignature.VerifierKey],
    quorum: int,
) -> QuorumVerdict:
    """Whether ``note`` is a checkpoint of the log named ``log_name`` (its origin), signed by the
    log's key and cosigned by ``quorum`` of ``witnesses``. QuorumInputError when the inputs
    cannot be checked (a malformed note, an impossible quorum); a verdict otherwise (``ok``
    False: which witnesses are missing, or what failed)."""
    if not 0 <= quorum <= len(witnesses):
        raise QuorumInputError(f"a quorum of {quorum} needs that many witnesses (given {len(witnesses)})")
    try:
        notes.parse(note)
    except notes.MalformedNote as exc:
        raise QuorumInputError(f"not a checkpoint note: {exc}") from None
    names = tuple(w.name for w in witnesses)
    try:
        size = notes.verify_checkpoint(note, name=log_name, public=log_public)[0].size
    except notes.WrongOrigin as exc:
        return QuorumVerdict(False, 0, quorum, {}, names, str(exc))
    except notes.NoteError as exc:
        return QuorumVerdict(False, 0, quorum, {}, names, f"log signature does not verify: {exc}")
    try:
        found = cosignature.cosigners(note, list(witnesses))
    except cosignature.CosignatureError as exc:
        return QuorumVerdict(False, size, quorum, {}, names, f"checkpoint at size {size}: {exc}")
    missing = tuple(n for n in names if n not in found)
    if len(found) >= quorum:
        by = ", ".join(sorted(found)) or "none needed"
        message = f"checkpoint at size {size} cosigned by {len(found)} of {len(names)} pinned witnesses "
        return QuorumVerdict(True, size, quorum, found, missing, message + f"(quorum {quorum}): {by}")
    message = (
        f"checkpoint at size {size} carries {len(found)} of the {quorum} witness cosignatures "
        f"required; missing: {', '.join(missing)}"
    )
    return QuorumVerdict(False, size, quorum, found, missing, message)
