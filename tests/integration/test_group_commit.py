"""Group commit: concurrent publishes share transactions without losing order, idempotency,
durability of the answer, or one act's failure spilling onto the others."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.domain.ids import scoped_report_id
from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import BrokerError, Conflict, Stale, Unavailable
from broker.services import admin, alliances, audit, publishing
from broker.services import reports as report_service
from broker.services.auth import authenticate
from broker.services.context import Context
from broker.services.groupcommit import GroupCommit
from broker.storage.repos import Tx
from tests.integration.helpers import body, chain_holds, events, report_count


async def _node(ctx: Context, node_id: str, nation: str) -> NodeRecord:
    spec = {"id": node_id, "nation": nation, "clearance": "SECRET", "roles": ["publish", "subscribe"]}
    return await authenticate(ctx, (await admin.add_node(ctx, spec, actor="test"))["token"], source="test")


async def test_concurrent_publishes_share_transactions_in_order(ctx: Context) -> None:
    usa, gbr = await _node(ctx, "usa-1", "USA"), await _node(ctx, "gbr-1", "GBR")
    n = 64
    receipts = await asyncio.gather(
        *(
            publishing.publish(ctx, (usa, gbr)[i % 2], body(payload={"n": i}), idempotency_key=None)
            for i in range(n)
        )
    )
    assert sorted(r["sequence"] for r in receipts) == list(range(1, n + 1))
    assert len({r["id"] for r in receipts}) == n
    publisher = ctx.publishes
    assert publisher is not None and publisher.acts == n
    assert publisher.transactions < n  # shared, or group commit is not working
    # Every receipt names a stored report with its own payload, and one publish event.
    for i, receipt in enumerate(receipts):
        reader = (gbr, usa)[i % 2]
        got = await report_service.read(ctx, reader, receipt["id"])
        assert got["payload"] == {"n": i} and got["sequence"] == receipt["sequence"]
    published = [e for e in await events(ctx, action="publish") if e["decision"] == "allow"]
    assert sorted(e["report"] for e in published) == sorted(r["id"] for r in receipts)
    await chain_holds(ctx)


async def test_repeats_inside_one_batch(ctx: Context) -> None:
    usa, gbr = await _node(ctx, "usa-1", "USA"), await _node(ctx, "gbr-1", "GBR")
    directory = await ctx.cached_directory()

    def act(node: NodeRecord, raw: dict[str, Any], key: str | None = None) -> publishing.PublishAct:
        sub = publishing.parse_submission(raw, ctx=ctx, known_alliances=directory.alliances)
        return publishing.PublishAct(node=node, sub=sub, idempotency_key=key)

    before = await chain_holds(ctx)
    with_id = {**body(), "id": "0b7e8f8c-6a55-4d49-9a0c-2d1d2f0c9a11"}
    acts = [
        act(usa, body(), "k1"),
        act(usa, body(), "k1"),  # same key, same request: the first receipt
        act(usa, body(topics=["other"]), "k1"),  # same key, another request: 409
        act(gbr, body(), "k1"),  # keys are per node: a report of its own
        act(usa, with_id),
        act(usa, with_id),  # same id, same request: the first receipt
        act(gbr, with_id),  # the same id chosen by another node: a report of its own
    ]
    async with ctx.db.transaction() as tx:
        outcomes = await publishing.store_publishes(ctx, tx, acts)
    first, again, reused, own, by_id, by_id_again, taken = outcomes
    assert not isinstance(first, BrokerError) and not isinstance(again, BrokerError)
    assert again.seq == first.seq
    assert isinstance(reused, Conflict) and reused.code == "idempotency_key_reused"
    assert not isinstance(own, BrokerError) and own.seq != first.seq
    assert not isinstance(by_id, BrokerError) and not isinstance(by_id_again, BrokerError)
    assert by_id.id == by_id_again.id == scoped_report_id(node_id="usa-1", client_id=with_id["id"])
    assert by_id.seq == by_id_again.seq
    assert not isinstance(taken, BrokerError) and taken.id != by_id.id  # its own scope: no collision
    assert await report_count(ctx) == 4
    assert await chain_holds(ctx) == before + 4  # four publish events, no more
    # Across transactions the same rules hold: the stored report answers the repeat.
    async with ctx.db.transaction() as tx:
        later = await publishing.store_publishes(ctx, tx, [act(usa, body(), "k1"), act(gbr, with_id)])
    assert not isinstance(later[0], BrokerError) and later[0].seq == first.seq
    assert not isinstance(later[1], BrokerError) and later[1].seq == taken.seq


_NOW = datetime(2026, 11, 25, tzinfo=UTC)


async def _record(tx: Tx, items: Sequence[str], *, fail_on: str = "") -> list[Any]:
    if fail_on in items and len(items) > 1:
        await audit.record(tx, [AuditDraft(action=i) for i in items], now=_NOW)  # then roll back
        raise ValueError("this batch breaks")
    if fail_on in items:
        raise ValueError(f"{fail_on} breaks on its own")
    await audit.record(tx, [AuditDraft(action=i) for i in items], now=_NOW)
    return list(items)


async def test_one_broken_act_fails_alone(ctx: Context) -> None:
    async def apply(tx: Tx, items: Sequence[str]) -> list[Any]:
        return await _record(tx, items, fail_on="bad")

    group: GroupCommit[str, str] = GroupCommit(ctx.db, apply)
    names = ["a", "b", "bad", "c", "d", "e"]
    outcomes = await asyncio.gather(*(group.submit(n) for n in names), return_exceptions=True)
    assert [o if isinstance(o, str) else type(o) for o in outcomes] == [
        "a",
        "b",
        ValueError,
        "c",
        "d",
        "e",
    ]
    logged = [e["action"] for e in await events(ctx) if e["action"] != "alliance_seed"]
    assert sorted(logged) == ["a", "b", "c", "d", "e"]  # the broken batch left nothing behind
    await chain_holds(ctx)


async def test_an_unavailable_database_fails_the_batch_without_retrying_each(ctx: Context) -> None:
    calls: list[int] = []

    async def apply(tx: Tx, items: Sequence[str]) -> list[Any]:
        calls.append(len(items))  # the others, submitted in the same turn, are in this batch
        raise Unavailable("database unavailable")

    group: GroupCommit[str, str] = GroupCommit(ctx.db, apply)
    outcomes = await asyncio.gather(*(group.submit(f"a{i}") for i in range(6)), return_exceptions=True)
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert sum(calls) == 6 and len(calls) < 6  # batched, and no act tried twice


async def test_a_caller_going_away_does_not_abort_the_others(ctx: Context) -> None:
    in_flight, release = asyncio.Event(), asyncio.Event()
    followed = asyncio.Event()  # a flush of the followers began

    async def apply(tx: Tx, items: Sequence[str]) -> list[Any]:
        if "leader" in items:  # hold the leader's transaction open until the test lets it go
            in_flight.set()
            async with asyncio.timeout(10):
                await release.wait()
        else:
            followed.set()
        return await _record(tx, items)

    group: GroupCommit[str, str] = GroupCommit(ctx.db, apply)
    leader = asyncio.create_task(group.submit("leader"))
    async with asyncio.timeout(10):
        await in_flight.wait()
    followers = [asyncio.create_task(group.submit(f"f{i}")) for i in range(4)]
    await asyncio.sleep(0)  # one loop turn: the followers queue behind the leader's commit
    leader.cancel()
    # One flush at a time, whoever went away: none of the followers' may begin beside the
    # leader's, still in flight (on PostgreSQL one did, and could commit first). An absence,
    # watched for a quarter of a second.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(followed.wait(), 0.25)
    release.set()
    assert await asyncio.gather(*followers) == ["f0", "f1", "f2", "f3"]
    with pytest.raises(asyncio.CancelledError):
        await leader
    # The followers' commit came after the leader's (one at a time): it is in too.
    logged = [e["action"] for e in await events(ctx) if e["action"] != "alliance_seed"]
    assert sorted(logged) == ["f0", "f1", "f2", "f3", "leader"]
    assert group.transactions == 2


async def test_delivery_events_share_transactions(ctx: Context) -> None:
    batcher = audit.Batcher(ctx)
    before = await chain_holds(ctx)
    async with ctx.db.transaction() as tx:
        counter = await tx.change_counter()
    await asyncio.gather(
        *(
            batcher.append(
                [AuditDraft(action="deliver", node=f"n{i}"), AuditDraft(action="x")], decided_at=counter
            )
            for i in range(20)
        )
    )
    await batcher.append([], decided_at=counter)  # nothing to write: no transaction
    assert await chain_holds(ctx) == before + 40
    assert batcher.commits.acts == 20 and batcher.commits.transactions < 20


async def test_decisions_made_before_a_change_are_not_recorded(ctx: Context) -> None:
    """A delivery decided at an older change counter (a revocation or membership change
    committed meanwhile) is refused at commit: Stale, and nothing written."""
    batcher = audit.Batcher(ctx)
    async with ctx.db.transaction() as tx:
        counter = await tx.change_counter()
    await alliances.create_alliance(ctx, "NORDEFCO", name="Nordic Defence Cooperation", actor="t")
    before = await chain_holds(ctx)
    current, stale = await asyncio.gather(
        batcher.append([AuditDraft(action="deliver", node="now")], decided_at=counter + 1),
        batcher.append([AuditDraft(action="deliver", node="then")], decided_at=counter),
        return_exceptions=True,
    )
    assert current == frozenset() and isinstance(stale, Stale)
    assert await chain_holds(ctx) == before + 1
    assert [e["node"] for e in await events(ctx, action="deliver")] == ["now"]


async def test_a_recall_after_a_decision_turns_only_its_own_delivery_into_a_denial(ctx: Context) -> None:
    """A recall concerns one report: decisions made before it stand, except a delivery of that
    very report, which is recorded as denied (``recalled``) and named for the caller to drop."""
    usa = await _node(ctx, "usa-1", "USA")
    ids = [
        (await publishing.publish(ctx, usa, body(payload={"n": i}), idempotency_key=None))["id"]
        for i in range(2)
    ]
    batcher = audit.Batcher(ctx)
    async with ctx.db.read_transaction() as tx:
        counter, reports_at = await tx.decision_state()
    await report_service.recall(ctx, usa, ids[1])
    drafts = [AuditDraft(action="deliver", node="swe-1", report=r, decision="allow") for r in ids]
    gone = await batcher.append(drafts, decided_at=counter, reports_at=reports_at)
    assert gone == {ids[1]}
    delivered = await events(ctx, action="deliver")
    assert [(e["report"], e["decision"], e["reason"]) for e in delivered] == [
        (ids[0], "allow", None),
        (ids[1], "deny", "recalled"),
    ]
    # Without the report-changes mark the decision cannot tell: decided again instead.
    with pytest.raises(Stale):
        await batcher.append(drafts, decided_at=counter)
