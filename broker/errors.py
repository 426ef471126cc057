"""The broker's error tree. Every error has a stable ``code`` and an HTTP ``status``.

::

    BrokerError
    ├── ConfigError            (start-up: names file, key and problem; not an HTTP error)
    ├── BadRequest        400  (malformed JSON, bad query parameter)
    ├── InvalidInput      422  (well-formed but invalid: unknown nation, bad label)
    ├── Unauthenticated   401  (missing, unknown or revoked token)
    ├── AccessDenied      403  (authenticated but not allowed to do this act)
    ├── NotFound          404  (absent, or present but not releasable to the caller)
    ├── Conflict          409  (idempotency key reused with another body, duplicate id)
    ├── PayloadTooLarge   413
    ├── UnsupportedMediaType 415 (a JSON body sent as anything but JSON)
    ├── RateLimited       429
    ├── RequestTimeout    408  (a request body that trickles past the read timeout)
    └── Unavailable       503  (database unreachable)
        └── Stale         503  (security state changed under a decision, and retries ran out)

The web middleware turns these into RFC 9457 problem documents; the client sees ``code`` and a
plain message, never internals. Anything else becomes a 500 with no detail.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of all errors the broker raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(BrokerError):
    """Invalid configuration: refuse to start."""

    code = "config_error"

    def __init__(self, *, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem


class BadRequest(BrokerError):
    status = 400
    code = "bad_request"


class InvalidInput(BrokerError):
    status = 422
    code = "invalid_input"


class Unauthenticated(BrokerError):
    status = 401
    code = "unauthenticated"


class AccessDenied(BrokerError):
    status = 403
    code = "access_denied"


class NotFound(BrokerError):
    status = 404
    code = "not_found"


class Conflict(BrokerError):
    status = 409
    code = "conflict"


class PayloadTooLarge(BrokerError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(BrokerError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(BrokerError):
    status = 429
    code = "rate_limited"


class RequestTimeout(BrokerError):
    status = 408
    code = "request_timeout"


class Unavailable(BrokerError):
    status = 503
    code = "unavailable"


class Stale(Unavailable):
    """The change counter moved between a decision and the commit of its audit event (a
    revocation, membership change, recall or key change committed meanwhile): the act must be
    decided again. Services retry; only when they give up does a client see 503."""

    code = "retry"
