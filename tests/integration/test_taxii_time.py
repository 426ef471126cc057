"""Time that follows the sequence (issue 22 finding 9): a report's ``created`` is stamped once
its place in the sequence is fixed and is never below the previous report's, so a TAXII poller
that resumes from ``X-TAXII-Date-Added-Last`` with ``added_after`` misses nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.app import create_app
from broker.settings import Settings
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import body
from tests.integration.test_taxii import bundle, collection_id, indicator, raw


async def _poll(api: Api, token: str, cid: str, after: str | None) -> tuple[list[str], str | None]:
    query = "" if after is None else f"?added_after={quote(after)}"
    status, headers, answer = await raw(
        api, "GET", f"/taxii2/api/collections/{cid}/objects/{query}", token=token
    )
    assert status == 200, answer
    ids = [o["id"] for o in answer.get("objects", []) if o["type"] == "indicator"]
    return ids, headers.get("X-TAXII-Date-Added-Last")


async def test_a_later_report_is_never_stamped_before_an_earlier_one(
    api: Api, settings: Settings, clock: FakeClock
) -> None:
    """A second broker on the same database whose clock reads one second behind (or the same
    broker after its clock stepped back): the report it stores second is stamped no earlier than
    the first, and a poller resuming from the first page's last date receives it."""
    cid = await collection_id(api)
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    behind = FakeClock(clock.moment - timedelta(seconds=1))
    other = TestClient(TestServer(create_app(settings, clock=behind), host="127.0.0.1"))
    await other.start_server()
    try:
        first, second = indicator(1), indicator(2)
        status, one = await api.publish(usa, body(payload=bundle(first)))
        assert status == 201, one
        seen, last = await _poll(api, gbr, cid, None)
        assert seen == [first["id"]] and last is not None

        headers = {"Authorization": f"Bearer {usa}", "Content-Type": "application/json"}
        async with other.post("/v1/reports", json=body(payload=bundle(second)), headers=headers) as resp:
            two: dict[str, Any] = await resp.json()
            assert resp.status == 201, two
        assert two["sequence"] > one["sequence"]
        assert two["created"] >= one["created"]

        seen, _ = await _poll(api, gbr, cid, last)
        assert seen == [second["id"]]
    finally:
        await other.close()


async def test_a_clock_stepping_back_does_not_hide_reports_from_a_poller(api: Api, clock: FakeClock) -> None:
    """One broker, its clock stepped back between two posts through TAXII: every report reaches a
    poller that resumes by ``added_after`` exactly once."""
    cid = await collection_id(api)
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    received: list[str] = []
    last: str | None = None
    posted: list[str] = []
    for step in range(4):
        obj = indicator(step, ident=f"indicator--{uuid.uuid4()}")
        posted.append(obj["id"])
        data = json.dumps({"objects": [obj]}).encode()
        status, _, answer = await raw(
            api,
            "POST",
            f"/taxii2/api/collections/{cid}/objects/",
            token=usa,
            headers={"Content-Type": "application/taxii+json;version=2.1"},
            data=data,
        )
        assert status == 202, answer
        clock.advance(seconds=-2 if step % 2 == 0 else 1)
        seen, newest = await _poll(api, gbr, cid, last)
        received += seen
        last = newest or last
    assert received == posted


async def test_a_poller_receives_every_report_once_from_two_brokers_and_eight_publishers(
    api: Api, settings: Settings, database_url: str
) -> None:
    """Two brokers on one PostgreSQL database (the second's clock half a second behind), eight
    nodes publishing through both at once, one poller resuming by ``added_after`` from each
    answer's ``X-TAXII-Date-Added-Last``: every report reaches it exactly once."""
    if not database_url.startswith("postgresql"):
        pytest.skip("several brokers share a PostgreSQL database; a SQLite file has one broker")
    cid = await collection_id(api)
    reader = await api.node("reader", "GBR", roles=("subscribe",))
    publishers = [await api.node(f"pub-{n}", "USA", roles=("publish",)) for n in range(8)]

    def behind() -> datetime:
        return datetime.now(UTC) - timedelta(seconds=0.5)

    brokers = [
        TestClient(TestServer(create_app(settings), host="127.0.0.1")),
        TestClient(TestServer(create_app(settings, clock=behind), host="127.0.0.1")),
    ]
    for broker in brokers:
        await broker.start_server()
    posted: list[str] = []
    received: list[str] = []
    last: str | None = None
    done = asyncio.Event()

    async def publisher(n: int, token: str) -> None:
        for i in range(12):
            obj = indicator(n * 100 + i)
            posted.append(obj["id"])
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            broker = brokers[(n + i) % 2]
            async with broker.post("/v1/reports", json=body(payload=bundle(obj)), headers=headers) as resp:
                assert resp.status == 201, await resp.text()

    async def poll_once() -> None:
        nonlocal last
        base = f"/taxii2/api/collections/{cid}/objects/?limit=7"
        query = "" if last is None else f"&added_after={quote(last)}"
        url = base + query
        while True:
            headers = {"Authorization": f"Bearer {reader}", "Accept": "application/taxii+json;version=2.1"}
            async with brokers[0].get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json(content_type=None)
                newest = resp.headers.get("X-TAXII-Date-Added-Last")
            received.extend(o["id"] for o in answer.get("objects", []) if o["type"] == "indicator")
            last = newest or last
            if not answer.get("more"):
                return
            url = base + query + f"&next={answer['next']}"

    async def poller() -> None:
        while not done.is_set():
            await poll_once()
        await poll_once()  # once more after the last publish committed

    try:
        polling = asyncio.create_task(poller())
        await asyncio.gather(*(publisher(n, token) for n, token in enumerate(publishers)))
        done.set()
        await asyncio.wait_for(polling, timeout=60)
    finally:
        for broker in brokers:
            await broker.close()
    assert len(posted) == 96
    assert sorted(received) == sorted(posted)
    assert len(received) == len(set(received))
