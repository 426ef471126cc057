"""The security review's findings (issue 9), one test or more each, on both engines.

Each of these failed on the code before the fix: a revoked node acting through a cache or on
another instance, listings that moved past hidden reports, 409s for another node's id, audit
events naming a raw path instead of the report, one durable write per bad token or ack, streams
unbounded in bytes and count, 500s for a non-UTF-8 token or a deeply nested ack.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from broker.client import BrokerClient
from broker.crypto.tokens import hash_token
from broker.services import admin, publishing
from tests.integration.conftest import Api, StartServer
from tests.integration.faults import stream_slots
from tests.integration.helpers import Cli, body, events, eventually, publish_acts, report_count, streaming

TIMEOUT = 20


async def _audit_size(api: Api) -> int:
    async with api.ctx.db.transaction() as tx:
        return await tx.audit_size()


# -- 1 and 2: revocation binds every act, on every instance, at once ----------------------------


async def test_a_record_read_before_a_revocation_is_never_cached_after_it(api: Api) -> None:
    """The write-back race of finding 1, made deterministic: a node record read before a
    revocation arrives after the process has seen the revocation's counter."""
    usa = await api.node("usa-1", "USA")
    ctx = api.server_ctx
    async with ctx.db.transaction() as tx:
        counter = await tx.change_counter()
        stale = await tx.node("usa-1")
    assert stale is not None
    stale = replace(stale, version=counter)
    await admin.revoke_node(api.ctx, "usa-1", actor="cli")
    assert (await api.get("/v1/alliances", usa))[0] == 401  # the server now saw the new counter
    ctx.remember(hash_token(usa), stale)  # the slow reader's late write-back
    assert hash_token(usa) not in ctx.tokens
    assert (await api.get("/v1/reports", usa))[0] == 401


async def test_a_revoked_node_is_refused_on_another_instance_at_once(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()  # two brokers, one database
    usa, root = await a.node("usa-1", "USA"), await a.node("root", "BEL", roles=("admin",))
    _, receipt = await a.publish(usa, body())
    assert (await b.get(f"/v1/reports/{receipt['id']}", usa))[0] == 200  # cached on b
    assert (await a.call("POST", "/v1/admin/nodes/usa-1/revoke", root))[0] == 200
    assert (await b.get(f"/v1/reports/{receipt['id']}", usa))[0] == 401
    assert (await b.publish(usa, body()))[0] == 401
    assert (await b.call("POST", f"/v1/reports/{receipt['id']}/recall", usa))[0] == 401
    assert await report_count(a.ctx) == 1
    allowed = [e for e in await events(a.ctx, decision="allow") if e["actor"] == "usa-1"]
    assert [e["action"] for e in allowed] == ["publish", "read"]


async def _stream_closes_after_revoke(via: Api, on: Api) -> float:
    """Seconds from the revoke's answer (through ``via``) to the close of a stream on ``on``."""
    swe, root = await via.node("swe-1", "SWE"), await via.node("root", "BEL", roles=("admin",))
    auditor = await via.node("aud", "BEL", roles=("audit",))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{on.base_url}/v1/stream", headers={"Authorization": f"Bearer {swe}"})
        await streaming(on, auditor, ["swe-1"])  # the stream is open and idle
        assert (await via.call("POST", "/v1/admin/nodes/swe-1/revoke", root))[0] == 200
        answered = time.monotonic()
        async with asyncio.timeout(TIMEOUT):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        closed = time.monotonic()
        assert ws.close_code == 4001
    return closed - answered


async def test_a_revoke_closes_open_streams_on_the_same_instance(api: Api) -> None:
    # The requirement is 100 ms; the test allows for a loaded CI machine (bench.revoke measures).
    assert await _stream_closes_after_revoke(api, api) < 1.0


async def test_a_revoke_closes_open_streams_on_another_instance(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    assert await _stream_closes_after_revoke(a, b) < 1.0


async def test_a_leave_binds_the_next_read_on_another_instance(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    usa, tur = await a.node("usa-1", "USA"), await a.node("tur-1", "TUR")
    root = await a.node("root", "BEL", roles=("admin",))
    _, receipt = await a.publish(usa, body(to=["NATO"]))
    path = f"/v1/reports/{receipt['id']}"
    assert (await b.get(path, tur))[0] == 200
    assert (await a.call("DELETE", "/v1/admin/alliances/NATO/members/TUR", root))[0] == 200
    assert (await b.get(path, tur))[0] == 404


# -- 3: no oracle in listings or conflicts ------------------------------------------------------


async def test_listing_answers_do_not_change_when_hidden_reports_are_published(api: Api) -> None:
    usa, rus = await api.node("usa-1", "USA"), await api.node("rus-1", "RUS")
    queries = ["/v1/reports", "/v1/reports?topics=ransomware", "/v1/reports?after=0&limit=1"]
    before = [await api.get(q, rus) for q in queries]
    for _ in range(3):
        assert (await api.publish(usa, body(to=["NATO"])))[0] == 201
    after = [await api.get(q, rus) for q in queries]
    assert before == after == [(200, {"reports": [], "next_after": 0})] * 3


async def test_listing_cursor_names_only_what_the_node_sees(start_server: StartServer) -> None:
    api = await start_server(max_scan_rows=4)
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    _, seen = await api.publish(usa, body(to=["NATO"]))
    for _ in range(10):
        await api.publish(usa, body(to=["USA"]))  # hidden from SWE
    _, later = await api.publish(usa, body(to=["NATO"]))
    status, page = await api.get(f"/v1/reports?after={seen['sequence']}", swe)
    assert status == 200 and page == {"reports": [], "next_after": seen["sequence"]}  # nothing moved
    for _ in range(5):  # each identical request scans on from where the last one stopped
        _, page = await api.get(f"/v1/reports?after={seen['sequence']}", swe)
        if page["reports"]:
            break
    assert [r["id"] for r in page["reports"]] == [later["id"]]
    assert page["next_after"] == later["sequence"]


async def test_another_nodes_report_id_is_neither_refused_nor_revealed(api: Api) -> None:
    usa, rus = await api.node("usa-1", "USA"), await api.node("rus-1", "RUS")
    chosen = str(uuid.uuid4())
    _, mine = await api.publish(usa, {**body(to=["USA"]), "id": chosen})
    status, theirs = await api.publish(rus, {**body(to=["RUS"]), "id": chosen})
    assert status == 201 and theirs["id"] != mine["id"]
    assert (await api.get(f"/v1/reports/{mine['id']}", rus))[0] == 404


# -- 4: one canonical id in lookups and in the log ----------------------------------------------


@pytest.mark.parametrize("spell", [str.upper, lambda i: f"urn:uuid:{i}", lambda i: i.replace("-", "")])
async def test_probes_are_audited_under_the_canonical_id(api: Api, spell: Any) -> None:
    usa, rus = await api.node("usa-1", "USA"), await api.node("rus-1", "RUS")
    _, receipt = await api.publish(usa, body(to=["USA"]))
    rid = receipt["id"]
    assert (await api.get(f"/v1/reports/{spell(rid)}", rus))[0] == 404
    assert (await api.call("POST", f"/v1/reports/{spell(rid)}/recall", rus))[0] == 404
    assert (await api.get(f"/v1/reports/{spell(rid)}", usa))[0] == 200
    denied = await events(api.ctx, node="rus-1", decision="deny")
    assert [(e["action"], e["report"], e["reason"]) for e in denied] == [
        ("read", rid, "not_releasable"),
        ("recall", rid, "not_found"),
    ]
    assert (await api.call("POST", f"/v1/reports/{spell(rid)}/recall", usa))[0] == 200
    assert [e["report"] for e in await events(api.ctx, action="recall")] == [rid, rid]


# -- 5: no amplification ------------------------------------------------------------------------


async def test_bad_tokens_are_limited_per_source_and_written_once_per_window(
    start_server: StartServer,
) -> None:
    api = await start_server(auth_failure_burst=10, auth_failures_per_second=1)
    before = await _audit_size(api)
    statuses = [(await api.get("/v1/reports", "abk_" + "B" * 43))[0] for _ in range(30)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    assert await _audit_size(api) == before  # nothing written per request
    await api.flush_auth_failures()
    assert await _audit_size(api) == before + 1
    (event,) = await events(api.ctx, action="authenticate")
    assert event["reason"] == "unknown_token" and event["node"] is None


_SESSIONS: dict[aiohttp.ClientWebSocketResponse, aiohttp.ClientSession] = {}  # each stream's own


async def _ws(api: Api, token: str, query: str = "") -> aiohttp.ClientWebSocketResponse:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(
        f"{api.base_url}/v1/stream{query}", headers={"Authorization": f"Bearer {token}"}
    )
    _SESSIONS[ws] = session
    return ws


async def _close(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.close()
    await _SESSIONS.pop(ws).close()


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(TIMEOUT):
        while (message := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
            frames.append(json.loads(message.data))
    return frames


async def test_an_ack_above_what_was_delivered_closes_the_stream_and_is_not_stored(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    _, receipt = await api.publish(usa, body())
    ws = await _ws(api, swe, "?name=ops")
    frame = json.loads((await ws.receive()).data)
    assert frame["report"]["sequence"] == receipt["sequence"]
    await ws.send_str(json.dumps({"type": "ack", "sequence": receipt["sequence"] + 1000}))
    await _until_closed(ws)
    assert ws.close_code == 4400
    await _close(ws)
    async with api.ctx.db.transaction() as tx:
        assert await tx.cursor(node="swe-1", name="ops") is None


async def test_acks_are_coalesced_and_the_newest_is_kept(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    sequences = [(await api.publish(usa, body()))[1]["sequence"] for _ in range(5)]
    ws = await _ws(api, swe, "?name=ops&after=0")
    for _ in sequences:
        await ws.receive()
    before = await _audit_size(api)
    for _ in range(200):  # a flood of acks: memory updates, then one write at most per flush
        for seq in sequences:
            await ws.send_str(json.dumps({"type": "ack", "sequence": seq}))
    await _close(ws)
    async with api.ctx.db.transaction() as tx:
        assert await tx.cursor(node="swe-1", name="ops") == sequences[-1]
    assert await _audit_size(api) == before  # acks write cursors, never audit events


async def test_admins_show_and_reset_stream_cursors(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    root = await api.node("root", "BEL", roles=("admin",))
    _, receipt = await api.publish(usa, body())
    ws = await _ws(api, swe, "?name=ops")
    await ws.receive()
    await ws.send_str(json.dumps({"type": "ack", "sequence": receipt["sequence"]}))
    await _close(ws)
    status, shown = await api.get("/v1/admin/nodes/swe-1/cursors", root)
    assert status == 200 and [(c["name"], c["sequence"]) for c in shown["cursors"]] == [
        ("ops", receipt["sequence"])
    ]
    assert (await api.call("DELETE", "/v1/admin/nodes/swe-1/cursors/ops", root))[0] == 200
    assert (await api.call("DELETE", "/v1/admin/nodes/swe-1/cursors/ops", root))[0] == 404
    assert (await api.get("/v1/admin/nodes/swe-1/cursors", root))[1]["cursors"] == []
    assert [e["action"] for e in await events(api.ctx, node="swe-1") if e["action"].startswith("cursor")] == [
        "cursor_list",
        "cursor_reset",
        "cursor_list",
    ]


# -- 6: memory bounded in bytes and counts ------------------------------------------------------


async def test_streams_per_node_are_capped(start_server: StartServer) -> None:
    api = await start_server(max_streams_per_node=2)
    swe, auditor = await api.node("swe-1", "SWE"), await api.node("aud", "BEL", roles=("audit",))
    open_ = [await _ws(api, swe), await _ws(api, swe)]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{api.base_url}/v1/stream", headers={"Authorization": f"Bearer {swe}"})
    assert refused.value.status == 429
    await _close(open_.pop())

    async def one_slot_held() -> bool:
        return stream_slots((await api.get("/metrics", auditor))[1]) == {"swe-1": 1.0}

    await eventually(one_slot_held)
    open_.append(await _ws(api, swe))  # a slot is free again
    for ws in open_:
        await _close(ws)


async def test_stream_queues_are_bounded_in_bytes(start_server: StartServer) -> None:
    api = await start_server(stream_queue_bytes=64 * 1024, stream_queue_size=1000)
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    for i in range(30):
        await api.publish(usa, body(payload={"n": i, "blob": "y" * 200_000}))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{api.base_url}/v1/stream?after=0", headers={"Authorization": f"Bearer {swe}"}, max_msg_size=0
        )
        await asyncio.sleep(1.5)  # read nothing: far fewer than 1,000 frames fill 64 KiB
        frames = await _until_closed(ws)
        assert ws.close_code == 4008
    assert len(frames) < 30


async def test_listing_pages_are_bounded_in_bytes(start_server: StartServer) -> None:
    api = await start_server(max_page_bytes=64 * 1024)
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    for i in range(8):
        await api.publish(usa, body(payload={"n": i, "blob": "z" * 30_000}))
    _, page = await api.get("/v1/reports?limit=100", swe)
    assert 1 <= len(page["reports"]) <= 3
    _, rest = await api.get(f"/v1/reports?limit=100&after={page['next_after']}", swe)
    assert rest["reports"][0]["sequence"] > page["next_after"]


# -- 7: 4xx, never 500 --------------------------------------------------------------------------


async def test_a_token_that_is_not_ascii_is_a_401(api: Api) -> None:
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    token = b"\xff\xfe\xc3\x28"
    writer.write(b"GET /v1/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401"


async def test_a_deeply_nested_ack_is_a_protocol_error(api: Api) -> None:
    swe = await api.node("swe-1", "SWE")
    ws = await _ws(api, swe)
    await ws.send_str("[" * 30_000 + "]" * 30_000)
    await _until_closed(ws)
    assert ws.close_code == 4400
    await _close(ws)


async def test_a_trickling_body_is_cut_off(start_server: StartServer) -> None:
    api = await start_server(body_read_timeout_seconds=1.0)
    usa = await api.node("usa-1", "USA")
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    writer.write(
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {usa}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"label": '
    )
    await writer.drain()
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"408"
    assert await report_count(api.ctx) == 0


async def test_a_revoked_node_cannot_publish_through_a_batch_that_began_before(api: Api) -> None:
    """A publish authenticated before the revocation but stored after it is refused: the batch
    re-checks its nodes under the head lock."""
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201  # cached on the server
    await admin.revoke_node(api.ctx, "usa-1", actor="cli")
    async with BrokerClient(api.base_url, usa) as client:
        results = await asyncio.gather(
            *(client.publish(label=body()["label"], payload={"n": i}) for i in range(5)),
            return_exceptions=True,
        )
    assert all(isinstance(r, Exception) for r in results)
    assert await report_count(api.ctx) == 1


# -- 10: the publish rate limit holds across instances ------------------------------------------


async def test_the_publish_limit_holds_across_instances(start_server: StartServer, database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("a SQLite file is served by one broker process: its own token bucket is the limit")
    a = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    b = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await a.node("usa-1", "USA")
    statuses = [(await api.publish(usa, body()))[0] for api in (a, b) for _ in range(5)]
    assert sorted(statuses) == [201] * 5 + [429] * 5  # each instance alone would grant 5
    assert await report_count(a.ctx) == 5
    denied = await events(a.ctx, action="publish", decision="deny")
    assert {e["reason"] for e in denied} == {"rate_limited"}


async def test_the_publish_limit_counts_what_committed_while_it_waited_for_the_lock(
    start_server: StartServer, database_url: str
) -> None:
    # One broker holds the head while it stores a node's whole burst; another broker's publish for
    # the same node waits for the head meanwhile. Its count must include the burst that committed
    # while it waited. (A count inside the locking statement read a snapshot taken before the
    # wait: it saw none of them and granted a second burst.)
    if database_url.startswith("sqlite"):
        pytest.skip("a SQLite file is served by one broker process: its own token bucket is the limit")
    other = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await other.node("usa-1", "USA")
    limits = replace(other.ctx.settings, publish_burst=5, publish_rate_per_second=1.0)
    ctx = replace(other.ctx, settings=limits)  # another process's view, with the same limit
    acts = await publish_acts(ctx, usa, 5)
    waiting: asyncio.Task[tuple[int, Any]] | None = None
    async with ctx.db.transaction() as tx:
        stored = await publishing.store_publishes(ctx, tx, acts)
        assert all(not isinstance(r, Exception) for r in stored)
        waiting = asyncio.create_task(other.publish(usa, body()))  # queues on the head row
        await asyncio.sleep(0.5)  # an absence over a bounded window: the publish still waits
        assert not waiting.done()
    status, _ = await waiting
    assert status == 429
    assert await report_count(other.ctx) == 5


async def test_erase_accepts_every_spelling_of_an_id_and_logs_the_canonical_one(
    api: Api, settings: Any, tmp_path: Any, cli: Cli
) -> None:
    usa = await api.node("usa-1", "USA")
    _, receipt = await api.publish(usa, body())
    rid = receipt["id"]
    cli.use(settings.database_url, settings.keyring_path)
    done = await asyncio.to_thread(cli.ok, "report", "erase", f"urn:uuid:{rid.upper()}", "--json")
    assert json.loads(done.stdout) == {"id": rid, "erased": True}
    assert [e["report"] for e in await events(api.ctx, action="erase")] == [rid]
    assert (await api.get(f"/v1/reports/{rid}", usa))[0] == 404
