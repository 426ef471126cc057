"""PostgreSQL LISTEN/NOTIFY: wake this process when another one commits a change.

Every transaction that publishes or changes security state sends a NOTIFY on
``statements.CHANGE_CHANNEL`` (delivered at its commit, never for a rollback). The listener holds one
connection of its own (made from the database URL as the engine's are, query included: a
``?ssl=require`` or a Unix-socket ``?host=`` binds it too) and calls ``on_change`` for each
notification; the hub then reads the head from the database. A notification is a wake-up and
nothing more: its payload is never read (any role that can connect may NOTIFY on the channel),
so the worst a stranger's NOTIFY does is cost a read. When the connection drops it reconnects
with backoff, and ``connected`` is False meanwhile, so the hub falls back to its fast poll: a
lost notification costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from broker.storage.statements import CHANGE_CHANNEL
from broker.waiting import wait_event

log = logging.getLogger(__name__)


# How the loop is run: the app passes its supervisor (services/supervisor.py, which this layer may
# not import), so an error nobody anticipated is logged, counted and the loop started again.
Runner = Callable[[Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]

CONNECT_TIMEOUT_SECONDS = 5.0
# Options of SQLAlchemy's asyncpg adapter that asyncpg.connect does not take (the adapter removes
# them before it connects, as here).
_ADAPTER_ONLY = ("async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func")


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def connect_options(url: str) -> dict[str, Any]:
    """``asyncpg.connect`` keywords for ``url``, derived by the same dialect as the engine's
    connections: the query (``ssl=require``, a Unix-socket ``host=``, several hosts) is kept."""
    parsed = make_url(url)
    args, options = parsed.get_dialect()().create_connect_args(parsed)
    if args:
        raise ValueError("the PostgreSQL dialect answered positional connect arguments")
    for name in _ADAPTER_ONLY:
        options.pop(name, None)
    options.setdefault("timeout", CONNECT_TIMEOUT_SECONDS)
    return dict(options)


class ChangeListener:
    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self._connect_args = connect_options(url)
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()  # the first attempt to listen has ended, either way
        self.connected = False

    def start(self, runner: Runner | None = None) -> None:
        """Run the listening loop in a task, through ``runner`` when given (the supervisor)."""
        if self._task is None:
            loop = self.run() if runner is None else runner(self.run)
            self._task = asyncio.create_task(loop, name="change-listener")

    async def wait_ready(self, seconds: float) -> bool:
        """Wait until the first attempt to listen has ended, or ``seconds``; True if listening. A
        server that refuses the connection is not waited for: the broker polls until it answers."""
        await wait_event(self._tried, seconds)
        return self.connected

    async def run(self) -> None:
        """Listen, reconnecting with backoff when the server or the network drops the connection.
        Anything else (a configuration error such as a bad ``ssl`` mode, a bug) is raised, for
        the supervisor to log, count and retry."""
        delay = 0.1
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(**self._connect_args)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("listen_connect_failed error=%s retry_in=%.1fs", type(exc).__name__, delay)
                self._tried.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                connection.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await connection.add_listener(CHANGE_CHANNEL, lambda *_: self._on_change())  # payload unread
                self.connected, delay = True, 0.1
                self._tried.set()
                self._on_change()  # anything committed while not listening is looked at now
                await lost.wait()
                log.warning("listen_connection_lost")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("listen_failed error=%s", type(exc).__name__)
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # The task's own cancellation is what we asked for; a cancel aimed at the
                # caller while it waited is the caller's and must reach it.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        self.connected = False
