"""GET /v1/stream: replay from a cursor, then live, over a websocket.

Close codes (also in the README):

- 1001 the broker is shutting down: reconnect.
- 1011 the broker failed while serving the stream (logged as ``stream_failed``): reconnect and
  resume from the cursor.
- 4001 the credential the stream was opened with no longer authenticates the node (revoked, token
  rotated or expired, certificate no longer the pinned one or expired) or the node lost the role
  it streams with (subscribe, or federate for a link): do not reconnect with it.
- 4008 slow consumer: the connection's queue (frames or bytes) overflowed; reconnect and resume
  from the cursor.
- 4400 the client sent something that is not a valid message, or acked a sequence above the
  highest one delivered on this connection (never stored: one bad ack must not stop a cursor).

Besides report frames the stream sends ``{"type": "recall", "id", "sequence"}`` when a report
the node received, or could have, is recalled or erased (for a federation link with a signed
recall statement, services/federation.py), and ``{"type": "heartbeat"}``.

Acks are coalesced: only the newest one is kept, and stored at most every ``ack_flush_ms`` and
once more when the connection ends, so a flood of acks costs memory updates, not transactions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import WSMsgType, web

from broker.domain.access import receiving_role
from broker.domain.records import NodeRecord
from broker.errors import AccessDenied, BadRequest, RateLimited, Stale, Unauthenticated
from broker.realtime.hub import Hub
from broker.services import auth, deliver
from broker.services.context import Context
from broker.settings import Settings
from broker.waiting import wait_event
from broker.web.handlers import CONTEXT, WS_PROTOCOL, authenticated_node, int_param, topics_param

log = logging.getLogger(__name__)
HUB = web.AppKey("hub", Hub)
FEED = web.AppKey("feed", deliver.Feed)
STREAMS: web.AppKey[set[StreamSocket]] = web.AppKey("streams")
PER_NODE: web.AppKey[dict[str, int]] = web.AppKey("streams_per_node")
SESSIONS: web.AppKey[set[StreamSession]] = web.AppKey("stream_sessions")
STREAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # always fullmatch
MAX_BROKER_NAME = 255

STALE_PAUSE_SECONDS = 0.05
CLOSE_GOING_AWAY = 1001
# At most this long for open streams to take the shutdown's close (then their connections are cut).
SHUTDOWN_CLOSE_SECONDS = 2.0
CLOSE_REVOKED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_BAD_MESSAGE = 4400


class StreamSocket(web.WebSocketResponse):
    """A stream's websocket, closed within a deadline. The close frame waits behind whatever the
    client has not read, and aiohttp's close waits for it to be written with no limit (its
    heartbeat is off once closing): a client that stopped reading with its connection open held
    its connection, and the close, for as long as it lived."""

    transport: asyncio.Transport | None = None  # the request's, set before prepare

    async def close_within(self, seconds: float, *, code: int, message: bytes) -> None:
        """Close, or cut the connection when the close is not done within ``seconds``. A
        cancellation of the caller still propagates (the connection cut)."""
        task = asyncio.current_task()
        try:
            async with asyncio.timeout(seconds):
                await self.close(code=code, message=message)
            return
        except TimeoutError:
            log.info("stream_close_timeout code=%s: connection cut", code)
        except asyncio.CancelledError:
            if task is not None and task.cancelling():
                self._cut()
                raise
            # Not this task's cancellation: aiohttp shares one wait for the socket to drain per
            # connection, and the sender, cancelled while it waited, cancelled it.
            log.info("stream_close_blocked code=%s: connection cut", code)
        self._cut()

    def _cut(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # not close(): it would wait to send what nobody reads


class _Closed(Exception):
    def __init__(self, code: int, reason: str, audit_reason: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason
        self.audit_reason = audit_reason  # a refusal to record in the audit log


@dataclass(eq=False)  # kept in a set by identity (app[SESSIONS])
class StreamSession:
    ctx: Context
    hub: Hub
    feed: deliver.Feed
    ws: StreamSocket
    node: NodeRecord
    name: str
    topics: list[str]
    cursor: int
    recalls_since: datetime  # recall notices cover recalls from then on (deliver.recalls_since)
    skip_broker: str | None = None  # a link's receiving broker (``broker=``)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    queued_bytes: int = 0
    delivered: int = 0  # acks up to here are accepted: the start, then the last frame's sequence
    acked: int = 0  # the newest ack received
    saved: int = 0  # the newest ack stored
    recalls_at: int | None = None  # the report_changes the recall notices are complete up to
    recalled: set[str] = field(default_factory=set)  # ids a recall notice was sent for

    def __post_init__(self) -> None:
        self.delivered = self.saved = self.acked = self.cursor

    def _enqueue(self, frame: str) -> None:
        size = len(frame)
        if self.queued_bytes + size > self.ctx.settings.stream_queue_bytes and not self.queue.empty():
            raise _Closed(CLOSE_SLOW_CONSUMER, "slow consumer: resume from your cursor")
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            raise _Closed(CLOSE_SLOW_CONSUMER, "slow consumer: resume from your cursor") from None
        self.queued_bytes += size

    async def pump(self) -> None:
        """Read what is eligible above the cursor, queue it, then wait for a wake-up.

        A heartbeat goes out one interval after the last frame queued, whatever woke the stream
        meanwhile: a wake-up for a report the node may not see (or any other change) must not
        put it off, or the heartbeats' timing would tell the node when hidden reports came."""
        heartbeat = self.ctx.settings.stream_heartbeat_seconds
        loop = asyncio.get_running_loop()
        beat_at = loop.time() + heartbeat
        while True:
            wake = self.hub.event()
            try:
                batch = await self.feed.next_batch(
                    self.node, after=self.cursor, topics=self.topics, skip_broker=self.skip_broker
                )
                notices = await self._recall_notices(upto=batch.cursor)
            except deliver.Lapsed as exc:
                raise _Closed(CLOSE_REVOKED, "credential no longer valid", exc.reason) from None
            except Unauthenticated:
                raise _Closed(CLOSE_REVOKED, "credential no longer valid", "node_revoked") from None
            except Stale:
                # The security state kept changing under the decisions: decide again after a
                # pause (or the next change), never close the stream for it.
                await wait_event(wake, STALE_PAUSE_SECONDS)
                continue
            for frame in (*batch.frames, *notices):
                self._enqueue(frame)
                beat_at = loop.time() + heartbeat
            self.delivered = max(self.delivered, batch.delivered)
            self.cursor = batch.cursor
            if batch.more:
                continue
            # Not asyncio.wait_for: on 3.11 it loses a cancel that arrives with the wake-up,
            # and the stream's close answer then waited for this pump (broker/waiting.py).
            woken = await wait_event(wake, self._wait_seconds(max(0.0, beat_at - loop.time())))
            if not woken and loop.time() >= beat_at:
                self._enqueue('{"type": "heartbeat"}')
                beat_at = loop.time() + heartbeat

    async def _recall_notices(self, *, upto: int) -> list[str]:
        """Notices for what was recalled or erased up to ``upto`` since the last look, when the
        head's report changes moved (the hub wakes the stream for it)."""
        changes = self.feed.report_changes
        if changes is not None and changes == self.recalls_at:
            return []
        frames, self.recalls_at = await deliver.recall_notices(
            self.ctx, self.node, since=self.recalls_since, upto=upto, sent=self.recalled
        )
        return frames

    def _wait_seconds(self, heartbeat: float) -> float:
        """``heartbeat`` (the time left until the next heartbeat is due), or less when the
        stream's token or certificate expires sooner: its expiry must close the stream when it
        comes, not at the next report."""
        credential = self.node.credential
        by_token = credential is None or credential.token_hash is not None
        ends = [self.node.token_expires_at if by_token else None]
        ends.append(None if credential is None else credential.certificate_expires_at)
        expires = min((end for end in ends if end is not None), default=None)
        if expires is None:
            return heartbeat
        return max(0.0, min(heartbeat, (expires - self.ctx.now()).total_seconds() + 0.001))

    async def send(self) -> None:
        while True:
            frame = await self.queue.get()
            self.queued_bytes -= len(frame)
            await self.ws.send_str(frame)

    async def receive(self) -> None:
        async for message in self.ws:
            if message.type == WSMsgType.ERROR:  # the connection is gone (e.g. no pong in time)
                return
            if message.type != WSMsgType.TEXT:
                raise _Closed(CLOSE_BAD_MESSAGE, "only text frames are accepted")
            sequence = _ack(message.data)
            if sequence > self.delivered:
                raise _Closed(CLOSE_BAD_MESSAGE, "ack above the highest sequence delivered on this stream")
            self.acked = max(self.acked, sequence)

    async def flush_acks(self) -> None:
        """Store the newest ack every ``ack_flush_ms`` (when it moved)."""
        while True:
            await asyncio.sleep(self.ctx.settings.ack_flush_seconds)
            await self.save_ack()

    async def save_ack(self) -> None:
        if self.acked > self.saved:
            acked = self.acked
            await deliver.acknowledge(self.ctx, self.node, self.name, acked)
            self.saved = acked

    async def run(self) -> None:
        tasks = [asyncio.create_task(c()) for c in (self.pump, self.send, self.receive, self.flush_acks)]
        code, reason = CLOSE_GOING_AWAY, "closing"
        refusal: str | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if isinstance(error, _Closed):
                    code, reason = error.code, error.reason
                    refusal = error.audit_reason
                elif error is not None and not isinstance(error, ConnectionError):
                    log.error("stream_failed node=%s", self.node.id, exc_info=error)
                    code, reason = 1011, "internal error"
        finally:
            for task in tasks:
                task.cancel()
            # Their outcomes are read above; a cancel of this handler itself still propagates.
            await asyncio.gather(*tasks, return_exceptions=True)
            if refusal is not None:
                await self._record_refusal(refusal)
            if code != CLOSE_REVOKED:
                try:  # the newest ack, once, before the close answer: the client resumes after it
                    await self.save_ack()
                except Exception:
                    log.warning("ack_save_failed node=%s stream=%s", self.node.id, self.name, exc_info=True)
            await self.ws.close_within(
                self.ctx.settings.stream_heartbeat_seconds, code=code, message=reason.encode()
            )

    async def _record_refusal(self, reason: str) -> None:
        try:
            await auth.record_stream_refusal(self.ctx, self.node, reason)
        except Exception:  # the close must still be sent; the failure is logged
            log.warning("stream_refusal_not_recorded node=%s reason=%s", self.node.id, reason, exc_info=True)


ACK_EXPECTED = 'expected {"type": "ack", "sequence": N}'


def _ack(data: str) -> int:
    """The sequence of an ack frame; _Closed(4400) for anything else."""
    try:
        parsed = json.loads(data)
        sequence = parsed["sequence"] if parsed.get("type") == "ack" else None
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise _Closed(CLOSE_BAD_MESSAGE, ACK_EXPECTED) from None
    if isinstance(sequence, int) and not isinstance(sequence, bool) and sequence >= 0:
        return sequence
    raise _Closed(CLOSE_BAD_MESSAGE, ACK_EXPECTED)


def _check_origin(request: web.Request, allowed: tuple[str, ...]) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin not in allowed:
        raise AccessDenied("this Origin may not open a stream", code="origin_not_allowed")


def _parameters(request: web.Request) -> tuple[str, list[str], str | None]:
    """The stream's name, its topics, and the broker whose reports it skips (a peer's own)."""
    name = request.query.get("name", "default")
    if not STREAM_NAME.fullmatch(name):
        raise BadRequest("name must be 1-64 letters, digits, '.', '_' or '-'", code="invalid_parameter")
    topics = topics_param(request)
    skip_broker = request.query.get("broker")
    if skip_broker is not None and not 0 < len(skip_broker) <= MAX_BROKER_NAME:
        raise BadRequest(f"broker must be 1-{MAX_BROKER_NAME} characters", code="invalid_parameter")
    return name, topics, skip_broker


def _websocket(settings: Settings) -> StreamSocket:
    # autoclose off: a client's close is answered only after its newest ack is stored (run()).
    # heartbeat: a ping each interval without traffic from the client, and the connection is
    # dropped when its pong is not back within half an interval, so a peer whose network
    # vanished gives its slot and queue back within two intervals, not when TCP gives up; a
    # close the client does not take within an interval cuts the connection (close_within).
    return StreamSocket(
        compress=False,
        max_msg_size=settings.max_ws_frame_bytes,
        autoclose=False,
        protocols=(WS_PROTOCOL,),
        heartbeat=settings.stream_heartbeat_seconds,
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """Authenticate at the handshake (errors are ordinary problem documents), then stream."""
    ctx = request.app[CONTEXT]
    node = await authenticated_node(request)
    await auth.require_role(ctx, node, receiving_role(node.roles), act="stream")
    _check_origin(request, ctx.settings.allowed_origins)
    name, topics, skip_broker = _parameters(request)
    if "after" in request.query:
        after = int_param(request, "after", 0, 0, 2**62)
    else:
        after = await deliver.resume_point(ctx, node, name)
    ws = _websocket(ctx.settings)
    ws.transport = request.transport
    if not ws.can_prepare(request).ok:  # a plain GET: refused before it is counted
        raise BadRequest("this resource is a websocket: send an Upgrade handshake", code="websocket_required")
    per_node = request.app[PER_NODE]
    if per_node.get(node.id, 0) >= ctx.settings.max_streams_per_node:
        raise RateLimited("this node has too many open streams", code="too_many_streams")
    per_node[node.id] = per_node.get(node.id, 0) + 1  # before any await: no race past the cap
    streams = request.app[STREAMS]
    session: StreamSession | None = None  # the slot is given back whatever fails before it exists
    try:
        await ws.prepare(request)
        streams.add(ws)
        session = StreamSession(
            ctx=ctx,
            hub=request.app[HUB],
            feed=request.app[FEED],
            ws=ws,
            node=node,
            name=name,
            topics=topics,
            cursor=after,
            recalls_since=await deliver.recalls_since(ctx, node, name),
            skip_broker=skip_broker,
            queue=asyncio.Queue(maxsize=ctx.settings.stream_queue_size),
        )
        request.app[SESSIONS].add(session)
        await session.run()
    finally:
        streams.discard(ws)
        if session is not None:
            request.app[SESSIONS].discard(session)
        per_node[node.id] -= 1
        if not per_node[node.id]:
            del per_node[node.id]
    return ws


async def close_all(app: web.Application) -> None:
    """On shutdown: tell every open stream to reconnect later, all at once, each within the
    heartbeat interval or ``SHUTDOWN_CLOSE_SECONDS`` if shorter (a client that does not take the
    close has its connection cut): the background loops' stop comes after, and the whole must
    end within a container's stop grace (10 s by default)."""
    seconds = min(app[CONTEXT].settings.stream_heartbeat_seconds, SHUTDOWN_CLOSE_SECONDS)
    message = b"broker shutting down"
    open_streams: set[StreamSocket] = app[STREAMS]
    closes = [ws.close_within(seconds, code=CLOSE_GOING_AWAY, message=message) for ws in list(open_streams)]
    await asyncio.gather(*closes)
