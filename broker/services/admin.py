"""Alliance administration: nodes and keys (memberships: services.alliances). Every change is
audited."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from broker.crypto import pki
from broker.crypto.tokens import hash_token, new_token
from broker.domain.access import FEDERATE
from broker.domain.nations import ALLIANCE_ID, is_nation
from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import Conflict, InvalidInput, NotFound
from broker.services import audit, auth, shred
from broker.services.context import Context
from broker.services.wire.decode import decode
from broker.services.wire.requests import NodeSpec, NodeUpdate, TokenRequest, not_a_nation


def parse_node_spec(spec: object, *, ctx: Context) -> NodeRecord:
    """Validate a new node's fields (``wire.requests.NodeSpec``); the token hash is filled in by
    ``add_node``."""
    fields = decode(NodeSpec, spec, context={"policy": ctx.policy})
    roles = tuple(dict.fromkeys(fields.roles))
    audience, origins = _link_fields(fields, roles=roles)
    return NodeRecord(
        id=fields.id,
        nation=fields.nation,
        clearance=fields.clearance,
        caveats=tuple(dict.fromkeys(fields.caveats)),
        roles=roles,
        token_hash="",
        created_at=ctx.now(),
        ed25519_public_key=fields.ed25519_public_key,
        x25519_public_key=fields.x25519_public_key,
        tls_fingerprint=_pin(fields.certificate, fields.id),
        token_expires_at=token_expiry(fields.token_days, now=ctx.now()),
        audience=audience,
        origins=origins,
    )


def _link_fields(spec: NodeSpec, *, roles: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A federation link's audience (nations and alliance ids) and origins (nations). A link
    only receives, so ``federate`` takes no other role, and it needs both lists; other nodes
    have neither (they are decided by their nation)."""
    audience: tuple[str, ...] = tuple(dict.fromkeys(spec.audience))
    origins: tuple[str, ...] = tuple(dict.fromkeys(spec.origins))
    if FEDERATE not in roles:
        if audience or origins:
            raise InvalidInput("audience and origins are for federate links only", code="invalid_node")
        return (), ()
    if set(roles) != {FEDERATE}:
        raise InvalidInput("a federate link takes no other role: it only receives", code="invalid_node")
    if not audience or not origins:
        raise InvalidInput("a federate link needs an audience and origins", code="invalid_node")
    for entry in audience:
        if not is_nation(entry) and ALLIANCE_ID.fullmatch(entry) is None:
            raise InvalidInput(
                f"audience entry {entry!r} is neither a nation nor an alliance id", code="invalid_node"
            )
    for nation in origins:
        if not is_nation(nation):
            raise InvalidInput(not_a_nation(nation, "origins"), code="unknown_nation")
    return audience, origins


def token_expiry(days: int | None, *, now: datetime) -> datetime | None:
    """When a token issued now for ``days`` days stops working (None: ``days`` is None)."""
    return None if days is None else now + timedelta(days=days)


def _pin(pem: str | None, node_id: str) -> str | None:
    """The SHA-256 fingerprint of a node's client certificate (PEM), which must name the node."""
    if pem is None:
        return None
    try:
        der = pki.certificate_der(pki.load_certificate(pem.encode()))
    except ValueError as exc:
        raise InvalidInput("certificate is not a PEM X.509 certificate", code="invalid_certificate") from exc
    if pki.node_id_from_certificate(der) != node_id:
        raise InvalidInput(
            f"the certificate's SAN must hold urn:alliance-broker:node:{node_id}", code="invalid_certificate"
        )
    return pki.fingerprint_sha256(der)


async def add_node(ctx: Context, spec: object, *, actor: str, by: NodeRecord | None = None) -> dict[str, Any]:
    """Register a node; returns its id and token. The token is shown only here, once. ``by``:
    the admin node that asked, re-checked under the head lock (``auth.confirm_admin``)."""
    node = parse_node_spec(spec, ctx=ctx)
    token = new_token()
    node = NodeRecord(**{**node.__dict__, "token_hash": hash_token(token)})
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        existing = await tx.node(node.id)
        if existing is not None and existing.revoked_at is not None:
            raise Conflict(
                f"node {node.id!r} was revoked on {existing.revoked_at.date()}: node ids are never reused, "
                "choose another",
                code="node_id_revoked",
            )
        if existing is not None:
            raise Conflict(f"node {node.id!r} already exists", code="node_exists")
        await tx.insert_node(node)
        details = {k: v for k, v in node.public().items() if k not in {"id", "created", "revoked"}}
        await audit.record(
            tx,
            [
                AuditDraft(
                    action="node_add",
                    actor=actor,
                    node=node.id,
                    nation=node.nation,
                    decision="allow",
                    details=details,
                )
            ],
            now=node.created_at,
        )
    created: dict[str, Any] = {"id": node.id, "token": token}
    if node.token_expires_at is not None:
        created["expires"] = node.token_expires_at.isoformat()
    return created


async def node_keys(ctx: Context, node_id: str) -> dict[str, Any]:
    """A node's public identity: nation and public keys (what a recipient needs to verify)."""
    async with ctx.db.transaction() as tx:
        node = await tx.node(node_id)
    if node is None:
        raise NotFound(f"no node {node_id!r}", code="not_found")
    return {
        "id": node.id,
        "nation": node.nation,
        "ed25519_public_key": node.ed25519_public_key,
        "x25519_public_key": node.x25519_public_key,
    }


async def list_nodes(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.db.read_transaction() as tx:
        return [n.public() for n in await tx.nodes()]


async def revoke_node(
    ctx: Context, node_id: str, *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """Revoke a node: its token stops working at once."""
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        node = await tx.node(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", code="not_found")
        now = ctx.now()
        changed = await tx.revoke_node(node_id, at=now)
        ctx.tokens.clear()  # this process stops accepting the token now; others within a poll
        await audit.record(
            tx,
            [
                AuditDraft(
                    action="node_revoke", actor=actor, node=node_id, nation=node.nation, decision="allow"
                )
            ],
            now=now,
            changed=changed,
        )
    return {"id": node_id, "revoked": True}


async def rotate_keys(ctx: Context, *, rewrap: bool, batch: int = 500) -> dict[str, Any]:
    """Make a new KEK current; with ``rewrap``, re-wrap every data key under it and then
    destroy every other KEK no stored report uses.

    The new KEK is saved and the change counter bumped in one transaction under the head lock,
    and publishers refresh their keyring under that same lock, so no report can be wrapped by a
    retired KEK after the re-wrap sweep has passed (services/shred.py).
    """
    made = await shred.rotate(ctx, actor="cli")
    if not rewrap:
        return {"kek_id": made, "rewrapped": 0, "retired_destroyed": False}
    rewrapped = await shred.rewrap_all(ctx, batch=batch)
    # Only KEKs no stored report uses, checked under the head lock: an erasure may have added a
    # replacement KEK meanwhile, and another rotation may have made its KEK current.
    await shred.destroy_retiring(ctx, actor="cli", every_unused=True)
    retired = len(ctx.keyring.keks) == 1
    await _audit_change(ctx, "keys_retire", {"kek_id": ctx.keyring.current, "rewrapped": rewrapped})
    return {"kek_id": ctx.keyring.current, "rewrapped": rewrapped, "retired_destroyed": retired}


async def _audit_change(ctx: Context, action: str, details: dict[str, Any]) -> None:
    async with ctx.db.transaction() as tx:
        await audit.record(
            tx,
            [AuditDraft(action=action, actor="cli", decision="allow", details=details)],
            now=ctx.now(),
            changed=True,
        )


async def stream_cursors(
    ctx: Context, node_id: str, *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """A node's durable stream cursors (what a stream without ``after`` resumes from); audited."""
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        if await tx.node(node_id) is None:
            raise NotFound(f"no node {node_id!r}", code="not_found")
        found = await tx.cursors(node=node_id)
        draft = AuditDraft(action="cursor_list", actor=actor, node=node_id, decision="allow")
        await audit.record(tx, [draft], now=ctx.now())
    cursors = [{"name": name, "sequence": seq, "updated": at.isoformat()} for name, seq, at in found]
    return {"node": node_id, "cursors": cursors}


async def reset_cursor(
    ctx: Context, node_id: str, name: str, *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """Forget one stream cursor of a node (its next stream without ``after`` starts at 0); audited
    with the sequence it held."""
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        if await tx.node(node_id) is None:
            raise NotFound(f"no node {node_id!r}", code="not_found")
        held = await tx.delete_cursor(node=node_id, name=name)
        if held is None:
            raise NotFound(f"node {node_id!r} has no stream cursor {name!r}", code="not_found")
        details = {"name": name, "sequence": held}
        draft = AuditDraft(
            action="cursor_reset", actor=actor, node=node_id, decision="allow", details=details
        )
        await audit.record(tx, [draft], now=ctx.now())
    return {"node": node_id, "name": name, "reset": True, "sequence": held}


async def rotate_token(
    ctx: Context,
    node_id: str,
    *,
    actor: str,
    token_days: int | None = None,
    by: NodeRecord | None = None,
) -> dict[str, Any]:
    """Give a node a new token, shown only here (valid for ``token_days`` days, or without
    expiry); the old one stops working when this commits (the change counter moves, so every
    act re-checks the node, on every instance)."""
    token = new_token()
    days = decode(TokenRequest, {"token_days": token_days}).token_days  # the CLI's too
    expires = token_expiry(days, now=ctx.now())
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        node = await tx.node(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", code="not_found")
        _not_foreign(node)
        if not await tx.set_token_hash(node_id, hash_token(token), expires_at=expires):
            raise Conflict(f"node {node_id!r} was revoked", code="node_revoked")
        draft = AuditDraft(
            action="token_rotate", actor=actor, node=node_id, nation=node.nation, decision="allow"
        )
        await audit.record(tx, [draft], now=ctx.now(), changed=True)
    ctx.tokens.clear()
    answer: dict[str, Any] = {"id": node_id, "token": token}
    if expires is not None:
        answer["expires"] = expires.isoformat()
    return answer


def _not_foreign(node: NodeRecord) -> None:
    """Another broker's originator gets no token, role or certificate here: it never acts."""
    if node.foreign_peer is not None:
        raise Conflict(
            f"node {node.id!r} is another broker's originator (imported from peer {node.foreign_peer!r})",
            code="foreign_originator",
        )


async def update_node(
    ctx: Context, node_id: str, changes: object, *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """Change a live node's clearance, caveats, roles, public keys or certificate pin
    (``certificate``: a PEM to pin, or None to unpin). Validated like a new node; audited with
    what changed; every act re-checks the node from the moment this commits."""
    update = decode(NodeUpdate, changes, context={"policy": ctx.policy})
    if not update.model_fields_set:
        raise NodeUpdate.UNKNOWN.error()
    changed = update.model_dump(include=update.model_fields_set)
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        node = await tx.node(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", code="not_found")
        if node.revoked_at is not None:
            raise Conflict(f"node {node_id!r} was revoked", code="node_revoked")
        _not_foreign(node)
        kept = NodeSpec.model_fields.keys() - {"token_days", "certificate"}
        spec = {k: v for k, v in node.public().items() if k in kept} | {
            k: v for k, v in changed.items() if k != "certificate"
        }
        parsed = parse_node_spec(spec, ctx=ctx)
        pin = _pin(update.certificate, node_id) if "certificate" in changed else node.tls_fingerprint
        updated = replace(
            node,
            clearance=parsed.clearance,
            caveats=parsed.caveats,
            roles=parsed.roles,
            ed25519_public_key=parsed.ed25519_public_key,
            x25519_public_key=parsed.x25519_public_key,
            tls_fingerprint=pin,
            audience=parsed.audience,
            origins=parsed.origins,
        )
        await tx.update_node(updated)
        before, after = node.public(), updated.public()
        details = {k: after[k] for k in after if before[k] != after[k]}
        draft = AuditDraft(
            action="node_update",
            actor=actor,
            node=node_id,
            nation=node.nation,
            decision="allow",
            details=details,
        )
        await audit.record(tx, [draft], now=ctx.now(), changed=True)
    ctx.tokens.clear()
    return updated.public()
