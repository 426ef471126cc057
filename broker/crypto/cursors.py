"""TAXII's keyed pieces: the object index key and the sealed ``next`` cursor.

Both keys come from the keyring's stable secret (its checkpoint signing key), each under its own
HKDF info string: KEKs rotate and are replaced on every erasure, and neither an index digest nor
a ``next`` may change with them."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.domain.stix import MAX_SEQ, Position
from broker.errors import BadRequest

INDEX_INFO = b"alliance-broker taxii object index v1"
CURSOR_INFO = b"alliance-broker taxii next v2"
_CURSOR = struct.Struct(">QI")
_CURSOR_TAG = b"alliance-broker taxii next v1"


def _derive(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def index_key(secret: bytes) -> bytes:
    """The key of the object index's digests (``domain.stix.id_digest``)."""
    return _derive(secret, INDEX_INFO, 32)


def cursor_key(secret: bytes) -> bytes:
    """The AES-SIV key (64 bytes) ``next`` tokens are sealed under."""
    return _derive(secret, CURSOR_INFO, 64)


def encode_position(position: Position, *, key: bytes, bound: Sequence[str]) -> str:
    """The ``next`` of a TAXII page: ``position`` sealed with AES-SIV under ``key`` (64 bytes),
    bound to ``bound`` (the node and the collection). Opaque: a client learns no sequence number
    from it (a gap between two would count the reports it may not see), and cannot forge one
    naming a place it was not answered. Deterministic, so the same place is always the same
    token and answers to equal questions stay equal."""
    plain = _CURSOR.pack(position.seq, position.index)
    sealed = AESSIV(key).encrypt(plain, [_CURSOR_TAG, *(b.encode() for b in bound)])
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def decode_position(token: str, *, keys: Sequence[bytes], bound: Sequence[str]) -> Position:
    """The position a ``next`` names, when one of ``keys`` sealed it for ``bound``; else
    BadRequest (a token of another node or collection, a forged or damaged one)."""
    refused = BadRequest("next is not a cursor this server issued", code="invalid_parameter")
    if not 0 < len(token) <= 64 or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise refused
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error) as exc:
        raise refused from exc
    associated = [_CURSOR_TAG, *(b.encode() for b in bound)]
    for key in keys:
        try:
            plain = AESSIV(key).decrypt(sealed, associated)
        except (InvalidTag, ValueError):
            continue
        if len(plain) != _CURSOR.size:
            break
        seq, index = _CURSOR.unpack(plain)
        if seq > MAX_SEQ:
            break
        return Position(seq, index)
    raise refused
