"""Witness cosignatures (C2SP tlog-cosignature, Ed25519 type) and the tlog-witness wire format.

A cosignature line is a signed-note signature line::

    \u2014 <witness name> base64(key id (4 bytes) || timestamp (u64, big-endian) || Ed25519 sig)

The key id is SHA-256(name || "\\n" || 0x04 || public key)[:4] (0x04: Ed25519 cosignature,
distinct from 0x01, a log's own note signature). The signed message is::

    cosignature/v1\\n
    time <timestamp>\\n
    <the checkpoint's note body, every line up to and including its last newline>

The add-checkpoint request body is ``old <size>\\n``, at most 63 base64 consistency-proof lines,
an empty line, and the checkpoint note.

The C2SP text recommends ML-DSA-44 cosignatures for new deployments; ``cryptography`` has no
ML-DSA yet, and the Ed25519 type is the one every deployed witness network speaks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.crypto import notes

COSIGNATURE_TYPE = 0x04
NOTE_TYPE = 0x01
MAX_PROOF_LINES = 63
MAX_TIMESTAMP = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class CosignatureError(Exception):
    """A cosignature, vkey or add-checkpoint body is malformed or does not verify."""


@dataclass(frozen=True)
class VerifierKey:
    """A parsed C2SP vkey ``name+hex key id+base64(type || public key)``."""

    name: str
    type: int
    public: bytes

    def key_id(self) -> bytes:
        return _key_id(self.name, self.type, self.public)


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed add-checkpoint request: old size, consistency proof and the checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def _key_id(name: str, kind: int, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


def cosigner_key_id(name: str, public: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 cosigner (type 0x04)."""
    return _key_id(name, COSIGNATURE_TYPE, public)


def cosigner_vkey(name: str, public: bytes) -> str:
    """The vkey of an Ed25519 cosigner: ``name+hex key id+base64(0x04 || public key)``."""
    encoded = base64.b64encode(bytes([COSIGNATURE_TYPE]) + public).decode()
    return f"{name}+{cosigner_key_id(name, public).hex()}+{encoded}"


def parse_vkey(vkey: str, *, kind: int) -> VerifierKey:
    """Parse a vkey of signature type ``kind`` (0x01 a log's note key, 0x04 a cosigner's).
    The key id must be the one its name and key make, so a vkey edited by hand is refused."""
    parts = vkey.strip().split("+", 2)  # a key name holds no "+"; base64 may
    if len(parts) != 3 or not parts[0]:
        raise CosignatureError("a vkey is NAME+KEYID+BASE64")
    name, key_id, encoded = parts
    if any(ch.isspace() for ch in name):
        raise CosignatureError("a vkey's name holds no whitespace")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise CosignatureError("the vkey's last part is not base64") from None
    if len(raw) != 33 or raw[0] != kind:
        raise CosignatureError(f"the vkey does not hold an Ed25519 key of type 0x{kind:02x} (32 bytes)")
    parsed = VerifierKey(name=name, type=kind, public=raw[1:])
    if not notes.valid_public_key(parsed.public):
        raise CosignatureError("the vkey's key is not an Ed25519 public key")
    if parsed.key_id().hex() != key_id.lower():
        raise CosignatureError(f"the vkey's key id {key_id} is not the one its name and key make")
    return parsed


def signed_message(body_text: str, timestamp: int) -> bytes:
    """The bytes an Ed25519 cosignature covers."""
    return f"cosignature/v1\ntime {timestamp}\n{body_text}".encode()


def cosign(body_text: str, *, name: str, private_key: bytes, timestamp: int) -> str:
    """The cosignature line (ending in a newline) over a checkpoint's note body."""
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise CosignatureError("a cosignature timestamp is a positive 63-bit POSIX time")
    key = Ed25519PrivateKey.from_private_bytes(private_key)
    signature = key.sign(signed_message(body_text, timestamp))
    stamp = cosigner_key_id(name, notes.public_key(private_key)) + struct.pack(">Q", timestamp) + signature
    return f"{notes.DASH} {name} {base64.b64encode(stamp).decode()}\n"


def verify_cosignature(body_text: str, *, raw: bytes, key: VerifierKey) -> int:
    """Check one signature line's raw bytes (key id || timestamp || signature) against ``key``;
    return its timestamp. CosignatureError if the key id is not the key's or it fails."""
    if key.type != COSIGNATURE_TYPE:
        raise CosignatureError("not a cosigner key (type 0x04)")
    if len(raw) != 4 + 8 + 64 or raw[:4] != key.key_id():
        raise CosignatureError(f"not a cosignature by {key.name}")
    (timestamp,) = struct.unpack(">Q", raw[4:12])
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise CosignatureError(f"cosignature by {key.name} has timestamp {timestamp}")
    try:
        Ed25519PublicKey.from_public_bytes(key.public).verify(raw[12:], signed_message(body_text, timestamp))
    except InvalidSignature:
        raise CosignatureError(f"the cosignature by {key.name} does not verify") from None
    return int(timestamp)


def cosigners(note: str, keys: list[VerifierKey]) -> dict[str, int]:
    """Which of ``keys`` validly cosigned ``note``: witness name → timestamp. Lines by other
    keys are ignored (as C2SP requires); a line that names a pinned key and id but fails to
    verify raises, since such a note is malformed. notes.MalformedNote if it is no note."""
    text, _body, signatures = notes.parse(note)
    found: dict[str, int] = {}
    for key in keys:
        wanted = key.key_id()
        for signer, raw in signatures:
            if signer == key.name and raw[:4] == wanted:
                found[key.name] = verify_cosignature(text, raw=raw, key=key)
                break
    return found


def merge(note: str, lines: str) -> str:
    """The note with cosignature ``lines`` appended, skipping lines it already holds."""
    held = set(note.splitlines())
    extra = [line for line in lines.splitlines() if line and line not in held]
    return note + "".join(line + "\n" for line in extra)


def format_add_checkpoint(*, old_size: int, proof: list[bytes], note: str) -> bytes:
    """The body of a tlog-witness add-checkpoint request."""
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n" + note).encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint request body; CosignatureError (answered 400) if malformed.
    The note itself is only split off here; notes.parse checks it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise CosignatureError("the body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise CosignatureError("no empty line between the proof and the checkpoint")
    lines = head.split("\n")
    old = lines[0][4:]
    if not lines[0].startswith("old ") or not _DECIMAL.fullmatch(old) or int(old) > notes.MAX_SIZE:
        raise CosignatureError("the first line must be 'old <decimal size below 2^64>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise CosignatureError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            digest = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            raise CosignatureError("a consistency proof line is not the base64 of a 32-byte hash")
        proof.append(digest)
    return AddCheckpoint(old_size=int(old), proof=tuple(proof), note=note)
