"""Encryption at rest: one random AES-256-GCM data key per report, wrapped by a KEK.

The AAD binds the ciphertext to its report id and canonical label, so a ciphertext moved to
another row, or a label edited in the database, fails to decrypt instead of leaking.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from broker.crypto.keyring import Keyring

NONCE_BYTES = 12


class EnvelopeError(Exception):
    """The stored payload cannot be opened: wrong key, altered row, or destroyed key."""


@dataclass(frozen=True)
class StoredPayload:
    ciphertext: bytes  # nonce || AES-GCM ciphertext and tag
    wrapped_key: bytes  # RFC 3394 AES key wrap of the data key
    kek_id: str


def _aad(report_id: str, canonical_label: bytes) -> bytes:
    return b"alliance-broker/v1/at-rest\n" + report_id.encode() + b"\n" + canonical_label


def encrypt_payload(
    *, plaintext: bytes, report_id: str, canonical_label: bytes, keyring: Keyring
) -> StoredPayload:
    """Encrypt ``plaintext`` under a fresh data key wrapped by the keyring's current KEK."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(report_id, canonical_label))
    wrapped = aes_key_wrap(keyring.kek(keyring.current), data_key)
    return StoredPayload(ciphertext=nonce + ciphertext, wrapped_key=wrapped, kek_id=keyring.current)


def _unwrap(stored: StoredPayload, keyring: Keyring) -> bytes:
    try:
        return aes_key_unwrap(keyring.kek(stored.kek_id), stored.wrapped_key)
    except (KeyError, InvalidUnwrap) as exc:
        raise EnvelopeError(f"cannot unwrap data key with {stored.kek_id}") from exc


def decrypt_payload(
    *, stored: StoredPayload, report_id: str, canonical_label: bytes, keyring: Keyring
) -> bytes:
    """Open a stored payload; EnvelopeError when any bound value or key is wrong."""
    data_key = _unwrap(stored, keyring)
    nonce, body = stored.ciphertext[:NONCE_BYTES], stored.ciphertext[NONCE_BYTES:]
    try:
        return AESGCM(data_key).decrypt(nonce, body, _aad(report_id, canonical_label))
    except InvalidTag as exc:
        raise EnvelopeError("payload does not authenticate") from exc


def rewrap(*, stored: StoredPayload, keyring: Keyring, to: str | None = None) -> StoredPayload:
    """Re-wrap the data key under the KEK ``to`` (default: the current one); the ciphertext
    itself is unchanged."""
    target = keyring.current if to is None else to
    data_key = _unwrap(stored, keyring)
    wrapped = aes_key_wrap(keyring.kek(target), data_key)
    return StoredPayload(ciphertext=stored.ciphertext, wrapped_key=wrapped, kek_id=target)
