"""TAXII 2.1 over the report stream: the same access rule, sealing policy and audit as REST.

A collection is a window on the reports carrying one of its topics. Every page is decided in
one transaction, like ``reports.listing``: the node re-checked at the change counter, each
report decided by ``domain.access``, one ``read`` event per report whose objects were served,
recorded with ``decided_at`` (so nothing is answered after a change that committed meanwhile).
Paging is a cursor on the report sequence (``domain.stix.Position``) that only ever names a
place right after something the node may see. Writes go through ``reports.publish``.

Refusals specific to TAXII (each audited):
- a node with an X25519 key receives every payload sealed to it, and TAXII cannot carry a sealed
  payload: its object reads are refused (``sealed_delivery_required``), REST and streams serve it;
- a node with an Ed25519 key must sign what it publishes, and a TAXII client cannot sign: its
  writes are refused (``signature_required``), REST ``POST /v1/reports`` takes signed reports.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any

from prometheus_client import Counter
from stix2validator import (  # type: ignore[import-untyped]  # the package ships no types
    ValidationError,
    ValidationOptions,
    validate_instance,
)

from broker.crypto import cursors
from broker.crypto.keyring import Keyring
from broker.domain import stix
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.domain.stix import CollectionRecord, Entry, Filters, Position
from broker.errors import AccessDenied, BrokerError, InvalidInput, NotFound, PayloadTooLarge
from broker.services import audit, reports
from broker.services.auth import recheck
from broker.services.collections import can_read, can_write
from broker.services.context import Context
from broker.services.scanhints import HintKey, ScanHint
from broker.services.wire.decode import decode
from broker.services.wire.requests import MAX_OBJECTS_PER_POST, Envelope
from broker.storage import collections as store
from broker.storage.database import Database
from broker.storage.repos import Tx, WriteTx

ROWS_PER_SCAN_ROW = 10  # rows a page may read for each payload it may decrypt (settings.max_scan_rows)
_VALIDATION = ValidationOptions(version="2.1")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
PAYLOADS_OPENED = Counter(
    "broker_taxii_payloads_opened",
    "Report payloads decrypted to answer TAXII reads (a repeated search that matches nothing opens none)",
)


# -- collections -------------------------------------------------------------------------------
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
    async with ctx.db.read_transaction() as tx:
        found = await store.collections(tx)
    return {"collections": [collection_resource(ctx, node, c) for c in found]}


async def collection_for(ctx: Context, node: NodeRecord, collection_id: str) -> dict[str, Any]:
    return collection_resource(ctx, node, await _collection(ctx, collection_id))


async def _collection(ctx: Context, collection_id: str) -> CollectionRecord:
    async with ctx.db.read_transaction() as tx:
        found = None if not _is_uuid(collection_id) else await store.collection(tx, collection_id)
    if found is None:
        raise NotFound("no such collection", code="not_found")
    return found


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


async def _readable(ctx: Context, node: NodeRecord, collection_id: str) -> CollectionRecord:
    """The collection, once ``node`` may read objects through TAXII (refusals audited)."""
    collection = await _collection(ctx, collection_id)
    if not can_read(node):
        await _refuse(
            ctx, node, "read", AccessDenied("this act needs the 'subscribe' role", code="missing_role")
        )
    if node.x25519_public_key is not None:
        await _refuse(
            ctx,
            node,
            "read",
            AccessDenied(
                "your node has an X25519 key, so every payload is sealed to it and TAXII cannot carry "
                "a sealed payload: read through REST /v1/reports or the /v1/stream websocket",
                code="sealed_delivery_required",
            ),
        )
    return collection


async def _refuse(ctx: Context, node: NodeRecord, act: str, exc: BrokerError) -> None:
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


def _index_key(ctx: Context) -> bytes:
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
    once per database: decrypting each, in one transaction that holds the index's state row."""
    if ctx.db in _INDEXED:
        return
    async with ctx.db.transaction() as tx:
        below = await store.pending_below(tx, lock=True)
        after = 0
        while below:
            found = await store.unindexed(tx, after=after, below=below, limit=500)
            for report in found:
                payload = json.loads(reports.open_payload(ctx, report))
                await store.add_indexed(tx, reports.index_rows(ctx, report, payload))
            if len(found) < 500:
                await store.set_pending_below(tx, 0)
                break
            after = found[-1].seq
    _INDEXED.add(ctx.db)


_INDEXED: weakref.WeakSet[Database] = weakref.WeakSet()  # those found fully indexed


# -- reading -----------------------------------------------------------------------------------
@dataclass
class Page:
    """What one decision served: entries in order, whether more follow, and where."""

    entries: list[Entry] = field(default_factory=list)
    more: bool = False
    next: Position | None = None


class PayloadIndex:
    """What each report's payload carries, by report id: (id, type, spec_version) of every object
    it serves. A stored payload never changes, so a filter by id, type or spec_version skips a
    report known to hold no match without decrypting it again (a repeated search that finds
    nothing costs one decrypt per report once, not every time). Bounded by the object ids held,
    oldest dropped first; an erased report's entry is dropped when a scan meets it."""

    def __init__(self, max_ids: int = 500_000) -> None:
        self._max_ids = max_ids
        self._size = 0
        self._carried: OrderedDict[str, tuple[tuple[str, str, str], ...]] = OrderedDict()

    def put(self, report_id: str, objects: Sequence[Mapping[str, Any]]) -> None:
        keys = tuple((str(o["id"]), str(o["type"]), stix.spec_version_of(o)) for o in objects)
        self.forget(report_id)
        self._carried[report_id] = keys
        self._size += len(keys)
        while self._size > self._max_ids and self._carried:
            self._size -= len(self._carried.popitem(last=False)[1])

    def forget(self, report_id: str) -> None:
        self._size -= len(self._carried.pop(report_id, ()))

    def may_match(self, report_id: str, filters: Filters) -> bool:
        """False only when the payload is known to hold no object ``filters`` match."""
        if not (filters.ids or filters.types or filters.spec_versions):
            return True
        keys = self._carried.get(report_id)
        if keys is None:
            return True
        self._carried.move_to_end(report_id)
        return any(filters.matches({"id": i, "type": t, "spec_version": v}) for i, t, v in keys)


# One per process: report ids are UUIDs, so brokers on different databases in one process share it.
_INDEX = PayloadIndex()


def _entries(
    ctx: Context, report: ReportRecord, filters: Filters, keyring: Keyring | None = None
) -> tuple[list[Entry], bool]:
    """The objects a report contributes under ``filters``: its label's marking-definitions when
    asked for, then its payload's objects, each marked with the label and its TLP; and whether
    the payload was decrypted for it. Payload objects at the broker's reserved ids, or naming
    the broker as their creator, are never served (a report stored before they were refused, or
    published through REST, may carry them)."""
    added = stix.timestamp(report.created_at)
    markings = stix.markings_of(report.label)
    found: list[Entry] = []
    if filters.wants_markings():
        found += [Entry(m, m["created"], added, report.seq) for m in markings]
    opened = False
    if _INDEX.may_match(report.id, filters):
        refs = [m["id"] for m in markings]
        payload = json.loads(reports.open_payload(ctx, report, keyring))
        PAYLOADS_OPENED.inc()
        served = stix.served_objects(payload)
        _INDEX.put(report.id, served)
        opened = True
        for position, obj in enumerate(served):
            version = stix.version_of(obj, date_added=added)
            found.append(Entry(stix.marked(obj, refs), version, added, report.seq, position))
    return [e for e in found if filters.matches(e.obj)], opened


@dataclass
class _Scan:
    """One page's scan through a collection, inside the transaction that decides it."""

    ctx: Context
    node: NodeRecord
    collection: CollectionRecord
    filters: Filters
    limit: int
    per_report_versions: bool
    page: Page = field(default_factory=Page)
    drafts: list[AuditDraft] = field(default_factory=list)
    served: list[ReportRecord] = field(default_factory=list)
    keyring: Keyring | None = None  # the one current when the scan's reports were read
    opened: int = 0  # payloads decrypted
    directory: Any = None
    _seen: set[tuple[str, str]] = field(default_factory=set)
    _counts: dict[int, bool] = field(default_factory=dict)  # report seq -> its versions count
    _held: dict[str, list[tuple[int, stix.Indexed]]] = field(default_factory=dict)  # by digest
    _digest_at: dict[tuple[int, int], str] = field(default_factory=dict)  # (seq, position)
    index_key: bytes = b""

    async def take(self, tx: Tx, report: ReportRecord, start: Position) -> None:
        """Serve ``report``'s entries from ``start`` until the page is full."""
        entries, opened = _entries(self.ctx, report, self.filters, self.keyring)
        self.opened += opened
        if self.per_report_versions:
            entries = await self._versions(tx, report, entries)
        first = start.index if report.seq == start.seq else 0
        served = False
        for index in range(first, len(entries)):
            entry = entries[index]
            key = (str(entry.obj["id"]), entry.version)
            if entry.obj.get("type") == "marking-definition" and key in self._seen:
                continue
            if len(self.page.entries) == self.limit:
                self.page.more, self.page.next = True, Position(report.seq, index)
                break
            self._seen.add(key)
            self.page.entries.append(entry)
            served = True
        else:
            self.page.next = Position(report.seq + 1, 0)
        if served:
            self.served.append(report)
            self.drafts.append(reports.allow_draft(self.node, report, "read"))

    def counts(self, report: ReportRecord) -> bool:
        """Whether the scan takes ``report``: the decision ``prefetch`` made for it in this
        transaction, or the same one made now (a report it holds no index row of)."""
        if report.erased_at is not None:
            _INDEX.forget(report.id)  # what an erased payload carried is not kept either
            return False
        if self._counts.get(report.seq):
            return True
        if not reports.decide_for(self.ctx, self.node, report, self.directory).allowed:
            return False
        if self.filters.added_after is not None and report.created_at <= self.filters.added_after:
            self.page.next = Position(report.seq + 1, 0)
            return False
        return True

    async def prefetch(self, tx: Tx, batch: Sequence[ReportRecord]) -> None:
        """Read the object index for a batch of reports at once: every version of the objects
        they carry, and the reports holding them (a query or two a batch, none a report)."""
        if not self.per_report_versions or not batch:
            return
        seqs = {r.seq for r in batch}
        rows = await store.indexed_with(tx, sorted(seqs))
        digests = {row.digest for seq, row in rows if seq in seqs}
        for seq, row in rows:
            if seq in seqs:
                self._digest_at[(seq, row.position)] = row.digest
        await self._hold(tx, digests, batch, rows)

    async def _hold(
        self,
        tx: Tx,
        digests: set[str],
        known: Sequence[ReportRecord] = (),
        read: Sequence[tuple[int, stix.Indexed]] | None = None,
    ) -> None:
        """Every version of the objects ``digests`` name (``read``: already read), and whether
        each report holding one counts for this page (``_counts``), read once per scan."""
        unknown = {d for d in digests if d not in self._held}
        for d in unknown:
            self._held[d] = []
        for seq, row in read if read is not None else await store.indexed(tx, sorted(unknown)):
            if row.digest in unknown:
                self._held[row.digest].append((seq, row))
        if "all" in self.filters.versions:
            return
        seqs = {seq for d in digests for seq, _ in self._held[d]} - set(self._counts)
        records = [r for r in known if r.seq in seqs]
        records += await store.reports_at(tx, sorted(seqs - {r.seq for r in records}))
        for other in records:
            self._counts[other.seq] = _counts(
                self.ctx, self.node, self.collection, other, self.directory, self.filters
            )

    async def _versions(self, tx: Tx, report: ReportRecord, entries: list[Entry]) -> list[Entry]:
        """The entries ``match[version]`` keeps, judged per object across every version the node
        may see in the collection under the same filters (the object index), not per report."""
        versions = self.filters.versions
        digests: dict[int, str] = {}
        for e in entries:
            if e.position >= 0:
                found_digest = self._digest_at.get((report.seq, e.position))
                digests[e.position] = found_digest or stix.id_digest(self.index_key, str(e.obj["id"]))
        await self._hold(tx, set(digests.values()))
        held = [item for d in set(digests.values()) for item in self._held[d]]
        removed = {(seq, row.position) for seq, row in held if row.excluded}
        entries = [e for e in entries if (e.report_seq, e.position) not in removed]
        if "all" in versions or not entries:
            return entries
        self._counts[report.seq] = True  # decided and taken by the scan
        found: dict[str, list[tuple[datetime, int, int]]] = {}
        for seq, row in held:
            if self._counts.get(seq) and not row.excluded and _spec_ok(self.filters, row.spec_version):
                found.setdefault(row.digest, []).append((row.version, seq, row.position))
        return [e for e in entries if _kept(e, versions, found.get(digests.get(e.position, ""), []))]


def _counts(
    ctx: Context,
    node: NodeRecord,
    collection: CollectionRecord,
    report: ReportRecord,
    directory: Any,
    filters: Filters,
) -> bool:
    """Whether ``report``'s versions count for ``node`` in the collection under ``filters``."""
    return (
        report.erased_at is None
        and bool(set(report.topics) & set(collection.topics))
        and (filters.added_after is None or report.created_at > filters.added_after)
        and reports.decide_for(ctx, node, report, directory).allowed
    )


def _spec_ok(filters: Filters, spec_version: str) -> bool:
    return not filters.spec_versions or spec_version in filters.spec_versions


def _kept(entry: Entry, versions: Sequence[str], others: list[tuple[datetime, int, int]]) -> bool:
    """Whether ``match[version]`` keeps ``entry`` given every version of its object that counts
    (``others``, as the index orders them: version, then report, then place). A broker marking
    has one version."""
    moment = stix.instant(entry.version)
    if any(v not in stix.VERSION_KEYWORDS and stix.instant(v) == moment for v in versions):
        return True
    if entry.position < 0:
        return "first" in versions or "last" in versions
    mine = (moment, entry.report_seq, entry.position)
    every = [*others, mine]
    return ("last" in versions and mine == max(every)) or ("first" in versions and mine == min(every))


async def page(
    ctx: Context,
    node: NodeRecord,
    collection_id: str,
    *,
    filters: Filters,
    limit: int,
    start: Position,
    per_report_versions: bool = True,
) -> Page:
    """Up to ``limit`` objects of the collection ``node`` may see, from ``start``; audited."""
    collection = await _readable(ctx, node, collection_id)
    attempt = partial(_page_once, ctx, node, collection, filters, limit, start, per_report_versions)
    return await reports.decided(ctx, "read", attempt)


async def _page_once(
    ctx: Context,
    node: NodeRecord,
    collection: CollectionRecord,
    filters: Filters,
    limit: int,
    start: Position,
    per_report_versions: bool,
) -> Page:
    """One page, decided in one transaction.

    Work is bounded two ways: at most ``max_scan_rows`` payloads the node may see are decrypted,
    and at most ``ROWS_PER_SCAN_ROW`` times that many rows are read. Rows the node may not see
    cost no decrypt and do not count against the first bound, so whether the page ends early
    depends on them only past the second: below it, hidden reports change nothing in the answer.
    When a bound is reached the page says ``more`` and its ``next`` is the place the scan may
    name (``start``, or just after the last report the node may see that it skipped); the same
    request then resumes where the scan stopped (``ctx.scan_hints``)."""
    scan = _Scan(ctx, node, collection, filters, limit, per_report_versions)
    scan.index_key = _index_key(ctx)
    scan.page.next = start
    now = ctx.now()
    await ensure_indexed(ctx)
    async with ctx.db.read_transaction() as tx:  # decided here; audited after, below
        counter = await tx.change_counter()
        node = scan.node = await recheck(tx, node, counter)
        directory = scan.directory = await ctx.directory_at(tx, counter)
        scan.keyring = ctx.keyring
        # Where the scan may begin: never named to the client (it may be a hidden report's place).
        floor = await _after_added(tx, start, filters)
        key: HintKey = (node.id, ("taxii", collection.id, filters.key, str(start.index)), start.seq)
        position = ctx.scan_hints.get(key, counter=counter, now=now, directory=directory) or floor
        opened_budget = ctx.settings.max_scan_rows
        row_budget = opened_budget * ROWS_PER_SCAN_ROW
        scanned, exhausted = 0, False
        while not scan.page.more and not exhausted:
            # One report past a full page tells whether there is more, in the same batch.
            take = min(max(limit + 1, 50), row_budget - scanned)
            rows = await store.reports_from(tx, start=position, topics=collection.topics, limit=take)
            await scan.prefetch(tx, rows)
            for report in rows:
                if scanned >= row_budget or scan.opened >= opened_budget:
                    exhausted = True
                    break
                position, scanned = report.seq + 1, scanned + 1
                if not scan.counts(report):
                    continue
                await scan.take(tx, report, start)
                if scan.page.more:
                    break
            if len(rows) < take and not exhausted:
                break
            exhausted = exhausted or scanned >= row_budget
        if exhausted and not scan.page.more:  # the same request resumes here
            resume = scan.page.next or start
            hint_key: HintKey = (
                node.id,
                ("taxii", collection.id, filters.key, str(resume.index)),
                resume.seq,
            )
            ctx.scan_hints.put(hint_key, ScanHint(position, counter, now))
            scan.page.more = True
    # Committed before the page is answered; Stale (decided again) if the state moved meanwhile.
    await audit.batcher(ctx).append(scan.drafts, decided_at=counter)
    return scan.page


async def _after_added(tx: Tx, start: Position, filters: Filters) -> int:
    """The sequence a scan from ``start`` may skip to under ``added_after``: every report below
    it was added at or before that moment. Only where the scan begins, never an answer."""
    if filters.added_after is None:
        return start.seq
    first = await store.first_seq_added_after(tx, filters.added_after)
    return max(start.seq, stix.MAX_SEQ if first is None else first)


async def by_id(
    ctx: Context,
    node: NodeRecord,
    collection_id: str,
    object_id: str,
    *,
    filters: Filters,
    limit: int,
    start: Position,
) -> Page:
    """The versions of one object the node may see in the collection that ``filters`` keep
    (``match[version]`` judged across them all), in the order they were added, ``limit`` from
    ``start``; audited. Found through the object index: only the reports holding the object are
    read and decrypted. 404 (audited) when the node may see no version of it at all."""
    fixed = {o["id"]: o for o in stix.fixed_objects()} | {
        stix.TLP_IDS[level]: stix.tlp_marking(level) for level in stix.TLP_ORDER
    }
    collection = await _readable(ctx, node, collection_id)
    if object_id in fixed:
        stamp = stix.FIXED_DATE_ADDED
        return Page([Entry(fixed[object_id], stix.version_of(fixed[object_id], date_added=stamp), stamp, 0)])
    if stix.is_label_marking_id(object_id):  # the broker's own, stated by the reports themselves
        found = await page(
            ctx, node, collection_id, filters=filters, limit=limit, start=start, per_report_versions=False
        )
        found.entries = stix.select_versions(found.entries, filters.versions)
        if not found.entries and start == Position():
            await _refuse(ctx, node, "read", NotFound("no such object", code="not_found"))
        return found
    attempt = partial(_by_id_once, ctx, node, collection, object_id, filters, limit, start)
    return await reports.decided(ctx, "read", attempt)


async def _by_id_once(
    ctx: Context,
    node: NodeRecord,
    collection: CollectionRecord,
    object_id: str,
    filters: Filters,
    limit: int,
    start: Position,
) -> Page:
    await ensure_indexed(ctx)
    drafts: list[AuditDraft] = []
    found = Page()
    async with ctx.db.read_transaction() as tx:
        counter = await tx.change_counter()
        node = await recheck(tx, node, counter)
        directory = await ctx.directory_at(tx, counter)
        keyring = ctx.keyring
        held = await store.indexed(tx, [stix.id_digest(_index_key(ctx), object_id)])
        holders = {r.seq: r for r in await store.reports_at(tx, [seq for seq, _ in held])}
        unfiltered = Filters()
        seen = [
            (holders[seq], row)
            for seq, row in held
            if seq in holders
            and not row.excluded
            and _counts(ctx, node, collection, holders[seq], directory, unfiltered)
        ]
        if not seen:
            missing = True
        else:
            missing = False
            counted = [
                (report, row)
                for report, row in seen
                if _counts(ctx, node, collection, report, directory, filters)
                and _spec_ok(filters, row.spec_version)
            ]
            every = [(row.version, report.seq, row.position) for report, row in counted]
            payloads: dict[int, list[dict[str, Any]]] = {}
            for report, row in counted:
                if (report.seq, row.position) < (start.seq, start.index):
                    continue
                added = stix.timestamp(report.created_at)
                probe = Entry({}, stix.timestamp(row.version), added, report.seq, row.position)
                if not _kept_indexed(probe, row.version, filters.versions, every):
                    continue
                if len(found.entries) == limit:
                    found.more, found.next = True, Position(report.seq, row.position)
                    break
                if report.seq not in payloads:
                    payloads[report.seq] = stix.served_objects(
                        json.loads(reports.open_payload(ctx, report, keyring))
                    )
                    PAYLOADS_OPENED.inc()
                    drafts.append(reports.allow_draft(node, report, "read"))
                obj = payloads[report.seq][row.position]
                refs = [m["id"] for m in stix.markings_of(report.label)]
                version = stix.version_of(obj, date_added=added)
                found.entries.append(Entry(stix.marked(obj, refs), version, added, report.seq, row.position))
    await audit.batcher(ctx).append(drafts, decided_at=counter)
    if missing:
        await _refuse(ctx, node, "read", NotFound("no such object", code="not_found"))
    return found


def _kept_indexed(
    entry: Entry, version: datetime, versions: Sequence[str], every: list[tuple[datetime, int, int]]
) -> bool:
    """``_kept`` for an entry known by its index row alone."""
    if "all" in versions:
        return True
    stamps = {stix.instant(v) for v in versions if v not in stix.VERSION_KEYWORDS}
    if version in stamps:
        return True
    mine = (version, entry.report_seq, entry.position)
    return ("last" in versions and mine == max(every)) or ("first" in versions and mine == min(every))


# -- deleting (recall) ---------------------------------------------------------------------------
async def delete(
    ctx: Context, node: NodeRecord, collection_id: str, object_id: str, *, filters: Filters
) -> None:
    """Recall the reports of ``node`` that carry the object (the whole report: every object posted
    with it). 403 when only other nodes' reports carry it, 404 when none the node may see does."""
    collection = await _collection(ctx, collection_id)
    if not can_read(node) or "publish" not in node.roles:
        await _refuse(
            ctx, node, "recall", AccessDenied("this act needs the 'publish' role", code="missing_role")
        )
    if "all" not in filters.versions or filters.spec_versions:
        # Removing some versions of an object must leave its others (and the rest of their
        # reports): a recall would take the whole report, whatever version it also holds.
        await reports.decided(
            ctx, "recall", partial(_exclude_once, ctx, node, collection, object_id, filters)
        )
        return
    carriers = await reports.decided(
        ctx, "recall", partial(_carriers, ctx, node, collection, object_id, filters)
    )
    own = [r for r in carriers if r.originator_node == node.id]
    if not own and carriers:
        await reports.recall(ctx, node, carriers[0].id)  # refuses (403) and audits it
    if not own:
        await _refuse(ctx, node, "recall", NotFound("no such object", code="not_found"))
    for report in own:
        await reports.recall(ctx, node, report.id)


async def _exclude_once(
    ctx: Context, node: NodeRecord, collection: CollectionRecord, object_id: str, filters: Filters
) -> None:
    """Remove the versions of an object ``match[version]`` names among those the node may see:
    each is marked excluded in the object index, its report untouched (one signed, encrypted
    unit), and recorded as a ``recall`` with reason ``version_excluded``. 403 when only other
    nodes' reports hold them, 404 when none the node may see does (both recorded)."""
    await ensure_indexed(ctx)
    refusal: BrokerError | None = None
    async with ctx.db.transaction() as tx:
        counter = await tx.change_counter()
        node = await recheck(tx, node, counter, now=ctx.now(), role="publish")
        directory = await ctx.directory_at(tx, counter)
        held = await store.indexed(tx, [stix.id_digest(_index_key(ctx), object_id)])
        holders = {r.seq: r for r in await store.reports_at(tx, [seq for seq, _ in held])}
        seen = [
            (holders[seq], row)
            for seq, row in held
            if seq in holders
            and not row.excluded
            and not holders[seq].recalled_at
            and _counts(ctx, node, collection, holders[seq], directory, filters)
            and _spec_ok(filters, row.spec_version)
        ]
        every = [(row.version, report.seq, row.position) for report, row in seen]
        chosen = [
            (report, row)
            for report, row in seen
            if _kept_indexed(
                Entry({}, "", "", report.seq, row.position), row.version, filters.versions, every
            )
        ]
        own = [(report, row) for report, row in chosen if report.originator_node == node.id]
        now = ctx.now()
        if own:
            await store.exclude(tx, [(report.seq, row.position) for report, row in own], at=now)
            drafts = [
                replace(reports.allow_draft(node, report, "recall"), reason="version_excluded")
                for report in {r.seq: r for r, _ in own}.values()
            ]
            await audit.record(tx, drafts, now=now, report_changed=True, decided_at=counter)
            return
        refusal = (
            AccessDenied("only the originator may remove a version", code="not_originator")
            if chosen
            else NotFound("no such object", code="not_found")
        )
        draft = AuditDraft(
            action="recall",
            actor=node.id,
            node=node.id,
            nation=node.nation,
            decision="deny",
            reason=refusal.code,
            report=chosen[0][0].id if chosen else None,
        )
        await audit.record(tx, [draft], now=now, decided_at=counter)
    raise refusal


async def _carriers(
    ctx: Context, node: NodeRecord, collection: CollectionRecord, object_id: str, filters: Filters
) -> list[ReportRecord]:
    """The reports the node may see in the collection that carry the object under ``filters``
    (``match[spec_version]``, ``added_after``), found through the object index: nothing is
    decrypted or served, so nothing is recorded; the recall records itself."""
    await ensure_indexed(ctx)
    async with ctx.db.read_transaction() as tx:
        counter = await tx.change_counter()
        node = await recheck(tx, node, counter)
        directory = await ctx.directory_at(tx, counter)
        held = await store.indexed(tx, [stix.id_digest(_index_key(ctx), object_id)])
        holders = {r.seq: r for r in await store.reports_at(tx, [seq for seq, _ in held])}
    found = {
        seq: holders[seq]
        for seq, row in held
        if seq in holders
        and not row.excluded
        and _spec_ok(filters, row.spec_version)
        and _counts(ctx, node, collection, holders[seq], directory, filters)
    }
    return list(found.values())


# -- writing -----------------------------------------------------------------------------------
def max_objects(ctx: Context) -> int:
    """Objects one POST may carry: each counts as one publish against the node's limit, so never
    more than the limit lets a node publish at once (``publish_burst``)."""
    return min(MAX_OBJECTS_PER_POST, ctx.settings.publish_burst)


async def publishes_in(ctx: Context, node: NodeRecord, envelope: object) -> int:
    """How many publishes a POST of ``envelope`` counts as against the node's limit: one per
    object (validating objects is the cost it bounds), at least one. An envelope with more
    objects than ``max_objects`` is refused before any is validated (413, audited)."""
    objects = envelope.get("objects") if isinstance(envelope, Mapping) else None
    count = len(objects) if isinstance(objects, list) else 1
    if count > max_objects(ctx):
        await _refuse(
            ctx,
            node,
            "publish",
            PayloadTooLarge(f"a POST may carry at most {max_objects(ctx)} objects", code="too_many_objects"),
        )
    return max(count, 1)


def _check_envelope(envelope: object) -> list[Any]:
    return decode(Envelope, envelope).objects


def _validate(objects: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Accepted objects; failures as the status resource keeps them ({id, message}: the object's
    id when it is a STIX id, and a stable code, never text quoting the object, since statuses are
    stored in plaintext and outlive the report); and the validator's messages, for the poster's
    answer alone when nothing was accepted.

    Codes: ``reserved_id`` and ``reserved_creator`` (``stix.reserved_claim``), ``invalid_stix``
    (the OASIS validator refused it)."""
    accepted: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    messages: list[str] = []
    for obj in objects:
        raw_id = obj.get("id") if isinstance(obj, Mapping) else None
        ident = raw_id if isinstance(raw_id, str) and stix.STIX_ID.fullmatch(raw_id) else ""
        claim = stix.reserved_claim(obj) if isinstance(obj, Mapping) else None
        # Required in a status (§4.3.1); the request's time stands in where the object has none,
        # or has something else there (a status is plaintext: it never quotes the object).
        version = stix.version_of(obj, date_added="") if isinstance(obj, Mapping) else ""
        version = version if _TIMESTAMP.fullmatch(version) else ""
        if claim is not None:
            failures.append({"id": ident, "version": version, "message": claim})
            messages.append(claim)
            continue
        try:
            result = validate_instance(obj, _VALIDATION)
        except ValidationError as exc:
            failures.append({"id": ident, "version": version, "message": "invalid_stix"})
            messages.append(str(exc)[:500])
            continue
        if result.is_valid:
            accepted.append(obj)
        else:
            failures.append({"id": ident, "version": version, "message": "invalid_stix"})
            messages.append("; ".join(str(e) for e in result.errors)[:500])
    return accepted, failures, messages


def _version(obj: Mapping[str, Any], now: str) -> str:
    return stix.version_of(obj, date_added=now)


async def add_objects(ctx: Context, node: NodeRecord, collection_id: str, envelope: object) -> dict[str, Any]:
    """Validate an envelope's objects and publish those accepted as one report under the
    collection's label and topics (``reports.publish``: its checks, limits and audit); return
    the status resource, which is also stored for ``status``."""
    collection = await _collection(ctx, collection_id)
    if not can_write(ctx, node, collection):
        await _refuse(
            ctx, node, "publish", AccessDenied("you may not write to this collection", code="not_writable")
        )
    if node.ed25519_public_key is not None:
        await _refuse(
            ctx,
            node,
            "publish",
            AccessDenied(
                "your node has an Ed25519 key, so its reports must be signed, and TAXII cannot carry a "
                "signature: publish through REST POST /v1/reports with a signature",
                code="signature_required",
            ),
        )
    try:
        objects = _check_envelope(envelope)
        accepted, failures, messages = await asyncio.to_thread(_validate, objects)
        if not accepted:
            raise InvalidInput("no object is valid STIX 2.1: " + "; ".join(messages[:3]), code="invalid_stix")
    except InvalidInput as exc:
        await _refuse(ctx, node, "publish", exc)
    body = {
        "label": collection.label,
        "topics": list(collection.topics),
        "payload": {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": accepted},
    }
    requested = stix.timestamp(ctx.now())
    status_id = str(uuid.uuid4())

    def outcome_at(created: datetime) -> dict[str, Any]:
        # The report's own stamp: the date_added, and the version of an object without one,
        # that the manifest and versions/ answer too.
        added = stix.timestamp(created)
        outcome: dict[str, Any] = {
            "id": status_id,
            "status": "complete",
            "request_timestamp": requested,
            "total_count": len(objects),
            "success_count": len(accepted),
            "successes": [{"id": o["id"], "version": _version(o, added)} for o in accepted],
            "failure_count": len(failures),
            "pending_count": 0,
        }
        if failures:  # TAXII 2.1 §2: an empty list is not sent
            outcome["failures"] = [f | {"version": f["version"] or requested} for f in failures]
        return outcome

    async def store_status(tx: WriteTx, report: ReportRecord) -> None:
        # In the report's transaction: never a report without its status, nor the reverse.
        await store.insert_status(
            tx,
            status_id=status_id,
            node=node.id,
            collection_id=collection.id,
            report_id=report.id,
            at=ctx.now(),
            outcome=outcome_at(report.created_at),
        )

    receipt = await reports.publish(ctx, node, body, idempotency_key=None, attach=store_status)
    return outcome_at(datetime.fromisoformat(receipt["created"]))


async def status(ctx: Context, node: NodeRecord, status_id: str) -> dict[str, Any]:
    """A status resource, for the node that made it (404 for everyone else)."""
    async with ctx.db.read_transaction() as tx:
        found = None if not _is_uuid(status_id) else await store.status(tx, status_id)
    if found is None or found[0] != node.id:
        raise NotFound("no such status", code="not_found")
    return found[2]
