"""`broker demo`: demo nodes on a fresh database, and a short guide printed with their tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from broker.client import BrokerClient
from broker.crypto import pki
from broker.crypto.keys import (
    Ed25519PrivateKey,
    X25519PrivateKey,
    new_sealing_key,
    new_signing_key,
    public_b64,
)
from broker.services import admin
from broker.services.context import Context
from broker.settings import Settings, TlsSettings

DEMO_NODES: tuple[dict[str, Any], ...] = (
    {"id": "usa-cyber", "nation": "USA", "clearance": "SECRET", "roles": ["publish", "subscribe"]},
    {"id": "gbr-cyber", "nation": "GBR", "clearance": "SECRET", "roles": ["publish", "subscribe"]},
    {"id": "swe-cert", "nation": "SWE", "clearance": "CONFIDENTIAL", "roles": ["publish", "subscribe"]},
    {"id": "nga-cert", "nation": "NGA", "clearance": "SECRET", "roles": ["publish", "subscribe"]},
    {"id": "auditor", "nation": "BEL", "clearance": "TOP_SECRET", "roles": ["audit"]},
    {"id": "admin", "nation": "BEL", "clearance": "UNCLASSIFIED", "roles": ["admin"]},
)


# What each demo node's token is for, printed beside it. (Tests find the guide's sections by their
# first words: "Publish a", "Sweden", "API description"; these lines must not use them.)
PURPOSE = {
    "usa-cyber": "publish and read reports as a US SECRET analyst (the curl lines below use it)",
    "gbr-cyber": "publish and read reports as a UK SECRET analyst",
    "swe-cert": "read as the Swedish CERT: in NATO, cleared to CONFIDENTIAL only (SECRET stays hidden)",
    "nga-cert": "read as the Nigerian CERT: in the African Union, not NATO (NATO releases stay hidden)",
    "auditor": "the audit log, checkpoints and /metrics; sign in to the audit page with it",
    "admin": "manage nodes, alliances and collections over HTTP (/v1/admin/...), as the CLI does",
}

log = logging.getLogger(__name__)
# A single quote inside a single-quoted shell word: close, escaped quote, reopen.
QUOTE = "'\\''"
PATTERN = f"[ipv4-addr:value = {QUOTE}198.51.100.7{QUOTE}]"


@dataclass(frozen=True)
class LiveExchange:
    """Two SDK nodes with keys: the USA signs, the UK receives sealed payloads; each connects
    with its own client certificate (mutual TLS), no token."""

    usa_key: Ed25519PrivateKey
    gbr_key: X25519PrivateKey
    folder: Path

    def tls(self, node: str) -> tuple[Path, Path, Path]:
        return (self.folder / "ca.pem", self.folder / f"{node}.pem", self.folder / f"{node}.key")


def demo_pki(folder: Path, *, host: str, nodes: list[str]) -> TlsSettings:
    """A fresh development CA in ``folder``, a server certificate for ``host`` and one client
    certificate per node; the TLS settings that serve with them (client certificates optional,
    so the printed tokens work too)."""
    ca = pki.create_ca(name="Alliance Broker demo CA")
    pki.save_ca(folder, ca, force=True)
    server = pki.issue_server_certificate(sorted({host, "localhost", "127.0.0.1"}), ca=ca)
    pki.save_issued(folder, "server", server, chain=[ca.certificate])
    for node in nodes:
        pki.save_issued(folder, node, pki.issue_node_certificate(node, ca=ca))
    return TlsSettings(
        cert=folder / "server.pem",
        key=folder / "server.key",
        client_ca=(folder / "ca.pem",),
        client_auth="optional",
    )


async def _live_nodes(ctx: Context, folder: Path) -> LiveExchange:
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
    del usa, gbr  # their tokens are not needed: they connect with client certificates
    return LiveExchange(usa_key, gbr_key, folder)


async def exchange(base: str, live: LiveExchange, say: Callable[[str], None] = print) -> None:
    """The UK node streams while the USA node publishes a signed report: printed as it happens."""
    trust = ssl.create_default_context(cafile=str(live.folder / "ca.pem"))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/v1/health", ssl=trust) as resp:
                    if resp.status == 200:
                        break
            await asyncio.sleep(0.1)
    async with (
        BrokerClient(base, sealing_key=live.gbr_key, tls=live.tls("gbr-sdk")) as gbr,
        BrokerClient(base, signing_key=live.usa_key, tls=live.tls("usa-sdk")) as usa,
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
        say(f"live: usa-sdk published report {receipt['id']} (SECRET, REL FVEY), signed, over mutual TLS")
        async with asyncio.timeout(10):
            got = await first
        say(
            f"live: gbr-sdk received it over the stream: sealed={got.was_sealed} "
            f"signature verified={got.verified} payload={json.dumps(got.payload)}"
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


def _cli() -> list[str]:
    """The running ``broker`` command by its absolute path: after ``make demo`` it lives in
    .venv/bin, which is not on PATH, so a bare ``broker`` would not be found."""
    beside = Path(sys.executable).parent / "broker"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "broker"]


async def prepare(ctx: Context, settings: Settings, folder: Path) -> tuple[str, LiveExchange]:
    """Create the demo nodes (certificates for them are in ``folder``); return the guide to print
    and the SDK nodes' keys."""
    tokens = {}
    for spec in DEMO_NODES:
        tokens[spec["id"]] = (await admin.add_node(ctx, spec, actor="demo"))["token"]
    base = f"https://{settings.host}:{settings.port}"
    data = settings.keyring_path.parent
    environment = {
        "BROKER_DATABASE_URL": settings.database_url,
        "BROKER_KEYRING": str(settings.keyring_path),
        "BROKER_CONFIG_DIR": str(settings.config_dir.resolve()),
    }
    cli = shlex.join(_cli())
    lines = [
        "",
        "Alliance Broker demo (TLS, client certificates from a fresh demo CA)",
        "===================================================================",
        f"database:     {settings.database_url}",
        f"keyring:      {settings.keyring_path}",
        f"certificates: {folder} (ca.pem; <node>.pem and <node>.key for each node)",
        "",
        "To manage this demo's data with the CLI while it runs, in another shell:",
        "  export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in environment.items()),
        f"  {cli} node list; {cli} alliance list; {cli} audit key",
        f"Ctrl-C stops the demo; another port: {cli} demo --port 8443 (see {cli} demo --help)",
        "",
        "Nodes (each authenticates with its certificate, or with its token as a second way);",
        "a token is shown only now:",
    ]
    for n in DEMO_NODES:
        roles = ",".join(n["roles"])
        lines.append(f"  {n['id']:10} {n['nation']} {n['clearance']:13} {roles:18} token {tokens[n['id']]}")
        lines.append(f"  {'':10} for: {PURPOSE[n['id']]}")
    lines.append(
        "  usa-sdk and gbr-sdk have no printed token: they connect with their certificates for the "
        "live exchange below"
    )

    def curl(node: str) -> str:
        return f"curl -s --cacert {folder}/ca.pem --cert {folder}/{node}.pem --key {folder}/{node}.key"

    lines += [
        "",
        "Publish a CONFIDENTIAL report releasable to NATO as the USA node (mutual TLS, no token):",
        f"  {curl('usa-cyber')} -X POST {base}/v1/reports \\",
        '    -H \'Content-Type: application/json\' -d \'{"label": {"classification": "CONFIDENTIAL",',
        '    "releasable_to": ["NATO"], "caveats": []}, "topics": ["ransomware"],',
        f'    "payload": {{"type": "indicator", "pattern": "{PATTERN}"}}}}\'',
        "Sweden (NATO since 2024, CONFIDENTIAL) sees it; Nigeria (not in NATO) does not:",
        f"  {curl('swe-cert')} {base}/v1/reports",
        f"  {curl('nga-cert')} {base}/v1/reports",
        "With a token instead of a certificate:",
        f"  curl -s --cacert {folder}/ca.pem -H 'Authorization: Bearer TOKEN' {base}/v1/reports",
        f"Audit page (the auditor's token): {base}/audit/",
        f"API description: {base}/v1/openapi.json   (data in {data})",
        "",
    ]
    return "\n".join(lines), await _live_nodes(ctx, folder)
