"""Waiting for an event with a time limit, without ever losing a cancellation.

Python 3.11's ``asyncio.wait_for`` runs the awaited call as a task of its own, and when that
task finishes in the same loop iteration as the caller is cancelled, it returns the result and
the cancellation is lost (fixed in 3.12). A stream's pump waits for the hub's wake-up this way,
and a wake-up at the moment the stream closed left the pump running: the close answer (sent
after the newest ack is stored) waited for the client's close timeout, and the client resumed
from the ack before. ``asyncio.timeout`` awaits in the caller's own task, so a cancellation
always arrives; every wait with a limit in the broker goes through here (ruff bans
``asyncio.wait_for`` in ``broker/``).
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed: whether it was set. A
    cancellation of the caller always propagates, even when the event is set at the same time."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
