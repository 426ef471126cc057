"""What every TAXII act shares: the collection (and its resource) and the refusals, paging cursors, the object
index's keys and state, and whether a report's versions count for a node."""

from __future__ import annotations

import json
import uuid
import weakref
from collections.abc import Sequence
from typing import Any, NoReturn

from broker.crypto import cursors
from broker.domain import stix
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.domain.stix import CollectionRecord, Filters, Position
from broker.domain.versioning import Held
from broker.errors import AccessDenied, BrokerError, NotFound
from broker.services import audit, decisions, publishing
from broker.services.collections import can_read, can_write
from broker.services.context import Context
from broker.storage import collections as store
from broker.storage.database import Database
from broker.storage.repos import Tx


# -- the collection and the refusals -------------------------------------------------------------
async def collection(ctx: Context, node: NodeRecord, collection_id: str, *, act: str) -> CollectionRecord:
    """The collection ``collection_id`` names (404 for anything else, audited as ``node``'s
    ``act`` refused)."""
    async with ctx.db.read_transaction() as tx:
        found = None if not is_uuid(collection_id) else await store.collection(tx, collection_id)
    if found is None:
        await refuse(ctx, node, act, NotFound("no such collection", code="not_found"))
    return found


def collection_resource(ctx: Context, node: NodeRecord, collection: CollectionRecord) -> dict[str, Any]:
    """A collection as ``node`` sees it."""
    resource: dict[str, Any] = {
        "id": collection.id,
        "title": collection.title,
        "can_read": can_read(node) and node.x25519_public_key is None,
        "can_write": can_write(ctx, node, collection) and node.ed25519_public_key is None,
        "media_types": [stix.STIX_MEDIA],
    }
    if collection.description:
        resource["description"] = collection.description
    return resource


async def collections_for(ctx: Context, node: NodeRecord) -> dict[str, Any]:
    """The collections resource: every collection, as ``node`` sees it."""
    async with ctx.db.read_transaction() as tx:
        found = await store.collections(tx)
    return {"collections": [collection_resource(ctx, node, c) for c in found]}


async def collection_for(ctx: Context, node: NodeRecord, collection_id: str) -> dict[str, Any]:
    """One collection, as ``node`` sees it (404 when there is none)."""
    return collection_resource(ctx, node, await collection(ctx, node, collection_id, act="read"))


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in its canonical spelling."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


async def readable(ctx: Context, node: NodeRecord, collection_id: str) -> CollectionRecord:
    """The collection, once ``node`` may read objects through TAXII (refusals audited)."""
    found = await collection(ctx, node, collection_id, act="read")
    if not can_read(node):
        await refuse(
            ctx, node, "read", AccessDenied("this act needs the 'subscribe' role", code="missing_role")
        )
    if node.x25519_public_key is not None:
        await refuse(
            ctx,
            node,
            "read",
            AccessDenied(
                "your node has an X25519 key, so every payload is sealed to it and TAXII cannot carry "
                "a sealed payload: read through REST /v1/reports or the /v1/stream websocket",
                code="sealed_delivery_required",
            ),
        )
    return found


async def refuse(ctx: Context, node: NodeRecord, act: str, exc: BrokerError) -> NoReturn:
    """Record ``node``'s ``act`` as denied for ``exc``'s reason, then raise ``exc``."""
    draft = AuditDraft(
        action=act, actor=node.id, node=node.id, nation=node.nation, decision="deny", reason=exc.code
    )
    await audit.record_alone(ctx, [draft])
    raise exc


# -- keys, paging cursors ----------------------------------------------------------------------
def _cursor_key(ctx: Context) -> bytes:
    """From the keyring's stable secret: KEKs rotate and are replaced on every erasure, and a
    ``next`` must survive both."""
    return cursors.cursor_key(ctx.keyring.checkpoint_key)


def index_key(ctx: Context) -> bytes:
    """The key the object index's digests of object ids are made with."""
    return cursors.index_key(ctx.keyring.checkpoint_key)


def cursor(ctx: Context, node: NodeRecord, scope: Sequence[str], position: Position) -> str:
    """The ``next`` naming ``position`` for ``node`` in ``scope`` (the collection, and the object
    for by-id and versions): every broker sharing the keyring reads it."""
    return cursors.encode_position(position, key=_cursor_key(ctx), bound=(node.id, *scope))


def position_of(ctx: Context, node: NodeRecord, scope: Sequence[str], token: str | None) -> Position:
    """Where a page starts: the beginning, or the place a ``next`` this node was answered in
    this scope names (400 for any other token)."""
    if token is None:
        return Position()
    return cursors.decode_position(token, keys=[_cursor_key(ctx)], bound=(node.id, *scope))


# -- the object index ----------------------------------------------------------------------------
async def ensure_indexed(ctx: Context) -> None:
    """Index the reports stored before the object index existed (migration 0011 names them),
    once per database: decrypting each, in one transaction that holds the index's state row and
    the reports it indexes (an erasure at once deletes what it indexed, or is skipped)."""
    if ctx.db in _INDEXED:
        return
    async with ctx.db.transaction() as tx:
        below = await store.pending_below(tx, lock=True)
        after = 0
        while below:
            found = await store.unindexed(tx, after=after, below=below, limit=500)
            if not found:
                await store.set_pending_below(tx, 0)
                break
            for report in found:
                payload = json.loads(decisions.open_payload(ctx, report))
                await store.add_indexed(tx, publishing.index_rows(ctx, report, payload))
            after = found[-1].seq
    _INDEXED.add(ctx.db)


_INDEXED: weakref.WeakSet[Database] = weakref.WeakSet()  # those found fully indexed


async def holders(ctx: Context, tx: Tx, object_id: str) -> list[tuple[ReportRecord, stix.Indexed]]:
    """Every index row of the object ``object_id``, with the report holding it."""
    held = await store.indexed(tx, [stix.id_digest(index_key(ctx), object_id)])
    by_seq = {r.seq: r for r in await store.reports_at(tx, [seq for seq, _ in held])}
    return [(by_seq[seq], row) for seq, row in held if seq in by_seq]


# -- which versions count ------------------------------------------------------------------------
def may_see(
    ctx: Context, node: NodeRecord, collection: CollectionRecord, report: ReportRecord, directory: Any
) -> bool:
    """Whether ``report`` is in ``node``'s view of the collection, before a request's filters:
    its versions are what ``domain.versioning`` decides the node's view of an object from."""
    return (
        report.erased_at is None
        and bool(set(report.topics) & set(collection.topics))
        and decisions.decide_for(ctx, node, report, directory).allowed
    )


def counts(
    ctx: Context,
    node: NodeRecord,
    collection: CollectionRecord,
    report: ReportRecord,
    directory: Any,
    filters: Filters,
) -> bool:
    """Whether ``report``'s versions count for ``node`` in the collection under ``filters``."""
    return added_after(filters, report) and may_see(ctx, node, collection, report, directory)


def added_after(filters: Filters, report: ReportRecord) -> bool:
    """Whether ``added_after`` keeps ``report``."""
    return filters.added_after is None or report.added > filters.added_after


def spec_ok(filters: Filters, spec_version: str) -> bool:
    """Whether ``match[spec_version]`` keeps an object of ``spec_version``."""
    return not filters.spec_versions or spec_version in filters.spec_versions


def held(report: ReportRecord, row: stix.Indexed, filters: Filters) -> Held:
    """A version of an object in a report the node may see, as the versioning rule takes it."""
    kept = added_after(filters, report) and spec_ok(filters, row.spec_version)
    return Held(
        report.seq,
        row.position,
        report.originator_node,
        row.version,
        removed=row.excluded,
        filtered=not kept,
    )
