"""One node recalling in a loop must not disturb anybody else (issue 19, finding 1).

A recall concerns one report: it must not make every other decision on every broker stale. A
recall of a report already recalled changes nothing and moves nothing; recalls are limited per
node; and while one node recalls its own reports as fast as it can, another node's listings all
answer 200 and its stream receives every report, without being closed."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, events

TIMEOUT = 60
OWN = 50  # the storming node's reports: each recalled twice


async def _counter(api: Api) -> int:
    async with api.ctx.db.read_transaction() as tx:
        return await tx.change_counter()


async def test_recalling_a_recalled_report_moves_nothing(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    report_id = (await api.publish(usa, body()))[1]["id"]
    assert (await api.call("POST", f"/v1/reports/{report_id}/recall", usa))[0] == 200
    before = await _counter(api)
    for _ in range(3):
        assert (await api.call("POST", f"/v1/reports/{report_id}/recall", usa))[0] == 200
    assert await _counter(api) == before
    recalls = await events(api.ctx, report=report_id, action="recall")
    assert [e["reason"] for e in recalls] == [
        "allowed",
        "already_recalled",
        "already_recalled",
        "already_recalled",
    ]


async def test_recalls_are_limited_per_node(start_server: StartServer) -> None:
    api = await start_server(recall_burst=3, recall_rate_per_second=1)
    usa, gbr = await api.node("usa-1", "USA"), await api.node("gbr-1", "GBR")
    report_id = (await api.publish(usa, body()))[1]["id"]
    statuses = [(await api.call("POST", f"/v1/reports/{report_id}/recall", usa))[0] for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    other = (await api.publish(gbr, body()))[1]["id"]
    assert (await api.call("POST", f"/v1/reports/{other}/recall", gbr))[0] == 200  # its own bucket


async def test_a_recall_storm_leaves_other_nodes_listings_and_streams_alone(
    start_server: StartServer,
) -> None:
    # Limits off for the storm: real changes as fast as one node can make them.
    api = await start_server(recall_burst=100_000, recall_rate_per_second=100_000)
    storm, usa, swe = (
        await api.node("fra-1", "FRA"),
        await api.node("usa-1", "USA"),
        await api.node("swe-1", "SWE"),
    )
    published = [api.publish(storm, body(payload={"n": i})) for i in range(OWN)]
    own = [answer["id"] for _, answer in await asyncio.gather(*published)]
    stop = asyncio.Event()
    recalled = 0
    progress = asyncio.Event()  # set by each recall answered

    async def recall_loop() -> None:
        nonlocal recalled
        # each report once (a real change), then again (a change that changes nothing)
        for i in range(2 * len(own)):
            status, _ = await api.call("POST", f"/v1/reports/{own[i % len(own)]}/recall", storm)
            assert status == 200
            recalled += 1
            progress.set()

    async def storm_at(count: int) -> None:
        while recalled < count:
            progress.clear()
            await progress.wait()

    statuses: list[int] = []
    latencies: list[float] = []

    async def list_loop() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            status, _ = await api.get("/v1/reports?limit=50", swe)
            latencies.append(time.perf_counter() - started)
            statuses.append(status)

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{api.base_url}/v1/stream?after={len(own)}", headers={"Authorization": f"Bearer {swe}"}
        ) as ws,
    ):
        storming = asyncio.create_task(recall_loop())
        listing = asyncio.create_task(list_loop())
        received: list[int] = []
        async with asyncio.timeout(TIMEOUT):
            for i in range(20):  # spread over the whole storm, the real recalls and the repeats
                await storm_at(i * 2 * len(own) // 20)
                assert (await api.publish(usa, body(payload={"m": i})))[0] == 201
            while len(received) < 20:
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.TEXT, (message.type, ws.close_code)
                frame = message.json()
                if frame["type"] == "report":
                    received.append(frame["report"]["sequence"])
            await storming
        stop.set()
        await listing
    assert received == sorted(set(received)) and len(received) == 20
    assert statuses and set(statuses) == {200}, statuses
    assert recalled == 2 * len(own)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(f"storm: {recalled} recalls; {len(statuses)} listings, all 200, p99 {p99:.1f} ms")
