"""The stream feed's replay window (issue 21, finding 8): its bound is a setting, its size is
counted in the bytes the process really holds for it, and /metrics shows it."""

from __future__ import annotations

import asyncio
import gc
import re
import tracemalloc

import pytest

from broker.client import BrokerClient
from broker.services import admin, auth, deliver, publishing
from broker.services.context import Context
from broker.settings import Settings
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body

TIMEOUT = 20
FEED_BYTES = re.compile(r"^broker_stream_feed_bytes (\S+)$", re.MULTILINE)
NODE = {"clearance": "SECRET", "roles": ["publish", "subscribe"]}


async def _publish(api: Api, token: str, n: int, size: int) -> None:
    for i in range(n):
        status, _ = await api.publish(token, body(payload={"n": i, "blob": f"{i:06d}" + "x" * size}))
        assert status == 201


async def _store(settings: Settings, token: str, n: int, size: int) -> None:
    """What ``_publish`` stores, in one transaction of another process's context (the broker
    under test takes no part, and the test's context warms no cache): the HTTP path is not what
    the feed's accounting is about."""
    other = Context.open(settings)
    try:
        node = await auth.authenticate(other, token, source="test", rechecked=True)
        known = (await other.cached_directory()).alliances
        acts = [
            publishing.PublishAct(
                node=node,
                sub=publishing.parse_submission(
                    body(payload={"n": i, "blob": f"{i:06d}" + "x" * size}), ctx=other, known_alliances=known
                ),
                idempotency_key=None,
            )
            for i in range(n)
        ]
        async with other.db.transaction() as tx:
            stored = await publishing.store_publishes(other, tx, acts)
        assert not [s for s in stored if isinstance(s, Exception)]
    finally:
        await other.close()


async def test_the_feed_bound_is_a_setting_and_its_size_a_metric(start_server: StartServer) -> None:
    bound = 256 * 1024
    api = await start_server(stream_feed_bytes=bound)
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    auditor = await api.node("aud", "BEL", roles=("audit",))
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0)
        publishing = asyncio.create_task(_publish(api, usa, 120, 4000))  # ~1 MB of payloads
        got = 0
        async with asyncio.timeout(TIMEOUT):
            async for _report in stream:
                got += 1
                if got == 120:
                    break
        await publishing
        status, text = await api.get("/metrics", auditor)
        await stream.aclose()
    assert status == 200
    held = FEED_BYTES.search(text)
    assert held is not None
    assert 0 < float(held.group(1)) <= bound


@pytest.mark.parametrize("payload_bytes", [100, 1500])
async def test_the_feed_counts_the_bytes_it_really_holds(
    ctx: Context, settings: Settings, payload_bytes: int
) -> None:
    # No broker serves here: what this process allocates while the feed fills is the feed's.
    usa = str((await admin.add_node(ctx, {**NODE, "id": "usa-1", "nation": "USA"}, actor="test"))["token"])
    swe = str((await admin.add_node(ctx, {**NODE, "id": "swe-1", "nation": "SWE"}, actor="test"))["token"])
    node = await auth.authenticate(ctx, swe, source="test", rechecked=True)
    warm, feed = deliver.Feed(ctx), deliver.Feed(ctx)
    for each in (warm, feed):
        await each.refresh()  # a feed holds what is published after it starts
    await _store(settings, usa, 210, payload_bytes)

    async def fill(feed: deliver.Feed) -> None:
        await feed.refresh()
        after = 0
        while after < feed.head:  # every report framed once: what a stream makes the feed keep
            after = (await feed.next_batch(node, after=after, topics=[])).cursor

    await fill(warm)  # warms the caches that are not the feed's
    del warm
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await fill(feed)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    counted = feed.held_bytes
    print(f"feed, {payload_bytes} B payloads: {counted} bytes counted, {used} held ({counted / used:.2f})")
    assert 0.85 * used <= counted <= 1.25 * used
