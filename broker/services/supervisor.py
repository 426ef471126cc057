"""One supervisor for the broker's background loops (checkpoint signing, retention, KEK periods,
the failed-authentication flush).

A loop that raises is logged once at ERROR with its traceback, counted in
``broker_background_restarts_total{task}``, and started again after a backoff (doubling from
``FIRST_BACKOFF_SECONDS`` up to ``MAX_BACKOFF_SECONDS``, back to the first after a run that
lasted longer than the longest backoff). Without it, an error nobody anticipated (a database
error that is not a BrokerError, a bug) ended the loop for the life of the process without a
word: checkpoint signing simply stopped. A loop that returns is done; cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from broker.waiting import wait_event

log = logging.getLogger(__name__)
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 30.0
RESTARTS = Counter(
    "broker_background_restarts",
    "Background loops restarted after an unexpected error, by task",
    ["task"],
)


async def supervise(name: str, loop: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run ``loop()`` until it returns or ``stop`` is set, restarting it after each failure."""
    RESTARTS.labels(name)  # the series exists (at 0) before the first restart
    clock = asyncio.get_running_loop().time
    delay = FIRST_BACKOFF_SECONDS
    while not stop.is_set():
        started = clock()
        try:
            await loop()
        except Exception:
            if clock() - started > MAX_BACKOFF_SECONDS:
                delay = FIRST_BACKOFF_SECONDS  # it had been working: this is a fresh failure
            log.error("background_task_failed task=%s restart_in=%.1fs", name, delay, exc_info=True)
            RESTARTS.labels(name).inc()
            if await wait_event(stop, delay):
                return
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        else:
            return
