"""The audit log for auditors: queries, signed checkpoints, proofs, export."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from broker.crypto import cosignature, merkle, notes
from broker.domain.records import AuditEvent, Checkpoint, event_document, format_time
from broker.domain.time import parse_time as parse_time  # the edge's parser, kept under its old name
from broker.domain.witnessing import Cosignature
from broker.errors import BrokerError, InvalidInput, NotFound
from broker.services import metrics
from broker.services.context import Context
from broker.storage import witnessing as witnessed
from broker.storage.repos import Tx
from broker.waiting import wait_event

log = logging.getLogger(__name__)
EXPORT_PAGE = 1000
WITNESS_POLL_SECONDS = 1.0  # how often a witness loop looks for checkpoints other processes signed


class LogInconsistent(BrokerError):
    """The stored log no longer matches a checkpoint the broker signed: refuse to sign again."""

    status = 500
    code = "log_inconsistent"


def event_json(event: AuditEvent) -> dict[str, Any]:
    """An event as auditors and exports see it: its hashed document plus its hash."""
    doc = event_document(seq=event.seq, time=event.time, draft=event.draft, prev_hash=event.prev_hash)
    return {**doc, "hash": event.hash}


def _public(ctx: Context) -> bytes:
    return notes.public_key(ctx.keyring.checkpoint_key)


def checkpoint_json(ctx: Context, checkpoint: Checkpoint, held: Sequence[Cosignature] = ()) -> dict[str, Any]:
    """The contract's fields (size, head, root, time, key_id, signature) plus the signed note
    with every witness cosignature line stored for it (``held``), and those witnesses."""
    name = ctx.settings.audit_origin
    stamp = base64.b64decode(checkpoint.note.rsplit(" ", 1)[-1])
    return {
        "size": checkpoint.size,
        "head": checkpoint.root.hex(),
        "root": checkpoint.root.hex(),
        "time": format_time(checkpoint.time),
        "key_id": notes.key_id(name, _public(ctx)).hex(),
        "signature": base64.b64encode(stamp[4:]).decode(),
        "origin": name,
        "note": cosignature.merge(checkpoint.note, "".join(c.line for c in held)),
        "cosigners": [{"name": c.witness, "timestamp": c.timestamp} for c in held],
        "witness_quorum": ctx.settings.witness_quorum,
    }


def public_key(ctx: Context) -> dict[str, str]:
    """What a verifier pins: the checkpoint key's name, raw public key and C2SP vkey."""
    name, public = ctx.settings.audit_origin, _public(ctx)
    return {
        "name": name,
        "public_key": base64.b64encode(public).decode(),
        "key_id": notes.key_id(name, public).hex(),
        "vkey": notes.vkey(name, public),
    }


async def _root(tx: Tx, size: int) -> bytes:
    coords = merkle.perfect_parts(0, size)
    nodes = await tx.merkle_nodes(coords)
    if len(nodes) != len(coords):
        raise LogInconsistent(f"Merkle nodes for size {size} are missing")
    return merkle.range_root(0, size, nodes)


async def sign_checkpoint(ctx: Context) -> Checkpoint:
    """Sign the log at its current size, unless the latest checkpoint already covers it.

    The stored tree is first checked against the previous checkpoint (its root at the old size
    must be unchanged), so the broker never signs two checkpoints that are inconsistent."""
    async with ctx.db.transaction() as tx:
        head = await tx.lock_head()
        last = await tx.latest_checkpoint()
        if last is not None and last.size == head.audit_seq:
            return last
        if last is not None and (last.size > head.audit_seq or await _root(tx, last.size) != last.root):
            log.error("checkpoint_refused size=%s last=%s", head.audit_seq, last.size)
            raise LogInconsistent(f"the log no longer matches the checkpoint at size {last.size}")
        root = merkle.root_of(head.frontier)
        body = notes.CheckpointBody(origin=ctx.settings.audit_origin, size=head.audit_seq, root=root)
        note, _ = notes.sign(body, name=ctx.settings.audit_origin, private_key=ctx.keyring.checkpoint_key)
        checkpoint = Checkpoint(size=head.audit_seq, root=root, time=ctx.now(), note=note)
        metrics.checkpoint_signed(checkpoint.time.timestamp())
        await tx.insert_checkpoint(checkpoint)
    for waiter in ctx.checkpoint_waiters:  # the witness loops (services/witnessing.py)
        waiter.set()
    return checkpoint


async def latest(ctx: Context) -> dict[str, Any]:
    """The latest checkpoint with the witness cosignatures it has gathered so far."""
    async with ctx.db.read_transaction() as tx:
        checkpoint = await tx.latest_checkpoint()
    if checkpoint is None:
        checkpoint = await sign_checkpoint(ctx)
    async with ctx.db.read_transaction() as tx:
        held = await witnessed.cosignatures(tx, checkpoint.size)
    return checkpoint_json(ctx, checkpoint, held)


async def checkpointer(ctx: Context, stop: asyncio.Event) -> None:
    """Sign a checkpoint every N events or T seconds (whichever comes first) until ``stop``.
    Any failure ends the call: the supervisor (services/supervisor.py) logs it once, counts it
    and starts the loop again after a backoff."""
    every_events, every_seconds = ctx.settings.checkpoint_every_events, ctx.settings.checkpoint_every_seconds
    waited = 0.0
    step = min(1.0, every_seconds)
    while not stop.is_set():
        if await wait_event(stop, step):
            return
        waited += step
        async with ctx.db.read_transaction() as tx:
            size = await tx.audit_size()
            last = await tx.latest_checkpoint()
        signed = 0 if last is None else last.size
        if last is not None:
            metrics.checkpoint_signed(last.time.timestamp())
        if size > signed and (size - signed >= every_events or waited >= every_seconds):
            await sign_checkpoint(ctx)
            waited = 0.0


async def events(ctx: Context, *, after: int, limit: int, filters: dict[str, Any]) -> dict[str, Any]:
    async with ctx.db.read_transaction() as tx:
        found = await tx.events(after=after, limit=limit, **filters)
    next_after = found[-1].seq if found else after
    return {"events": [event_json(e) for e in found], "next_after": next_after}


async def inclusion(ctx: Context, *, seq: int, size: int | None) -> dict[str, Any]:
    """Proof that event ``seq`` is in the tree of ``size`` (default: the latest checkpoint)."""
    async with ctx.db.read_transaction() as tx:
        if size is None:
            checkpoint = await tx.latest_checkpoint()
            size = checkpoint.size if checkpoint else 0
        # A tree larger than the log has no stored nodes to prove anything from.
        if not 1 <= seq <= size or size > await tx.audit_size():
            raise NotFound("no such event in a tree of that size", code="not_found")
        event = await tx.event(seq)
        if event is None:
            raise NotFound("no such event in a tree of that size", code="not_found")
        ranges = merkle.inclusion_ranges(seq - 1, size)
        nodes = await tx.merkle_nodes(merkle.needed([*ranges, (0, size)]))
    return {
        "seq": seq,
        "leaf_index": seq - 1,
        "tree_size": size,
        "leaf_hash": event.hash,
        "root": merkle.range_root(0, size, nodes).hex(),
        "path": [merkle.range_root(lo, hi, nodes).hex() for lo, hi in ranges],
    }


async def consistency(ctx: Context, *, first: int, second: int) -> dict[str, Any]:
    """Proof that the tree of ``first`` events is a prefix of the tree of ``second``."""
    async with ctx.db.read_transaction() as tx:
        size = await tx.audit_size()
        if not 0 < first <= second <= size:
            raise InvalidInput(f"need 0 < first <= second <= {size}", code="invalid_parameter")
        ranges = merkle.consistency_ranges(first, second)
        nodes = await tx.merkle_nodes(merkle.needed([*ranges, (0, first), (0, second)]))
    return {
        "first": first,
        "second": second,
        "first_root": merkle.range_root(0, first, nodes).hex(),
        "second_root": merkle.range_root(0, second, nodes).hex(),
        "path": [merkle.range_root(lo, hi, nodes).hex() for lo, hi in ranges],
    }


async def _await_quorum(ctx: Context, size: int) -> None:
    """With a witness quorum configured, give the witnesses (asked by the serving brokers' witness
    loops, maybe in other processes) until their deadline to cosign the checkpoint an export ends
    with, so the export carries the cosignatures an offline ``audit verify --quorum`` needs. Ends
    early once the quorum is there or refusals of this checkpoint make it unreachable."""
    settings = ctx.settings
    if settings.witness_quorum == 0:
        return
    names = {w.name for w in settings.witnesses}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.witness_timeout_seconds + WITNESS_POLL_SECONDS
    while True:
        async with ctx.db.read_transaction() as tx:
            held = {c.witness for c in await witnessed.cosignatures(tx, size)} & names
            states = await witnessed.states(tx)
        refused = {name for name, s in states.items() if name in names and s.refused_size == size}
        if len(held) >= settings.witness_quorum or len(names) - len(refused) < settings.witness_quorum:
            return
        if loop.time() >= deadline:
            log.warning("export_unwitnessed size=%s cosigners=%s", size, len(held))
            return
        await asyncio.sleep(settings.change_poll_seconds)  # other processes' writes: polled


async def export(ctx: Context, *, check: Callable[[Tx], Awaitable[None]] | None = None) -> AsyncIterator[str]:
    """NDJSON lines: every event up to a freshly signed checkpoint, then every checkpoint with
    the witness cosignatures stored for it. ``check`` runs in each page's read transaction before
    the page is read (the API's export re-checks its auditor there: one revoked meanwhile gets no
    further page); what it raises ends the export."""
    checkpoint = await sign_checkpoint(ctx)
    await _await_quorum(ctx, checkpoint.size)
    after = 0
    while after < checkpoint.size:
        async with ctx.db.read_transaction() as tx:
            if check is not None:
                await check(tx)
            page = await tx.events(after=after, limit=EXPORT_PAGE, upto=checkpoint.size)
        if not page:
            break
        for event in page:
            yield json.dumps(event_json(event), separators=(",", ":")) + "\n"
        after = page[-1].seq
    # The checkpoints in pages too: one every few seconds of activity adds up to millions.
    above = -1
    while True:
        async with ctx.db.read_transaction() as tx:
            if check is not None:
                await check(tx)
            signed = await tx.checkpoints(upto=checkpoint.size, above=above, limit=EXPORT_PAGE)
            held = await witnessed.cosignatures_upto(tx, signed[-1].size, above=above) if signed else {}
        for item in signed:
            record = checkpoint_json(ctx, item, held.get(item.size, []))
            yield json.dumps({"checkpoint": record}, separators=(",", ":")) + "\n"
        if len(signed) < EXPORT_PAGE:
            return
        above = signed[-1].size
