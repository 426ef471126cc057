"""Request ids, RFC 9457 problem documents, requests from other sites' pages, and strict JSON
parsing at the edge."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from broker.errors import (
    AccessDenied,
    BadRequest,
    BrokerError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from broker.web.connections import Handler
from broker.web.sources import source_address
from broker.web.tls import peer_certificate

log = logging.getLogger(__name__)
PROBLEM_BASE = "urn:alliance-broker:problem:"
CHALLENGE = 'Bearer realm="alliance-broker"'
REQUEST_ID = web.RequestKey("request_id", str)
# The authenticated node's id, for the access log (set by handlers.authenticated_node).
NODE_ID = web.RequestKey("node_id", str)
# Seconds a request body may take to arrive (set by create_app from body_read_timeout_seconds).
BODY_TIMEOUT = web.AppKey("body_timeout", float)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
# Seconds a client should wait before retrying a 503: outages the broker answers 503 for (a
# database that stopped answering, an exhausted pool) last seconds, not minutes.
RETRY_AFTER_SECONDS = 1
# A dependency that failed where storage/database.py did not map it (a connection opened outside
# a transaction, a pool checkout, a timeout): the broker is unavailable, not broken. An
# OperationalError is not among them: unmapped, it is a missing table or column, a fault (500).
_DEPENDENCY_FAILURES = (InterfaceError, PoolTimeout, OSError, TimeoutError)


def problem(status: int, code: str, detail: str, *, request_id: str) -> web.Response:
    """An ``application/problem+json`` response with a stable ``type`` (and, for a 401, the
    challenge RFC 9110 requires)."""
    body = {
        "type": PROBLEM_BASE + code,
        "title": code.replace("_", " "),
        "status": status,
        "detail": detail,
        "request_id": request_id,
    }
    response = web.json_response(body, status=status, content_type="application/problem+json")
    if status == 401:
        response.headers["WWW-Authenticate"] = CHALLENGE
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response.headers["X-Request-Id"] = request_id
    return response


async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: name the product, not the Python and aiohttp versions behind it."""
    response.headers["Server"] = "alliance-broker"


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn BrokerErrors and aiohttp's own HTTP errors into problem documents; anything else
    into a 500 without detail (the traceback goes to the log, never to the client)."""
    request_id = secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except BrokerError as exc:
        log.info("request_failed request_id=%s code=%s status=%s", request_id, exc.code, exc.status)
        return problem(exc.status, exc.code, exc.message, request_id=request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        answer = problem(exc.status, code, exc.reason, request_id=request_id)
        if "Allow" in exc.headers:  # a 405 says which methods the resource has (RFC 9110)
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except _DEPENDENCY_FAILURES:
        log.exception("request_dependency_failed request_id=%s path=%s", request_id, request.path)
        return problem(
            503, "unavailable", "a service the broker depends on is unavailable", request_id=request_id
        )
    except Exception:
        log.exception("request_crashed request_id=%s path=%s", request_id, request.path)
        return problem(500, "internal_error", "internal error", request_id=request_id)
    response.headers["X-Request-Id"] = request_id
    return response


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values a browser sets when another site's page made the request. ``same-site``
# too: a sibling host (another application under the same registrable domain) is not us.
_FOREIGN_SITES = frozenset({"cross-site", "same-site"})


def _ambient(request: web.Request) -> bool:
    """True when the request is authenticated by something a browser sends on its own whatever
    page asked: a TLS client certificate, or HTTP Basic credentials it remembers."""
    scheme = request.headers.get("Authorization", "").partition(" ")[0]
    return scheme.lower() == "basic" or peer_certificate(request) is not None


def cross_origin(request: web.Request, allowed: tuple[str, ...]) -> str | None:
    """Why the request looks sent by another site's page (``origin`` or ``sec_fetch_site``), or
    None. Only state changes and requests with ambient credentials are judged: a bearer token
    must be put there by a script, and a page of another origin cannot read a GET's answer."""
    if request.method not in UNSAFE_METHODS and not _ambient(request):
        return None
    origin = request.headers.get("Origin")
    if origin is not None:  # "null" (sandboxed frames, data: URLs) is foreign too
        own = f"{request.scheme}://{request.host}".lower()
        return None if origin.lower() == own or origin in allowed else "origin"
    if request.headers.get("Sec-Fetch-Site", "").lower() not in _FOREIGN_SITES:
        return None  # same-origin, none (typed by the user), or a client that is no browser
    # A link on another site may open a page: a top-level navigation reads nothing it could use.
    if request.method not in UNSAFE_METHODS and request.headers.get("Sec-Fetch-Mode") == "navigate":
        return None
    return "sec_fetch_site"


def same_origin_only(allowed: tuple[str, ...], *, refused: Callable[[str], None]) -> Middleware:
    """Refuse (403 ``cross_origin_request``) what another site's page made the browser send
    (``cross_origin``) before anything is read; ``refused(source)`` audits it."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        why = cross_origin(request, allowed)
        if why is not None:
            log.info("cross_origin_refused request_id=%s by=%s", request.get(REQUEST_ID, "-"), why)
            refused(source_address(request))
            raise AccessDenied(
                "a page of another origin may not make this request", code="cross_origin_request"
            )
        return await handler(request)

    return guard


def _is_json(content_type: str) -> bool:
    kind = content_type.lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadRequest(f"duplicate JSON key {key!r}", code="invalid_json")
        result[key] = value
    return result


def _no_constants(name: str) -> None:
    raise BadRequest(f"{name} is not JSON", code="invalid_json")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON. Duplicate keys and NaN/Infinity are refused: two parsers
    could read such a label differently, and labels must mean one thing. The body must be
    declared JSON (``application/json`` or ``application/*+json``): a form or ``text/plain``
    is what another site's page can send without asking, and it is refused (415) unread."""
    if not _is_json(request.content_type):
        raise UnsupportedMediaType("the body must be application/json", code="unsupported_media_type")
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge("the request body is too large", code="payload_too_large") from exc
    except TimeoutError as exc:  # a body that trickles must not hold a handler forever
        raise RequestTimeout("the request body did not arrive in time", code="request_timeout") from exc
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from exc
