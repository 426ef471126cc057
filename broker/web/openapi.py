"""The OpenAPI 3.1 document served at /v1/openapi.json. Tests check that it names every route
and that real responses validate against its schemas."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from broker import __version__
from broker.services.wire import requests as rq
from broker.services.wire import responses as rs
from broker.services.wire.decode import Wire
from broker.web import taxii as taxii_web

JSON = "application/json"
PROBLEM = "application/problem+json"
REF = "#/components/schemas/{model}"
# Every model a path names (and Label, which request bodies name through their validators).
MODELS: set[type[Wire]] = {rq.Label, rs.Problem}


def _ref(model: type[Wire]) -> dict[str, str]:
    MODELS.add(model)
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[Wire], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(model)}}}


def _body(model: type[Wire], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(model)}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "problem", "content": {PROBLEM: {"schema": _ref(rs.Problem)}}}
        for s in statuses
    }


_PATH_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_NATION = {"name": "nation", "in": "path", "required": True, "schema": {"type": "string"}}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A secured operation. Every one may also answer 401 (no valid token), 429 (a source that
    keeps failing authentication), 400 (a value the database cannot store) and 503 (database
    unavailable, or the security state kept changing under the decision: retry), 403 (sent by a
    page of another origin: cross_origin_request); one with a body 408 as well (it did not arrive
    within the read timeout) and 415 (not declared JSON)."""
    always = (400, 401, 403, 429, 503, 408, 415) if "requestBody" in extra else (400, 401, 403, 429, 503)
    return {
        "summary": summary,
        "responses": {**_problems(*always), **responses},
        "security": _SECURED,
        **extra,
    }


PATHS: dict[str, Any] = {
    "/v1/health": {
        "get": {
            "summary": "Readiness: the database answers",
            "security": [],
            "responses": {"200": _json(rs.Health, "ok"), **_problems(503)},
        }
    },
    "/": {
        "get": {
            "summary": "Where to go: the auditor page, this document, the health check",
            "security": [],
            "responses": {"200": _json(rs.Links, "links")},
        }
    },
    "/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
            },
        }
    },
    "/v1/reports": {
        "post": _op(
            "Publish a report (role publish)",
            {"201": _json(rs.Receipt, "stored durably"), **_problems(400, 401, 403, 409, 413, 422, 429)},
            requestBody=_body(rq.PublishRequest),
            parameters=[{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}],
        ),
        "get": _op(
            "Reports above a sequence that the caller may see (role subscribe)",
            {"200": _json(rs.ReportPage, "a page"), **_problems(400, 401, 403)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": t}}
                for n, t in (("after", "integer"), ("limit", "integer"), ("topics", "string"))
            ],
        ),
    },
    "/v1/reports/{id}": {
        "get": _op(
            "One report; 404 when absent or not releasable to the caller",
            {"200": _json(rs.Report, "the report"), **_problems(401, 403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/reports/{id}/recall": {
        "post": _op(
            "Recall a report (originator only)",
            {"200": _json(rs.Recalled, "recalled"), **_problems(401, 403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/stream": {
        "get": _op(
            "Websocket (role subscribe, or federate for a link): replays eligible reports above "
            "`after` (default: after the last ack on stream `name`), then live. Server frames: "
            '{"type": "report", "report": Report} (for a link also "federation": {"label_json", '
            '"attestations"}), {"type": "recall", "id", "sequence"} and {"type": "heartbeat"}; '
            'client frames: {"type": "ack", "sequence": N}. `broker`: a link\'s receiving broker '
            "name, whose reports are not sent back to it. "
            "Close codes: 1001 shutting down, 4001 revoked, 4008 slow consumer (resume from cursor), "
            "4400 bad client message.",
            {"101": {"description": "switching to the websocket protocol"}, **_problems(400, 401, 403)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": t}}
                for n, t in (
                    ("after", "integer"),
                    ("topics", "string"),
                    ("name", "string"),
                    ("broker", "string"),
                )
            ],
        )
    },
    "/v1/nodes/{id}": {
        "get": _op(
            "A node's nation and public keys (any authenticated node): to verify signatures",
            {"200": _json(rs.NodeKeys, "the node"), **_problems(401, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/audit/events": {
        "get": _op(
            "Audit events (role audit), filtered, by sequence; each query is itself audited. "
            "Events have `after` < seq (< `before`, when given). `order=asc` (the default) pages "
            "oldest first: `next_after` is the last seq returned (the request's `after` for an "
            "empty page), the next page's `after`. `order=desc` pages newest first: `next_after` "
            "is then the seq of the oldest event returned, to be passed as the next page's "
            "`before`; an empty page (`next_after` = the request's `after`) means nothing older "
            "is left.",
            {"200": _json(rs.EventPage, "a page"), **_problems(400, 401, 403, 422)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": t}}
                for n, t in (
                    ("report", "string"),
                    ("node", "string"),
                    ("nation", "string"),
                    ("action", "string"),
                    ("decision", "string"),
                    ("since", "string"),
                    ("until", "string"),
                    ("after", "integer"),
                    ("before", "integer"),
                    ("limit", "integer"),
                )
            ]
            + [{"name": "order", "in": "query", "schema": {"enum": ["asc", "desc"], "default": "asc"}}],
        )
    },
    "/v1/audit/whoami": {
        "get": _op(
            "The signed-in auditor's node id, nation and roles (role audit)",
            {"200": _json(rs.Whoami, "the auditor"), **_problems(401, 403)},
        )
    },
    "/v1/audit/reports/{id}": {
        "get": _op(
            "A report's metadata for auditors (role audit; audited): label, topics, originator, "
            "times, payload hash and whether its signature verifies against the originator's "
            "current Ed25519 key. Never the payload.",
            {"200": _json(rs.ReportMetadata, "the metadata"), **_problems(400, 401, 403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/audit/export": {
        "get": _op(
            "NDJSON export (role audit): every event up to a freshly signed checkpoint, one per line, then "
            'one {"checkpoint": Checkpoint} line per signed checkpoint. '
            "`broker audit verify` checks it offline.",
            {
                "200": {
                    "description": "NDJSON",
                    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                },
                **_problems(401, 403),
            },
        )
    },
    "/v1/audit/checkpoints/latest": {
        "get": _op(
            "The latest signed checkpoint (role audit)",
            {"200": _json(rs.Checkpoint, "checkpoint"), **_problems(401, 403)},
        )
    },
    "/v1/audit/checkpoints": {
        "post": _op(
            "Sign a checkpoint now (role audit)",
            {"201": _json(rs.Checkpoint, "checkpoint"), **_problems(401, 403, 500)},
        )
    },
    "/v1/audit/proofs/inclusion": {
        "get": _op(
            "RFC 9162 inclusion proof of event `seq` in the tree of `size` events "
            "(default: the latest checkpoint)",
            {"200": _json(rs.InclusionProof, "proof"), **_problems(400, 401, 403, 404)},
            parameters=[{"name": n, "in": "query", "schema": {"type": "integer"}} for n in ("seq", "size")],
        )
    },
    "/v1/audit/proofs/consistency": {
        "get": _op(
            "RFC 9162 consistency proof between tree sizes `first` and `second`",
            {"200": _json(rs.ConsistencyProof, "proof"), **_problems(400, 401, 403, 422)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": "integer"}} for n in ("first", "second")
            ],
        )
    },
    "/.well-known/alliance-broker/checkpoint-key": {
        "get": {
            "summary": "The public key that signs checkpoints (name, raw key, key id, C2SP vkey)",
            "security": [],
            "responses": {"200": _json(rs.CheckpointKey, "key")},
        }
    },
    "/audit/": {
        "get": {
            "summary": "The auditor web page",
            "security": [],
            "responses": {
                "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/audit/app.js": {
        "get": {
            "summary": "The auditor web page's script",
            "security": [],
            "responses": {
                "200": {
                    "description": "JavaScript",
                    "content": {"text/javascript": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/audit/app.css": {
        "get": {
            "summary": "The auditor web page's style sheet",
            "security": [],
            "responses": {
                "200": {"description": "CSS", "content": {"text/css": {"schema": {"type": "string"}}}}
            },
        }
    },
    "/v1/alliances": {
        "get": _op(
            "Alliances with current members and history",
            {
                "200": _json(rs.AllianceList, "alliances"),
                **_problems(401),
            },
        )
    },
    "/v1/admin/nodes": {
        "post": _op(
            "Register a node (role admin); the token is shown once",
            {"201": _json(rs.NodeToken, "created"), **_problems(400, 401, 403, 409, 422)},
            requestBody=_body(rq.NodeSpec),
        ),
        "get": _op(
            "List nodes (role admin)",
            {
                "200": _json(rs.NodeList, "nodes"),
                **_problems(401, 403),
            },
        ),
    },
    "/v1/admin/nodes/{id}/revoke": {
        "post": _op(
            "Revoke a node (role admin)",
            {"200": _json(rs.Revoked, "revoked"), **_problems(401, 403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/admin/nodes/{id}": {
        "patch": _op(
            "Change a node's clearance, caveats, roles, public keys or certificate pin (role admin; audited)",
            {"200": _json(rs.Node, "updated"), **_problems(403, 404, 409, 413, 422)},
            parameters=[_PATH_ID],
            requestBody=_body(rq.NodeUpdate),
        )
    },
    "/v1/admin/nodes/{id}/rotate-token": {
        "post": _op(
            "A new token for a node, shown once; the old one stops working at once (role admin; audited)",
            {"200": _json(rs.NodeToken, "rotated"), **_problems(403, 404, 409, 413, 422)},
            parameters=[_PATH_ID],
            requestBody=_body(rq.TokenRequest, required=False),
        )
    },
    "/v1/admin/nodes/{id}/cursors": {
        "get": _op(
            "A node's durable stream cursors (role admin; audited)",
            {"200": _json(rs.Cursors, "cursors"), **_problems(403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/admin/nodes/{id}/cursors/{name}": {
        "delete": _op(
            "Forget one stream cursor of a node (role admin; audited with the sequence it held)",
            {"200": _json(rs.CursorReset, "reset"), **_problems(403, 404)},
            parameters=[
                _PATH_ID,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
        )
    },
    "/v1/admin/alliances/{id}/members/{nation}": {
        "put": _op(
            'A nation joins (role admin); optional body {"date": ISO-8601}',
            {"201": _json(rs.Membership, "joined"), **_problems(400, 401, 403, 404, 409, 422)},
            parameters=[_PATH_ID, _NATION],
            requestBody=_body(rq.MembershipRequest, required=False),
        ),
        "delete": _op(
            'A nation leaves (role admin); optional body {"date": ISO-8601}',
            {"200": _json(rs.Membership, "left"), **_problems(400, 401, 403, 404, 422)},
            parameters=[_PATH_ID, _NATION],
            requestBody=_body(rq.MembershipRequest, required=False),
        ),
    },
    "/metrics": {
        "get": _op(
            "Prometheus text: audit events by act, decision and reason, latencies, streams (role audit)",
            {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        )
    },
    "/v1/admin/peers": {
        "post": _op(
            "Add an upstream peer to pull from: name, url, ca, cert, key (PEM), token?, origins?, "
            "broker_key? (fetched over the link and pinned when absent) (role admin; audited)",
            {"201": _json(rs.Peer, "added"), **_problems(400, 401, 403, 409, 422, 503)},
            requestBody={"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
        ),
        "get": _op(
            "Peers with their state, lag and last error (role admin)",
            {"200": _json(rs.PeerList, "peers"), **_problems(401, 403)},
        ),
    },
    "/v1/admin/peers/{name}": {
        "delete": _op(
            "Remove a peer; its puller stops (role admin; audited)",
            {"200": _json(rs.PeerRemoved, "removed"), **_problems(403, 404)},
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
    },
    # TAXII 2.1 and the collection admin routes describe themselves beside their handlers.
    **taxii_web.OPENAPI_PATHS,
}


class _Schema(GenerateJsonSchema):
    """Pydantic's JSON Schema without a title on every property (the names say it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def components(models: set[type[Wire]]) -> dict[str, Any]:
    """The JSON Schema of ``models`` and of every model they name, by name."""
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schemas = models_json_schema(
        [(m, "validation") for m in ordered], ref_template=REF, schema_generator=_Schema
    )
    found = schemas.get("$defs", {})
    # Only what the document names: pydantic also describes the types behind custom validators.
    named: set[str] = set()
    todo = [m.__name__ for m in ordered]
    while todo:
        name = todo.pop()
        if name not in named:
            named.add(name)
            todo += re.findall(r'"#/components/schemas/(\w+)"', json.dumps(found[name]))
    return {name: found[name] for name in sorted(named)}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Alliance Broker", "version": __version__},
    "paths": PATHS,
    "components": {
        "schemas": components(MODELS | taxii_web.OPENAPI_MODELS),
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
