"""A reader's keyring can be newer than the rows it read: an erasure commits, and its KEK is
destroyed (``shred.destroy_retiring``), after the read's snapshot was taken but before the read
takes the process's keyring. The rows it holds are then still wrapped by the destroyed KEK (the
erasure re-wrapped the other reports it wrapped, in rows the snapshot does not see), and neither
the process's keyring nor the keyring file opens them. Such a read is decided again, against
fresh rows, instead of answering 500 for a report nobody erased."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from broker.services import auth, deliver, reports
from broker.services.context import Context
from tests.integration.conftest import Api
from tests.integration.helpers import body, events


async def _two_reports(api: Api, token: str) -> tuple[str, str]:
    """Two reports wrapped by the same KEK (the same period's): the one read, the one erased."""
    ids = []
    for n in range(2):
        status, receipt = await api.publish(token, body(payload={"type": "indicator", "n": n}))
        assert status == 201, receipt
        ids.append(str(receipt["id"]))
    return ids[0], ids[1]


def _erase_after(ctx: Context, method: str, erase: Callable[[], Awaitable[object]]) -> list[bool]:
    """Make ``ctx``'s next read transaction run ``erase`` (to its end, KEK destroyed) right after
    its first call of ``method``: once that statement fixed the read's snapshot (SQLite) or read
    the change counter. Returns a list that holds True once it ran."""
    original = ctx.db.read_transaction
    ran: list[bool] = []

    @asynccontextmanager
    async def reading() -> AsyncIterator[Any]:
        async with original() as tx:
            if not ran:
                first = getattr(tx, method)

                async def then_erase() -> Any:
                    found = await first()
                    if not ran:
                        ran.append(True)
                        await erase()
                    return found

                setattr(tx, method, then_erase)
            yield tx

    ctx.db.read_transaction = reading  # type: ignore[method-assign]
    return ran


# On PostgreSQL a read sees the rows committed before each statement (READ COMMITTED): the
# report read after the erasure is the re-wrapped one.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_read_whose_snapshot_predates_an_erasure_of_another_report_decides_again(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    kept, erased = await _two_reports(api, usa)
    server = api.server_ctx
    # This process erases (as retention does): its keyring is replaced directly.
    ran = _erase_after(server, "decision_state", lambda: reports.erase(server, erased, actor="test"))
    status, doc = await api.get(f"/v1/reports/{kept}", swe)
    assert ran
    assert status == 200, doc  # was 500: the snapshot's row still named the destroyed KEK
    assert doc["payload"] == {"type": "indicator", "n": 0}
    reads = await events(api.ctx, action="read", node="swe-1")
    assert [(e["decision"], e["report"]) for e in reads] == [("allow", kept)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_listing_whose_snapshot_predates_an_erasure_decides_again(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    kept, erased = await _two_reports(api, usa)
    server = api.server_ctx
    ran = _erase_after(server, "decision_state", lambda: reports.erase(server, erased, actor="test"))
    status, page = await api.get("/v1/reports?limit=10", swe)
    assert ran
    assert status == 200, page  # was 500
    assert [(r["id"], r["payload"]) for r in page["reports"]] == [(kept, {"type": "indicator", "n": 0})]


async def test_the_stream_feed_holding_rows_under_a_destroyed_kek_reads_them_again(
    api: Api, ctx: Context
) -> None:
    # The feed holds rows read before the erasure; a refresh that read the change counter just
    # before the erasure committed keeps them, and takes the keyring the erasure left (on both
    # engines: on PostgreSQL the held rows were read by an earlier transaction).
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE")
    node = await auth.authenticate(ctx, swe, source="test", rechecked=True)
    feed = deliver.Feed(ctx)
    await feed.refresh()  # a feed holds what is published after it starts
    start = feed.head
    assert (await feed.next_batch(node, after=start, topics=[])).frames == []  # the node is held
    kept, erased = await _two_reports(api, usa)
    await feed.refresh()  # both reports held, under the KEK they share
    ran = _erase_after(ctx, "head_state", lambda: reports.erase(ctx, erased, actor="test"))
    await feed.refresh()
    assert ran
    batch = await feed.next_batch(node, after=start, topics=[])  # raised EnvelopeError
    frames = [json.loads(frame)["report"] for frame in batch.frames]
    assert [(r["id"], r["payload"]) for r in frames] == [(kept, {"type": "indicator", "n": 0})]
