"""RFC 8785 (JCS) canonical JSON: the bytes that are hashed, signed and sealed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

from broker.errors import InvalidInput


def canonical(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 encoding of a JSON value.

    Raises InvalidInput for values JSON cannot carry exactly (NaN, huge integers, lone
    surrogates), because a value that cannot be canonicalised cannot be signed or verified.
    """
    try:
        plain = _plain(value)
    except RecursionError:
        plain = False
    if plain:
        try:
            return _PLAIN(value).encode()
        except (UnicodeEncodeError, RecursionError):
            pass  # a lone surrogate, or too deep: the reference names the problem
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"value cannot be canonicalised: {exc}", code="not_canonicalisable") from exc


# For "plain" values (no floats, integers within I-JSON's exact range, every key below U+D800)
# the standard library's sorted, compact, non-ASCII-preserving encoding is byte for byte RFC 8785:
# the same escapes (short forms, else lower-case \u00xx, for control characters only), and
# code-point key order equals UTF-16 order below the surrogates. It is several times faster
# than the pure-Python reference, which still handles every other value (floats' shortest
# round-trip form, UTF-16 key order, errors). Hypothesis checks the two agree.
_PLAIN = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False).encode
_MAX_EXACT = 2**53 - 1


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_MAX_EXACT <= value <= _MAX_EXACT)
    if kind is dict:
        return all(type(k) is str and (not k or max(k) < "\ud800") and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
