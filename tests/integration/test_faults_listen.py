"""The LISTEN connection is made from the database URL as the engine reads it (issue 21,
finding 4): its query (a Unix-socket ``host=``, ``ssl=require``) is kept, not rebuilt from the
host, port, user, password and database alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from broker.storage.listen import ChangeListener
from broker.storage.statements import CHANGE_CHANNEL
from broker.waiting import wait_event
from tests.integration.faults import TcpProxy


def _postgres(database_url: str) -> None:
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")


async def test_the_listener_connects_through_a_unix_socket_named_in_the_query(
    database_url: str, tmp_path: Path
) -> None:
    _postgres(database_url)
    url = make_url(database_url)
    # A socket directory of our own, relayed to the server: only a client that honours the
    # URL's host= reaches the server through it (the default socket directories hold another).
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start_unix(str(tmp_path / ".s.PGSQL.5432"))
    through_socket = url.set(host=None, port=None, query={"host": str(tmp_path)})
    woken = asyncio.Event()
    listener = ChangeListener(through_socket.render_as_string(hide_password=False), woken.set)
    try:
        listener.start()
        assert await listener.wait_ready(5)
        assert proxy.forwarded == 1
        woken.clear()
        notifier = await asyncpg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, database=url.database
        )
        try:
            await notifier.execute(f"NOTIFY {CHANGE_CHANNEL}")
        finally:
            await notifier.close()
        assert await wait_event(woken, 5)  # the notification came through the socket
    finally:
        await listener.stop()
        await proxy.close()


async def test_the_listener_keeps_ssl_require(database_url: str) -> None:
    _postgres(database_url)
    url = make_url(database_url)
    probe = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database=url.database
    )
    try:
        if await probe.fetchval("SHOW ssl") == "on":
            pytest.skip("this server speaks TLS: a clear-text fallback cannot be told apart")
    finally:
        await probe.close()
    required = url.update_query_dict({"ssl": "require"})
    listener = ChangeListener(required.render_as_string(hide_password=False), lambda: None)
    try:
        listener.start()
        # The server offers no TLS: a listener that kept ssl=require cannot connect (the engine
        # could not either); one that dropped it connects in clear text.
        assert not await listener.wait_ready(1.5)
    finally:
        await listener.stop()


async def test_stopping_the_listener_lets_the_callers_own_cancellation_through(database_url: str) -> None:
    """The listener's stop awaits its task, whose cancellation it expects; a cancel aimed at the
    caller meanwhile is the caller's, and must reach it (issue 21, finding 3)."""
    _postgres(database_url)
    listener = ChangeListener(database_url, lambda: None)
    listener.start()
    assert await listener.wait_ready(5)
    stopping = asyncio.create_task(listener.stop())
    await asyncio.sleep(0)  # one turn: stop() has cancelled its task and waits for it to end
    assert not stopping.done()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()
    assert not listener.connected
