"""The OpenAPI 3.1 document served at /v1/openapi.json. Tests check that it names every route
and that real responses validate against its schemas."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker import __version__
from broker.web import taxii as taxii_web

JSON = "application/json"
PROBLEM = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "problem", "content": {PROBLEM: {"schema": _ref("Problem")}}}
        for s in statuses
    }


_STR_LIST = {"type": "array", "items": {"type": "string"}}
_ORIGINATOR = {
    "type": "object",
    "required": ["node", "nation"],
    "properties": {"node": {"type": "string"}, "nation": {"type": "string"}},
}
_PATH_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_NATION = {"name": "nation", "in": "path", "required": True, "schema": {"type": "string"}}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]

SCHEMAS: dict[str, Any] = {
    "Cursors": {
        "type": "object",
        "required": ["node", "cursors"],
        "properties": {
            "node": {"type": "string"},
            "cursors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "sequence", "updated"],
                    "properties": {
                        "name": {"type": "string"},
                        "sequence": {"type": "integer"},
                        "updated": {"type": "string"},
                    },
                },
            },
        },
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "request_id": {"type": "string"},
        },
    },
    "Label": {
        "type": "object",
        "required": ["classification"],
        "additionalProperties": False,
        "properties": {
            "policy": {"type": "string"},
            "classification": {"type": "string"},
            "releasable_to": _STR_LIST,
            "caveats": _STR_LIST,
            "tlp": {"enum": ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]},
        },
    },
    "PublishRequest": {
        "type": "object",
        "required": ["label", "payload"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "label": _ref("Label"),
            "topics": _STR_LIST,
            "payload": {"type": "object"},
            "signature": {"type": "string"},
        },
    },
    "Receipt": {
        "type": "object",
        "required": ["id", "sequence", "created"],
        "properties": {
            "id": {"type": "string"},
            "sequence": {"type": "integer"},
            "created": {"type": "string"},
            "notice": {
                "type": "string",
                "description": "present when the label releases the report to nobody "
                "(releasable_to empty): only the originator's nation can read it",
            },
        },
    },
    "Report": {
        "type": "object",
        "required": ["id", "sequence", "originator", "label", "topics", "created", "signature"],
        "properties": {
            "id": {"type": "string"},
            "sequence": {"type": "integer"},
            "originator": _ORIGINATOR,
            "label": {"type": "object"},
            "topics": _STR_LIST,
            "created": {"type": "string"},
            "signature": {"type": ["string", "null"]},
            "payload": {"type": "object"},
            "sealed": {
                "type": "object",
                "required": ["enc", "ct"],
                "properties": {"enc": {"type": "string"}, "ct": {"type": "string"}},
            },
            "provenance": {
                "type": "array",
                "description": "an imported report's path, origin first, this broker last",
                "items": {
                    "type": "object",
                    "required": ["broker", "sequence", "event_hash"],
                    "properties": {
                        "broker": {"type": "string"},
                        "sequence": {"type": "integer"},
                        "event_hash": {"type": "string"},
                    },
                },
            },
        },
        "oneOf": [{"required": ["payload"]}, {"required": ["sealed"]}],
    },
    "ReportPage": {
        "type": "object",
        "required": ["reports", "next_after"],
        "properties": {
            "reports": {"type": "array", "items": _ref("Report")},
            "next_after": {"type": "integer"},
        },
    },
    "NodeSpec": {
        "type": "object",
        "required": ["id", "nation", "clearance", "roles"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "nation": {"type": "string"},
            "clearance": {"type": "string"},
            "roles": _STR_LIST,
            "caveats": _STR_LIST,
            "ed25519_public_key": {"type": "string"},
            "x25519_public_key": {"type": "string"},
            "certificate": {"type": "string", "description": "PEM client certificate to pin the node to"},
            "token_days": {"type": "integer", "minimum": 1, "maximum": 3650},
            "audience": {
                **_STR_LIST,
                "description": "federate links: nations and alliance ids it receives for",
            },
            "origins": {**_STR_LIST, "description": "federate links: originator nations it may carry"},
        },
    },
    "NodeKeys": {
        "type": "object",
        "required": ["id", "nation", "ed25519_public_key", "x25519_public_key"],
        "properties": {
            "id": {"type": "string"},
            "nation": {"type": "string"},
            "ed25519_public_key": {"type": ["string", "null"]},
            "x25519_public_key": {"type": ["string", "null"]},
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "seq",
            "time",
            "actor",
            "action",
            "report",
            "node",
            "nation",
            "decision",
            "reason",
            "details",
            "prev_hash",
            "hash",
        ],
        "properties": {
            "seq": {"type": "integer"},
            "time": {"type": "string"},
            "actor": {"type": ["string", "null"]},
            "action": {"type": "string"},
            "report": {"type": ["string", "null"]},
            "node": {"type": ["string", "null"]},
            "nation": {"type": ["string", "null"]},
            "decision": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
            "details": {"type": "object"},
            "prev_hash": {"type": "string"},
            "hash": {"type": "string"},
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "next_after"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "next_after": {"type": "integer"},
        },
    },
    "Checkpoint": {
        "type": "object",
        "required": ["size", "head", "time", "key_id", "signature", "origin", "note"],
        "properties": {
            "size": {"type": "integer"},
            "head": {"type": "string"},
            "time": {"type": "string"},
            "key_id": {"type": "string"},
            "signature": {"type": "string"},
            "origin": {"type": "string"},
            "note": {"type": "string", "description": "the signed note with every witness cosignature line"},
            "root": {"type": "string"},
            "cosigners": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "timestamp"],
                    "properties": {"name": {"type": "string"}, "timestamp": {"type": "integer"}},
                },
            },
            "witness_quorum": {"type": "integer"},
        },
    },
    "Whoami": {
        "type": "object",
        "required": ["id", "nation", "roles"],
        "properties": {"id": {"type": "string"}, "nation": {"type": "string"}, "roles": _STR_LIST},
    },
    "ReportMetadata": {
        "type": "object",
        "required": [
            "id",
            "sequence",
            "originator",
            "label",
            "label_hash",
            "topics",
            "created",
            "recalled",
            "erased",
            "payload_sha256",
            "signature",
        ],
        "properties": {
            "id": {"type": "string"},
            "sequence": {"type": "integer"},
            "originator": _ORIGINATOR,
            "label": {"type": "object"},
            "label_hash": {"type": "string"},
            "topics": _STR_LIST,
            "created": {"type": "string"},
            "recalled": {"type": ["string", "null"]},
            "erased": {"type": ["string", "null"]},
            "payload_sha256": {"type": ["string", "null"]},
            "signature": {
                "type": "object",
                "required": ["present", "verified", "detail", "value"],
                "properties": {
                    "present": {"type": "boolean"},
                    "verified": {"type": ["boolean", "null"]},
                    "detail": {"type": "string"},
                    "value": {"type": ["string", "null"]},
                },
            },
        },
        "not": {"anyOf": [{"required": ["payload"]}, {"required": ["sealed"]}]},
    },
    "CheckpointKey": {
        "type": "object",
        "required": ["name", "public_key", "key_id", "vkey"],
        "properties": {k: {"type": "string"} for k in ("name", "public_key", "key_id", "vkey")},
    },
    "InclusionProof": {
        "type": "object",
        "required": ["seq", "leaf_index", "tree_size", "leaf_hash", "root", "path"],
        "properties": {"path": {"type": "array", "items": {"type": "string"}}},
    },
    "ConsistencyProof": {
        "type": "object",
        "required": ["first", "second", "first_root", "second_root", "path"],
        "properties": {"path": {"type": "array", "items": {"type": "string"}}},
    },
    "NodeToken": {
        "type": "object",
        "required": ["id", "token"],
        "properties": {"id": {"type": "string"}, "token": {"type": "string"}, "expires": {"type": "string"}},
    },
    "Node": {"type": "object", "required": ["id", "nation", "clearance", "roles", "caveats"]},
    "Peer": {
        "type": "object",
        "required": ["name", "url", "origins", "broker_key", "state", "lag", "last_error"],
        "properties": {"state": {"enum": ["connected", "connecting", "refused", "error"]}},
    },
    "Membership": {
        "type": "object",
        "required": ["alliance", "nation"],
        "properties": {
            "alliance": {"type": "string"},
            "nation": {"type": "string"},
            "joined": {"type": "string"},
            "left": {"type": "string"},
        },
    },
    "Alliance": {
        "type": "object",
        "required": ["id", "name", "history", "members", "memberships"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "history": {"enum": ["full", "since-join"]},
            "members": _STR_LIST,
            "memberships": {"type": "array"},
        },
    },
}


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


_HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string"},
        "witnessed": {"type": "boolean"},
        "witness_quorum": {"type": "integer"},
        "cosigners": {"type": "integer"},
        "refused_by": _STR_LIST,
    },
}

PATHS: dict[str, Any] = {
    "/v1/health": {
        "get": {
            "summary": "Readiness: the database answers",
            "security": [],
            "responses": {"200": _json(_HEALTH, "ok"), **_problems(503)},
        }
    },
    "/": {
        "get": {
            "summary": "Where to go: the auditor page, this document, the health check",
            "security": [],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["service", "audit_page", "openapi", "health"],
                        "properties": {
                            "service": {"type": "string"},
                            "audit_page": {"type": "string"},
                            "openapi": {"type": "string"},
                            "health": {"type": "string"},
                        },
                    },
                    "links",
                )
            },
        }
    },
    "/v1/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        }
    },
    "/v1/reports": {
        "post": _op(
            "Publish a report (role publish)",
            {"201": _json(_ref("Receipt"), "stored durably"), **_problems(400, 401, 403, 409, 413, 422, 429)},
            requestBody={"required": True, "content": {JSON: {"schema": _ref("PublishRequest")}}},
            parameters=[{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}],
        ),
        "get": _op(
            "Reports above a sequence that the caller may see (role subscribe)",
            {"200": _json(_ref("ReportPage"), "a page"), **_problems(400, 401, 403)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": t}}
                for n, t in (("after", "integer"), ("limit", "integer"), ("topics", "string"))
            ],
        ),
    },
    "/v1/reports/{id}": {
        "get": _op(
            "One report; 404 when absent or not releasable to the caller",
            {"200": _json(_ref("Report"), "the report"), **_problems(401, 403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/reports/{id}/recall": {
        "post": _op(
            "Recall a report (originator only)",
            {"200": _json({"type": "object"}, "recalled"), **_problems(401, 403, 404)},
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
            {"200": _json(_ref("NodeKeys"), "the node"), **_problems(401, 404)},
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
            {"200": _json(_ref("EventPage"), "a page"), **_problems(400, 401, 403, 422)},
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
            {"200": _json(_ref("Whoami"), "the auditor"), **_problems(401, 403)},
        )
    },
    "/v1/audit/reports/{id}": {
        "get": _op(
            "A report's metadata for auditors (role audit; audited): label, topics, originator, "
            "times, payload hash and whether its signature verifies against the originator's "
            "current Ed25519 key. Never the payload.",
            {"200": _json(_ref("ReportMetadata"), "the metadata"), **_problems(400, 401, 403, 404)},
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
            {"200": _json(_ref("Checkpoint"), "checkpoint"), **_problems(401, 403)},
        )
    },
    "/v1/audit/checkpoints": {
        "post": _op(
            "Sign a checkpoint now (role audit)",
            {"201": _json(_ref("Checkpoint"), "checkpoint"), **_problems(401, 403, 500)},
        )
    },
    "/v1/audit/proofs/inclusion": {
        "get": _op(
            "RFC 9162 inclusion proof of event `seq` in the tree of `size` events "
            "(default: the latest checkpoint)",
            {"200": _json(_ref("InclusionProof"), "proof"), **_problems(400, 401, 403, 404)},
            parameters=[{"name": n, "in": "query", "schema": {"type": "integer"}} for n in ("seq", "size")],
        )
    },
    "/v1/audit/proofs/consistency": {
        "get": _op(
            "RFC 9162 consistency proof between tree sizes `first` and `second`",
            {"200": _json(_ref("ConsistencyProof"), "proof"), **_problems(400, 401, 403, 422)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": "integer"}} for n in ("first", "second")
            ],
        )
    },
    "/.well-known/alliance-broker/checkpoint-key": {
        "get": {
            "summary": "The public key that signs checkpoints (name, raw key, key id, C2SP vkey)",
            "security": [],
            "responses": {"200": _json(_ref("CheckpointKey"), "key")},
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
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"alliances": {"type": "array", "items": _ref("Alliance")}},
                    },
                    "alliances",
                ),
                **_problems(401),
            },
        )
    },
    "/v1/admin/nodes": {
        "post": _op(
            "Register a node (role admin); the token is shown once",
            {"201": _json(_ref("NodeToken"), "created"), **_problems(400, 401, 403, 409, 422)},
            requestBody={"required": True, "content": {JSON: {"schema": _ref("NodeSpec")}}},
        ),
        "get": _op(
            "List nodes (role admin)",
            {
                "200": _json(
                    {"type": "object", "properties": {"nodes": {"type": "array", "items": _ref("Node")}}},
                    "nodes",
                ),
                **_problems(401, 403),
            },
        ),
    },
    "/v1/admin/nodes/{id}/revoke": {
        "post": _op(
            "Revoke a node (role admin)",
            {"200": _json({"type": "object"}, "revoked"), **_problems(401, 403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/admin/nodes/{id}": {
        "patch": _op(
            "Change a node's clearance, caveats, roles, public keys or certificate pin (role admin; audited)",
            {"200": _json(_ref("Node"), "updated"), **_problems(403, 404, 409, 413, 422)},
            parameters=[_PATH_ID],
            requestBody={
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "minProperties": 1,
                            "properties": {
                                "clearance": {"type": "string"},
                                "caveats": _STR_LIST,
                                "roles": _STR_LIST,
                                "ed25519_public_key": {"type": ["string", "null"]},
                                "x25519_public_key": {"type": ["string", "null"]},
                                "certificate": {"type": ["string", "null"]},
                                "audience": _STR_LIST,
                                "origins": _STR_LIST,
                            },
                        }
                    }
                },
            },
        )
    },
    "/v1/admin/nodes/{id}/rotate-token": {
        "post": _op(
            "A new token for a node, shown once; the old one stops working at once (role admin; audited)",
            {"200": _json(_ref("NodeToken"), "rotated"), **_problems(403, 404, 409, 413, 422)},
            parameters=[_PATH_ID],
            requestBody={
                "required": False,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"token_days": {"type": "integer", "minimum": 1, "maximum": 3650}},
                        }
                    }
                },
            },
        )
    },
    "/v1/admin/nodes/{id}/cursors": {
        "get": _op(
            "A node's durable stream cursors (role admin; audited)",
            {"200": _json(_ref("Cursors"), "cursors"), **_problems(403, 404)},
            parameters=[_PATH_ID],
        )
    },
    "/v1/admin/nodes/{id}/cursors/{name}": {
        "delete": _op(
            "Forget one stream cursor of a node (role admin; audited with the sequence it held)",
            {"200": _json({"type": "object", "required": ["reset"]}, "reset"), **_problems(403, 404)},
            parameters=[
                _PATH_ID,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
        )
    },
    "/v1/admin/alliances/{id}/members/{nation}": {
        "put": _op(
            'A nation joins (role admin); optional body {"date": ISO-8601}',
            {"201": _json(_ref("Membership"), "joined"), **_problems(400, 401, 403, 404, 409, 422)},
            parameters=[_PATH_ID, _NATION],
        ),
        "delete": _op(
            'A nation leaves (role admin); optional body {"date": ISO-8601}',
            {"200": _json(_ref("Membership"), "left"), **_problems(400, 401, 403, 404, 422)},
            parameters=[_PATH_ID, _NATION],
        ),
    },
    "/v1/admin/peers": {
        "post": _op(
            "Add an upstream peer to pull from: name, url, ca, cert, key (PEM), token?, origins?, "
            "broker_key? (fetched over the link and pinned when absent) (role admin; audited)",
            {"201": _json(_ref("Peer"), "added"), **_problems(400, 401, 403, 409, 422, 503)},
            requestBody={"required": True, "content": {JSON: {"schema": {"type": "object"}}}},
        ),
        "get": _op(
            "Peers with their state, lag and last error (role admin)",
            {
                "200": _json(
                    {"type": "object", "properties": {"peers": {"type": "array", "items": _ref("Peer")}}},
                    "peers",
                ),
                **_problems(401, 403),
            },
        ),
    },
    "/v1/admin/peers/{name}": {
        "delete": _op(
            "Remove a peer; its puller stops (role admin; audited)",
            {
                "200": _json({"type": "object", "required": ["name", "removed"]}, "removed"),
                **_problems(403, 404),
            },
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
    },
    "/metrics": {
        "get": _op(
            "Prometheus text: audit events by act, decision and reason, latencies, streams (role audit)",
            {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        )
    },
    # TAXII 2.1 and the collection admin routes describe themselves beside their handlers.
    **taxii_web.OPENAPI_PATHS,
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Alliance Broker", "version": __version__},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
