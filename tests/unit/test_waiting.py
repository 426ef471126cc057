"""wait_event: a bounded wait that never loses a cancellation (Python 3.11's wait_for does)."""

from __future__ import annotations

import asyncio

import pytest

from broker.waiting import wait_event


async def test_returns_true_once_set_and_false_after_the_limit() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(asyncio.Event(), 0.01) is False


async def test_an_event_already_set_returns_at_once() -> None:
    event = asyncio.Event()
    event.set()
    async with asyncio.timeout(1):
        assert await wait_event(event, 60) is True


async def test_a_cancellation_arriving_with_the_event_is_not_lost() -> None:
    # The stream pump's case: the hub wakes it in the same loop iteration as the stream's
    # close cancels it. asyncio.wait_for (3.11) returned normally here and the pump ran on.
    for _ in range(20):
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_event(event, 60))
        await asyncio.sleep(0)  # the waiter is now waiting
        event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled()
