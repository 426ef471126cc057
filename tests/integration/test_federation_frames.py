"""Frames an upstream signed that this broker cannot store, and frames too large to read.

A frame with an unreadable ``created``, topics a publish could not carry, an id that is no
canonical UUID or an originator id no node could have passed every check outside the import's
transaction and failed inside it: the whole batch rolled back, the link reconnected and got the
same frame again, forever, and nothing behind it was imported. Each is refused now
(``malformed_frame``, audited, the cursor moved) and the link goes on.

A frame was read whatever its size (aiohttp's 4 MiB default), and up to 64 were parsed at once:
a peer could make the broker hold gigabytes. A frame larger than a publish may be
(``server.max_body_bytes``, with room for the attestations) is not read: the link fails."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from broker.services import ledger, peers
from tests.integration.conftest import Api, StartServer
from tests.integration.federation import (
    Originator,
    Pki,
    StreamDouble,
    Upstream,
    import_frames,
    make_pki,
    report_frame,
    server_context,
)
from tests.integration.helpers import eventually, report_count

NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
UPSTREAM = Upstream("usa.example/broker")
USA = Originator("usa-analyst", "USA")


async def test_frames_the_broker_cannot_store_are_refused_and_the_link_goes_on(
    api: Api, tmp_path: Path
) -> None:
    frames = [
        report_frame(UPSTREAM, USA, sequence=1, label=NATO, created="last tuesday"),
        report_frame(UPSTREAM, USA, sequence=2, label=NATO, topics=["t" * 100]),
        report_frame(UPSTREAM, USA, sequence=3, label=NATO, topics=[f"t{i}" for i in range(40)]),
        report_frame(UPSTREAM, USA, sequence=4, label=NATO, report_id="not-a-uuid"),
        report_frame(UPSTREAM, USA, sequence=5, label=NATO, report_id="6F0C6C1E-5A8E-4D8B-9C1A-2B3C4D5E6F70"),
        report_frame(UPSTREAM, Originator("usa analyst\n", "USA"), sequence=6, label=NATO),
        report_frame(UPSTREAM, USA, sequence=7, label=NATO),
    ]
    acks = await import_frames(api.ctx, tmp_path, frames, vkey=UPSTREAM.vkey)
    assert max(acks) == 7
    async with api.ctx.db.read_transaction() as tx:
        imports = [ledger.event_json(e) for e in await tx.events(limit=100, action="import")]
    decided = [(e["details"]["upstream_sequence"], e["decision"], e["reason"]) for e in imports]
    assert decided == [
        *((n, "deny", "malformed_frame") for n in range(1, 7)),
        (7, "allow", "imported"),
    ]
    assert await report_count(api.ctx) == 1


# The link fails in the puller's websocket reader (the frame's size) or its HTTP client (the
# silent upstream), before any import transaction: one engine is enough. The failed state is
# written by the same statement as every link state (test_federation sees it on both engines).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_frame_larger_than_a_publish_may_be_is_not_read(
    start_server: StartServer, tmp_path: Path
) -> None:
    api = await start_server(max_body_bytes=64 * 1024)
    big = report_frame(UPSTREAM, USA, sequence=1, label=NATO, payload={"type": "note", "text": "x" * 200_000})
    found = make_pki(tmp_path)
    double = StreamDouble(found)
    double.frames = [big]
    url = await double.start()
    try:
        listed = await _link_fails(api, found, url, seconds=10.0)
    finally:
        await double.stop()
    assert double.acks == []
    assert await report_count(api.ctx) == 0
    assert "too big" in (listed["last_error"] or "").lower() or "1009" in (listed["last_error"] or ""), listed


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_upstream_that_never_answers_the_stream_fails_the_link_in_time(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The upstream accepts the connection and the request, then says nothing: the link waited
    for its answer for ever, ``connecting`` with no error. It fails within
    ``server.request_head_timeout_seconds`` now, and is retried."""
    api = await start_server(request_head_timeout_seconds=1.0)
    found = make_pki(tmp_path)
    never = asyncio.Event()

    async def silent(_request: web.Request) -> web.StreamResponse:
        await never.wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/v1/stream", silent)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(found))
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        listed = await _link_fails(api, found, url, seconds=5.0)
    finally:
        never.set()
        await runner.cleanup()
    assert "Timeout" in (listed["last_error"] or "")


async def _link_fails(api: Api, found: Pki, url: str, *, seconds: float) -> dict[str, Any]:
    """Peer ``usa`` at ``url``, once ``broker peer list`` shows its link failed (within
    ``seconds``): the peer as listed."""
    cert, key = found.client("nato-link")
    spec = {"name": "usa", "url": url, "ca": found.ca.read_text(), "cert": cert.read_text()}
    link = {**spec, "key": key.read_text(), "origins": ["USA"], "broker_key": UPSTREAM.vkey}
    await peers.add_peer(api.ctx, link, actor="t")

    async def failed() -> bool:
        return [p["state"] for p in await peers.list_peers(api.ctx)] == ["error"]

    await eventually(failed, seconds=seconds)
    return (await peers.list_peers(api.ctx))[0]
