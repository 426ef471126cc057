"""Read-path red team (a hostile member node): what it is sent must not depend on reports it may
not see, and every refusal it meets is on the record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import aiohttp

from tests.integration.conftest import StartServer
from tests.integration.helpers import body, events
from tests.integration.test_taxii import TAXII, collection_id, indicator, raw

HEARTBEAT = 0.8


async def _frames_while(api: Any, token: str, seconds: float, during: Any) -> list[dict[str, Any]]:
    """The frames a stream of ``token``'s node receives in ``seconds`` while ``during`` runs."""
    frames: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{api.base_url}/v1/stream", headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        task = asyncio.create_task(during())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async for message in ws:
                    frames.append(json.loads(message.data))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return frames


async def test_heartbeats_keep_their_pace_while_hidden_reports_are_published(
    start_server: StartServer,
) -> None:
    # A wake-up for a report the node may not see once put its next heartbeat off by a whole
    # interval: a run of hidden publishes silenced its stream, and the first heartbeat after it
    # came one interval after the last of them (when, to the millisecond, they were published).
    api = await start_server(stream_heartbeat_seconds=HEARTBEAT)
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")

    async def hidden() -> None:
        while True:  # SECRET REL USA: GBR may not see it
            status, _ = await api.publish(usa, body(to=["USA"]))
            assert status == 201
            await asyncio.sleep(0.1)

    frames = await _frames_while(api, gbr, 4 * HEARTBEAT, hidden)
    assert all(f == {"type": "heartbeat"} for f in frames), frames
    assert len(frames) >= 3, frames  # about one per interval, as with nothing published


async def test_another_nodes_status_is_404_and_on_the_record(start_server: StartServer) -> None:
    api = await start_server()
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    cid = await collection_id(api)
    envelope = json.dumps({"objects": [indicator(1)]}).encode()
    path = f"/taxii2/api/collections/{cid}/objects/"
    post = {"Content-Type": TAXII}
    status, _, posted = await raw(api, "POST", path, token=usa, headers=post, data=envelope)
    assert status == 202, posted
    mine = f"/taxii2/api/status/{posted['id']}/"
    assert (await raw(api, "GET", mine, token=usa))[0] == 200
    theirs = await raw(api, "GET", mine, token=gbr)
    absent = await raw(api, "GET", f"/taxii2/api/status/{uuid.uuid4()}/", token=gbr)
    assert theirs[0] == absent[0] == 404
    assert theirs[2]["error_code"] == absent[2]["error_code"] == "not_found"
    denials = [e for e in await events(api.ctx, decision="deny") if e["node"] == "gbr"]
    assert [(e["action"], e["reason"]) for e in denials] == [("read", "not_found")] * 2


async def test_an_unknown_collection_is_404_and_on_the_record(start_server: StartServer) -> None:
    """Every collection is listed to every node, so a 404 for an unknown one reveals nothing; but
    it is a refusal, and every refusal is audited (it was not)."""
    api = await start_server()
    usa = await api.node("usa", "USA", roles=("publish", "subscribe"))
    unknown = f"/taxii2/api/collections/{uuid.uuid4()}"
    envelope = json.dumps({"objects": [indicator(1)]}).encode()
    post = {"Content-Type": TAXII}
    answers = [
        await raw(api, "GET", f"{unknown}/", token=usa),
        await raw(api, "GET", f"{unknown}/objects/", token=usa),
        await raw(api, "POST", f"{unknown}/objects/", token=usa, headers=post, data=envelope),
        await raw(api, "DELETE", f"{unknown}/objects/{indicator(1)['id']}/", token=usa),
    ]
    assert [status for status, _, _ in answers] == [404] * 4
    denials = [e for e in await events(api.ctx, decision="deny") if e["node"] == "usa"]
    assert [(e["action"], e["reason"]) for e in denials] == [
        ("read", "not_found"),
        ("read", "not_found"),
        ("publish", "not_found"),
        ("recall", "not_found"),
    ]
