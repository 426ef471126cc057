"""Node API tokens: 32 random bytes, shown once, stored only as a SHA-256 hash.

A token has 256 bits of entropy, so a plain SHA-256 (not a slow password hash) is enough to make
the stored hash useless to an attacker, and lets the server look a token up by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "abk_"  # noqa: S105 -- a public prefix that makes leaked tokens greppable


def new_token() -> str:
    """A fresh bearer token: ``abk_`` + URL-safe base64 of 32 random bytes."""
    raw = secrets.token_bytes(32)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hash_token(token: str) -> str:
    """The stored form of a token: lower-case hex SHA-256 of its UTF-8."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(*, token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    return hmac.compare_digest(hash_token(token), stored_hash)
