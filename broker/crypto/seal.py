"""Per-recipient sealing with HPKE (RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, AES-256-GCM), using ``cryptography``'s own implementation."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

SEAL_CONTEXT = b"alliance-broker/v1/seal\n"
ENC_BYTES = 32  # DHKEM(X25519) encapsulated key length

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def seal_info(*, report_id: str, canonical_label: bytes) -> bytes:
    """``"alliance-broker/v1/seal\\n" + report_id + "\\n" + hex(SHA-256(canonical(label)))``."""
    return SEAL_CONTEXT + report_id.encode() + b"\n" + hashlib.sha256(canonical_label).hexdigest().encode()


def seal(
    *, plaintext: bytes, recipient_public_key_b64: str, report_id: str, canonical_label: bytes
) -> dict[str, str]:
    """Seal ``plaintext`` to the recipient's X25519 key; returns ``{"enc", "ct"}`` in base64."""
    public = X25519PublicKey.from_public_bytes(base64.b64decode(recipient_public_key_b64))
    out = _SUITE.encrypt(
        plaintext, public, info=seal_info(report_id=report_id, canonical_label=canonical_label)
    )
    return {
        "enc": base64.b64encode(out[:ENC_BYTES]).decode(),
        "ct": base64.b64encode(out[ENC_BYTES:]).decode(),
    }


def open_sealed(
    *, sealed: dict[str, str], private_key: X25519PrivateKey, report_id: str, canonical_label: bytes
) -> bytes:
    """Open a sealed payload; raises ``cryptography``'s error when anything does not match."""
    data = base64.b64decode(sealed["enc"]) + base64.b64decode(sealed["ct"])
    return _SUITE.decrypt(
        data, private_key, info=seal_info(report_id=report_id, canonical_label=canonical_label)
    )
