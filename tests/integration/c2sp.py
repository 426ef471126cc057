"""An independent reading of the C2SP formats the witness speaks, written for its tests from the
specification texts (signed-note, tlog-checkpoint, tlog-cosignature's Ed25519 type,
tlog-witness's request body), with hashlib and cryptography's Ed25519 only: nothing here comes
from broker.crypto, so a misreading of the specification there is not repeated here.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

EM_DASH = "\u2014"
NOTE_ED25519 = 0x01  # signed-note: Ed25519 note signatures
COSIGNATURE_ED25519 = 0x04  # signed-note / tlog-cosignature: timestamped Ed25519 cosignatures


def key_id(name: str, signature_type: int, public: bytes) -> bytes:
    """signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\x0a" + bytes([signature_type]) + public).digest()[:4]


def vkey(name: str, signature_type: int, public: bytes) -> str:
    """signed-note verifier key: ``<name>+hex(key id)+base64(type || public key)``."""
    material = base64.b64encode(bytes([signature_type]) + public).decode()
    return f"{name}+{key_id(name, signature_type, public).hex()}+{material}"


def parse_vkey(text: str) -> tuple[str, int, bytes]:
    """A vkey's name, signature type and public key; AssertionError if its key id is not theirs."""
    name, hex_id, material = text.split("+", 2)
    raw = base64.b64decode(material, validate=True)
    assert key_id(name, raw[0], raw[1:]).hex() == hex_id, "vkey key id does not match"
    return name, raw[0], raw[1:]


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    """tlog-checkpoint note text: origin, decimal size, base64 root, each line ending in 0x0A."""
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def split_note(note: str) -> tuple[str, list[str]]:
    """signed-note: the text (with its final newline) and the signature lines (without theirs)."""
    cut = note.rindex("\n\n")
    return note[: cut + 1], note[cut + 2 :].splitlines()


class Log:
    """A log that signs checkpoints with Ed25519 note signatures (type 0x01)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._key = Ed25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.vkey = vkey(origin, NOTE_ED25519, self.public)

    def signature_line(self, text: str, *, name: str | None = None) -> str:
        name = self.origin if name is None else name
        stamp = key_id(name, NOTE_ED25519, self.public) + self._key.sign(text.encode())
        return f"{EM_DASH} {name} {base64.b64encode(stamp).decode()}\n"

    def checkpoint(self, size: int, root: bytes, *, origin: str | None = None) -> str:
        text = checkpoint_text(self.origin if origin is None else origin, size, root)
        return text + "\n" + self.signature_line(text)


def add_checkpoint_body(old: int, proof: list[bytes], note: str) -> bytes:
    """tlog-witness add-checkpoint: ``old N``, base64 proof lines, an empty line, the checkpoint."""
    lines = [f"old {old}\n"] + [base64.b64encode(h).decode() + "\n" for h in proof]
    return ("".join(lines) + "\n" + note).encode()


def verify_cosignature(line: str, *, text: str, name: str, public: bytes) -> int:
    """tlog-cosignature, Ed25519: check one signature line over a checkpoint's note text and
    return its timestamp. AssertionError (or InvalidSignature) if it is not a valid cosignature."""
    assert line.startswith(EM_DASH + " "), line
    _, signer, encoded = line.rstrip("\n").split(" ")
    assert signer == name, f"signed by {signer}, not {name}"
    raw = base64.b64decode(encoded, validate=True)
    assert len(raw) == 4 + 8 + 64, "key id, u64 timestamp, Ed25519 signature"
    assert raw[:4] == key_id(name, COSIGNATURE_ED25519, public), "not this cosigner's key id"
    timestamp = int.from_bytes(raw[4:12], "big")
    assert 0 < timestamp <= 2**63 - 1, "the timestamp is not zero and fits 63 bits"
    message = f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()
    Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
    return timestamp


def verify_note_signature(line: str, *, text: str, name: str, public: bytes) -> None:
    """signed-note, Ed25519 (type 0x01): one log signature line over the note text."""
    _, signer, encoded = line.rstrip("\n").split(" ")
    raw = base64.b64decode(encoded, validate=True)
    assert signer == name and raw[:4] == key_id(name, NOTE_ED25519, public)
    Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], text.encode())
