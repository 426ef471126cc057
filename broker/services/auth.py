"""Node authentication by bearer token, the re-check acts make in their own transaction, role
checks, and the per-source accounting of failed authentications.

A failed authentication writes nothing at once: failures are counted per source address and
written as one audit event per source and window (``AuthFailures.flush``), and a source that
keeps failing is refused with 429 before its token is even looked at. So a flood of bad tokens
costs a dictionary update each, not a durable transaction each.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import NoReturn

from broker.crypto import pki
from broker.crypto.tokens import hash_token, token_matches
from broker.domain.records import (
    CERTIFICATE_EXPIRED,
    NODE_REVOKED,
    AuditDraft,
    Credential,
    Head,
    NodeRecord,
    credential_lapsed,
)
from broker.errors import AccessDenied, RateLimited, Unauthenticated
from broker.services.audit import record_alone
from broker.services.context import Context
from broker.storage.repos import Tx

MAX_TOKEN_LENGTH = 256
# What our tokens are made of (crypto.tokens): anything else is malformed, and is refused before
# it is hashed (a token that is not even ASCII once answered 500).
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}")


async def flush_failures(ctx: Context) -> None:
    """Write the failed authentications counted so far (one event per source) and reset."""
    drafts = ctx.auth_failures.drain(now=ctx.now())
    if drafts:
        await record_alone(ctx, drafts)


async def authenticate(
    ctx: Context,
    token: str | None,
    *,
    source: str,
    rechecked: bool = False,
    certificate: bytes | None = None,
) -> NodeRecord:
    """The node holding ``token``, tagged with the change counter it was read at. Unknown,
    malformed and revoked tokens are refused with 401 and counted against ``source`` (the token
    itself is never recorded); a source that keeps failing gets 429 first.

    A cached record is used as it is only by callers that pass ``rechecked`` (they call
    ``recheck`` in the transaction of their act); for everyone else it is checked against the
    database's change counter first, so a revocation committed by any process binds at once.

    ``certificate`` is a verified TLS client certificate (DER): it identifies the node instead
    of the token (see ``_by_certificate``)."""
    if certificate is not None:
        return await _by_certificate(ctx, certificate, token, source=source, rechecked=rechecked)
    _limit(ctx, source)
    return await _by_token(ctx, token, source=source, rechecked=rechecked)


def _limit(ctx: Context, source: str) -> None:
    """429 when ``source`` has used up its failures (before anything else is looked at)."""
    if not ctx.auth_failures.allowed(source):
        raise RateLimited("too many failed authentications from this address", code="rate_limited")


async def _by_token(ctx: Context, token: str | None, *, source: str, rechecked: bool) -> NodeRecord:
    if not token:
        _fail(ctx, source, reason="missing_token")
    if len(token) > MAX_TOKEN_LENGTH or not TOKEN.fullmatch(token):
        _fail(ctx, source, reason="malformed_token")
    digest = hash_token(token)
    node = ctx.tokens.get(digest)
    if node is None or node.version < ctx.seen or not rechecked:
        async with ctx.db.read_transaction() as tx:
            counter = await tx.change_counter()  # first: the node read after it is at least as new
            if node is None or node.version != counter:
                node = await tx.node_by_token_hash(digest)
        ctx.observe(counter)
        if node is not None and node.version != counter:
            node = replace(node, version=counter)
            ctx.remember(digest, node)
    if node is None or not token_matches(token=token, stored_hash=node.token_hash):
        _fail(ctx, source, reason="unknown_token")
    if node.foreign_peer is not None:  # its token was never handed out: fail closed all the same
        _fail(ctx, source, reason="foreign_originator", node=node)
    if node.revoked_at is not None:
        _fail(ctx, source, reason="node_revoked", node=node)
    if node.token_expires_at is not None and ctx.now() >= node.token_expires_at:
        _fail(ctx, source, reason="token_expired", node=node)
    return replace(node, credential=Credential(token_hash=node.token_hash))


async def _by_certificate(
    ctx: Context, der: bytes, token: str | None, *, source: str, rechecked: bool
) -> NodeRecord:
    """The node a verified client certificate names (SAN ``urn:alliance-broker:node:<id>``).

    The TLS handshake already checked the chain to a configured CA and the validity dates, once,
    when the connection opened; here: the node exists and is not revoked, the certificate is the
    pinned one when the node has a pin, it has not expired since (a kept-alive connection or a
    stream outlives its handshake), and a token sent as well names the same node. The node is
    cached by the certificate's fingerprint like a token, under the same version rule (the node
    id is read from the certificate once, its notAfter at each authentication).

    The failure limit of ``source`` applies unless the certificate is the one pinned to its
    node: such a client is not refused for its neighbours' failures (behind one NAT or proxy).
    The certificate was verified by the TLS handshake, so finding its node first costs no more
    than any authenticated request."""
    fingerprint = hashlib.sha256(der).hexdigest()
    key = "cert:" + fingerprint
    node = ctx.tokens.get(key)
    if node is None or node.version < ctx.seen or not rechecked:
        node_id = node.id if node is not None else pki.node_id_from_certificate(der)
        if node_id is None:
            _limit(ctx, source)
            _fail(ctx, source, reason="certificate_names_no_node")
        async with ctx.db.read_transaction() as tx:
            counter = await tx.change_counter()
            if node is None or node.version != counter:
                node = await tx.node(node_id)
        ctx.observe(counter)
        if node is None:
            _limit(ctx, source)
            _fail(ctx, source, reason="unknown_certificate")
        if node.version != counter:
            node = replace(node, version=counter)
            ctx.remember(key, node)
    pin = node.tls_fingerprint
    pinned = pin is not None and hmac.compare_digest(pin, fingerprint)
    if not pinned:
        _limit(ctx, source)
    if node.foreign_peer is not None:  # another broker's originator, whatever CA issued this
        _fail(ctx, source, reason="foreign_originator", node=node)
    if node.revoked_at is not None:
        _fail(ctx, source, reason="node_revoked", node=node)
    if pin is not None and not pinned:
        ctx.tokens.pop(key, None)
        _fail(ctx, source, reason="certificate_not_pinned", node=node)
    expires_at = pki.certificate_expires_at(der)
    if expires_at is None or ctx.now() >= expires_at:
        _fail(ctx, source, reason=CERTIFICATE_EXPIRED, node=node)
    token_hash = None
    if token:
        by_token = await _by_token(ctx, token, source=source, rechecked=rechecked)
        if by_token.id != node.id:
            _fail(ctx, source, reason="token_certificate_mismatch", node=node)
        token_hash = by_token.token_hash
    credential = Credential(token_hash=token_hash, certificate=fingerprint, certificate_expires_at=expires_at)
    return replace(node, credential=credential)


# What a refused client is told: the reason the audit log records, so that the holder of a
# certificate or token can act on it. A token that matches nothing is told nothing more.
FAILURE_MESSAGES = {
    "missing_token": "a valid bearer token or client certificate is required",
    "malformed_token": "the bearer token is malformed",
    "unknown_token": "a valid bearer token is required",
    "node_revoked": "the node this credential names was revoked",
    "token_expired": "the bearer token has expired: ask an admin to rotate it",
    "certificate_names_no_node": "the client certificate names no node (SAN urn:alliance-broker:node:<id>)",
    "unknown_certificate": "the client certificate names a node this broker does not know",
    "certificate_not_pinned": "the client certificate is not the one pinned for its node: present "
    "the pinned certificate, or ask an admin to pin this one",
    "certificate_expired": "the client certificate has expired: present a current one",
    "token_certificate_mismatch": "the token sent and the client certificate name different nodes",
    "foreign_originator": "the credential names another broker's originator, which never authenticates here",
}


def _fail(ctx: Context, source: str, *, reason: str, node: NodeRecord | None = None) -> NoReturn:
    ctx.auth_failures.note(source, reason, node, now=ctx.now())
    told = FAILURE_MESSAGES.get(reason, "authentication failed")
    raise Unauthenticated(f"{told} ({reason})", code="unauthenticated")


async def recheck(
    tx: Tx, node: NodeRecord, counter: int, *, now: datetime | None = None, role: str | None = None
) -> NodeRecord:
    """``node`` as of the change counter ``counter`` that the caller read in ``tx``: the same
    record when nothing changed since it was read, else the row read again here, still carrying
    the credential it authenticated with. Raises ``NodeGone`` when that credential no longer
    authenticates it (revoked, token rotated or expired, pinned to another certificate), and
    ``RoleLost`` when ``role`` is given and the node no longer holds it."""
    if node.version != counter:
        fresh = await tx.node(node.id)
        if fresh is None:
            raise NodeGone(node, NODE_REVOKED)
        if node.credential is None and fresh.token_hash != node.token_hash:
            raise NodeGone(node, "token_replaced")
        node = replace(fresh, version=counter, credential=node.credential)
    reason = credential_lapsed(node, node.credential, now=now or datetime.now(UTC))
    if reason is not None:
        raise NodeGone(node, reason)
    if role is not None and role not in node.roles:
        raise RoleLost(node, role)
    return node


async def confirm_admin(tx: Tx, by: NodeRecord | None, *, now: datetime) -> Head:
    """Lock the head (first: ``Tx.lock_head``'s lock order) for an admin act and, when an admin
    node asked for it over the API (``by``, as it authenticated; None for the command line),
    re-check that node under the lock at the current change counter: ``NodeGone`` when its
    credential no longer authenticates it, ``RoleLost`` without the admin role. Its request was
    authenticated in a transaction of its own, before its body arrived: a revocation or a role
    taken away that committed since binds the act (see ``admin_act``)."""
    head = await tx.lock_head()
    if by is not None:
        await recheck(tx, by, head.change_counter, now=now, role="admin")
    return head


@asynccontextmanager
async def admin_act(ctx: Context, by: NodeRecord | None) -> AsyncIterator[None]:
    """Around an admin act's transaction: its admin refused by ``confirm_admin`` is audited
    (action ``admin``, once the act's transaction has rolled back) and the refusal raised."""
    try:
        yield
    except (NodeGone, RoleLost) as exc:
        if by is None:
            raise
        await refuse_gone(ctx, exc, act="admin")


class NodeGone(Unauthenticated):
    """The node's credential stopped authenticating it (``reason``: revoked, token rotated or
    expired, certificate no longer pinned) after it authenticated and before its act was decided."""

    def __init__(self, node: NodeRecord, reason: str = NODE_REVOKED) -> None:
        super().__init__("a valid bearer token is required", code="unauthenticated")
        self.node = node
        self.reason = reason


class RoleLost(AccessDenied):
    """The node lost the role its act needs after it authenticated (another process changed it)."""

    def __init__(self, node: NodeRecord, role: str) -> None:
        super().__init__(f"this act needs the {role!r} role", code="missing_role")
        self.node = node


async def refuse_gone(ctx: Context, exc: NodeGone | RoleLost, *, act: str) -> NoReturn:
    """Audit an act refused because its node's credential lapsed while it was under way (or,
    for ``RoleLost``, its role was taken away), and raise."""
    await record_gone(ctx, exc, act=act)
    raise exc


async def record_gone(ctx: Context, exc: NodeGone | RoleLost, *, act: str) -> None:
    """Audit what ``refuse_gone`` audits, for an act cut off after its answer began."""
    node = exc.node
    reason = exc.reason if isinstance(exc, NodeGone) else "missing_role"
    draft = AuditDraft(
        action=act, actor=node.id, node=node.id, nation=node.nation, decision="deny", reason=reason
    )
    await record_alone(ctx, [draft])


async def record_stream_refusal(ctx: Context, node: NodeRecord, reason: str) -> None:
    """Audit a stream closed because its credential lapsed or its node lost the role."""
    draft = AuditDraft(
        action="stream", actor=node.id, node=node.id, nation=node.nation, decision="deny", reason=reason
    )
    await record_alone(ctx, [draft])


async def require_role(ctx: Context, node: NodeRecord, role: str, *, act: str) -> None:
    """Raise 403 (audited) unless ``node`` holds ``role``.

    Refusals are counted per node and act, as failed authentications are per source: the first
    of a window is written at once (the auditor sees a node reaching beyond its roles as soon as
    it happens, and a crash loses at most the repeats), the rest become one event with their
    count at the next ``flush_failures``. So a node hammering an act it may not do costs a
    dictionary update a request, not a durable transaction."""
    if role in node.roles:
        return
    if ctx.auth_failures.refused(node, act=act, role=role, now=ctx.now()):
        draft = AuditDraft(
            action=act,
            actor=node.id,
            node=node.id,
            nation=node.nation,
            decision="deny",
            reason="missing_role",
            details={"role": role},
        )
        await record_alone(ctx, [draft])
    raise AccessDenied(f"this act needs the {role!r} role", code="missing_role")
