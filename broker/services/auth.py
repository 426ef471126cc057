"""Node authentication by bearer token, and role checks."""

from __future__ import annotations

from typing import NoReturn

from broker.crypto.tokens import hash_token, token_matches
from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import AccessDenied, Unauthenticated
from broker.services.audit import record_alone
from broker.services.context import Context

MAX_TOKEN_LENGTH = 256


async def authenticate(ctx: Context, token: str | None) -> NodeRecord:
    """The node holding ``token``. Unknown, malformed and revoked tokens are refused with
    401 and audited (the token itself is never recorded)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        await _fail(ctx, reason="missing_token" if not token else "malformed_token")
    digest = hash_token(token)
    node = ctx.tokens.get(digest)
    if node is None:
        async with ctx.db.transaction() as tx:
            node = await tx.node_by_token_hash(digest)
        if node is not None and node.revoked_at is None:
            ctx.tokens[digest] = node
    if node is None or not token_matches(token=token, stored_hash=node.token_hash):
        await _fail(ctx, reason="unknown_token")
    if node.revoked_at is not None:
        await _fail(ctx, reason="node_revoked", node=node)
    return node


async def _fail(ctx: Context, *, reason: str, node: NodeRecord | None = None) -> NoReturn:
    draft = AuditDraft(
        action="authenticate",
        node=None if node is None else node.id,
        nation=None if node is None else node.nation,
        decision="deny",
        reason=reason,
    )
    await record_alone(ctx, [draft])
    raise Unauthenticated("a valid bearer token is required", code="unauthenticated")


async def require_role(ctx: Context, node: NodeRecord, role: str, *, act: str) -> None:
    """Raise 403 (audited) unless ``node`` holds ``role``."""
    if role in node.roles:
        return
    draft = AuditDraft(
        action=act, actor=node.id, node=node.id, nation=node.nation, decision="deny", reason="missing_role"
    )
    await record_alone(ctx, [draft])
    raise AccessDenied(f"this act needs the {role!r} role", code="missing_role")
