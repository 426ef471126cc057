"""Signed checkpoints in the C2SP signed-note / tlog-checkpoint format.

A checkpoint note is::

    <origin>\\n<tree size>\\n<base64 root hash>\\n
    \\n
    \\u2014 <key name> <base64(key id (4 bytes) || Ed25519 signature)>\\n

The signature covers the text before the blank line. The key id is the first four bytes of
SHA-256(key name || "\\n" || 0x01 || public key), 0x01 naming Ed25519.

A log's checkpoints carry its name as their origin, and the log's key has that name (C2SP
tlog-checkpoint): a verifier pins the key with its name (``verify_checkpoint``), so a note of
another log signed with the same key is not taken for one of this log.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DASH = "\u2014"
ROOT_BYTES = 32
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
# Sizes are uint64 (C2SP tlog-checkpoint): 20 digits also spell numbers a Go verifier refuses.
MAX_SIZE = 2**64 - 1
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class NoteError(Exception):
    """The note is malformed, or no signature by the expected key verifies."""


class MalformedNote(NoteError):
    """The text is not a well-formed checkpoint note: nothing about any signature can be said."""


class WrongOrigin(NoteError):
    """The note's origin is not the name of the log it is checked for: another log's checkpoint."""


class MalformedKey(ValueError):
    """The bytes given as a public key are not an Ed25519 public key."""


@dataclass(frozen=True)
class CheckpointBody:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def public_key(private_key: bytes) -> bytes:
    """The raw Ed25519 public key of a raw private key."""
    return (
        Ed25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]


def vkey(name: str, public: bytes) -> str:
    """The verifier key string: ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
    encoded = base64.b64encode(b"\x01" + public).decode()
    return f"{name}+{key_id(name, public).hex()}+{encoded}"


def sign(body: CheckpointBody, *, name: str, private_key: bytes) -> tuple[str, bytes]:
    """The signed note and the bare signature."""
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    text = body.text()
    signature = key.sign(text.encode())
    stamp = base64.b64encode(key_id(name, public_key(private_key)) + signature).decode()
    return f"{text}\n{DASH} {name} {stamp}\n", signature


def verify(note: str, *, name: str, public: bytes) -> CheckpointBody:
    """Parse ``note`` and check it carries a valid signature by (name, public); NoteError if not
    (MalformedNote if it is no checkpoint note at all, MalformedKey if ``public`` is no key)."""
    return verify_signature(note, name=name, public=public)[0]


def verify_signature(note: str, *, name: str, public: bytes) -> tuple[CheckpointBody, bytes]:
    """As ``verify``, and also return the Ed25519 signature that verified."""
    text, body, signatures = parse(note)
    if not valid_public_key(public):
        raise MalformedKey("not an Ed25519 public key (32 bytes encoding a curve point)")
    wanted = key_id(name, public)
    verifier = Ed25519PublicKey.from_public_bytes(public)
    for signer, raw in signatures:
        if signer != name or raw[:4] != wanted:
            continue
        try:
            verifier.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise NoteError("the checkpoint signature does not verify") from None
        return body, raw[4:]
    raise NoteError(f"no signature by key {name!r} ({wanted.hex()}) on the note")


def verify_checkpoint(note: str, *, name: str, public: bytes) -> tuple[CheckpointBody, bytes]:
    """As ``verify_signature``, for the checkpoint of the log named ``name``: the note's origin
    must be that name (WrongOrigin), whatever key signed it under whatever name."""
    body = parse(note)[1]
    if body.origin != name:
        raise WrongOrigin(
            f"the checkpoint's origin {body.origin!r} is not {name!r}, the name of the log's key: "
            f"a checkpoint of another log"
        )
    return verify_signature(note, name=name, public=public)


def signed_by(note: str, keys: Sequence[tuple[str, bytes]]) -> tuple[CheckpointBody, list[str]]:
    """Check ``note`` against trusted ``keys`` (key name, raw Ed25519 public key) as signed-note
    asks of a verifier: lines by other keys are ignored, every line naming one of the keys (name
    and key id) must verify, and at least one must. Return the checkpoint and the lines that
    verified, each once: copies of a line (in any base64 spelling) are neither verified again
    nor returned again. MalformedNote if it is no checkpoint note; NoteError if a line by a
    trusted key fails, or none is there."""
    text, body, signatures = parse(note)
    trusted = {(name, key_id(name, public)): public for name, public in keys}
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    for signer, raw in signatures:
        public = trusted.get((signer, raw[:4]))
        if public is None or (signer, raw) in seen:
            continue  # a copy of a verified line (or another base64 spelling of it): verified once
        seen.add((signer, raw))
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], text.encode())
        except (InvalidSignature, ValueError):
            raise NoteError(f"the signature by {signer} does not verify") from None
        verified.append(f"{DASH} {signer} {base64.b64encode(raw).decode()}\n")
    if not verified:
        raise NoteError("no signature by a trusted key on the note")
    return body, verified


def parse(note: object) -> tuple[str, CheckpointBody, list[tuple[str, bytes]]]:
    """Split a note into its signed text, the checkpoint it states, and its signatures as
    (key name, key id || signature). MalformedNote unless it is a well-formed checkpoint note:
    origin, a decimal size without leading zeros, a base64 SHA-256 root, a blank line, and one
    or more signature lines, with no control characters but newlines."""
    if not isinstance(note, str):
        raise MalformedNote(f"a note is text, not {type(note).__name__}")
    try:
        note.encode()
    except UnicodeEncodeError:
        raise MalformedNote("the note is not valid Unicode text") from None
    if _CONTROL.search(note):
        raise MalformedNote("the note holds a control character")
    text, sep, block = note.partition("\n\n")
    if not sep or not text:
        raise MalformedNote("not a signed note: no blank line before the signatures")
    text += "\n"
    lines = text.split("\n")[:-1]
    if len(lines) < 3 or not all(lines):
        raise MalformedNote("a checkpoint needs origin, size and root lines")
    if not _SIZE.fullmatch(lines[1]) or int(lines[1]) > MAX_SIZE:
        raise MalformedNote(f"the size line {lines[1][:40]!r} is not a decimal number below 2^64")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        root = b""
    if len(root) != ROOT_BYTES:
        raise MalformedNote("the root line is not the base64 of a 32-byte hash")
    if not block.endswith("\n") or not block[:-1]:
        raise MalformedNote("no signature lines after the blank line")
    signatures: list[tuple[str, bytes]] = []
    for line in block[:-1].split("\n"):
        parts = line.split(" ")
        raw = b""
        if len(parts) == 3 and parts[0] == DASH and parts[1]:
            with contextlib.suppress(ValueError):  # binascii.Error, or characters outside ASCII
                raw = base64.b64decode(parts[2], validate=True)
        if len(raw) < 5:  # a key id and at least some signature
            raise MalformedNote(f"malformed signature line {line[:60]!r}")
        signatures.append((parts[1], raw))
    return text, CheckpointBody(origin=lines[0], size=int(lines[1]), root=root), signatures


# Edwards25519 (RFC 8032): p = 2^255 - 19, and -x^2 + y^2 = 1 + d x^2 y^2.
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def valid_public_key(public: bytes) -> bool:
    """Whether ``public`` is a raw Ed25519 public key: 32 bytes that decode to a curve point
    (RFC 8032 section 5.1.3). OpenSSL loads any 32 bytes, and would only fail to verify."""
    if len(public) != 32:
        return False
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    sign = public[31] >> 7
    if y >= _P:
        return False
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, -1, _P) % _P
    if x2 == 0:
        return sign == 0
    return pow(x2, (_P - 1) // 2, _P) == 1  # a square: some x lies on the curve at y
