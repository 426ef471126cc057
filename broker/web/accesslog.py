"""The access log: one line per request, and never a secret in it.

aiohttp's ``%r`` writes the request line as sent, query string included, so a token a client
put in the URL (refused: tokens go in the Authorization header) would land in the log. Here the
query is written with the value of any parameter that may hold a secret replaced.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from broker.web.middleware import NODE_ID, REQUEST_ID

SECRET_NAMES = frozenset({"token", "access_token", "api_key", "apikey", "key", "password", "auth", "ticket"})
REDACTED = "REDACTED"
TOKEN_PREFIX = "abk_"  # noqa: S105 (not a secret:) what crypto.tokens.new_token() starts with


def safe_target(path: str, query_string: str) -> str:
    """``path?query`` with every value that may be a secret replaced by REDACTED."""
    if not query_string:
        return path
    pairs = parse_qsl(query_string, keep_blank_values=True)
    shown = [
        (name, REDACTED if name.lower() in SECRET_NAMES or TOKEN_PREFIX in value else value)
        for name, value in pairs
    ]
    return path + "?" + "&".join(f"{quote(n, safe='')}={quote(v, safe=',:')}" for n, v in shown)


class AccessLogger(AbstractAccessLogger):
    """Peer address, request line (secrets redacted), status, bytes, seconds taken, the
    authenticated node (``-`` for none) and the request id the response carries."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        line = f"{request.method} {safe_target(request.path, request.query_string)} {version}"
        status, size = response.status, response.body_length
        node, request_id = request.get(NODE_ID, "-"), request.get(REQUEST_ID, "-")
        self.logger.info(
            '%s "%s" %s %s %.6f node=%s request_id=%s',
            request.remote,
            line,
            status,
            size,
            time,
            node,
            request_id,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
