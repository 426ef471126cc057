"""Websocket streams through the SDK and raw sockets: replay, live, resume, access changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from broker.client import ApiError, BrokerClient, Received, SealedError, SignatureError, StreamClosed
from broker.crypto.keys import new_sealing_key, new_signing_key, public_b64
from broker.services import admin, alliances, publishing
from broker.web.ws import StreamSession
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, events, eventually, streaming

TIMEOUT = 20


async def take(stream: AsyncIterator[Received], n: int) -> list[Received]:
    got: list[Received] = []
    async with asyncio.timeout(TIMEOUT):
        async for item in stream:
            got.append(item)
            if len(got) == n:
                break
    return got


async def publish_many(api: Api, token: str, n: int, blob: str = "", **kw: Any) -> list[str]:
    ids = []
    for i in range(n):
        payload: dict[str, Any] = {"n": i, "blob": blob} if blob else {"n": i}
        status, receipt = await api.publish(token, body(payload=payload, **kw))
        assert status == 201
        ids.append(receipt["id"])
    return ids


async def test_replay_then_live_without_gap_or_duplicate_under_concurrent_publishing(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    first = await publish_many(api, usa, 30)
    later: list[str] = []

    async def publish_during_replay() -> None:
        later.extend(await publish_many(api, usa, 30))

    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0)
        publisher = asyncio.create_task(publish_during_replay())
        got = await take(stream, 60)
        await publisher
        await stream.aclose()
    assert [r.id for r in got] == first + later
    sequences = [r.sequence for r in got]
    assert sequences == sorted(set(sequences))
    assert [r.payload["n"] for r in got] == list(range(30)) * 2


async def test_killed_client_reconnects_with_its_cursor_and_misses_nothing(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    expected = await publish_many(api, usa, 10)
    received: list[str] = []
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0, ack=False)
        got = await take(stream, 4)
        await stream.aclose()  # the client dies without acking
    received += [r.id for r in got]
    cursor = got[-1].sequence - 2  # it only persisted an older cursor: some arrive twice
    publisher = asyncio.create_task(publish_many(api, usa, 20))
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=cursor)
        expected_total = 30
        more = await take(stream, expected_total - cursor)
        await stream.aclose()
    expected += await publisher
    received += [r.id for r in more]
    assert set(received) == set(expected)
    assert len(dict.fromkeys(received)) == len(expected)  # exactly once after dedup by id


async def test_acks_are_durable_cursors(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    ids = await publish_many(api, usa, 6)
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(name="ops")
        got = await take(stream, 3)
        await stream.aclose()  # acks for the first two were sent; the third was never acked
    assert [r.id for r in got] == ids[:3]
    async with BrokerClient(api.base_url, swe) as client:
        resumed = await take(client.stream(name="ops"), 4)
        other = await take(client.stream(name="another"), 1)
    assert [r.id for r in resumed] == ids[2:6]
    assert other[0].id == ids[0]


async def test_a_wake_up_as_the_stream_closes_does_not_hold_the_close_answer(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in CI: the hub woke the pump in the same loop iteration as the client's close
    # cancelled it; asyncio.wait_for (3.11) lost the cancel, the pump ran on, and the close
    # answer (sent once the newest ack is stored) waited for the client's 10 s close timeout.
    # The client then resumed from the ack before. Here the wake-up always comes with the close.
    real = StreamSession.receive

    async def receive_then_wake(self: StreamSession) -> None:
        await real(self)
        self.hub.wake()

    monkeypatch.setattr(StreamSession, "receive", receive_then_wake)
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    ids = await publish_many(api, usa, 4)
    for attempt in range(5):
        async with BrokerClient(api.base_url, swe) as client:
            stream = client.stream(name=f"ops{attempt}")
            await take(stream, 2)
            started = asyncio.get_running_loop().time()
            await stream.aclose()  # the first ack was sent
            closed_in = asyncio.get_running_loop().time() - started
        assert closed_in < 5, f"the close answer took {closed_in:.1f} s"
        async with BrokerClient(api.base_url, swe) as client:
            resumed = await take(client.stream(name=f"ops{attempt}"), 3)
        assert [r.id for r in resumed] == ids[1:4]


async def test_topics_filter_streams(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    await publish_many(api, usa, 3, topics=["phishing"])
    wanted = await publish_many(api, usa, 2, topics=["ransomware"])
    async with BrokerClient(api.base_url, swe) as client:
        got = await take(client.stream(after=0, topics=["ransomware"]), 2)
    assert [r.id for r in got] == wanted


async def test_membership_change_applies_to_an_open_stream(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0)
        before = await publish_many(api, usa, 1)
        assert [r.id for r in await take(stream, 1)] == before
        await alliances.leave(api.ctx, "NATO", "SWE", at=None, actor="test")
        hidden = await publish_many(api, usa, 1)
        marker = await publish_many(api, usa, 1, to=["SWE"])
        got = await take(stream, 1)
        await stream.aclose()
    assert [r.id for r in got] == marker
    assert hidden[0] not in [r.id for r in got]


async def test_revocation_closes_open_streams(api: Api) -> None:
    swe, auditor = await api.node("swe-1", "SWE"), await api.node("aud", "BEL", roles=("audit",))
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0)
        consumer = asyncio.create_task(take(stream, 1))
        await streaming(api, auditor, ["swe-1"])
        await admin.revoke_node(api.ctx, "swe-1", actor="test")
        with pytest.raises(StreamClosed) as info:
            async with asyncio.timeout(5):
                await consumer
    assert info.value.code == 4001


async def test_slow_consumer_is_closed_with_4008_and_resumes_losing_nothing(
    start_server: StartServer,
) -> None:
    api = await start_server(stream_queue_size=2)
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    # The frame bound (2) is what overflows, whatever the frames' size: the broker queues the
    # reports it takes for a stream together, before the client could read any of them.
    ids = await publish_many(api, usa, 40, blob="x" * 4000)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{api.base_url}/v1/stream?after=0", headers={"Authorization": f"Bearer {swe}"}, max_msg_size=0
        )

        async def taken() -> bool:  # each report the broker took for the stream has its deliver event
            return len(await events(api.ctx, node="swe-1", action="deliver")) == len(ids)

        # A consumer that reads nothing until the broker has taken every report for it.
        await eventually(taken)
        frames = []
        async with asyncio.timeout(TIMEOUT):
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    frames.append(json.loads(message.data))
        assert ws.close_code == 4008
    delivered = [f["report"]["id"] for f in frames if f["type"] == "report"]
    assert delivered == ids[: len(delivered)] and len(delivered) < len(ids)
    # Each connection of the resumed stream overflows too (two frames each): reconnections
    # paced by the SDK's public delay, at its shortest.
    async with BrokerClient(api.base_url, swe, reconnect_delay=0.02) as client:
        rest = await take(
            client.stream(after=frames[-1]["report"]["sequence"] if delivered else 0),
            len(ids) - len(delivered),
        )
    assert delivered + [r.id for r in rest] == ids


async def test_heartbeats(start_server: StartServer) -> None:
    api = await start_server(stream_heartbeat_seconds=0.3)
    swe = await api.node("swe-1", "SWE")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{api.base_url}/v1/stream", headers={"Authorization": f"Bearer {swe}"}) as ws,
    ):
        async with asyncio.timeout(5):
            assert json.loads((await ws.receive()).data) == {"type": "heartbeat"}


async def test_handshake_refusals_are_problem_documents(api: Api) -> None:
    swe = await api.node("swe-1", "SWE")
    publisher = await api.node("pub", "USA", roles=("publish",))
    assert (await api.get("/v1/stream"))[0] == 401
    assert (await api.get("/v1/stream", publisher))[0] == 403
    status, problem = await api.call("GET", "/v1/stream", swe, headers={"Origin": "https://evil.example"})
    assert status == 403 and problem["type"].endswith("origin_not_allowed")
    assert (await api.get("/v1/stream?name=../x", swe))[0] == 400
    async with BrokerClient(api.base_url, "abk_wrong") as client:
        with pytest.raises(ApiError) as info:
            await take(client.stream(), 1)
    assert info.value.status == 401


async def test_bad_client_message_closes_4400(api: Api) -> None:
    swe = await api.node("swe-1", "SWE")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{api.base_url}/v1/stream", headers={"Authorization": f"Bearer {swe}"}) as ws,
    ):
        await ws.send_str("not json")
        async with asyncio.timeout(5):
            while (await ws.receive()).type != aiohttp.WSMsgType.CLOSE:
                pass
        assert ws.close_code == 4400


async def test_sealed_and_signed_delivery_through_the_sdk(api: Api) -> None:
    signer, sealer = new_signing_key(), new_sealing_key()
    usa = await api.node("usa-1", "USA", ed25519_public_key=public_b64(signer))
    gbr = await api.node("gbr-1", "GBR", x25519_public_key=public_b64(sealer))
    async with (
        BrokerClient(api.base_url, usa, signing_key=signer) as publisher,
        BrokerClient(api.base_url, gbr, sealing_key=sealer) as reader,
    ):
        stream = reader.stream(after=0)
        receipt = await publisher.publish(
            label={"classification": "SECRET", "releasable_to": ["FVEY"]},
            payload={"pattern": "[domain-name:value = 'evil.example']"},
            topics=["c2"],
        )
        got = (await take(stream, 1))[0]
        await stream.aclose()
        assert got.id == receipt["id"] and got.was_sealed and got.verified
        assert got.payload == {"pattern": "[domain-name:value = 'evil.example']"}
        assert (await reader.read(receipt["id"])).verified
    async with BrokerClient(api.base_url, gbr, sealing_key=new_sealing_key()) as wrong_key:
        with pytest.raises(SealedError):
            await wrong_key.read(receipt["id"])
    async with BrokerClient(
        api.base_url, gbr, sealing_key=sealer, trusted_keys={"usa-1": public_b64(new_signing_key())}
    ) as distrustful:
        with pytest.raises(SignatureError):
            await distrustful.read(receipt["id"])


async def test_top_secret_requires_a_sealing_key(api: Api) -> None:
    usa = await api.node("usa-1", "USA", clearance="TOP_SECRET")
    keyless = await api.node("gbr-1", "GBR", clearance="TOP_SECRET")
    keyed = await api.node(
        "gbr-2", "GBR", clearance="TOP_SECRET", x25519_public_key=public_b64(new_sealing_key())
    )
    _, receipt = await api.publish(usa, body("TOP_SECRET", to=["FVEY"]))
    assert (await api.get(f"/v1/reports/{receipt['id']}", keyless))[0] == 404
    status, got = await api.get(f"/v1/reports/{receipt['id']}", keyed)
    assert status == 200 and "sealed" in got
    assert (await events(api.ctx, node="gbr-1", action="read"))[-1]["reason"] == "sealing_required"


async def test_each_delivery_is_audited(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    ids = await publish_many(api, usa, 5)
    async with BrokerClient(api.base_url, swe) as client:
        await take(client.stream(after=0), 5)
    delivered = [e["report"] for e in await events(api.ctx, action="deliver") if e["node"] == "swe-1"]
    assert delivered == ids


async def test_a_report_published_by_another_process_reaches_open_streams(api: Api, settings: Any) -> None:
    from broker.services.context import Context

    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    auditor = await api.node("aud", "BEL", roles=("audit",))
    other = Context.open(settings)  # another broker: its publishes do not wake this server's hub
    try:
        async with await_auth(other, usa) as node, BrokerClient(api.base_url, swe) as client:
            stream = client.stream(after=0)
            consumer = asyncio.create_task(take(stream, 1))
            await streaming(api, auditor, ["swe-1"])
            receipt = await publishing.publish(other, node, body(), idempotency_key=None)
            got = await consumer
            await stream.aclose()
        assert got[0].id == receipt["id"]
    finally:
        await other.close()


@contextlib.asynccontextmanager
async def await_auth(ctx: Any, token: str) -> AsyncIterator[Any]:
    from broker.services.auth import authenticate

    yield await authenticate(ctx, token, source="test")


async def test_replay_from_the_database_then_live_from_the_feed(start_server: StartServer) -> None:
    first = await start_server()
    usa, swe = await first.node("usa-1", "USA"), await first.node("swe-1", "SWE")
    old = await publish_many(first, usa, 5)
    api = await start_server()  # a broker started after those reports: its feed begins above them
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0)
        replayed = await take(stream, 5)
        live = await publish_many(api, usa, 3)
        got = await take(stream, 3)
        await stream.aclose()
    assert [r.id for r in replayed] == old
    assert [r.id for r in got] == live


async def test_recall_applies_to_open_streams(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    async with BrokerClient(api.base_url, swe) as client:
        stream = client.stream(after=0, topics=["late"])
        recalled = (await api.publish(usa, body(topics=["late"])))[1]["id"]
        await api.call("POST", f"/v1/reports/{recalled}/recall", usa)
        kept = (await api.publish(usa, body(topics=["late"])))[1]["id"]
        got = await take(stream, 1)
        await stream.aclose()
    # the stream may have delivered the first report before the recall; it must never follow one
    assert got[0].id in (recalled, kept)
    async with BrokerClient(api.base_url, swe) as client:
        replay = await take(client.stream(after=0, topics=["late"]), 1)
    assert [r.id for r in replay] == [kept]


async def test_one_feed_serves_open_and_sealed_recipients_each_their_own_copy(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    keys = {"gbr-1": None, "can-1": None, "fra-1": new_sealing_key(), "deu-1": new_sealing_key()}
    nations = {"gbr-1": "GBR", "can-1": "CAN", "fra-1": "FRA", "deu-1": "DEU"}
    tokens = {
        node: await api.node(node, nations[node], **({"x25519_public_key": public_b64(k)} if k else {}))
        for node, k in keys.items()
    }
    auditor = await api.node("aud", "BEL", roles=("audit",))
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            node: await stack.enter_async_context(
                BrokerClient(api.base_url, tokens[node], sealing_key=keys[node])
            )
            for node in keys
        }
        streams = {node: client.stream(after=0) for node, client in clients.items()}
        firsts = {node: asyncio.ensure_future(take(s, 2)) for node, s in streams.items()}
        await streaming(api, auditor, list(keys))  # every stream is live before anything is published
        ids = await publish_many(api, usa, 2)
        got = {node: await first for node, first in firsts.items()}
        for stream in streams.values():
            await stream.aclose()
    for node, received in got.items():
        assert [r.id for r in received] == ids
        assert [r.payload for r in received] == [{"n": 0}, {"n": 1}]  # opened with its own key
        assert all(r.was_sealed == (keys[node] is not None) for r in received)
