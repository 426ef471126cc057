"""Thin HTTP handlers: parse the edge, call a service, serialise the answer."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from broker.domain.records import NodeRecord
from broker.errors import BadRequest, RateLimited
from broker.services import admin, auth, publishing, reports, witnessing
from broker.services import alliances as memberships
from broker.services.context import Context
from broker.services.limits import TokenBucket
from broker.services.puller import Links
from broker.services.wire.decode import decode
from broker.services.wire.requests import MAX_TOPICS, TOPIC, MembershipRequest, TokenRequest
from broker.web.middleware import NODE_ID, read_json
from broker.web.sources import source_address
from broker.web.tls import peer_certificate

CONTEXT = web.AppKey("context", Context)
INTEGER = re.compile(r"-?[0-9]{1,19}")


LIMITER = web.AppKey("limiter", TokenBucket)
# Set by create_app to the hub's nudge(): after a publish, the feed loads it and streams wake.
WAKE: web.AppKey[Callable[[], None]] = web.AppKey("wake")
# Set by create_app: this process's peer pullers (their state and lag show in /v1/health).
LINKS = web.AppKey("links", Links)


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


async def authenticated_node(request: web.Request, *, rechecked: bool = False) -> NodeRecord:
    """The authenticated node. ``rechecked``: the act re-checks the node in its own transaction
    (services.auth.recheck), so a cached record may be handed over without a database read."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token_or_none = token.strip() if scheme.lower() == "bearer" else subprotocol_token(request)
    node = await auth.authenticate(
        _ctx(request),
        token_or_none,
        source=source_address(request),
        rechecked=rechecked,
        certificate=peer_certificate(request),
    )
    request[NODE_ID] = node.id
    return node


# Browsers cannot set headers on a websocket: they offer the token as a subprotocol beside ours,
# ``new WebSocket(url, ["alliance-broker.v1", "bearer." + token])``, never in the URL. The
# broker answers with ``alliance-broker.v1`` only, so the token is not echoed back.
WS_PROTOCOL = "alliance-broker.v1"
_BEARER_PROTOCOL = "bearer."


def subprotocol_token(request: web.Request) -> str | None:
    """The token a browser offered as a websocket subprotocol, if any."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for protocol in (p.strip() for p in offered.split(",")):
        if protocol.startswith(_BEARER_PROTOCOL):
            return protocol.removeprefix(_BEARER_PROTOCOL)
    return None


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not INTEGER.fullmatch(raw):  # int() would also take " 5", "1_000" and other scripts' digits
        raise BadRequest(f"{name} must be an integer", code="invalid_parameter")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}", code="invalid_parameter")
    return value


def topics_param(request: web.Request) -> list[str]:
    raw = request.query.get("topics", "")
    topics = [t for t in raw.split(",") if t]
    if len(topics) > MAX_TOPICS or not all(TOPIC.fullmatch(t) for t in topics):
        raise BadRequest("topics must be comma-separated tags", code="invalid_parameter")
    return topics


async def index(_request: web.Request) -> web.Response:
    """Where a person who opens the broker's address in a browser goes next."""
    return web.json_response(
        {
            "service": "alliance-broker",
            "audit_page": "/audit/",
            "openapi": "/v1/openapi.json",
            "health": "/v1/health",
        }
    )


async def health(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    await ctx.db.ping(seconds=ctx.settings.health_timeout_seconds)
    answer: dict[str, Any] = {"status": "ok"}
    if ctx.settings.witnesses:
        # Readiness stays the database's: an unwitnessed log is reported, not a reason to stop serving.
        state = await witnessing.status(ctx)
        answer.update(
            witnessed=state.witnessed,
            witness_quorum=state.quorum,
            cosigners=state.cosigners,
            refused_by=list(state.refused_by),
        )
    links = request.app.get(LINKS)
    if links is not None and links.status:
        answer["peers"] = links.health()  # state and lag only: never a URL or a credential
    return web.json_response(answer)


async def publish(request: web.Request) -> web.Response:
    node = await authenticated_node(request, rechecked=True)
    # Before the body is read: a node without the role costs no parsing (refusals are counted).
    await auth.require_role(_ctx(request), node, "publish", act="publish")
    if not request.app[LIMITER].take(node.id):
        raise RateLimited("too many reports per second from this node", code="rate_limited")
    body = await read_json(request)
    receipt = await publishing.publish(
        _ctx(request), node, body, idempotency_key=request.headers.get("Idempotency-Key")
    )
    request.app[WAKE]()
    return web.json_response(receipt, status=201)


async def read_report(request: web.Request) -> web.Response:
    node = await authenticated_node(request, rechecked=True)
    await auth.require_role(_ctx(request), node, "subscribe", act="read")
    return web.json_response(await reports.read(_ctx(request), node, request.match_info["id"]))


async def list_reports(request: web.Request) -> web.Response:
    node = await authenticated_node(request, rechecked=True)
    ctx = _ctx(request)
    result = await reports.listing(
        ctx,
        node,
        after=int_param(request, "after", 0, 0, 2**62),
        limit=int_param(request, "limit", 100, 1, ctx.settings.max_page_size),
        topics=topics_param(request),
    )
    return web.json_response(result)


async def recall(request: web.Request) -> web.Response:
    node = await authenticated_node(request, rechecked=True)
    await auth.require_role(_ctx(request), node, "publish", act="recall")
    result = await reports.recall(_ctx(request), node, request.match_info["id"])
    request.app[WAKE]()  # open streams here decide again at once (other brokers: NOTIFY or poll)
    return web.json_response(result)


async def require_admin(request: web.Request) -> NodeRecord:
    node = await authenticated_node(request)
    await auth.require_role(_ctx(request), node, "admin", act="admin")
    return node


async def admin_add_node(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    body = await read_json(request)
    return web.json_response(await admin.add_node(_ctx(request), body, actor=actor.id, by=actor), status=201)


async def admin_list_nodes(request: web.Request) -> web.Response:
    await require_admin(request)
    return web.json_response({"nodes": await admin.list_nodes(_ctx(request))})


async def admin_revoke_node(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    result = await admin.revoke_node(_ctx(request), request.match_info["id"], actor=actor.id, by=actor)
    request.app[WAKE]()  # the node's open streams here close at once (other brokers: NOTIFY or poll)
    return web.json_response(result)


async def admin_update_node(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    body = await read_json(request)
    result = await admin.update_node(_ctx(request), request.match_info["id"], body, actor=actor.id, by=actor)
    request.app[WAKE]()  # open streams decide with the new clearance, caveats and keys at once
    return web.json_response(result)


async def admin_rotate_token(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    body = await _optional_body(request)
    days = None if body is None else decode(TokenRequest, body).token_days
    result = await admin.rotate_token(
        _ctx(request), request.match_info["id"], actor=actor.id, token_days=days, by=actor
    )
    request.app[WAKE]()  # streams opened with the old token re-check the node at once
    return web.json_response(result)


async def admin_node_cursors(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    node_id = request.match_info["id"]
    return web.json_response(await admin.stream_cursors(_ctx(request), node_id, actor=actor.id, by=actor))


async def admin_reset_cursor(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    node_id, name = request.match_info["id"], request.match_info["name"]
    return web.json_response(await admin.reset_cursor(_ctx(request), node_id, name, actor=actor.id, by=actor))


def _date_param(body: object) -> datetime | None:
    return None if body is None else decode(MembershipRequest, body).date


async def _optional_body(request: web.Request) -> Any:
    return await read_json(request) if request.can_read_body else None


async def admin_join(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    at = _date_param(await _optional_body(request))
    result = await memberships.join(
        _ctx(request), request.match_info["id"], request.match_info["nation"], at=at, actor=actor.id, by=actor
    )
    request.app[WAKE]()
    return web.json_response(result, status=201)


async def admin_leave(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    at = _date_param(await _optional_body(request))
    result = await memberships.leave(
        _ctx(request), request.match_info["id"], request.match_info["nation"], at=at, actor=actor.id, by=actor
    )
    request.app[WAKE]()
    return web.json_response(result)


async def alliances(request: web.Request) -> web.Response:
    await authenticated_node(request)
    return web.json_response({"alliances": await memberships.list_alliances(_ctx(request))})


async def node_keys(request: web.Request) -> web.Response:
    await authenticated_node(request)
    return web.json_response(await admin.node_keys(_ctx(request), request.match_info["id"]))
