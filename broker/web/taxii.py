"""TAXII 2.1 at /taxii2/, and the admin REST routes for collections.

The edge only: media types (406/415), authentication (HTTP Basic with the node id and its token,
a bearer token, or a client certificate), query parameters, and errors as TAXII error messages.
Every decision is made in ``services.taxii``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from broker.domain import stix
from broker.domain.records import NodeRecord
from broker.errors import BadRequest, BrokerError, RateLimited, Unauthenticated
from broker.services import auth, collections, taxii
from broker.services.context import Context
from broker.services.wire import requests as rq
from broker.services.wire import responses as rs
from broker.services.wire.decode import Wire
from broker.web.handlers import CONTEXT, INTEGER, LIMITER, WAKE
from broker.web.middleware import REQUEST_ID, read_json
from broker.web.sources import source_address
from broker.web.tls import peer_certificate

API_ROOT = "/taxii2/api/"
CHALLENGE = 'Basic realm="alliance-broker", Bearer realm="alliance-broker"'
TAXII_TYPE = "application/taxii+json"
JSON_TYPE = "application/json"
DEFAULT_LIMIT = 100
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


def respond(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A TAXII answer: JSON in the TAXII 2.1 media type."""
    all_headers = {"Content-Type": stix.TAXII_MEDIA, **(headers or {})}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def error(request: web.Request, exc: BrokerError) -> web.Response:
    """A TAXII error message (and, for a 401, the challenges this server accepts)."""
    body = {
        "title": exc.code.replace("_", " "),
        "description": exc.message,
        "error_id": request.get(REQUEST_ID, ""),
        "error_code": exc.code,
        "http_status": str(exc.status),
    }
    headers = {"WWW-Authenticate": CHALLENGE} if exc.status == 401 else None
    return respond(body, status=exc.status, headers=headers)


class NotAcceptable(BrokerError):
    status = 406
    code = "not_acceptable"


class UnsupportedMediaType(BrokerError):
    status = 415
    code = "unsupported_media_type"


def _media(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = (p.strip() for p in value.split(";"))
    pairs = (p.partition("=") for p in params if p)
    return kind.lower(), {k.strip().lower(): v.strip().strip('"') for k, _, v in pairs}


def _is_taxii(kind: str, params: dict[str, str]) -> bool:
    return kind == TAXII_TYPE and params.get("version", "2.1") == "2.1"


def acceptable(accept: str | None) -> bool:
    """True when an Accept header admits TAXII 2.1 JSON (no header admits anything)."""
    if accept is None or not accept.strip():
        return True
    for item in accept.split(","):
        kind, params = _media(item)
        if params.get("q") in {"0", "0.0", "0.00", "0.000"}:
            continue
        if kind in {"*/*", "application/*"} or _is_taxii(kind, params):
            return True
    return False


def taxii_endpoint(handler: Handler) -> Handler:
    """Wrap a TAXII handler: check Accept (and Content-Type on POST), turn errors into TAXII
    error messages."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if not acceptable(request.headers.get("Accept")):
                raise NotAcceptable(f"this server answers {stix.TAXII_MEDIA} only")
            if request.method == "POST" and not _is_taxii(*_media(request.headers.get("Content-Type", ""))):
                raise UnsupportedMediaType(f"the body must be {stix.TAXII_MEDIA}")
            return await handler(request)
        except BrokerError as exc:
            return error(request, exc)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


async def authenticated(request: web.Request) -> NodeRecord:
    """The node: HTTP Basic (user = node id, password = its token), a bearer token, or a client
    certificate. A Basic user that is not the token's node fails like a bad token."""
    ctx = _ctx(request)
    source = source_address(request)
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    user: str | None = None
    token: str | None = None
    if scheme.lower() == "bearer":
        token = value.strip()
    elif scheme.lower() == "basic":
        try:
            user, _, token = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user, token = "", ""
    # Not ``rechecked``: discovery, collections and status decide without re-checking the node in
    # a transaction of their own, and the object routes check roles before theirs; so the record
    # is checked against the database's change counter here, and a revocation, token rotation or
    # role change committed by any process binds every route at once.
    node = await auth.authenticate(
        ctx, token, source=source, rechecked=False, certificate=peer_certificate(request)
    )
    if user is not None and user != node.id:
        ctx.auth_failures.note(source, "basic_user_mismatch", node, now=ctx.now())
        raise Unauthenticated("the Basic user must be the node the token belongs to", code="unauthenticated")
    return node


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    high = _ctx(request).settings.max_page_size
    if raw is None:
        return min(DEFAULT_LIMIT, high)
    if not INTEGER.fullmatch(raw) or not 1 <= int(raw) <= 10**9:
        raise BadRequest("limit must be a positive integer", code="invalid_parameter")
    return min(int(raw), high)  # TAXII: a server may answer fewer than asked


def _date_headers(entries: list[stix.Entry]) -> dict[str, str]:
    if not entries:
        return {}
    added = sorted(e.date_added for e in entries)
    return {"X-TAXII-Date-Added-First": added[0], "X-TAXII-Date-Added-Last": added[-1]}


def _envelope(found: taxii.Page, items: list[Any], key: str, next_token: str | None = None) -> dict[str, Any]:
    """An envelope (``versions``: that resource); an empty one is ``{}`` (TAXII 2.1 §2: empty
    lists are not sent, and ``more`` is false by default)."""
    if not items and not found.more:
        return {}
    body: dict[str, Any] = {"more": found.more}
    if found.more and next_token is not None:
        body["next"] = next_token
    if items:
        body[key] = items
    return body


# -- discovery, API root, collections -------------------------------------------------------------
@taxii_endpoint
async def discovery(request: web.Request) -> web.StreamResponse:
    await authenticated(request)
    return respond(
        {
            "title": "Alliance Broker",
            "description": "Releasability by alliance membership at decision time, per recipient, audited.",
            "default": API_ROOT,
            "api_roots": [API_ROOT],
        }
    )


@taxii_endpoint
async def api_root(request: web.Request) -> web.StreamResponse:
    await authenticated(request)
    return respond(
        {
            "title": "Alliance Broker",
            "versions": [stix.TAXII_MEDIA],
            "max_content_length": _ctx(request).settings.max_body_bytes,
        }
    )


@taxii_endpoint
async def collections_list(request: web.Request) -> web.StreamResponse:
    node = await authenticated(request)
    return respond(await taxii.collections_for(_ctx(request), node))


@taxii_endpoint
async def collection(request: web.Request) -> web.StreamResponse:
    node = await authenticated(request)
    return respond(await taxii.collection_for(_ctx(request), node, request.match_info["collection"]))


# -- objects ---------------------------------------------------------------------------------------
def _filters_scope(query: Mapping[str, str]) -> str:
    """The query a ``next`` was answered for, bar the cursor and the page size: a ``next``
    resumed under other filters would start at a place decided for those it was made with, so it
    is refused (400) like any ``next`` this broker did not answer for this scope."""
    kept = sorted((k, v) for k, v in query.items() if k not in ("next", "limit"))
    return "&".join(f"{k}={v}" for k, v in kept)


async def _page(request: web.Request) -> tuple[taxii.Page, str | None]:
    """The page of a collection that objects and manifest both answer from, and its ``next``."""
    ctx, node = _ctx(request), await authenticated(request)
    scope = (request.match_info["collection"], _filters_scope(request.query))
    found = await taxii.page(
        ctx,
        node,
        scope[0],
        filters=stix.parse_filters(request.query),
        limit=_limit(request),
        start=taxii.position_of(ctx, node, scope, request.query.get("next")),
    )
    token = None if found.next is None else taxii.cursor(ctx, node, scope, found.next)
    return found, token


@taxii_endpoint
async def objects(request: web.Request) -> web.StreamResponse:
    found, token = await _page(request)
    items = [e.obj for e in found.entries]
    return respond(_envelope(found, items, "objects", token), headers=_date_headers(found.entries))


@taxii_endpoint
async def manifest(request: web.Request) -> web.StreamResponse:
    found, token = await _page(request)
    items = [
        {"id": e.obj["id"], "date_added": e.date_added, "version": e.version, "media_type": stix.STIX_MEDIA}
        for e in found.entries
    ]
    return respond(_envelope(found, items, "objects", token), headers=_date_headers(found.entries))


async def _by_id(
    request: web.Request, query: Mapping[str, str], endpoint: str
) -> tuple[taxii.Page, str | None]:
    """One object's page (by-id or versions: each its own cursor scope), and its ``next``."""
    ctx, node = _ctx(request), await authenticated(request)
    object_id = request.match_info["object"]
    scope = (request.match_info["collection"], object_id, endpoint, _filters_scope(query))
    found = await taxii.by_id(
        ctx,
        node,
        scope[0],
        object_id,
        filters=stix.parse_filters(query, fixed_id=object_id),
        limit=_limit(request),
        start=taxii.position_of(ctx, node, scope, request.query.get("next")),
    )
    token = None if found.next is None else taxii.cursor(ctx, node, scope, found.next)
    return found, token


@taxii_endpoint
async def object_by_id(request: web.Request) -> web.StreamResponse:
    found, token = await _by_id(request, request.query, "objects")
    body = _envelope(found, [e.obj for e in found.entries], "objects", token)
    return respond(body, headers=_date_headers(found.entries))


@taxii_endpoint
async def versions(request: web.Request) -> web.StreamResponse:
    if "match[version]" in request.query:
        raise BadRequest("the versions endpoint takes no match[version]", code="invalid_parameter")
    query = {k: v for k, v in request.query.items() if k == "match[spec_version]" or k == "added_after"}
    found, token = await _by_id(request, {**query, "match[version]": "all"}, "versions")
    body = _envelope(found, [e.version for e in found.entries], "versions", token)
    return respond(body, headers=_date_headers(found.entries))


@taxii_endpoint
async def delete_object(request: web.Request) -> web.StreamResponse:
    node = await authenticated(request)
    object_id = request.match_info["object"]
    query = {"match[version]": "all", **request.query}
    filters = stix.parse_filters(query, fixed_id=object_id)
    await taxii.delete(_ctx(request), node, request.match_info["collection"], object_id, filters=filters)
    request.app[WAKE]()
    return respond({})


@taxii_endpoint
async def add_objects(request: web.Request) -> web.StreamResponse:
    node = await authenticated(request)
    envelope = await read_json(request)
    count = await taxii.publishes_in(_ctx(request), node, envelope)
    limiter = request.app[LIMITER]
    # One publish per object; a refused POST keeps what it took (the bucket cannot give back).
    if not all(limiter.take(node.id) for _ in range(count)):
        raise RateLimited("too many objects per second from this node", code="rate_limited")
    result = await taxii.add_objects(_ctx(request), node, request.match_info["collection"], envelope)
    request.app[WAKE]()
    return respond(result, status=202)


@taxii_endpoint
async def status(request: web.Request) -> web.StreamResponse:
    node = await authenticated(request)
    return respond(await taxii.status(_ctx(request), node, request.match_info["status"]))


# -- admin REST (problem documents, as every /v1 route) ---------------------------------------------
async def _admin(request: web.Request) -> NodeRecord:
    ctx = _ctx(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    node = await auth.authenticate(
        ctx,
        token.strip() if scheme.lower() == "bearer" else None,
        source=source_address(request),
        certificate=peer_certificate(request),
    )
    await auth.require_role(ctx, node, "admin", act="admin")
    return node


async def admin_list_collections(request: web.Request) -> web.Response:
    await _admin(request)
    return web.json_response({"collections": await collections.list_collections(_ctx(request))})


async def admin_add_collection(request: web.Request) -> web.Response:
    actor = await _admin(request)
    body = await read_json(request)
    return web.json_response(
        await collections.add_collection(_ctx(request), body, actor=actor.id, by=actor), status=201
    )


async def admin_remove_collection(request: web.Request) -> web.Response:
    actor = await _admin(request)
    result = await collections.remove_collection(
        _ctx(request), request.match_info["id"], actor=actor.id, by=actor
    )
    return web.json_response(result)


ROUTES = [
    web.get("/taxii2/", discovery),
    web.get(API_ROOT, api_root),
    web.get(API_ROOT + "collections/", collections_list),
    web.get(API_ROOT + "collections/{collection}/", collection),
    web.get(API_ROOT + "collections/{collection}/objects/", objects),
    web.post(API_ROOT + "collections/{collection}/objects/", add_objects),
    web.get(API_ROOT + "collections/{collection}/objects/{object}/", object_by_id),
    web.delete(API_ROOT + "collections/{collection}/objects/{object}/", delete_object),
    web.get(API_ROOT + "collections/{collection}/objects/{object}/versions/", versions),
    web.get(API_ROOT + "collections/{collection}/manifest/", manifest),
    web.get(API_ROOT + "status/{status}/", status),
    web.get("/v1/admin/collections", admin_list_collections),
    web.post("/v1/admin/collections", admin_add_collection),
    web.delete("/v1/admin/collections/{id}", admin_remove_collection),
]


# -- the OpenAPI description of these routes (merged into /v1/openapi.json by routes.py) ----------
# Models these routes name; web.openapi puts their schemas into the document's components.
OPENAPI_MODELS: set[type[Wire]] = {rs.Problem, rs.CollectionList, rs.Created, rs.Removed}
OPENAPI_MODELS |= {rq.CollectionSpec, rq.Envelope}


def _schema(model: type[Wire]) -> dict[str, str]:
    assert model in OPENAPI_MODELS
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _problem_responses(*statuses: int) -> dict[str, Any]:
    schema = _schema(rs.Problem)
    content = {"application/problem+json": {"schema": schema}}
    return {str(s): {"description": "problem", "content": content} for s in statuses}


def _admin_op(summary: str, ok: str, model: type[Wire], **extra: Any) -> dict[str, Any]:
    statuses = (400, 401, 403, 404, 408, 422, 429, 503)
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            ok: {"description": "ok", "content": {JSON_TYPE: {"schema": _schema(model)}}},
            **_problem_responses(*statuses),
        },
        **extra,
    }


def _taxii_op(summary: str, ok: str = "200", **extra: Any) -> dict[str, Any]:
    content = {stix.TAXII_MEDIA: {"schema": {"type": "object"}}}
    statuses = (ok, "400", "401", "403", "404", "406", "408", "413", "415", "422", "429", "503")
    return {
        "summary": summary + " (TAXII 2.1; errors are TAXII error messages)",
        "security": [{"bearer": []}],
        "responses": {s: {"description": "TAXII 2.1", "content": content} for s in statuses},
        **extra,
    }


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_COLL = {"name": "collection", "in": "path", "required": True, "schema": {"type": "string"}}
_OBJECT = {"name": "object", "in": "path", "required": True, "schema": {"type": "string"}}
_QUERY = [
    {"name": name, "in": "query", "schema": {"type": "string"}}
    for name in (
        "limit",
        "next",
        "added_after",
        "match[id]",
        "match[type]",
        "match[version]",
        "match[spec_version]",
    )
]
_BODY = {"required": True, "content": {stix.TAXII_MEDIA: {"schema": _schema(rq.Envelope)}}}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/admin/collections": {
        "get": _admin_op(
            "TAXII collections (role admin)",
            "200",
            rs.CollectionList,
        ),
        "post": _admin_op(
            "Define a TAXII collection: title, topics, label, description (role admin; audited)",
            "201",
            rs.Created,
            requestBody={"required": True, "content": {JSON_TYPE: {"schema": _schema(rq.CollectionSpec)}}},
        ),
    },
    "/v1/admin/collections/{id}": {
        "delete": _admin_op(
            "Remove a TAXII collection; its reports stay (role admin; audited)",
            "200",
            rs.Removed,
            parameters=[_ID],
        )
    },
    "/taxii2/": {"get": _taxii_op("TAXII discovery")},
    API_ROOT: {"get": _taxii_op("The API root")},
    API_ROOT + "collections/": {"get": _taxii_op("Collections as the caller sees them")},
    API_ROOT + "collections/{collection}/": {"get": _taxii_op("One collection", parameters=[_COLL])},
    API_ROOT + "collections/{collection}/objects/": {
        "get": _taxii_op("Objects the caller may see (audited)", parameters=[_COLL, *_QUERY]),
        "post": _taxii_op("Add objects as one report", "202", parameters=[_COLL], requestBody=_BODY),
    },
    API_ROOT + "collections/{collection}/objects/{object}/": {
        "get": _taxii_op("One object's versions the caller may see", parameters=[_COLL, _OBJECT, *_QUERY]),
        "delete": _taxii_op("Recall the caller's reports carrying the object", parameters=[_COLL, _OBJECT]),
    },
    API_ROOT + "collections/{collection}/objects/{object}/versions/": {
        "get": _taxii_op("One object's versions", parameters=[_COLL, _OBJECT, *_QUERY])
    },
    API_ROOT + "collections/{collection}/manifest/": {
        "get": _taxii_op("Manifest of the objects the caller may see", parameters=[_COLL, *_QUERY])
    },
    API_ROOT + "status/{status}/": {
        "get": _taxii_op(
            "Status of an add",
            parameters=[{"name": "status", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
    },
}
