"""Originator signatures (Ed25519) over the exact bytes of contract v1."""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import InvalidInput

SIGN_CONTEXT = b"alliance-broker/v1/sign\n"


def signing_message(*, canonical_label: bytes, canonical_payload: bytes) -> bytes:
    """``"alliance-broker/v1/sign\\n" + canonical(label) + "\\n" + hex(SHA-256(canonical(payload)))``."""
    digest = hashlib.sha256(canonical_payload).hexdigest().encode()
    return SIGN_CONTEXT + canonical_label + b"\n" + digest


def _b64(value: str, *, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64", code="invalid_key") from exc
    if size is not None and len(raw) != size:
        raise InvalidInput(f"{what} must be {size} bytes", code="invalid_key")
    return raw


def check_public_key(value: str, *, what: str) -> str:
    """Validate a base64 raw 32-byte X25519/Ed25519 public key; return it unchanged."""
    _b64(value, what=what, size=32)
    return value


def verify(*, public_key_b64: str, signature_b64: str, message: bytes) -> bool:
    """True when ``signature_b64`` is a valid Ed25519 signature of ``message``."""
    key = Ed25519PublicKey.from_public_bytes(_b64(public_key_b64, what="ed25519 key", size=32))
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        key.verify(signature, message)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def sign(*, private_key: Ed25519PrivateKey, message: bytes) -> str:
    """Base64 Ed25519 signature of ``message`` (used by the SDK and tests)."""
    return base64.b64encode(private_key.sign(message)).decode()
