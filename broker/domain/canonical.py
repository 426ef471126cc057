"""RFC 8785 (JCS) canonical JSON: the bytes that are hashed, signed and sealed."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from broker.errors import InvalidInput


def canonical(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of a JSON value.

    Raises InvalidInput for values JSON cannot carry exactly (NaN, huge integers, lone
    surrogates), because a value that cannot be canonicalised cannot be signed or verified.
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"value cannot be canonicalised: {exc}", code="not_canonicalisable") from exc


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
