"""Node key pairs for the SDK and tools: Ed25519 (signing) and X25519 (sealing), as raw base64."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = [
    "Ed25519PrivateKey",
    "X25519PrivateKey",
    "load_sealing_key",
    "load_signing_key",
    "new_sealing_key",
    "new_signing_key",
    "private_b64",
    "public_b64",
]


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def new_sealing_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_b64(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
    """The raw 32-byte public key, base64: the form the broker's node registry takes."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def private_b64(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
    """The raw 32-byte private key, base64: keep it in a file only its node can read."""
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def _raw(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a private key must be 32 bytes, base64") from exc
    if len(raw) != 32:
        raise ValueError("a private key must be 32 bytes, base64")
    return raw


def load_signing_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from ``private_b64``'s form; ValueError otherwise."""
    return Ed25519PrivateKey.from_private_bytes(_raw(text))


def load_sealing_key(text: str) -> X25519PrivateKey:
    """An X25519 private key from ``private_b64``'s form; ValueError otherwise."""
    return X25519PrivateKey.from_private_bytes(_raw(text))
