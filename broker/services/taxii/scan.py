"""Paging through a collection: one page decided in one transaction, bounded in the payloads it
decrypts and the rows it reads, resumable where a bound stopped it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from broker.crypto.keyring import Keyring
from broker.domain import stix, versioning
from broker.domain.records import AuditDraft, NodeRecord, ReportRecord
from broker.domain.stix import VERSION_KEYWORDS, CollectionRecord, Entry, Filters, Position
from broker.services import audit, decisions
from broker.services.auth import recheck
from broker.services.context import Context
from broker.services.scanhints import HintKey, ScanHint
from broker.services.taxii import common
from broker.services.taxii.common import ensure_indexed, index_key, readable
from broker.services.taxii.objects import PAYLOADS, Page, report_entries
from broker.storage import collections as store
from broker.storage.repos import Tx

ROWS_PER_SCAN_ROW = 10  # rows a page may read for each payload it may decrypt (settings.max_scan_rows)


@dataclass
class Scan:
    """One page's scan through a collection, inside the transaction that decides it."""

    ctx: Context
    node: NodeRecord
    collection: CollectionRecord
    filters: Filters
    limit: int
    per_report_versions: bool
    page: Page = field(default_factory=Page)
    drafts: list[AuditDraft] = field(default_factory=list)
    keyring: Keyring | None = None  # the one current when the scan's reports were read
    opened: int = 0  # payloads decrypted
    directory: Any = None
    _seen: set[tuple[str, str]] = field(default_factory=set)
    # report seq -> the report, when the node may see it in the collection (before the filters)
    _holders: dict[int, ReportRecord | None] = field(default_factory=dict)
    _held: dict[str, list[tuple[int, stix.Indexed]]] = field(default_factory=dict)  # by digest
    _shown: dict[str, set[tuple[int, int]]] = field(default_factory=dict)  # by digest: (seq, position)
    _digest_at: dict[tuple[int, int], str] = field(default_factory=dict)  # (seq, position)
    index_key: bytes = b""

    async def take(self, tx: Tx, report: ReportRecord, start: Position) -> None:
        """Serve ``report``'s entries from ``start`` until the page is full."""
        found, opened = report_entries(self.ctx, report, self.filters, self.keyring)
        self.opened += opened
        if self.per_report_versions:
            found = await self._versions(tx, report, found)
        first = start.index if report.seq == start.seq else 0
        served = False
        for index in range(first, len(found)):
            entry = found[index]
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
            self.drafts.append(decisions.allow_draft(self.node, report, "read"))

    async def run(self, tx: Tx, position: int, start: Position) -> tuple[int, bool]:
        """Scan the collection's reports from sequence ``position`` until the page is full or a
        bound is reached: where the scan stopped, and whether a bound stopped it."""
        opened_budget = self.ctx.settings.max_scan_rows
        row_budget = opened_budget * ROWS_PER_SCAN_ROW
        scanned, exhausted = 0, False
        while not self.page.more and not exhausted:
            # One report past a full page tells whether there is more, in the same batch.
            take = min(max(self.limit + 1, 50), row_budget - scanned)
            rows = await store.reports_from(tx, start=position, topics=self.collection.topics, limit=take)
            await self.prefetch(tx, rows)
            for report in rows:
                if scanned >= row_budget or self.opened >= opened_budget:
                    exhausted = True
                    break
                position, scanned = report.seq + 1, scanned + 1
                if not self.counts(report):
                    continue
                await self.take(tx, report, start)
                if self.page.more:
                    break
            if len(rows) < take and not exhausted:
                break
            exhausted = exhausted or scanned >= row_budget
        return position, exhausted

    def counts(self, report: ReportRecord) -> bool:
        """Whether the scan takes ``report``: the decision ``prefetch`` made for it in this
        transaction, or the same one made now (a report it holds no index row of)."""
        if report.erased_at is not None:
            PAYLOADS.forget(report.id)  # what an erased payload carried is not kept either
            return False
        if report.seq in self._holders:
            allowed = self._holders[report.seq] is not None
        else:
            allowed = decisions.decide_for(self.ctx, self.node, report, self.directory).allowed
        if not allowed:
            return False
        if not common.added_after(self.filters, report):
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
        the node may see each report holding one (``_holders``), read once per scan."""
        unknown = {d for d in digests if d not in self._held}
        for d in unknown:
            self._held[d] = []
        for seq, row in read if read is not None else await store.indexed(tx, sorted(unknown)):
            if row.digest in unknown:
                self._held[row.digest].append((seq, row))
        seqs = {seq for d in digests for seq, _ in self._held[d]} - set(self._holders)
        records = [r for r in known if r.seq in seqs]
        records += await store.reports_at(tx, sorted(seqs - {r.seq for r in records}))
        for other in records:
            seen = common.may_see(self.ctx, self.node, self.collection, other, self.directory)
            self._holders[other.seq] = other if seen else None

    async def _versions(self, tx: Tx, report: ReportRecord, entries: list[Entry]) -> list[Entry]:
        """The entries ``match[version]`` keeps, judged per object across every version the node
        may see in the collection (the object index), not per report: only the versions of the
        node that published the first of them count (``domain.versioning``)."""
        digests: dict[int, str] = {}
        for e in entries:
            if e.position >= 0:
                found_digest = self._digest_at.get((report.seq, e.position))
                digests[e.position] = found_digest or stix.id_digest(self.index_key, str(e.obj["id"]))
        await self._hold(tx, set(digests.values()))
        kept = set[tuple[int, int]]()
        for digest in set(digests.values()):
            kept |= self._shown_of(digest)
        versions = self.filters.versions
        return [
            e
            for e in entries
            if (e.report_seq, e.position) in kept or (e.position < 0 and _marking_kept(e, versions))
        ]

    def _shown_of(self, digest: str) -> set[tuple[int, int]]:
        """The places of the versions of one object served under the page's filters."""
        if digest not in self._shown:
            versions = [
                common.held(holder, row, self.filters)
                for seq, row in self._held[digest]
                if (holder := self._holders.get(seq)) is not None
            ]
            shown = versioning.shown(versions, self.filters.versions)
            self._shown[digest] = {(version.seq, version.position) for version in shown}
        return self._shown[digest]


def _marking_kept(entry: Entry, versions: Sequence[str]) -> bool:
    """Whether ``match[version]`` keeps a broker marking in a listing: it has one version."""
    if VERSION_KEYWORDS & set(versions):
        return True
    return any(stix.instant(v) == stix.instant(entry.version) for v in versions)


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
    collection = await readable(ctx, node, collection_id)
    attempt = partial(_page_once, ctx, node, collection, filters, limit, start, per_report_versions)
    return await decisions.decided(ctx, "read", attempt)


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
    scan = Scan(ctx, node, collection, filters, limit, per_report_versions)
    scan.index_key = index_key(ctx)
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
        key = _hint_key(node, collection, filters, start)
        position = ctx.scan_hints.get(key, counter=counter, now=now, directory=directory) or floor
        position, exhausted = await scan.run(tx, position, start)
        if exhausted and not scan.page.more:  # the same request resumes here
            resume = _hint_key(node, collection, filters, scan.page.next or start)
            ctx.scan_hints.put(resume, ScanHint(position, counter, now))
            scan.page.more = True
    # Committed before the page is answered; Stale (decided again) if the state moved meanwhile.
    await audit.batcher(ctx).append(scan.drafts, decided_at=counter)
    return scan.page


def _hint_key(node: NodeRecord, collection: CollectionRecord, filters: Filters, at: Position) -> HintKey:
    """Where the same request from ``at`` finds the place a bounded scan stopped."""
    return (node.id, ("taxii", collection.id, filters.key, str(at.index)), at.seq)


async def _after_added(tx: Tx, start: Position, filters: Filters) -> int:
    """The sequence a scan from ``start`` may skip to under ``added_after``: every report below
    it was added at or before that moment. Only where the scan begins, never an answer."""
    if filters.added_after is None:
        return start.seq
    first = await store.first_seq_added_after(tx, filters.added_after)
    return max(start.seq, stix.MAX_SEQ if first is None else first)
