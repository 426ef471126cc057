"""Signed checkpoints in the C2SP signed-note / tlog-checkpoint format.

A checkpoint note is::

    <origin>\\n<tree size>\\n<base64 root hash>\\n
    \\n
    \\u2014 <key name> <base64(key id (4 bytes) || Ed25519 signature)>\\n

The signature covers the text before the blank line. The key id is the first four bytes of
SHA-256(key name || "\\n" || 0x01 || public key), 0x01 naming Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DASH = "\u2014"


class NoteError(Exception):
    """The note is malformed, or no signature by the expected key verifies."""


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
    """Parse ``note`` and check it carries a valid signature by (name, public); NoteError if not."""
    text, sep, signatures = note.partition("\n\n")
    if not sep or not text:
        raise NoteError("not a signed note: no blank line before the signatures")
    text += "\n"
    lines = text.splitlines()
    if len(lines) < 3:
        raise NoteError("a checkpoint needs origin, size and root")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NoteError("malformed size or root line") from exc
    wanted = key_id(name, public)
    verifier = Ed25519PublicKey.from_public_bytes(public)
    for line in signatures.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH or parts[1] != name:
            continue
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except binascii.Error:
            continue
        if raw[:4] != wanted:
            continue
        try:
            verifier.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise NoteError("the checkpoint signature does not verify") from None
        return CheckpointBody(origin=lines[0], size=size, root=root)
    raise NoteError(f"no signature by key {name!r} ({wanted.hex()}) on the note")
