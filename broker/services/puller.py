"""One puller per peer: the upstream's ``GET /v1/stream`` over the link's mutual TLS, the frames
imported (services/importer.py; those received together in one transaction) and then acked
upstream.

``Links.run`` (a supervised loop of ``broker serve``) reads the peers table every
``PEER_SCAN_SECONDS`` and starts or stops pullers as peers are added or removed, by this process
or by ``broker peer add|remove`` in another. A puller resumes after the last upstream sequence
imported (the peer's cursor, written with each import), so a restart neither loses nor repeats a
report. Its state (``connecting``, ``connected``, ``refused``: the upstream refused the link's
credentials; ``error``: anything else) is kept here for ``/v1/health`` and metrics and written
to the peers row on each change for ``broker peer list``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import Gauge

from broker.domain.federation import PEER_STATES, PeerRecord
from broker.domain.time import parse_time
from broker.errors import BrokerError
from broker.services import importer, peers
from broker.services.context import Context
from broker.storage import federation as store
from broker.waiting import wait_event

log = logging.getLogger(__name__)
PEER_SCAN_SECONDS = 1.0
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
HEARTBEAT_SECONDS = 15.0
REFUSED_CLOSE_CODES = frozenset({4001, 4003})
STREAM_NAME = "federation"
MAX_BATCH = 64  # report frames imported in one transaction at most
MAX_BATCH_BYTES = 8 << 20  # and at most this much of them, as received (one frame may be more)
FRAME_OVERHEAD_BYTES = 64 << 10  # a frame beyond its report: attestations (16 at most), label
STATE = Gauge("broker_peer_state", "1 for the state each peer link is in, else 0", ["peer", "state"])
LAG = Gauge("broker_peer_lag", "Seconds from a report's creation upstream to its import here", ["peer"])


@dataclass
class Status:
    state: str = "connecting"
    lag: float = 0.0
    last_error: str | None = None


class Links:
    """The pullers of this process, by peer name."""

    def __init__(self, ctx: Context, wake: Callable[[], None] = lambda: None) -> None:
        """``wake``: called after each import commits, so this process's open streams (and
        links, for a hub) send it at once instead of at their next poll."""
        self._ctx = ctx
        self._wake = wake
        self._tasks: dict[str, tuple[PeerRecord, asyncio.Task[None]]] = {}
        self.status: dict[str, Status] = {}

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: {"state": s.state, "lag": round(s.lag, 3)} for name, s in sorted(self.status.items())}

    async def run(self, stop: asyncio.Event) -> None:
        """Keep one puller per configured peer until ``stop``."""
        try:
            while not stop.is_set():
                async with self._ctx.db.read_transaction() as tx:
                    configured = {p.name: p for p in await store.peers(tx)}
                self._reconcile(configured)
                await wait_event(stop, PEER_SCAN_SECONDS)
        finally:
            # Stopped, every puller goes with its state; restarted by the supervisor after a
            # failure, the pullers stop but the links' last known states stay in health.
            self._reconcile({}, forget=stop.is_set())

    def _reconcile(self, configured: dict[str, PeerRecord], *, forget: bool = True) -> None:
        for name, (peer, task) in list(self._tasks.items()):
            now = configured.get(name)
            if now is None or now.created_at != peer.created_at or task.done():
                task.cancel()
                del self._tasks[name]
                if now is None and forget:
                    self.status.pop(name, None)
                    for state in PEER_STATES:
                        with contextlib.suppress(KeyError):
                            STATE.remove(name, state)
        for name, peer in configured.items():
            if name not in self._tasks:
                self.status.setdefault(name, Status())
                task = asyncio.create_task(self._pull_forever(peer), name=f"peer-{name}")
                self._tasks[name] = (peer, task)

    async def _pull_forever(self, peer: PeerRecord) -> None:
        delay = FIRST_BACKOFF
        cursor = peer.cursor
        while True:
            try:
                cursor = await self._pull(peer, cursor)
                delay = FIRST_BACKOFF
            except asyncio.CancelledError:
                raise
            except _Refused as exc:
                await self._set(peer, "refused", str(exc))
            except (aiohttp.ClientError, TimeoutError, OSError, BrokerError, ValueError) as exc:
                await self._set(peer, "error", f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not end the link for good
                log.error("peer_pull_failed peer=%s", peer.name, exc_info=True)
                await self._set(peer, "error", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _pull(self, peer: PeerRecord, cursor: int) -> int:
        """One connection: import and ack until it closes; the cursor reached."""
        status = self.status[peer.name]
        if status.state not in ("refused", "error"):  # a retry keeps the last failure until it connects
            await self._set(peer, "connecting", status.last_error)
        context, headers = peers.link_context(self._ctx, peer)
        params = {"after": str(cursor), "name": STREAM_NAME, "broker": self._ctx.settings.audit_origin}
        connector = aiohttp.TCPConnector(ssl=context)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        settings = self._ctx.settings
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                # An upstream that accepts the connection and never answers is a failed link, and a
                # frame larger than a publish may be (with room for its attestations) is not read.
                async with asyncio.timeout(settings.request_head_timeout_seconds):
                    ws = await session.ws_connect(
                        peer.url + "/v1/stream",
                        headers=headers,
                        params=params,
                        heartbeat=HEARTBEAT_SECONDS,
                        max_msg_size=settings.max_body_bytes + FRAME_OVERHEAD_BYTES,
                    )
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    raise _Refused(f"the upstream refused the link: {exc.status}") from exc
                raise
            async with ws:
                await self._set(peer, "connected", None)
                async with contextlib.aclosing(_batches(ws)) as batches:
                    async for frames in batches:
                        cursor = await self._handle(peer, ws, frames, cursor)
                code = ws.close_code
        if code in REFUSED_CLOSE_CODES:
            raise _Refused(f"the upstream closed the link: {code}")
        raise ConnectionError(f"the upstream closed the stream ({code})")

    async def _handle(
        self, peer: PeerRecord, ws: aiohttp.ClientWebSocketResponse, frames: list[Any], cursor: int
    ) -> int:
        """Frames received together: runs of report frames are imported one transaction each,
        acked once committed; a recall is imported after the reports before it."""
        reports: list[dict[str, Any]] = []
        for frame in frames:
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "report":
                sequence = _sequence(frame)
                if sequence is not None and sequence <= max(cursor, _top(reports)):
                    continue  # replayed below our cursor (the upstream's own resumed past it)
                reports.append(frame)
                continue
            cursor = await self._import(peer, ws, reports, cursor)
            reports = []
            if kind == "recall":
                await importer.import_recall(self._ctx, peer, frame)
                self._wake()
            elif kind == "heartbeat":
                self._lag(peer, 0.0)
        return await self._import(peer, ws, reports, cursor)

    async def _import(
        self,
        peer: PeerRecord,
        ws: aiohttp.ClientWebSocketResponse,
        reports: list[dict[str, Any]],
        cursor: int,
    ) -> int:
        if not reports:
            return cursor
        await importer.import_reports(self._ctx, peer, reports)
        self._wake()
        top = _top(reports)
        if top > cursor:
            cursor = top
            await ws.send_json({"type": "ack", "sequence": top})
        self._lag(peer, _lag(self._ctx, reports[-1]))
        return cursor

    def _lag(self, peer: PeerRecord, lag: float) -> None:
        self.status[peer.name].lag = lag
        LAG.labels(peer.name).set(lag)

    async def _set(self, peer: PeerRecord, state: str, error: str | None) -> None:
        status = self.status.setdefault(peer.name, Status())
        changed = (status.state, status.last_error) != (state, error)
        status.state, status.last_error = state, error
        for each in PEER_STATES:
            STATE.labels(peer.name, each).set(1.0 if each == state else 0.0)
        if changed:
            if state in ("refused", "error"):
                log.warning("peer_link_down peer=%s state=%s error=%s", peer.name, state, error)
            async with self._ctx.db.transaction() as tx:
                await store.set_peer_state(tx, peer.name, state=state, last_error=error, lag=None)


async def _batches(ws: aiohttp.ClientWebSocketResponse) -> AsyncGenerator[list[Any]]:
    """The frames of ``ws``, parsed, in batches: one frame waited for, then whatever has already
    arrived behind it (at most ``MAX_BATCH``), so a burst is imported in few transactions and a
    lone frame at once. A reader task keeps receiving meanwhile, at most ``MAX_BATCH`` ahead."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_BATCH)

    async def read() -> None:
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                await queue.put(message.data)
        finally:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                await queue.put(None)  # the end, after every frame read

    reader = asyncio.create_task(read(), name="peer-reader")
    try:
        while (first := await queue.get()) is not None:
            batch, size = [_parsed(first)], len(first)
            while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES and not queue.empty():
                data = queue.get_nowait()
                if data is None:
                    yield batch
                    return
                batch.append(_parsed(data))
                size += len(data)
            yield batch
    finally:
        reader.cancel()


def _parsed(data: str) -> Any:
    """A frame's JSON; ``ValueError`` (the link fails and is retried) for one that is not, or is
    nested too deeply to read."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("a frame nested too deeply to read") from None


def _sequence(frame: dict[str, Any]) -> int | None:
    """A report frame's upstream sequence, if it has one (the importer refuses it otherwise)."""
    report = frame.get("report")
    sequence = report.get("sequence") if isinstance(report, dict) else None
    return sequence if type(sequence) is int else None


def _top(reports: list[dict[str, Any]]) -> int:
    """The highest upstream sequence among ``reports`` (0 when none has one)."""
    return max((s for s in map(_sequence, reports) if s is not None), default=0)


class _Refused(Exception):
    """The upstream refused the link's credentials (401/403 at the handshake, or closed 4001)."""


def _lag(ctx: Context, frame: dict[str, Any]) -> float:
    """Seconds from the report's creation upstream to now (0 when it cannot be read)."""
    try:
        created = parse_time(frame["report"]["created"], name="created")
    except (BrokerError, KeyError, TypeError):
        return 0.0
    return 0.0 if created is None else max((ctx.now() - created).total_seconds(), 0.0)
