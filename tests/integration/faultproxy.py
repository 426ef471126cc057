"""A TCP proxy between the broker and PostgreSQL that a test can pause, cut or slow.

Paused, it stops forwarding bytes in both directions and holds new connections unanswered, as a
server (or a network) that stops answering without closing anything; cut, it aborts every open
connection, as a restarted server; slowed, it delays every chunk it forwards (and with
``chunk_bytes`` small, hands over what it forwards in pieces that small).
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.delay = 0.0  # seconds added before each forwarded chunk
        self.chunk_bytes = 65536  # the most forwarded in one piece
        self.accepted = 0
        self.arrived = asyncio.Event()  # set by each connection accepted (a test clears it)
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Abort every open connection (new ones are still accepted)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.resume()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.arrived.set()
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for end in (writer, up_writer):
                end.transport.abort()
                self._writers.discard(end)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(self.chunk_bytes):
                await self._flowing.wait()  # paused: the chunk is held, as by a silent network
                if self.delay:
                    await asyncio.sleep(self.delay)
                if writer.transport.is_closing():
                    return
                writer.write(chunk)
                await writer.drain()
