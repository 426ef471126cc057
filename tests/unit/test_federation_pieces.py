"""Pure pieces of the receiving side: sealed link secrets and `audit trace` key arguments."""

from __future__ import annotations

import secrets

import pytest

from broker.crypto import attest, notes
from broker.crypto.secrets_at_rest import open_secret, seal_secret
from broker.crypto.trace import key_of
from broker.errors import BrokerError


def test_a_sealed_secret_opens_only_for_its_keyring_purpose_and_owner() -> None:
    keyring, other = secrets.token_bytes(32), secrets.token_bytes(32)
    sealed = seal_secret(b"-----BEGIN PRIVATE KEY-----", secret=keyring, purpose="key", owner="usa")
    assert b"PRIVATE" not in sealed
    assert open_secret(sealed, secret=keyring, purpose="key", owner="usa") == b"-----BEGIN PRIVATE KEY-----"
    for wrong in (
        {"secret": other, "purpose": "key", "owner": "usa"},
        {"secret": keyring, "purpose": "token", "owner": "usa"},  # moved to the token column
        {"secret": keyring, "purpose": "key", "owner": "nato"},  # moved to another peer's row
    ):
        with pytest.raises(BrokerError):
            open_secret(sealed, **wrong)  # type: ignore[arg-type]
    with pytest.raises(BrokerError):
        open_secret(sealed[:-1] + bytes([sealed[-1] ^ 1]), secret=keyring, purpose="key", owner="usa")


def test_trace_keys_name_their_broker() -> None:
    private = secrets.token_bytes(32)
    vkey = attest.vkey_of(name="usa.example/broker", private_key=private)
    public = notes.public_key(private)
    assert key_of(vkey) == ("usa.example/broker", public)
    assert key_of(f"usa={vkey}") == ("usa", public)
    import base64

    raw = base64.b64encode(public).decode()
    assert key_of(raw) == (None, public)
    assert key_of(f"nato.example/broker={raw}") == ("nato.example/broker", public)
    with pytest.raises(ValueError, match="vkey"):
        key_of(vkey[:-4] + "AAAA")


def test_a_raw_trace_key_with_two_plus_signs_is_a_raw_key() -> None:
    """Base64 has '+' in its alphabet: about one raw key in seven has two of them, and such a
    key was read as a vkey (NAME+KEYID+BASE64) and refused."""
    import base64
    import hashlib

    seeds = (hashlib.sha256(bytes([n])).digest() for n in range(256))
    public = next(p for p in map(notes.public_key, seeds) if base64.b64encode(p).count(b"+") >= 2)
    raw = base64.b64encode(public).decode()
    assert key_of(raw) == (None, public)
    assert key_of(f"fra.example/broker={raw}") == ("fra.example/broker", public)
