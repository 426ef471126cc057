"""TAXII collections as admins define them (CLI and admin REST); every change is audited."""

from __future__ import annotations

import uuid
from typing import Any

from broker.domain.records import AuditDraft, NodeRecord
from broker.domain.stix import CollectionRecord
from broker.errors import NotFound
from broker.services import audit, auth
from broker.services.context import Context
from broker.services.wire.decode import decode
from broker.services.wire.requests import CollectionSpec
from broker.storage import collections as store


def parse_collection(spec: object, *, ctx: Context, known_alliances: Any) -> CollectionRecord:
    """Validate a new collection (``wire.requests.CollectionSpec``): a title, 1-16 topics, and a
    label as publishers write them."""
    fields = decode(CollectionSpec, spec, context={"policy": ctx.policy, "known_alliances": known_alliances})
    return CollectionRecord(
        id=str(uuid.uuid4()),
        title=fields.title,
        description=fields.description,
        topics=tuple(dict.fromkeys(fields.topics)),
        label=fields.label.raw,
        created_at=ctx.now(),
    )


async def add_collection(
    ctx: Context, spec: object, *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """Define a collection; returns its id."""
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        directory = await ctx.directory(tx)
        collection = parse_collection(spec, ctx=ctx, known_alliances=directory.alliances)
        await store.insert_collection(tx, collection)
        details = {"collection": collection.id, "title": collection.title, "topics": list(collection.topics)}
        draft = AuditDraft(action="collection_add", actor=actor, decision="allow", details=details)
        await audit.record(tx, [draft], now=ctx.now(), changed=True)
    return {"id": collection.id}


async def list_collections(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.db.read_transaction() as tx:
        return [c.public() for c in await store.collections(tx)]


async def remove_collection(
    ctx: Context, collection_id: str, *, actor: str, by: NodeRecord | None = None
) -> dict[str, Any]:
    """Remove a collection (its reports stay: a collection is only a window on them)."""
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        if not await store.delete_collection(tx, collection_id):
            raise NotFound(f"no collection {collection_id!r}", code="not_found")
        draft = AuditDraft(
            action="collection_remove", actor=actor, decision="allow", details={"collection": collection_id}
        )
        await audit.record(tx, [draft], now=ctx.now(), changed=True)
    return {"id": collection_id, "removed": True}


def can_read(node: NodeRecord) -> bool:
    """A collection may be read by nodes with the subscribe role."""
    return "subscribe" in node.roles


def can_write(ctx: Context, node: NodeRecord, collection: CollectionRecord) -> bool:
    """A collection may be written by publishers whose clearance and caveats cover its label."""
    if "publish" not in node.roles or not ctx.policy.is_level(node.clearance):
        return False
    label = collection.label
    classification = str(label.get("classification"))
    if not ctx.policy.is_level(classification):
        return False
    covered = ctx.policy.rank(node.clearance) >= ctx.policy.rank(classification)
    return covered and set(label.get("caveats", [])) <= set(node.caveats)
