"""Auditor endpoints (role ``audit``), the public checkpoint key, and the auditor web page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from broker.domain.records import AuditDraft, NodeRecord
from broker.domain.time import parse_time
from broker.errors import BadRequest
from broker.services import audit, auth, ledger
from broker.services.context import Context
from broker.web.handlers import CONTEXT, authenticated_node, int_param

if TYPE_CHECKING:
    from broker.storage.repos import Tx

STATIC = resources.files("broker") / "web" / "static"
PAGE = (STATIC / "audit.html").read_text()
SCRIPT = (STATIC / "audit.js").read_text()
STYLE = (STATIC / "audit.css").read_text()
# The page loads nothing but its own script and style sheet, and talks only to this broker.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _auditor(request: web.Request, act: str) -> tuple[Context, str]:
    ctx, node = await _auditor_node(request, act)
    return ctx, node.id


async def _auditor_node(request: web.Request, act: str) -> tuple[Context, NodeRecord]:
    ctx = request.app[CONTEXT]
    node = await authenticated_node(request)
    await auth.require_role(ctx, node, "audit", act=act)
    return ctx, node


_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9A-Fa-f]{32}"


def _canonical_uuid(value: str) -> str:
    """The form report ids are stored in: ``urn:uuid:``, braces and upper case all come to it."""
    return str(uuid.UUID(value.lower()))


# Each filter: the pattern a whole value must match (re.fullmatch: with re.match a ``$`` would let a
# trailing newline through), its meaning for the message, and how to write it the way the log
# stores it. No value reaches the database unchecked: PostgreSQL refuses NUL in text.
FILTERS: dict[str, tuple[re.Pattern[str], str, Callable[[str], str]]] = {
    "report": (re.compile(rf"(?i:urn:uuid:)?(?:{_UUID}|\{{(?:{_UUID})\}})"), "a UUID", _canonical_uuid),
    "node": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"), "a node id", str),
    "nation": (re.compile(r"[A-Z]{3}"), "three upper-case letters", str),
    "action": (re.compile(r"[a-z_]{1,40}"), "1-40 lower-case letters or '_'", str),
    "decision": (re.compile(r"[a-z_]{1,40}"), "1-40 lower-case letters or '_'", str),
}


# Every query parameter GET /v1/audit/events reads: any other is refused, so that a mistyped
# filter (``decison=deny``) is not silently dropped to answer with the whole log.
EVENT_PARAMETERS = (*FILTERS, "since", "until", "order", "after", "before", "limit")


def _filters(request: web.Request) -> dict[str, Any]:
    unknown = sorted(set(request.query) - set(EVENT_PARAMETERS))
    if unknown:
        raise BadRequest(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"the parameters are {', '.join(EVENT_PARAMETERS)}",
            code="unknown_parameter",
        )
    filters: dict[str, Any] = {}
    for name, (pattern, meaning, canonical) in FILTERS.items():
        value = request.query.get(name)
        if value is not None:
            if not pattern.fullmatch(value):
                raise BadRequest(f"{name} must be {meaning}", code="invalid_parameter")
            filters[name] = canonical(value)
    for name in ("since", "until"):
        filters[name] = parse_time(request.query.get(name), name=name)
    return filters


ORDERS = ("asc", "desc")


async def events(request: web.Request) -> web.Response:
    ctx, auditor = await _auditor(request, "audit_query")
    filters = _filters(request)
    order = request.query.get("order", "asc")
    if order not in ORDERS:
        raise BadRequest("order must be 'asc' or 'desc'", code="invalid_parameter")
    after = int_param(request, "after", 0, 0, 2**62)
    before = int_param(request, "before", 0, 1, 2**62) if "before" in request.query else None
    limit = int_param(request, "limit", 100, 1, 1000)
    if order == "asc" and before is None:  # the contract other nodes use, unchanged
        result = await ledger.events(ctx, after=after, limit=limit, filters=filters)
    else:
        result = await audit.events_page(
            ctx, after=after, before=before, limit=limit, descending=order == "desc", filters=filters
        )
    # Who watches the auditors: every query is itself an audited act.
    query = {k: v if isinstance(v, str) or v is None else v.isoformat() for k, v in filters.items()}
    if order != "asc":
        query["order"] = order
    if before is not None:
        query["before"] = str(before)
    await audit.record_alone(
        ctx,
        [
            AuditDraft(
                action="audit_query",
                actor=auditor,
                node=auditor,
                decision="allow",
                details={k: v for k, v in query.items() if v},
            )
        ],
    )
    return web.json_response(result)


async def whoami(request: web.Request) -> web.Response:
    """The signed-in auditor: the page's header names it."""
    node = await authenticated_node(request)
    await auth.require_role(request.app[CONTEXT], node, "audit", act="audit_whoami")
    return web.json_response({"id": node.id, "nation": node.nation, "roles": list(node.roles)})


async def report_metadata(request: web.Request) -> web.Response:
    """A report's label, topics, originator and signature status (never its payload); audited."""
    ctx, auditor = await _auditor(request, "audit_report")
    raw = request.match_info["id"]
    pattern, meaning, canonical = FILTERS["report"]
    if not pattern.fullmatch(raw):
        raise BadRequest(f"id must be {meaning}", code="invalid_parameter")
    report_id = canonical(raw)
    await audit.record_alone(
        ctx,
        [
            AuditDraft(
                action="audit_report",
                actor=auditor,
                node=auditor,
                decision="allow",
                # In details, as audit_query's filters are: the report's own events stay its acts.
                details={"report": report_id},
            )
        ],
    )
    return web.json_response(await audit.report_metadata(ctx, report_id))


async def export(request: web.Request) -> web.StreamResponse:
    """The whole log, streamed. Each page is read only once the auditor is re-checked (a long
    export outlives a revocation or a role taken away): one no longer allowed has its connection
    cut, the export left without its checkpoints (so it does not verify), and is audited."""
    ctx, auditor = await _auditor_node(request, "audit_export")
    await audit.record_alone(
        ctx, [AuditDraft(action="audit_export", actor=auditor.id, node=auditor.id, decision="allow")]
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": 'attachment; filename="audit-export.ndjson"',
        }
    )
    await response.prepare(request)

    async def still_auditor(tx: Tx) -> None:
        await auth.recheck(tx, auditor, await tx.change_counter(), now=ctx.now(), role="audit")

    try:
        async for line in ledger.export(ctx, check=still_auditor):
            await response.write(line.encode())
    except (auth.NodeGone, auth.RoleLost) as exc:
        await auth.record_gone(ctx, exc, act="audit_export")
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def latest_checkpoint(request: web.Request) -> web.Response:
    ctx, _ = await _auditor(request, "audit_checkpoint")
    return web.json_response(await ledger.latest(ctx))


async def sign_checkpoint(request: web.Request) -> web.Response:
    ctx, _ = await _auditor(request, "audit_checkpoint")
    return web.json_response(ledger.checkpoint_json(ctx, await ledger.sign_checkpoint(ctx)), status=201)


async def inclusion(request: web.Request) -> web.Response:
    ctx, _ = await _auditor(request, "audit_proof")
    size = int_param(request, "size", 0, 0, 2**62) if "size" in request.query else None
    return web.json_response(
        await ledger.inclusion(ctx, seq=int_param(request, "seq", 0, 1, 2**62), size=size)
    )


async def consistency(request: web.Request) -> web.Response:
    ctx, _ = await _auditor(request, "audit_proof")
    first = int_param(request, "first", 0, 1, 2**62)
    second = int_param(request, "second", 0, 1, 2**62)
    return web.json_response(await ledger.consistency(ctx, first=first, second=second))


async def checkpoint_key(request: web.Request) -> web.Response:
    return web.json_response(ledger.public_key(request.app[CONTEXT]))


async def page(_request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", headers=HEADERS)


async def script(_request: web.Request) -> web.Response:
    return web.Response(text=SCRIPT, content_type="text/javascript", headers=HEADERS)


async def style(_request: web.Request) -> web.Response:
    return web.Response(text=STYLE, content_type="text/css", headers=HEADERS)
