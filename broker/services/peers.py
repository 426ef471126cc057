"""Peers (``broker peer add|list|remove``, ``/v1/admin/peers``): the upstream brokers this broker
pulls reports from, and the link's TLS client context. Every change is audited."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from broker.crypto.cosignature import CosignatureError, parse_vkey
from broker.crypto.secrets_at_rest import open_secret, seal_secret
from broker.domain.federation import PEER_NAME, PeerRecord
from broker.domain.nations import is_nation
from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import Conflict, InvalidInput, NotFound, Unavailable
from broker.services import audit, auth
from broker.services.context import Context
from broker.storage import federation as store

PEER_FIELDS = frozenset({"name", "url", "ca", "cert", "key", "token", "origins", "broker_key"})
KEY_PATH = "/.well-known/alliance-broker/checkpoint-key"
FETCH_SECONDS = 10.0


def _text(spec: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = spec.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must be a non-empty string", code="invalid_peer")
    return value


def _origins(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and is_nation(v) for v in value):
        raise InvalidInput("origins must be a list of ISO 3166-1 alpha-3 nation codes", code="invalid_peer")
    return tuple(dict.fromkeys(value))


def _vkey(value: str) -> str:
    try:
        parse_vkey(value, kind=0x01)
    except CosignatureError as exc:
        raise InvalidInput(f"broker_key is not a checkpoint vkey: {exc}", code="invalid_peer") from exc
    return value.strip()


@contextlib.contextmanager
def _pem_files(ca: str, cert: str, key: str) -> Iterator[tuple[str, str, str]]:
    """The PEMs as files (``ssl`` loads a client certificate only from files), readable by
    this process alone and removed at once."""
    with tempfile.TemporaryDirectory(prefix="broker-link-") as folder:
        paths = []
        for name, text in (("ca.pem", ca), ("cert.pem", cert), ("key.pem", key)):
            path = Path(folder) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            paths.append(str(path))
        yield paths[0], paths[1], paths[2]


def client_context(*, ca: str, cert: str, key: str) -> ssl.SSLContext:
    """Mutual TLS to the upstream: its server certificate must chain to ``ca``; this broker
    presents the link's certificate."""
    with _pem_files(ca, cert, key) as (ca_file, cert_file, key_file):
        try:
            context = ssl.create_default_context(cafile=ca_file)
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(
                f"the link's CA, certificate or key is unusable: {exc}", code="invalid_peer"
            ) from exc
    return context


def secrets_of(ctx: Context, peer: PeerRecord) -> tuple[str, str | None]:
    """The link's client key (PEM) and token, opened."""
    secret = ctx.keyring.checkpoint_key
    key = open_secret(peer.key_sealed, secret=secret, purpose="key", owner=peer.name).decode()
    token = None
    if peer.token_sealed is not None:
        token = open_secret(peer.token_sealed, secret=secret, purpose="token", owner=peer.name).decode()
    return key, token


def link_context(ctx: Context, peer: PeerRecord) -> tuple[ssl.SSLContext, dict[str, str]]:
    """The TLS context and headers the puller connects to ``peer`` with."""
    key, token = secrets_of(ctx, peer)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client_context(ca=peer.ca_pem, cert=peer.cert_pem, key=key), headers


async def fetch_vkey(url: str, context: ssl.SSLContext, headers: Mapping[str, str]) -> str:
    """The upstream's checkpoint vkey, over the mutually authenticated connection."""
    timeout = aiohttp.ClientTimeout(total=FETCH_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.get(url.rstrip("/") + KEY_PATH, headers=dict(headers)) as response,
        ):
            if response.status != 200:
                raise Unavailable(f"{url} answered {response.status} for its key", code="peer_unreachable")
            found = (await response.json()).get("vkey")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unavailable(
            f"cannot fetch the checkpoint key of {url}: {exc}", code="peer_unreachable"
        ) from exc
    if not isinstance(found, str):
        raise Unavailable(f"{url} served no vkey", code="peer_unreachable")
    return _vkey(found)


async def add_peer(
    ctx: Context, spec: Mapping[str, Any], *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """Store a peer. Without ``broker_key`` the upstream's vkey is fetched once over the link's
    mutual TLS and pinned. Returns the peer as ``list_peers`` shows it."""
    unknown = set(spec) - PEER_FIELDS
    if unknown:
        raise InvalidInput(f"unknown fields: {sorted(unknown)}", code="invalid_peer")
    name = str(_text(spec, "name"))
    if not PEER_NAME.fullmatch(name):
        raise InvalidInput(f"a peer name must match {PEER_NAME.pattern}", code="invalid_peer")
    url = str(_text(spec, "url"))
    if not url.startswith("https://"):
        raise InvalidInput("a peer url must be https:// (links are mutual TLS)", code="invalid_peer")
    ca, cert, key = (str(_text(spec, field)) for field in ("ca", "cert", "key"))
    token = _text(spec, "token", required=False)
    origins = _origins(spec.get("origins"))
    context = client_context(ca=ca, cert=cert, key=key)
    given = _text(spec, "broker_key", required=False)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    vkey = _vkey(given) if given is not None else await fetch_vkey(url, context, headers)
    secret = ctx.keyring.checkpoint_key
    peer = PeerRecord(
        name=name,
        url=url.rstrip("/"),
        ca_pem=ca,
        cert_pem=cert,
        key_sealed=seal_secret(key.encode(), secret=secret, purpose="key", owner=name),
        token_sealed=None
        if token is None
        else seal_secret(token.encode(), secret=secret, purpose="token", owner=name),
        origins=origins,
        broker_key=vkey,
        cursor=0,
        state="connecting",
        lag=0.0,
        last_error=None,
        created_at=ctx.now(),
    )
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        # Before the peers table, as an import and a removal take them.
        await auth.confirm_admin(tx, by, now=ctx.now())
        if await store.peer(tx, name) is not None:
            raise Conflict(f"peer {name!r} already exists", code="peer_exists")
        await store.insert_peer(tx, peer)
        details = {"url": peer.url, "origins": list(origins), "broker_key": vkey}
        draft = AuditDraft(
            action="peer_add", actor=actor, decision="allow", details={"peer": name, **details}
        )
        await audit.record(tx, [draft], now=peer.created_at, changed=True)
    return peer.public()


async def list_peers(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.db.read_transaction() as tx:
        return [p.public() for p in await store.peers(tx)]


async def remove_peer(ctx: Context, name: str, *, actor: str, by: NodeRecord | None = None) -> dict[str, Any]:
    """Forget a peer: its puller stops (``services.puller`` watches the table)."""
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        # The head first, as an import takes it before its peer's cursor: never the reverse order.
        await auth.confirm_admin(tx, by, now=ctx.now())
        if not await store.delete_peer(tx, name):
            raise NotFound(f"no peer {name!r}", code="not_found")
        draft = AuditDraft(action="peer_remove", actor=actor, decision="allow", details={"peer": name})
        await audit.record(tx, [draft], now=ctx.now(), changed=True)
    return {"name": name, "removed": True}
