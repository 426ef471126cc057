"""The hub wakes open streams when something they may need to see has changed.

Streams never receive reports from the hub: the hub only says "look again". Its watcher runs the
probe every ``interval`` seconds, and at once when nudged: after a local publish or change, and on
PostgreSQL when another process's NOTIFY arrives (storage/listen.py). The probe loads
what changed into the delivery feed and returns the database's (last sequence, change counter);
when that moved, every waiting stream is woken. So a report published by another broker process,
or a revocation or membership change made by the CLI, reaches every open stream within the interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from broker.waiting import wait_event

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[tuple[int, ...]]]
# How the watcher is run: the app passes its supervisor (services/supervisor.py), so a watcher
# that fails is logged, counted and started again instead of leaving streams to time out.
Runner = Callable[[Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]


class Hub:
    def __init__(self, probe: Probe, *, interval: float | Callable[[], float] = 0.05) -> None:
        self._probe = probe
        # A number, or a function asked before each wait (on PostgreSQL: long while LISTEN works).
        self._interval = interval if callable(interval) else (lambda: interval)
        self._event = asyncio.Event()
        self._nudge = asyncio.Event()
        self._seen: tuple[int, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def event(self) -> asyncio.Event:
        """The event the next wake-up sets. Take it *before* reading, so no wake-up is lost
        between a read that found nothing and the wait that follows."""
        return self._event

    def wake(self) -> None:
        """Wake every waiting stream."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def nudge(self) -> None:
        """Probe now instead of at the next interval (after a local publish)."""
        self._nudge.set()

    async def watch(self) -> None:
        """Probe every interval and when nudged, waking streams when the state moved, until
        stopped. A failed probe is retried at the next; anything else is raised."""
        while not self._stopping:
            self._nudge.clear()
            try:
                state = await self._probe()
            except Exception:  # a failed probe must not stop the watcher; the next one retries
                log.warning("hub_probe_failed", exc_info=True)
            else:
                if state != self._seen:
                    self._seen = state
                    self.wake()
            await wait_event(self._nudge, self._interval())

    def start(self, runner: Runner | None = None) -> None:
        """Run the watcher in a task, through ``runner`` when given (the supervisor)."""
        if self._task is None:
            loop = self.watch() if runner is None else runner(self.watch)
            self._task = asyncio.create_task(loop, name="hub-watch")

    async def stop(self) -> None:
        """Let a probe in flight finish (cancelling one mid-transaction would leave its
        connection to be cleaned up by the garbage collector), then stop."""
        if self._task is not None:
            self._stopping = True
            self._nudge.set()
            try:
                async with asyncio.timeout(10):  # on timeout the task is cancelled
                    await self._task
            except TimeoutError:
                log.warning("hub_stop_timeout")
            self._task = None
        self.wake()
