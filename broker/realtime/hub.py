"""The hub wakes open streams when something they may need to see has changed.

Streams never receive reports from the hub: they read them from the database, which stays the
truth. The hub only says "look again". A local publish wakes streams at once; a watcher polls
the database's head (last sequence, change counter) every ``interval`` seconds, so a report
published by another broker process, or a revocation or membership change made by the CLI,
reaches every open stream within that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[tuple[int, int]]]


class Hub:
    def __init__(self, probe: Probe, *, interval: float = 0.2) -> None:
        self._probe = probe
        self._interval = interval
        self._event = asyncio.Event()
        self._seen: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def event(self) -> asyncio.Event:
        """The event the next wake-up sets. Take it *before* reading, so no wake-up is lost
        between a read that found nothing and the wait that follows."""
        return self._event

    def wake(self) -> None:
        """Wake every waiting stream."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def _watch(self) -> None:
        while True:
            try:
                state = await self._probe()
            except Exception:  # a failed probe must not stop the watcher; the next one retries
                log.warning("hub_probe_failed", exc_info=True)
            else:
                if state != self._seen:
                    self._seen = state
                    self.wake()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="hub-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.wake()
