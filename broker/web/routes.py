"""The route table: every route here is described in openapi.py, and a test keeps it so."""

from __future__ import annotations

from aiohttp import web

from broker.web import audit, handlers, peers, taxii, ws
from broker.web.metrics import metrics
from broker.web.openapi import openapi


def add_routes(app: web.Application) -> None:
    app.add_routes(
        [
            web.get("/", handlers.index),
            web.get("/v1/health", handlers.health),
            web.get("/v1/openapi.json", openapi),
            web.post("/v1/reports", handlers.publish),
            web.get("/v1/reports", handlers.list_reports),
            web.get("/v1/reports/{id}", handlers.read_report),
            web.post("/v1/reports/{id}/recall", handlers.recall),
            web.get("/v1/stream", ws.stream),
            web.get("/v1/nodes/{id}", handlers.node_keys),
            web.get("/v1/alliances", handlers.alliances),
            web.get("/v1/audit/events", audit.events),
            web.get("/v1/audit/whoami", audit.whoami),
            web.get("/v1/audit/reports/{id}", audit.report_metadata),
            web.get("/v1/audit/export", audit.export),
            web.get("/v1/audit/checkpoints/latest", audit.latest_checkpoint),
            web.post("/v1/audit/checkpoints", audit.sign_checkpoint),
            web.get("/v1/audit/proofs/inclusion", audit.inclusion),
            web.get("/v1/audit/proofs/consistency", audit.consistency),
            web.get("/.well-known/alliance-broker/checkpoint-key", audit.checkpoint_key),
            web.get("/audit/", audit.page),
            web.get("/audit/app.js", audit.script),
            web.get("/audit/app.css", audit.style),
            web.post("/v1/admin/nodes", handlers.admin_add_node),
            web.get("/v1/admin/nodes", handlers.admin_list_nodes),
            web.post("/v1/admin/nodes/{id}/revoke", handlers.admin_revoke_node),
            web.post("/v1/admin/nodes/{id}/rotate-token", handlers.admin_rotate_token),
            web.patch("/v1/admin/nodes/{id}", handlers.admin_update_node),
            web.get("/v1/admin/nodes/{id}/cursors", handlers.admin_node_cursors),
            web.delete("/v1/admin/nodes/{id}/cursors/{name}", handlers.admin_reset_cursor),
            web.put("/v1/admin/alliances/{id}/members/{nation}", handlers.admin_join),
            web.delete("/v1/admin/alliances/{id}/members/{nation}", handlers.admin_leave),
            *peers.ROUTES,
            *taxii.ROUTES,
            web.get("/metrics", metrics),
        ]
    )
