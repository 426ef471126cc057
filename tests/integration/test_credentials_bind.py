"""Every act, deliveries included, is decided against the credential it authenticated with.

A stream opened with a token closes 4001 when that token is rotated or expires, or when the node
loses the subscribe role; a REST act made with rights another process has just taken away is
refused and audited. ``api.ctx`` is another process's view of the same database (the CLI): the
serving broker learns of its changes only through the database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from broker.services import admin
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import body, events

TIMEOUT = 20


async def _frames_until_close(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Every report frame received until the server closes the stream."""
    reports: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return reports
            frame = message.json()
            if frame["type"] == "report":
                reports.append(frame["report"])


async def _one_report(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = await ws.receive_json()
            if frame["type"] == "report":
                report: dict[str, Any] = frame["report"]
                return report


async def _stream_refusals(api: Api, node: str) -> list[str]:
    found = await events(api.ctx, node=node, action="stream", decision="deny")
    return [e["reason"] for e in found]


async def _lapse(
    api: Api, publisher: str, subscriber: str, change: Callable[[], Awaitable[object]]
) -> int | None:
    """Open a stream with ``subscriber``, receive one report, make ``change`` (through another
    process's view of the database), publish once more: that report must never arrive, and the
    stream must close. Returns the close code."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{api.base_url}/v1/stream?after=0", headers={"Authorization": f"Bearer {subscriber}"}
        ) as ws,
    ):
        assert (await api.publish(publisher, body(payload={"n": 1})))[0] == 201
        await _one_report(ws)
        await change()
        assert (await api.publish(publisher, body(payload={"n": 2})))[0] == 201
        assert await _frames_until_close(ws) == []
        return ws.close_code


async def test_a_rotated_token_closes_its_open_stream(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    assert await _lapse(api, usa, swe, lambda: admin.rotate_token(api.ctx, "swe-1", actor="test")) == 4001
    assert await _stream_refusals(api, "swe-1") == ["token_replaced"]


async def test_an_expired_token_closes_its_open_stream(api: Api, clock: FakeClock) -> None:
    usa = await api.node("usa-1", "USA")
    spec = {"id": "swe-1", "nation": "SWE", "clearance": "SECRET", "roles": ["subscribe"], "token_days": 1}
    swe = (await admin.add_node(api.ctx, spec, actor="test"))["token"]

    async def expire() -> None:
        clock.advance(days=1, seconds=1)

    assert await _lapse(api, usa, swe, expire) == 4001
    assert await _stream_refusals(api, "swe-1") == ["token_expired"]


async def test_a_node_that_loses_the_subscribe_role_loses_its_stream(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    demote = lambda: admin.update_node(api.ctx, "swe-1", {"roles": ["publish"]}, actor="test")  # noqa: E731
    assert await _lapse(api, usa, swe, demote) == 4001
    assert await _stream_refusals(api, "swe-1") == ["missing_role"]


async def test_roles_taken_away_by_another_process_bind_the_next_act(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body(payload={"n": 1})))[0] == 201  # the record is now cached
    status, listed = await api.get("/v1/reports", usa)
    assert status == 200 and len(listed["reports"]) == 1
    report_id = listed["reports"][0]["id"]

    await admin.update_node(api.ctx, "usa-1", {"roles": ["subscribe"]}, actor="test")
    status, problem = await api.publish(usa, body(payload={"n": 2}))
    assert (status, problem["type"].rsplit(":", 1)[-1]) == (403, "missing_role")
    status, problem = await api.call("POST", f"/v1/reports/{report_id}/recall", usa)
    assert (status, problem["type"].rsplit(":", 1)[-1]) == (403, "missing_role")

    await admin.update_node(api.ctx, "usa-1", {"roles": ["publish"]}, actor="test")
    status, problem = await api.get("/v1/reports", usa)
    assert (status, problem["type"].rsplit(":", 1)[-1]) == (403, "missing_role")
    status, problem = await api.get(f"/v1/reports/{report_id}", usa)
    assert (status, problem["type"].rsplit(":", 1)[-1]) == (403, "missing_role")

    refused = await events(api.ctx, node="usa-1", decision="deny")
    assert {(e["action"], e["reason"]) for e in refused} == {
        ("publish", "missing_role"),
        ("recall", "missing_role"),
        ("list", "missing_role"),
        ("read", "missing_role"),
    }
    assert len((await api.get("/v1/reports", await api.node("swe-1", "SWE")))[1]["reports"]) == 1
