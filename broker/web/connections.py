"""Connections below HTTP: a deadline for the TLS handshake and for each request head, and a cap
on the connections open from one source address.

aiohttp (3.14) has neither. Its keep-alive timer is the only thing that ends a connection whose
request head never completes (a client sending half a head, or a byte a second, holds a socket
for the whole keep-alive timeout), and it accepts any number of connections from one address.
It offers no public hook between accepting a connection and handing it a request either, so
this is done at the asyncio level: ``GuardedSite`` listens with a protocol factory that wraps
the protocol aiohttp makes for each connection, counts and times the connection, and otherwise
passes every call through unchanged; the ``head_arrived`` middleware tells it when a head was
complete (aiohttp only dispatches a request whose head it has parsed) and when the request was
handled. A head's deadline runs from the connection's start, and on a kept-alive connection
from the first byte after a handled request: an idle kept-alive connection is left to aiohttp's
keep-alive timeout. The TLS handshake deadline is asyncio's own ``ssl_handshake_timeout``. A
connection is counted once its handshake is done (before that asyncio does not hand it to the
protocol), so during the handshake only the deadline bounds it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

# A request handler, as aiohttp's middlewares see it (defined here, where the witness's server can
# import it without the broker's middlewares).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)


class ConnectionGuard:
    """The open connections per source address (at most ``per_source`` each, except from the
    ``exempt`` networks; more are closed at once), and the deadline, ``head_seconds``, for a
    request head: from the connection's start, and from the first byte after a request."""

    def __init__(self, *, head_seconds: float, per_source: int, exempt: tuple[str, ...] = ()) -> None:
        self.head_seconds = head_seconds
        self.per_source = per_source
        self._exempt = tuple(ipaddress.ip_network(n) for n in exempt)
        self._open: dict[str, int] = {}
        self._connections: dict[asyncio.BaseTransport, _Guarded] = {}

    def protocols(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``make``'s protocols, guarded."""
        return lambda: _Guarded(self, make())

    def head_arrived(self, transport: asyncio.BaseTransport | None) -> None:
        """A request head on ``transport`` is complete: no deadline until the next one starts."""
        connection = None if transport is None else self._connections.get(transport)
        if connection is not None:
            connection.head_arrived()

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        """The request on ``transport`` was handled: the next byte starts the next head."""
        connection = None if transport is None else self._connections.get(transport)
        if connection is not None:
            connection.between_requests = True

    def admit(self, source: str, connection: _Guarded, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection from ``source``; False (count nothing) when it is one too many."""
        count = self._open.get(source, 0)
        if count >= self.per_source and not self._exempted(source):
            log.debug("connection_refused source=%s open=%d", source, count)  # a flood must not flood the log
            return False
        self._open[source] = count + 1
        self._connections[transport] = connection
        return True

    def _exempted(self, source: str) -> bool:
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def release(self, source: str, transport: asyncio.BaseTransport) -> None:
        self._connections.pop(transport, None)
        count = self._open.get(source, 0) - 1
        if count > 0:
            self._open[source] = count
        else:
            self._open.pop(source, None)  # memory stays bounded by the open connections


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted and timed by a ConnectionGuard."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._source: str | None = None  # None: refused (or not yet made)
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        # An idle keep-alive connection has no head deadline (aiohttp's keep-alive timeout
        # applies); its next byte starts one.
        self.between_requests = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        stream = cast(asyncio.Transport, transport)
        if not self._guard.admit(source, self, transport):
            stream.abort()  # at once: no answer, nothing to flush
            return
        self._source, self._transport = source, stream
        self._start_deadline()
        self._inner.connection_made(transport)

    def _start_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.head_seconds, self._too_slow)

    def head_arrived(self) -> None:
        self.between_requests = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        log.info("request_head_timeout source=%s", self._source)
        if self._transport is not None:
            self._transport.abort()  # not close(): a peer that reads nothing must not hold it either

    def connection_lost(self, exc: Exception | None) -> None:
        if self._source is None or self._transport is None:
            return  # refused: aiohttp never saw it
        self.head_arrived()  # no deadline any more
        self._guard.release(self._source, self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._source is None:
            return
        if self.between_requests:
            self.between_requests = False
            self._start_deadline()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._source is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


CONNECTIONS = web.AppKey("connections", ConnectionGuard)


@web.middleware
async def head_arrived(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request reached the app: its head was complete in time. Once it is handled, the
    connection's next byte starts the next head's deadline."""
    guard = request.app[CONNECTIONS]
    guard.head_arrived(request.transport)
    try:
        return await handler(request)
    finally:
        guard.request_done(request.transport)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections the app's ConnectionGuard admits and times (the TLS
    handshake too, when there is a context)."""

    __slots__ = ("_bound", "_guard", "_host", "_port")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._guard = runner.app[CONNECTIONS]
        self._host, self._port, self._bound = host, port, port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._bound}"

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose for port 0)."""
        return self._bound

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting a site")
        loop = asyncio.get_running_loop()
        listening = await loop.create_server(
            self._guard.protocols(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._guard.head_seconds if self._ssl_context is not None else None,
        )
        self._server = listening
        if listening.sockets:
            self._bound = int(listening.sockets[0].getsockname()[1])
