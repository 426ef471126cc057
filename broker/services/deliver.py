"""Delivery to streams.

Live streams read from the ``Feed``: one in-memory copy, per process, of the reports published
since the broker started (bounded in bytes), refreshed by the hub in one transaction however
many streams are open. Decisions use the feed's directory and node records, which are dropped
whenever the database's change counter moves (a revocation, membership or node change, key
rotation), so every decision sees changes within the hub's interval. A recall or erasure (the
head's ``report_changes``) only refreshes the recall and erasure flags of the copies it holds. A stream whose
cursor lies before the feed's floor (replay after reconnect) reads from the database instead.
Every delivery is audited before its frame is queued; live deliveries share group commits.

The window is bounded by ``stream_feed_bytes`` in the bytes the process holds for it: each
record as read (its ciphertext, label, parsed label, strings and times), and what delivery
caches beside it (the plaintext, the frame for recipients without a sealing key, the canonical
label), counted as each is made. Past the bound the oldest quarter is dropped.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from broker.crypto.keyring import Keyring
from broker.domain.access import receiving_role
from broker.domain.alliances import Directory
from broker.domain.canonical import canonical
from broker.domain.records import NODE_REVOKED, AuditDraft, NodeRecord, ReportRecord, credential_lapsed
from broker.errors import Stale, Unauthenticated
from broker.services import audit, federation
from broker.services.context import Context
from broker.services.decisions import (
    STALE_RETRIES,
    allow_draft,
    decide_for,
    document,
    documents,
    open_payload,
)
from broker.storage.federation import provenance_of

REFRESH_BATCH = 500
RECALL_SLACK = timedelta(seconds=5)


@dataclass(frozen=True)
class Batch:
    """Frames to send (each a report frame's JSON text), the cursor after them, and whether
    more rows may be waiting."""

    frames: list[str]
    cursor: int
    more: bool
    delivered: int = 0  # the highest sequence among the frames (0: none)


def report_frame(doc: dict[str, Any]) -> str:
    return json.dumps({"type": "report", "report": doc})


def footprint(value: object) -> int:
    """The bytes CPython holds for ``value`` and what it references: strings, bytes, numbers,
    times, tuples, lists, dicts and dataclass records (a report as read), counted as if shared
    with nothing."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        return size + sum(footprint(k) + footprint(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return size + sum(footprint(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "__dict__"):
            size += sys.getsizeof(value.__dict__)
        return size + sum(footprint(getattr(value, f.name)) for f in dataclasses.fields(value))
    return size


# An entry's own object and its place in the feed's two lists (the sequence's int included).
_ENTRY_OVERHEAD = 2 * sys.getsizeof(0) + 16


@dataclass(slots=True)
class _Entry:
    report: ReportRecord
    plaintext: bytes | None = None
    # The frame every node without a sealing key receives (it names no recipient), encoded once
    # for all of them; and the canonical label every sealed copy binds.
    open_frame: str | None = None
    canonical_label: bytes | None = None
    size: int = 0  # bytes held for it, as counted by the feed

    def __post_init__(self) -> None:
        self.size = sys.getsizeof(self) + _ENTRY_OVERHEAD + footprint(self.report)


@dataclass
class Feed:
    ctx: Context
    max_bytes: int = field(init=False)  # server.stream_feed_bytes
    batcher: audit.Batcher = field(init=False)
    _entries: list[_Entry] = field(default_factory=list)
    _seqs: list[int] = field(default_factory=list)
    _floor: int | None = None  # every report with floor < seq <= _head is in memory
    _head: int = 0
    _bytes: int = 0
    _counter: int | None = None
    _report_changes: int | None = None
    _directory: Directory = field(default_factory=Directory)
    _nodes: dict[str, NodeRecord] = field(default_factory=dict)
    _keyring: Keyring | None = None  # current when the window's reports were read
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.max_bytes = self.ctx.settings.stream_feed_bytes
        self.batcher = audit.batcher(self.ctx)  # shared with reads and listings

    @property
    def head(self) -> int:
        """The newest report sequence this feed has seen."""
        return self._head

    @property
    def held_bytes(self) -> int:
        """The bytes held for the window now (at most ``max_bytes`` once a batch is framed)."""
        return self._bytes

    async def refresh(self) -> tuple[int, int, int]:
        """Load new reports and the current directory in one transaction; return the
        database's (last sequence, change counter, report changes). The hub calls this while
        streams are open."""
        async with self._lock, self.ctx.db.read_transaction() as tx:
            head, counter, report_changes = await tx.head_state()
            directory = await self.ctx.directory(tx)
            if counter != self._counter or self._floor is None:
                # Security state changed: drop every cached decision input.
                self._entries, self._seqs, self._bytes, self._nodes = [], [], 0, {}
                self._floor = self._head = head
                self._counter = counter
            elif report_changes != self._report_changes:
                self._withdraw(await tx.withdrawn_after(self._floor))
            self._report_changes = report_changes
            self._directory = directory
            self._keyring = self.ctx.keyring
            while self._head < head:
                rows = await tx.reports_after(after=self._head, topics=(), limit=REFRESH_BATCH)
                if not rows:
                    break
                for row in rows:
                    self._append(_Entry(row))
                self._head = rows[-1].seq
        return head, counter, report_changes

    def _withdraw(self, flags: dict[int, tuple[datetime | None, datetime | None]]) -> None:
        """Mark the held copies of recalled or erased reports (seq -> (recalled_at, erased_at))."""
        for seq, (recalled_at, erased_at) in flags.items():
            index = bisect.bisect_left(self._seqs, seq)
            if index < len(self._seqs) and self._seqs[index] == seq:
                entry = self._entries[index]
                before = footprint(entry.report)
                entry.report = replace(entry.report, recalled_at=recalled_at, erased_at=erased_at)
                change = footprint(entry.report) - before
                entry.size += change
                self._bytes += change
                if erased_at is not None:
                    self._resize(entry, plaintext=None, open_frame=None)

    def forget(self) -> None:
        """Keep nothing (no stream is open): the next ``refresh`` restarts the window at the
        head, and a stream that opens before it replays from the database. Costs no read, so an
        idle instance does not read the head for every publish it hears of."""
        self._entries, self._seqs, self._bytes, self._nodes = [], [], 0, {}
        self._floor, self._counter, self._report_changes = None, None, None

    def _append(self, entry: _Entry) -> None:
        self._entries.append(entry)
        self._seqs.append(entry.report.seq)
        self._bytes += entry.size
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest quarter (or more) until the window is within ``max_bytes``."""
        while self._bytes > self.max_bytes and self._entries:
            drop = max(1, len(self._entries) // 4)
            self._bytes -= sum(e.size for e in self._entries[:drop])
            self._floor = self._seqs[drop - 1]
            del self._entries[:drop], self._seqs[:drop]

    def _resize(self, entry: _Entry, **cached: bytes | str | None) -> None:
        """Set cached fields of ``entry``, counting the bytes they hold. Only for an entry the
        window holds: framing and withdrawal run between awaits, where no refresh or trim can
        drop it."""
        for name, value in cached.items():
            before = getattr(entry, name)
            change = (0 if value is None else sys.getsizeof(value)) - (
                0 if before is None else sys.getsizeof(before)
            )
            setattr(entry, name, value)
            entry.size += change
            self._bytes += change

    async def _node(self, opened: NodeRecord) -> NodeRecord:
        """The node as of the feed's change counter, held to the credential its stream was
        opened with (``Lapsed`` when it no longer authenticates it). A record read at another
        counter is never kept (it could be older than a change the feed has already seen): Stale."""
        node = self._nodes.get(opened.id)
        if node is None:
            async with self.ctx.db.read_transaction() as tx:
                counter = await tx.change_counter()  # first: the node read after it is as new
                node = await tx.node(opened.id)
            if node is None:
                raise Lapsed(NODE_REVOKED)
            if counter != self._counter:
                raise Stale("the feed is behind the change counter")
            node = replace(node, version=counter)
            self._nodes[opened.id] = node
        return held(self.ctx, node, opened)

    def _frame(self, entry: _Entry, node: NodeRecord) -> str:
        if entry.plaintext is None:
            self._resize(entry, plaintext=open_payload(self.ctx, entry.report, self._keyring))
        assert entry.plaintext is not None
        if not node.x25519_public_key:
            if entry.open_frame is None:
                frame = report_frame(document(self.ctx, node, entry.report, plaintext=entry.plaintext))
                self._resize(entry, open_frame=frame)
                return frame
            return entry.open_frame
        if entry.canonical_label is None:
            self._resize(entry, canonical_label=canonical(entry.report.label))
        doc = document(
            self.ctx, node, entry.report, plaintext=entry.plaintext, canonical_label=entry.canonical_label
        )
        return report_frame(doc)

    @property
    def report_changes(self) -> int | None:
        """The head's ``report_changes`` at the last refresh (None: not read yet)."""
        return self._report_changes

    async def next_batch(
        self,
        node: NodeRecord,
        *,
        after: int,
        topics: Sequence[str],
        limit: int = 100,
        skip_broker: str | None = None,
    ) -> Batch:
        """The next reports ``node`` may receive above ``after``, audited. Decisions are
        made on the feed's copy of the security state and committed only if it is still current
        (services.audit); otherwise the feed reloads and decides again.

        ``node``: as the stream authenticated it. Raises ``Lapsed`` when its credential no longer
        authenticates it, or it lost the subscribe role: the stream must close.

        A federation link reads from the database (its frames carry attestations made per
        delivery); ``skip_broker``: its receiving broker, to which no report that already passed
        through it is sent."""
        for _ in range(STALE_RETRIES):
            try:
                if federation.attest_links(node):
                    return await fetch(
                        self.ctx, node, after=after, topics=topics, limit=limit, skip_broker=skip_broker
                    )
                return await self._next_batch(node, after=after, topics=topics, limit=limit)
            except Stale:
                await self.refresh()
        raise Stale("the security state keeps changing")

    async def _next_batch(
        self, opened: NodeRecord, *, after: int, topics: Sequence[str], limit: int
    ) -> Batch:
        if self._floor is None or after < self._floor or self._counter is None:
            return await fetch(self.ctx, opened, after=after, topics=topics, limit=limit)
        counter, reports_at = self._counter, self._report_changes
        node = await self._node(opened)
        start = bisect.bisect_right(self._seqs, after)
        window = self._entries[start : start + limit]
        wanted = set(topics)
        picked: list[tuple[ReportRecord, str]] = []
        for entry in window:
            report = entry.report
            if wanted and wanted.isdisjoint(report.topics):
                continue
            if report.erased_at is None and decide_for(self.ctx, node, report, self._directory).allowed:
                picked.append((report, self._frame(entry, node)))
        self._trim()  # what framing cached counts against the bound too
        drafts = [allow_draft(node, report, "deliver") for report, _ in picked]
        gone = await self.batcher.append(drafts, decided_at=counter, reports_at=reports_at)
        cursor = window[-1].report.seq if window else after
        return _batch(picked, gone, cursor=cursor, more=len(window) == limit)


async def fetch(
    ctx: Context,
    opened: NodeRecord,
    *,
    after: int,
    topics: Sequence[str],
    limit: int = 100,
    skip_broker: str | None = None,
) -> Batch:
    """Eligible reports above ``after`` read from the database, decided afresh (node and
    memberships read now) in a read transaction, sealed after it, and audited (one ``deliver``
    event each) through the group commit before the frames are returned; ``Stale`` when the
    security state changed after the decision.

    Raises ``Lapsed`` when the credential ``opened`` authenticated with no longer holds: the
    stream must close. For a federation link the frames carry attestations (services/federation.py)
    and reports that already passed through ``skip_broker`` are left out, undecided.
    """
    async with ctx.db.read_transaction() as tx:
        counter, reports_at = await tx.decision_state()
        node = await tx.node(opened.id)
        if node is None:
            raise Lapsed(NODE_REVOKED)
        node = held(ctx, node, opened)
        directory = await ctx.directory_at(tx, counter)
        keyring = ctx.keyring  # as of this read: it can open what was read
        rows = await tx.reports_after(after=after, topics=topics, limit=limit)
        link = federation.attest_links(node)
        imported = await provenance_of(tx, [r.seq for r in rows]) if link else {}
    candidates = [
        r
        for r in rows
        if not (link and skip_broker in federation.provenance_brokers(ctx, imported.get(r.seq)))
    ]
    decided = [(r, decide_for(ctx, node, r, directory)) for r in candidates if r.erased_at is None]
    allowed = [r for r, decision in decided if decision.allowed]
    drafts = [allow_draft(node, report, "deliver") for report in allowed]
    if link:
        # What a link may not carry is on the record at the sender: the other broker's operator
        # is outside this broker's trust, so every refusal to send it something is audited.
        drafts += [_link_denial(node, r, d.reason) for r, d in decided if not d.allowed]
        frames = await federation.report_frames(ctx, allowed, keyring)
    else:
        frames = [report_frame(doc) for doc in await documents(ctx, node, allowed, keyring)]
    gone = await audit.batcher(ctx).append(drafts, decided_at=counter, reports_at=reports_at)
    cursor = rows[-1].seq if rows else after
    return _batch(list(zip(allowed, frames, strict=True)), gone, cursor=cursor, more=len(rows) == limit)


def _link_denial(node: NodeRecord, report: ReportRecord, reason: str) -> AuditDraft:
    return AuditDraft(
        action="deliver",
        actor=node.id,
        report=report.id,
        node=node.id,
        nation=node.nation,
        decision="deny",
        reason=reason,
        details={"sequence": report.seq},
    )


def _batch(picked: list[tuple[ReportRecord, str]], gone: frozenset[str], *, cursor: int, more: bool) -> Batch:
    """The frames of the ``picked`` reports but those withdrawn (``gone``) after the decision."""
    sent = [(report, frame) for report, frame in picked if report.id not in gone]
    delivered = max((report.seq for report, _ in sent), default=0)
    return Batch(frames=[frame for _, frame in sent], cursor=cursor, more=more, delivered=delivered)


class Lapsed(Unauthenticated):
    """A stream's credential no longer authenticates its node, or the node lost the subscribe
    role (``reason``, audited when the stream closes)."""

    def __init__(self, reason: str) -> None:
        super().__init__("the stream's credential no longer authorises it", code="unauthenticated")
        self.reason = reason


def held(ctx: Context, current: NodeRecord, opened: NodeRecord) -> NodeRecord:
    """``current`` (the node's record now) if the credential ``opened`` came with still
    authenticates it and it still holds the role it opened the stream with (subscribe, or
    federate for a link); else ``Lapsed``."""
    reason = credential_lapsed(current, opened.credential, now=ctx.now())
    if reason is None and receiving_role(opened.roles) not in current.roles:
        reason = "missing_role"
    if reason is not None:
        raise Lapsed(reason)
    return current


async def recall_notices(
    ctx: Context, opened: NodeRecord, *, since: datetime, upto: int, sent: set[str]
) -> tuple[list[str], int]:
    """Recall notices for a stream that has passed sequence ``upto``: one for each report up to
    it, recalled or erased at or after ``since``, that the node could have received (the rule
    allows it but for the recall) and was not already told of (``sent``, updated). Returns the
    frames and the head's ``report_changes`` they are complete up to. ``Lapsed`` as ``fetch``."""
    async with ctx.db.read_transaction() as tx:
        counter, changes = await tx.decision_state()  # first: what is read after is as new
        node = await tx.node(opened.id)
        if node is None:
            raise Lapsed(NODE_REVOKED)
        node = held(ctx, node, opened)
        directory = await ctx.directory_at(tx, counter)
        rows = await tx.withdrawn_since(since, upto=upto)
        link = federation.attest_links(node)
        imported = await provenance_of(tx, [r.seq for r in rows]) if link else {}
    frames: list[str] = []
    for report in rows:
        if report.id in sent:
            continue
        if decide_for(ctx, node, replace(report, recalled_at=None), directory).allowed:
            notice = federation.recall_notice(ctx, node, report, imported.get(report.seq))
            if notice is not None:
                sent.add(report.id)
                frames.append(notice)
    return frames, changes


async def recalls_since(ctx: Context, node: NodeRecord, name: str) -> datetime:
    """From when a stream sends recall notices: the last time its named cursor was stored (a
    recall while it was away reaches it on reconnect), else now; less ``RECALL_SLACK`` for
    clocks of other broker processes (a notice sent twice is harmless, one missed is not)."""
    since = ctx.now()
    async with ctx.db.read_transaction() as tx:
        for cursor_name, _, at in await tx.cursors(node=node.id):
            if cursor_name == name:
                since = min(since, at)
    return since - RECALL_SLACK


async def resume_point(ctx: Context, node: NodeRecord, name: str) -> int:
    """Where a stream without ``after`` starts: after the last acknowledged sequence."""
    async with ctx.db.read_transaction() as tx:
        return await tx.cursor(node=node.id, name=name) or 0


async def acknowledge(ctx: Context, node: NodeRecord, name: str, sequence: int) -> None:
    """Store the node's acknowledged sequence for ``name`` (never moving it backwards). The
    stream checks it (no higher than what it delivered) and coalesces acks before calling this."""
    async with ctx.db.transaction() as tx:
        await tx.save_cursor(node=node.id, name=name, sequence=sequence, at=ctx.now())
