"""Secrets the broker must present rather than verify (a peer link's client key and token),
sealed at rest under a key derived from the keyring's stable secret (its checkpoint signing key,
which rotation keeps: KEKs rotate and are destroyed by erasures, and a link must outlive both).

AES-256-GCM, nonce first; the AAD binds the ciphertext to its purpose and owner, so a sealed
token moved to another peer's row, or into the key column, fails to open."""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import BrokerError

INFO = b"alliance-broker/v1/secrets-at-rest"
NONCE_BYTES = 12


def _key(secret: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(secret))


def _aad(purpose: str, owner: str) -> bytes:
    return f"alliance-broker/v1/secret\n{purpose}\n{owner}".encode()


def seal_secret(plaintext: bytes, *, secret: bytes, purpose: str, owner: str) -> bytes:
    """``plaintext`` encrypted under the key derived from ``secret`` (the keyring's)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + _key(secret).encrypt(nonce, plaintext, _aad(purpose, owner))


def open_secret(sealed: bytes, *, secret: bytes, purpose: str, owner: str) -> bytes:
    """The plaintext of ``seal_secret``; BrokerError when it was sealed under another keyring,
    for another purpose or owner, or altered."""
    try:
        return _key(secret).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(purpose, owner))
    except (InvalidTag, ValueError) as exc:
        raise BrokerError(
            f"the stored {purpose} of {owner} does not open with this keyring", code="secret_unreadable"
        ) from exc
