"""Node key pairs for the SDK and tools: Ed25519 (signing) and X25519 (sealing), as raw base64."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["Ed25519PrivateKey", "X25519PrivateKey", "new_sealing_key", "new_signing_key", "public_b64"]


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def new_sealing_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_b64(key: Ed25519PrivateKey | X25519PrivateKey) -> str:
    """The raw 32-byte public key, base64: the form the broker's node registry takes."""
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
