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
keep-alive timeout. The TLS handshake deadline is asyncio's own ``ssl_handshake_timeout``.

A connection is counted from its accept. Listening with ``ssl=`` would hand the protocol a
connection only once its handshake is done, so a source that opened connections and never sent
a ClientHello would hold as many as it could open within the handshake deadline. A TLS site
therefore accepts on its own listening sockets (``_Listening``), counts the source at once, and
hands each admitted socket to ``loop.connect_accepted_socket`` with the context and the
deadline: public API on asyncio's loop and on uvloop alike (``loop.start_tls`` on a transport
already reading is not: uvloop handed the ClientHello to the protocol first).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

# A request handler, as aiohttp's middlewares see it (defined here, where the witness's server can
# import it without the broker's middlewares).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Factory = Callable[[], asyncio.Protocol]

log = logging.getLogger(__name__)
# After a failed accept (out of file descriptors, say), the next one waits this long.
ACCEPT_RETRY_SECONDS = 0.5


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

    def admit(self, source: str) -> bool:
        """Count a new connection from ``source``; False (count nothing) when it is one too many."""
        count = self._open.get(source, 0)
        if count >= self.per_source and not self._exempted(source):
            log.debug("connection_refused source=%s open=%d", source, count)  # a flood must not flood the log
            return False
        self._open[source] = count + 1
        return True

    def serving(self, connection: _Guarded, transport: asyncio.BaseTransport) -> None:
        """``connection`` (admitted) hands aiohttp ``transport`` from now on."""
        self._connections[transport] = connection

    def _exempted(self, source: str) -> bool:
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def release(self, source: str, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self._connections.pop(transport, None)
        count = self._open.get(source, 0) - 1
        if count > 0:
            self._open[source] = count
        else:
            self._open.pop(source, None)  # memory stays bounded by the open connections


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted and timed by a ConnectionGuard."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol, admitted: str | None = None) -> None:
        self._guard = guard
        self._inner = inner
        self._admitted = admitted  # the source, when counted at its accept (a TLS site)
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
        if self._admitted is not None:
            source = self._admitted
        elif not self._guard.admit(source):
            stream.abort()  # at once: no answer, nothing to flush
            return
        self._source, self._transport = source, stream
        self._guard.serving(self, stream)
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
        listening: asyncio.AbstractServer
        if self._ssl_context is None:
            listening = await loop.create_server(
                self._guard.protocols(server), self._host, self._port, backlog=self._backlog
            )
        else:
            listening = await _Listening.open(self._host, self._port, backlog=self._backlog)
            listening.serve(self._guard, server, self._ssl_context)
        self._server = listening
        sockets = getattr(listening, "sockets", ())
        if sockets:
            self._bound = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if isinstance(self._server, _Listening):
            await self._server.aclose()
        await super().stop()


class _Listening(asyncio.AbstractServer):
    """A TLS site's listening sockets, accepted from by tasks of ours (see the module's text);
    stands where ``loop.create_server``'s server stands for aiohttp's site and runner."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, host: str, port: int, *, backlog: int) -> _Listening:
        loop = asyncio.get_running_loop()
        # An empty host is every interface, as for loop.create_server.
        found = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in dict.fromkeys(found):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return cls(sockets)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def serve(self, guard: ConnectionGuard, make: Factory, tls: ssl.SSLContext) -> None:
        for sock in self._sockets:
            self._track(asyncio.get_running_loop().create_task(self._accept(sock, guard, make, tls)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(
        self, sock: socket.socket, guard: ConnectionGuard, make: Factory, tls: ssl.SSLContext
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except Exception as exc:  # out of descriptors, a reset before the accept: never the end
                unexpected = not isinstance(exc, OSError)
                log.warning("accept_failed error=%s", type(exc).__name__, exc_info=unexpected)
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            source = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
            if not guard.admit(source):
                conn.close()  # at once, before any handshake
                continue
            self._track(loop.create_task(self._secure(conn, source, guard, make, tls)))

    @staticmethod
    async def _secure(
        conn: socket.socket,
        source: str,
        guard: ConnectionGuard,
        make: Factory,
        tls: ssl.SSLContext,
    ) -> None:
        """The handshake of an admitted connection (within the head deadline); one that fails,
        times out or is cut never reaches the protocol, so it is counted out here."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Guarded(guard, make(), admitted=source),
                conn,
                ssl=tls,
                ssl_handshake_timeout=guard.head_seconds,
            )
        except BaseException as exc:
            guard.release(source, None)
            conn.close()
            if not isinstance(exc, Exception):
                raise
            log.debug("tls_handshake_failed source=%s error=%s", source, type(exc).__name__)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for sock in self._sockets:
            sock.close()

    async def aclose(self) -> None:
        """Stop accepting and cut the handshakes under way, then close the listening sockets
        (once no task waits on them)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def is_serving(self) -> bool:
        return bool(self._tasks)

    async def start_serving(self) -> None:
        """Serving starts with ``serve``."""

    async def serve_forever(self) -> None:
        raise NotImplementedError("a site's listening is ended by the runner")
