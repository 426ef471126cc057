"""Encryption at rest, sealing, signatures, tokens and the keyring file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker.crypto import envelope, keyring, seal, signing, tokens
from broker.domain.canonical import canonical
from broker.errors import ConfigError

LABEL = canonical({"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []})


def test_envelope_round_trip_and_binding(tmp_path: Path) -> None:
    ring = keyring.load_or_create(tmp_path / "k.json")
    stored = envelope.encrypt_payload(
        plaintext=b'{"ioc":"1.2.3.4"}', report_id="r1", canonical_label=LABEL, keyring=ring
    )
    assert b"1.2.3.4" not in stored.ciphertext + stored.wrapped_key
    assert (
        envelope.decrypt_payload(stored=stored, report_id="r1", canonical_label=LABEL, keyring=ring)
        == b'{"ioc":"1.2.3.4"}'
    )
    with pytest.raises(envelope.EnvelopeError):
        envelope.decrypt_payload(stored=stored, report_id="r2", canonical_label=LABEL, keyring=ring)
    other_label = canonical({"classification": "UNCLASSIFIED", "releasable_to": ["NATO"], "caveats": []})
    with pytest.raises(envelope.EnvelopeError):
        envelope.decrypt_payload(stored=stored, report_id="r1", canonical_label=other_label, keyring=ring)


def test_rotation_and_rewrap(tmp_path: Path) -> None:
    ring = keyring.load_or_create(tmp_path / "k.json")
    stored = envelope.encrypt_payload(plaintext=b"x", report_id="r", canonical_label=LABEL, keyring=ring)
    rotated = ring.with_new_kek()
    assert rotated.current != ring.current
    moved = envelope.rewrap(stored=stored, keyring=rotated)
    assert moved.kek_id == rotated.current
    assert moved.ciphertext == stored.ciphertext
    shredded = rotated.only_current()
    assert (
        envelope.decrypt_payload(stored=moved, report_id="r", canonical_label=LABEL, keyring=shredded) == b"x"
    )
    with pytest.raises(envelope.EnvelopeError):
        envelope.decrypt_payload(stored=stored, report_id="r", canonical_label=LABEL, keyring=shredded)


def test_keyring_file_is_private_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "k.json"
    ring = keyring.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keyring.load(path) == ring
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        keyring.load(path)
    os.chmod(path, 0o600)
    path.write_text(json.dumps({"current": "a", "keks": {"a": base64.b64encode(b"short").decode()}}))
    with pytest.raises(ConfigError, match="32 bytes"):
        keyring.load(path)


def _raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def test_seal_opens_only_with_the_right_key() -> None:
    recipient, stranger = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    sealed = seal.seal(
        plaintext=b"secret",
        recipient_public_key_b64=_raw_public(recipient),
        report_id="r",
        canonical_label=LABEL,
    )
    assert len(base64.b64decode(sealed["enc"])) == 32
    assert (
        seal.open_sealed(sealed=sealed, private_key=recipient, report_id="r", canonical_label=LABEL)
        == b"secret"
    )
    with pytest.raises(Exception):  # noqa: B017,PT011 -- cryptography raises its own opaque error
        seal.open_sealed(sealed=sealed, private_key=stranger, report_id="r", canonical_label=LABEL)
    with pytest.raises(Exception):  # noqa: B017,PT011
        seal.open_sealed(sealed=sealed, private_key=recipient, report_id="other", canonical_label=LABEL)
    assert seal.seal_info(report_id="r", canonical_label=b"{}") == (
        b"alliance-broker/v1/seal\nr\n" + b"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )


def test_signature_over_contract_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    payload = canonical({"type": "indicator"})
    message = signing.signing_message(canonical_label=LABEL, canonical_payload=payload)
    assert message.startswith(b"alliance-broker/v1/sign\n" + LABEL + b"\n")
    assert message.endswith(b"\n" + hashlib.sha256(payload).hexdigest().encode())
    signature = signing.sign(private_key=key, message=message)
    assert signing.verify(public_key_b64=_raw_public(key), signature_b64=signature, message=message)
    assert not signing.verify(
        public_key_b64=_raw_public(key), signature_b64=signature, message=message + b"x"
    )
    assert not signing.verify(public_key_b64=_raw_public(key), signature_b64="not base64!", message=message)


def test_tokens_are_random_and_stored_hashed() -> None:
    first, second = tokens.new_token(), tokens.new_token()
    assert first != second
    assert first.startswith("abk_")
    stored = tokens.hash_token(first)
    assert first not in stored
    assert len(stored) == 64
    assert tokens.token_matches(token=first, stored_hash=stored)
    assert not tokens.token_matches(token=second, stored_hash=stored)
