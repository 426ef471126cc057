"""Connections below HTTP: a deadline for the TLS handshake and for a connection's first request
head, and a cap on the connections open from one source address.

aiohttp (3.14) has neither. Its keep-alive timer, armed when a connection opens, is the only
thing that ends one whose request head never completes (a client sending half a head, or a byte
a second, holds a socket for the whole keep-alive timeout), and it accepts any number of
connections from one address. It offers no public hook between accepting a connection and
handing it a request either, so this is done at the asyncio level: ``GuardedSite`` listens
with a protocol factory that wraps the protocol aiohttp makes for each connection, counts and
times the connection, and otherwise passes every call through unchanged; the
``head_arrived`` middleware tells it that the head was complete (aiohttp only dispatches a
request whose head it has parsed). The TLS handshake deadline is asyncio's own
``ssl_handshake_timeout``. A connection is counted once its handshake is done (before that
asyncio does not hand it to the protocol), so during the handshake only the deadline bounds it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import cast

from aiohttp import web

from broker.web.middleware import Handler

log = logging.getLogger(__name__)


class ConnectionGuard:
    """The open connections per source address (at most ``per_source`` each, except from the
    ``exempt`` networks; more are closed at once) and the deadline, ``head_seconds``, for each
    connection's first request head."""

    def __init__(self, *, head_seconds: float, per_source: int, exempt: tuple[str, ...] = ()) -> None:
        self.head_seconds = head_seconds
        self.per_source = per_source
        self._exempt = tuple(ipaddress.ip_network(n) for n in exempt)
        self._open: dict[str, int] = {}
        self._waiting: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}

    def open_from(self, source: str) -> int:
        """How many connections from ``source`` are open now."""
        return self._open.get(source, 0)

    def protocols(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``make``'s protocols, guarded."""
        return lambda: _Guarded(self, make())

    def head_arrived(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection's request head is complete: its deadline no longer applies."""
        if transport is not None:
            handle = self._waiting.pop(transport, None)
            if handle is not None:
                handle.cancel()

    def admit(self, source: str, transport: asyncio.BaseTransport) -> bool:
        count = self._open.get(source, 0)
        if count >= self.per_source and not self._exempted(source):
            log.debug("connection_refused source=%s open=%d", source, count)  # a flood must not flood the log
            return False
        self._open[source] = count + 1
        loop = asyncio.get_running_loop()
        self._waiting[transport] = loop.call_later(
            self.head_seconds, self._too_slow, source, cast(asyncio.Transport, transport)
        )
        return True

    def _exempted(self, source: str) -> bool:
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def release(self, source: str, transport: asyncio.BaseTransport) -> None:
        self.head_arrived(transport)
        count = self._open.get(source, 0) - 1
        if count > 0:
            self._open[source] = count
        else:
            self._open.pop(source, None)  # memory stays bounded by the open connections

    def _too_slow(self, source: str, transport: asyncio.Transport) -> None:
        self._waiting.pop(transport, None)
        log.info("request_head_timeout source=%s", source)
        transport.abort()  # not close(): a peer that reads nothing must not hold it either


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted and timed by a ConnectionGuard."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._source: str | None = None  # None: refused (or not yet made)
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        if not self._guard.admit(source, transport):
            cast(asyncio.Transport, transport).abort()  # at once: no answer, nothing to flush
            return
        self._source, self._transport = source, transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._source is None or self._transport is None:
            return  # refused: aiohttp never saw it
        self._guard.release(self._source, self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._source is not None:
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
    """A request reached the app: its head was complete in time."""
    request.app[CONNECTIONS].head_arrived(request.transport)
    return await handler(request)


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
