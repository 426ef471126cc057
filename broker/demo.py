"""`broker demo`: demo nodes on a fresh database, and a short guide printed with their tokens."""

from __future__ import annotations

from typing import Any

from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings

DEMO_NODES: tuple[dict[str, Any], ...] = (
    {"id": "usa-cyber", "nation": "USA", "clearance": "SECRET", "roles": ["publish", "subscribe"]},
    {"id": "gbr-cyber", "nation": "GBR", "clearance": "SECRET", "roles": ["publish", "subscribe"]},
    {"id": "swe-cert", "nation": "SWE", "clearance": "CONFIDENTIAL", "roles": ["publish", "subscribe"]},
    {"id": "nga-cert", "nation": "NGA", "clearance": "SECRET", "roles": ["publish", "subscribe"]},
    {"id": "auditor", "nation": "BEL", "clearance": "TOP_SECRET", "roles": ["audit"]},
    {"id": "admin", "nation": "BEL", "clearance": "UNCLASSIFIED", "roles": ["admin"]},
)


async def prepare(ctx: Context, settings: Settings) -> str:
    """Create the demo nodes and return the guide to print."""
    tokens = {}
    for spec in DEMO_NODES:
        tokens[spec["id"]] = (await admin.add_node(ctx, spec, actor="demo"))["token"]
    base = f"http://{settings.host}:{settings.port}"
    lines = ["", "Alliance Broker demo", "====================", f"database: {settings.database_url}", ""]
    lines += [
        f"  {n['id']:10} {n['nation']} {n['clearance']:13} {','.join(n['roles']):18} token {tokens[n['id']]}"
        for n in DEMO_NODES
    ]
    usa, swe, nga = tokens["usa-cyber"], tokens["swe-cert"], tokens["nga-cert"]
    lines += [
        "",
        "Publish a NATO SECRET report as the USA node:",
        f"  curl -s -X POST {base}/v1/reports -H 'Authorization: Bearer {usa}' \\",
        '    -H \'Content-Type: application/json\' -d \'{"label": {"classification": "CONFIDENTIAL",',
        '    "releasable_to": ["NATO"], "caveats": []}, "topics": ["ransomware"],',
        '    "payload": {"type": "indicator", "pattern": "[ipv4-addr:value = \'198.51.100.7\']"}}\'',
        "Sweden (NATO since 2024, CONFIDENTIAL) sees it; Nigeria (not in NATO) does not:",
        f"  curl -s {base}/v1/reports -H 'Authorization: Bearer {swe}'",
        f"  curl -s {base}/v1/reports -H 'Authorization: Bearer {nga}'",
        f"API description: {base}/v1/openapi.json",
        "",
    ]
    return "\n".join(lines)
