"""`broker demo`: demo nodes on a fresh database, and a short guide printed with their tokens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from broker.client import BrokerClient
from broker.crypto.keys import (
    Ed25519PrivateKey,
    X25519PrivateKey,
    new_sealing_key,
    new_signing_key,
    public_b64,
)
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


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveExchange:
    """Two SDK nodes with keys: the USA signs, the UK receives sealed payloads."""

    usa_token: str
    usa_key: Ed25519PrivateKey
    gbr_token: str
    gbr_key: X25519PrivateKey


async def _live_nodes(ctx: Context) -> LiveExchange:
    usa_key, gbr_key = new_signing_key(), new_sealing_key()
    usa = await admin.add_node(
        ctx,
        {
            "id": "usa-sdk",
            "nation": "USA",
            "clearance": "SECRET",
            "roles": ["publish"],
            "ed25519_public_key": public_b64(usa_key),
        },
        actor="demo",
    )
    gbr = await admin.add_node(
        ctx,
        {
            "id": "gbr-sdk",
            "nation": "GBR",
            "clearance": "SECRET",
            "roles": ["subscribe"],
            "x25519_public_key": public_b64(gbr_key),
        },
        actor="demo",
    )
    return LiveExchange(usa["token"], usa_key, gbr["token"], gbr_key)


async def exchange(base: str, live: LiveExchange, say: Callable[[str], None] = print) -> None:
    """The UK node streams while the USA node publishes a signed report: printed as it happens."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/v1/health") as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.1)
    async with (
        BrokerClient(base, live.gbr_token, sealing_key=live.gbr_key) as gbr,
        BrokerClient(base, live.usa_token, signing_key=live.usa_key) as usa,
    ):
        stream = gbr.stream(after=0, name="demo", topics=["c2-live-demo"])
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.3)
        receipt = await usa.publish(
            label={"classification": "SECRET", "releasable_to": ["FVEY"], "caveats": []},
            payload={
                "type": "indicator",
                "name": "C2 beacon",
                "pattern": "[domain-name:value = 'c2.example']",
            },
            topics=["c2-live-demo"],
        )
        say(f"live: usa-sdk published report {receipt['id']} (SECRET, REL FVEY), signed")
        got = await asyncio.wait_for(first, timeout=10)
        say(
            f"live: gbr-sdk received it over the stream: sealed={got.was_sealed} "
            f"signature verified={got.verified} payload={got.payload}"
        )
        await stream.aclose()


@contextlib.asynccontextmanager
async def background(coro: Any) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def prepare(ctx: Context, settings: Settings) -> tuple[str, LiveExchange]:
    """Create the demo nodes; return the guide to print and the SDK nodes' keys."""
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
        "Publish a CONFIDENTIAL report releasable to NATO as the USA node:",
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
    return "\n".join(lines), await _live_nodes(ctx)
