"""A subscriber that stops reading but keeps its connection open (a stuck consumer process, a
peer whose TCP window stays at zero). The broker's close of that stream, for a slow consumer
(4008) or at shutdown (1001), cannot write its close frame past what the client never read: it
must not wait for it forever. Within a heartbeat interval the connection is cut, and shutdown
goes on."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from broker.web.ws import SESSIONS
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body
from tests.integration.test_faults_streams import handshake, slots

# Long enough for the publishes below to fill the connection before the first ping (a ping
# unanswered for half an interval also cuts the connection, and would hide the fault).
HEARTBEAT = 3.0
PAYLOAD = "x" * 200_000  # a frame of about 200 kB
TIMEOUT = 20
POLL_SECONDS = 0.02
GRACE = 10.0 - 2.0  # Docker's default stop grace, less the process's own start-up of the stop


@asynccontextmanager
async def stuck_subscriber(port: int, token: str) -> AsyncIterator[socket.socket]:
    """A stream whose client takes the handshake's answer and then never reads again, with a
    small receive window, while its connection stays open (closed on leaving)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(TIMEOUT):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, handshake(port, token))
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 1)  # a byte at a time: no frame is taken
                assert chunk, "the broker closed the handshake"
                head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        yield sock
    finally:
        sock.close()


async def fill(api: Api, token: str, megabytes: int) -> None:
    """Publish about ``megabytes`` of reports the stuck subscriber may receive."""
    for _ in range(megabytes * 1_000_000 // len(PAYLOAD) + 1):
        status, answer = await api.publish(token, body(payload={"type": "note", "content": PAYLOAD}))
        assert status == 201, answer


def server_end(api: Api, sock: socket.socket) -> Callable[[], bool]:
    """Whether the broker still holds the server end of ``sock``'s connection, as a check."""
    server = api.client.server.runner.server
    assert server is not None
    ours = sock.getsockname()
    (handler,) = (
        h
        for h in server.connections
        if h.transport is not None and h.transport.get_extra_info("peername") == ours
    )
    return lambda: handler in server.connections


async def until(check: Callable[[], bool], seconds: float) -> float:
    """Poll ``check`` until it holds; the seconds it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not so after {seconds} s")
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic() - start


async def test_a_slow_consumer_that_stopped_reading_is_cut_off_within_a_heartbeat(
    start_server: StartServer,
) -> None:
    api = await start_server(stream_heartbeat_seconds=HEARTBEAT, stream_queue_bytes=1 << 20)
    swe, auditor = await api.node("swe-1", "SWE"), await api.node("aud", "BEL", roles=("audit",))
    port = api.client.port
    assert port is not None
    async with stuck_subscriber(port, swe) as sock:
        assert await slots(api, auditor) == {"swe-1": 1}
        held = server_end(api, sock)
        # More than the socket buffers and the 1 MB queue hold: the broker closes the stream
        # with 4008, and its close frame sits behind what the client never read.
        await fill(api, swe, 12)
        took = await until(lambda: not held(), 2 * HEARTBEAT)
        print(f"connection cut {took:.2f} s after the last publish (heartbeat {HEARTBEAT} s)")
        assert await slots(api, auditor) == {}


async def shut_down_under_a_stuck_subscriber(api: Api, *, within: float) -> float:
    """Stop the broker (as SIGTERM does: the on_shutdown close of every stream, then cleanup)
    while a stream's client has stopped reading; the seconds it took, at most ``within``."""
    swe = await api.node("swe-1", "SWE")
    port = api.client.port
    assert port is not None
    async with stuck_subscriber(port, swe):
        # More than the socket buffers hold, less than the 16 MB queue: the stream is open, its
        # sender waiting for the client to read.
        await fill(api, swe, 8)
        sessions = api.client.server.app[SESSIONS]
        await until(lambda: any(s.queue.qsize() for s in sessions), HEARTBEAT / 2)
        start = time.monotonic()
        async with asyncio.timeout(within):
            await api.client.close()
        return time.monotonic() - start


async def test_shutdown_with_a_subscriber_that_stopped_reading_ends_within_a_heartbeat(
    start_server: StartServer,
) -> None:
    api = await start_server(stream_heartbeat_seconds=HEARTBEAT)
    took = await shut_down_under_a_stuck_subscriber(api, within=2 * HEARTBEAT)
    print(f"shut down in {took:.2f} s (heartbeat {HEARTBEAT} s)")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the engine plays no part
async def test_shutdown_with_a_stuck_subscriber_ends_within_a_container_grace(
    start_server: StartServer,
) -> None:
    """With the default heartbeat (15 s), a subscriber that does not take the close must not hold
    shutdown past a container's default grace (10 s, then SIGKILL), background loops included."""
    took = await shut_down_under_a_stuck_subscriber(await start_server(), within=GRACE)
    print(f"shut down in {took:.2f} s (container grace {GRACE} s)")
