"""A small TCP proxy for fault injection: it forwards bytes to a target, can answer the next
connections itself with a canned HTTP response (a 503 at the handshake), and can be paused (bytes
stop moving both ways while the connections stay open, as when a network vanishes)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"


def http_503(retry_after: int = 1) -> bytes:
    body = b'{"type": "urn:test:problem:unavailable", "status": 503}'
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
        b"Retry-After: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (retry_after, len(body), body)
    )


@dataclass
class TcpProxy:
    target_host: str
    target_port: int
    refusals: list[bytes] = field(default_factory=list)  # answers for the next connections
    refused: int = 0
    forwarded: int = 0
    _flowing: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> int:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix socket at ``path`` instead (as PostgreSQL's ``.s.PGSQL.5432``)."""
        self._flowing.set()
        self._server = await asyncio.start_unix_server(self._accept, path)

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.refusals:
                answer = self.refusals.pop(0)
                self.refused += 1
                with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    await asyncio.wait_for(reader.readuntil(HEAD_END), 5)
                writer.write(answer)
                await writer.drain()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self._writers.add(upstream_writer)
            self.forwarded += 1
            pipes = [
                asyncio.create_task(self._pipe(reader, upstream_writer)),
                asyncio.create_task(self._pipe(upstream_reader, writer)),
            ]
            self._tasks.update(pipes)
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.difference_update(pipes)
            upstream_writer.transport.abort()
            self._writers.discard(upstream_writer)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self._flowing.wait()
                data = await source.read(65536)
                if not data:
                    return
                await self._flowing.wait()  # paused meanwhile: hold what was read
                sink.write(data)
                await sink.drain()


SLOT = re.compile(r'^broker_stream_slots\{node="([^"]+)"\} (\S+)$', re.MULTILINE)


def stream_slots(metrics_text: str) -> dict[str, float]:
    """Stream slots held per node, as /metrics reports them (nodes holding none are absent)."""
    return {node: float(value) for node, value in SLOT.findall(metrics_text)}
