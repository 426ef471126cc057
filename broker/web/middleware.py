"""Request ids, RFC 9457 problem documents, and strict JSON parsing at the edge."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.errors import BadRequest, BrokerError, PayloadTooLarge, RequestTimeout

log = logging.getLogger(__name__)
PROBLEM_BASE = "urn:alliance-broker:problem:"
CHALLENGE = 'Bearer realm="alliance-broker"'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
# The authenticated node's id, for the access log (set by handlers.authenticated_node).
NODE_ID = web.RequestKey("node_id", str)
# Seconds a request body may take to arrive (set by create_app from body_read_timeout_seconds).
BODY_TIMEOUT = web.AppKey("body_timeout", float)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


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
    except Exception:
        log.exception("request_crashed request_id=%s path=%s", request_id, request.path)
        return problem(500, "internal_error", "internal error", request_id=request_id)
    response.headers["X-Request-Id"] = request_id
    return response


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
    could read such a label differently, and labels must mean one thing."""
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
