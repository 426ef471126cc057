"""Guarded commits (PostgreSQL): a batch decided against the head this process last saw, sent as
one statement that writes only if, under the head's lock, that head is still current and no
stored report holds the batch's ids or idempotency keys and each node has room in its rate
window. Whatever it assumed and found untrue, the batch runs again as an ordinary transaction:
the outcomes must be exactly those of the locking path."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from broker.domain.records import AuditDraft
from broker.errors import BadRequest
from broker.services import admin, audit, reports
from broker.services.context import Context
from broker.storage import database, statements
from broker.storage.repos import HeadMoved
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, chain_holds, events, publish_acts, report_count, statements_seen


@pytest.fixture(autouse=True)
def _postgresql_only(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("guarded commits are PostgreSQL's: SQLite's writes are calls on the writer thread")


async def test_a_lone_broker_publishes_in_one_statement(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    for _ in range(2):  # the first makes the head known; the second opens the kept connection
        assert (await api.publish(usa, body()))[0] == 201
    before = dict(api.server_ctx.db.guarded)
    through_sqlalchemy = statements_seen(api.server_ctx)
    kept = api.server_ctx.db._guarded_connection
    assert kept is not None
    driver = (await kept.get_raw_connection()).driver_connection
    through_driver: list[str] = []
    driver.add_query_logger(lambda record: through_driver.append(record.query.split(None, 1)[0].upper()))
    sequences = []
    for i in range(5):
        status, receipt = await api.publish(usa, body(payload={"n": i}))
        assert status == 201
        sequences.append(receipt["sequence"])
    # No BEGIN, no lock, no read, no COMMIT: one statement each, on the kept connection.
    assert through_sqlalchemy == []
    assert through_driver == ["WITH"] * 5
    assert api.server_ctx.db.guarded["committed"] - before["committed"] == 5
    assert api.server_ctx.db.guarded["refused"] == before["refused"]
    assert sequences == list(range(sequences[0], sequences[0] + 5))
    size = await chain_holds(api.ctx)  # every hash and Merkle node as the locking path writes them
    published = await events(api.ctx, action="publish")
    assert [e["report"] for e in published][-5:] == await _ids(api, usa, sequences)
    assert len(published) == 7
    assert published[-1]["seq"] == size


async def _ids(api: Api, token: str, sequences: list[int]) -> list[str]:
    status, page = await api.get(f"/v1/reports?after={sequences[0] - 1}&limit={len(sequences)}", token)
    assert status == 200
    return [r["id"] for r in page["reports"]]


async def test_two_brokers_take_turns_without_gap_or_duplicate(start_server: StartServer) -> None:
    a, b = await start_server(), await start_server()
    usa = await a.node("usa-1", "USA")
    sequences = []
    for i in range(8):
        status, receipt = await (a if i % 2 == 0 else b).publish(usa, body(payload={"n": i}))
        assert status == 201
        sequences.append(receipt["sequence"])
        # Each learns the head the other committed from its NOTIFY's payload.
        await _learned(a if i % 2 else b, (a if i % 2 == 0 else b).server_ctx.db)
    assert sequences == list(range(sequences[0], sequences[0] + 8))
    for api in (a, b):
        assert api.server_ctx.db.guarded["committed"] >= 3  # the first may find no head known
        assert api.server_ctx.db.guarded["refused"] == 0
    assert await chain_holds(a.ctx) >= 8
    assert await report_count(a.ctx) == 8


async def _learned(api: Api, other: Any) -> None:
    for _ in range(200):
        if api.server_ctx.db._head == other._head:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the NOTIFY's head never arrived")


async def test_a_head_moved_without_notice_is_seen_and_the_batch_sent_again(api: Api) -> None:
    # Audit events appended by another process move the head without a NOTIFY: the broker's
    # guarded statement writes nothing, answers the head it saw, and the batch goes again.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    drafts = [
        AuditDraft(action="read", actor="x", node="x", nation="USA", decision="deny", reason="not_found")
    ]
    await audit.record_alone(api.ctx, drafts)
    before = dict(api.server_ctx.db.guarded)
    assert (await api.publish(usa, body()))[0] == 201
    assert api.server_ctx.db.guarded["refused"] == before["refused"] + 1
    assert api.server_ctx.db.guarded["committed"] == before["committed"] + 1
    await chain_holds(api.ctx)


async def test_an_idempotent_repeat_returns_the_first_receipt(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    first = await api.publish(usa, body(), headers={"Idempotency-Key": "k-1"})
    assert first[0] == 201
    refused = api.server_ctx.db.guarded["refused"]
    assert await api.publish(usa, body(), headers={"Idempotency-Key": "k-1"}) == first
    status, problem = await api.publish(usa, body(payload={"other": 1}), headers={"Idempotency-Key": "k-1"})
    assert status == 409, problem
    # Both repeats were assumed new, found stored by the statement's check, and decided again.
    assert api.server_ctx.db.guarded["refused"] == refused + 2
    assert await report_count(api.ctx) == 1


async def test_a_client_chosen_id_already_stored_is_found(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    chosen = str(uuid.uuid4())
    status, receipt = await api.publish(usa, {**body(), "id": chosen})
    assert status == 201
    assert await api.publish(usa, {**body(), "id": chosen}) == (status, receipt)
    assert (await api.publish(usa, {**body(payload={"x": 2}), "id": chosen}))[0] == 409
    assert await report_count(api.ctx) == 2


async def _acts(api: Api, token: str, count: int) -> tuple[Context, list[reports.PublishAct]]:
    """Another process's view of the database (the limit of 5 in 5 s), and ``count`` publish
    acts for the node holding ``token``, ready for ``reports.store_publishes``."""
    limits = replace(api.ctx.settings, publish_burst=5, publish_rate_per_second=1.0)
    ctx = replace(api.ctx, settings=limits)
    return ctx, await publish_acts(ctx, token, count)


async def test_the_rate_window_is_checked_in_the_statement(start_server: StartServer) -> None:
    # The broker published 1 of its node's 5; another process then stores 4, and the broker
    # learns the head that left from its NOTIFY. Its guarded statement, decided against that
    # head, finds the node has no room left: nothing written, decided again, refused.
    api = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    ctx, acts = await _acts(api, usa, 4)
    async with ctx.db.transaction() as tx:
        assert all(not isinstance(r, Exception) for r in await reports.store_publishes(ctx, tx, acts))
    await _learned(api, ctx.db)
    refused = api.server_ctx.db.guarded["refused"]
    assert (await api.publish(usa, body()))[0] == 429
    assert api.server_ctx.db.guarded["refused"] == refused + 1
    assert await report_count(api.ctx) == 5
    assert {e["reason"] for e in await events(api.ctx, action="publish", decision="deny")} == {"rate_limited"}


async def test_a_revocation_by_another_process_refuses_the_next_publish(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201  # node and head cached by the broker
    await admin.revoke_node(api.ctx, "usa-1", actor="cli")  # another process: no wake-up needed
    assert (await api.publish(usa, body()))[0] == 401
    assert await report_count(api.ctx) == 1


async def test_a_guarded_publish_that_waited_for_the_lock_counts_what_committed_meanwhile(
    start_server: StartServer,
) -> None:
    # The broker knows the current head and has published 1 of its node's 5. Another process then
    # holds the head while it stores 4 more; the broker's guarded statement, started meanwhile,
    # waits for the row. Its snapshot (1 report) predates the wait: once the row is free the head
    # check fails, nothing is written, and the ordinary transaction counts 5 and refuses.
    api = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    ctx, acts = await _acts(api, usa, 4)
    committed = api.server_ctx.db.guarded["committed"]
    async with ctx.db.transaction() as tx:
        stored = await reports.store_publishes(ctx, tx, acts)
        assert all(not isinstance(r, Exception) for r in stored)
        waiting = asyncio.create_task(api.publish(usa, body()))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the guarded statement waits for the head row
    status, _ = await waiting
    assert status == 429
    assert api.server_ctx.db.guarded["committed"] == committed
    assert await report_count(api.ctx) == 5


async def test_a_forged_notification_cannot_bend_the_log(api: Api, database_url: str) -> None:
    # Any role that can connect may NOTIFY. A payload naming the current head with another Merkle
    # frontier is learned (it is only a hint), but the statement compares every field of the head
    # with the row: it writes nothing, and the batch goes again against the real head.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    real = api.server_ctx.db._head
    assert real is not None
    forged = replace(real, frontier=((0, real.audit_seq - 1, b"\x07" * 32),))
    url = make_url(database_url)
    other = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        payload = statements.head_payload(statements.head_values(forged))
        await other.execute("SELECT pg_notify($1, $2)", statements.CHANGE_CHANNEL, payload)
    finally:
        await other.close()
    for _ in range(200):
        if api.server_ctx.db._head == forged:
            break
        await asyncio.sleep(0.01)
    assert api.server_ctx.db._head == forged
    refused = api.server_ctx.db.guarded["refused"]
    assert (await api.publish(usa, body()))[0] == 201
    assert api.server_ctx.db.guarded["refused"] == refused + 1
    await chain_holds(api.ctx)  # the Merkle frontier still matches every event


async def test_a_statement_whose_connection_is_lost_is_not_sent_again(api: Api, database_url: str) -> None:
    # Once a guarded statement is sent, a lost connection leaves its outcome unknown (it may have
    # committed): the batch fails with 503, as a lost COMMIT does, and is not run again, which
    # could store it twice. Here the statement waits for the head row while its backend is
    # terminated.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    url = make_url(database_url)
    admin_connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database="postgres"
    )
    try:
        async with api.ctx.db.transaction() as tx:
            await tx.lock_head()
            waiting = asyncio.create_task(api.publish(usa, body()))
            blocked: list[int] = []
            for _ in range(200):
                blocked = [
                    row["pid"]
                    for row in await admin_connection.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                        url.database,
                    )
                ]
                if blocked:
                    break
                await asyncio.sleep(0.01)
            assert len(blocked) == 1
            await admin_connection.execute("SELECT pg_terminate_backend($1)", blocked[0])
            # Run again, the batch would now wait for the row this transaction holds.
            status, _ = await asyncio.wait_for(waiting, timeout=10)
    finally:
        await admin_connection.close()
    assert status == 503
    assert await report_count(api.ctx) == 1
    assert (await api.publish(usa, body()))[0] == 201  # the next batch opens another connection


async def test_a_value_the_database_refuses_is_the_clients_and_writes_nothing(ctx: Context) -> None:
    # Sent through the driver, a guarded statement's errors mean what they mean through
    # SQLAlchemy (test_combined_writes checks the ordinary path): a value longer than its column
    # is refused (400), never cut to fit; nothing is written, and the next guarded statement goes
    # through on a new connection.
    async with ctx.db.transaction() as tx:  # the process now knows the head
        await audit.record(tx, [AuditDraft(action="test", actor="a", reason="warm")], now=ctx.now())
    size = await chain_holds(ctx)

    async def append(reason: str) -> None:
        async with ctx.db.guarded_transaction() as tx:
            await audit.record(tx, [AuditDraft(action="test", actor="a", reason=reason)], now=ctx.now())

    with pytest.raises(BadRequest):
        await append("r" * 100)  # the column holds 64
    assert ctx.db._guarded_connection is None  # closed after the error
    assert await chain_holds(ctx) == size
    await append("fits")
    assert ctx.db._guarded_connection is not None
    assert ctx.db.guarded["committed"] == 1
    assert await chain_holds(ctx) == size + 1


async def _wait_until_blocked(database_url: str) -> None:
    """Until a backend of the test database waits for a lock (a guarded statement on the head row)."""
    url = make_url(database_url)
    watcher = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database="postgres"
    )
    try:
        for _ in range(500):
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                url.database,
            )
            if waiting:
                return
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()
    raise AssertionError("no statement ever waited for the head row")


async def _collide(api: Api, token: str, database_url: str) -> None:
    """Another process holds the head row and appends audit events (no NOTIFY: the broker hears
    nothing of it) while the broker's guarded publish waits for the row."""
    draft = AuditDraft(action="read", actor="x", node="x", nation="USA", decision="deny", reason="not_found")
    async with api.ctx.db.transaction() as tx:
        await audit.record(tx, [draft], now=api.ctx.now())
        waiting = asyncio.create_task(api.publish(token, body(payload={"waited": True})))
        await _wait_until_blocked(database_url)
    assert (await waiting)[0] == 201


async def test_a_statement_that_waited_for_the_row_learns_the_head_that_moved_it(
    api: Api, database_url: str
) -> None:
    # The statement's own snapshot predates its wait, so it cannot tell what moved the head; the
    # head it answers is read afresh (broker_current_head(), migration 0008) once the row is
    # free. The batch is decided again against that head and goes through as a second guarded
    # statement: no ordinary (locking) transaction, and the log still holds.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    db = api.server_ctx.db
    before = dict(db.guarded)
    through_sqlalchemy = statements_seen(api.server_ctx)
    await _collide(api, usa, database_url)
    assert db.guarded == {"committed": before["committed"] + 1, "refused": before["refused"] + 1}
    assert through_sqlalchemy == []
    async with api.ctx.db.transaction() as tx:
        assert await tx.lock_head() == db._head  # the head the retry assumed, then left
    await chain_holds(api.ctx)


async def _announce(api: Api) -> None:
    """Another process commits a change, with its NOTIFY (the head it left as the payload)."""
    draft = AuditDraft(action="test", actor="other", reason="changed")
    async with api.ctx.db.transaction() as tx:
        await audit.record(tx, [draft], now=api.ctx.now(), changed=True)


async def test_after_a_collision_a_batch_lets_the_other_process_go_first(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once guarded statements have collided, the next batch waits until another process's
    # commit is heard of (its NOTIFY), so the two take turns instead of both sending against the
    # same head; not if that process announces nothing (audit-only commits send no NOTIFY, the
    # wait would always time out); and a wait that times out ends the waiting.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    db = api.server_ctx.db
    none = {"other_committed": 0, "timed_out": 0}
    await db.turn()  # no collision yet: no wait
    assert db.turns == none
    monkeypatch.setattr(database, "TURN_SECONDS", 30.0)
    await _collide(api, usa, database_url)  # the other process appended audit events, silently
    monkeypatch.setattr(database, "HEARD_SECONDS", 0.0)  # (adding the node was a NOTIFY)
    await asyncio.wait_for(db.turn(), 5)  # nothing heard from it lately: no wait
    assert db.turns == none
    monkeypatch.setattr(database, "HEARD_SECONDS", 30.0)
    await _announce(api)
    await _learned(api, api.ctx.db)
    assert (await api.publish(usa, body()))[0] == 201  # the other went last: no wait
    assert db.turns == none
    waiting = asyncio.create_task(db.turn())
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the head is still the broker's own commit
    await _announce(api)
    await asyncio.wait_for(waiting, 10)
    assert db.turns == {"other_committed": 1, "timed_out": 0}
    monkeypatch.setattr(database, "TURN_SECONDS", 0.05)
    assert (await api.publish(usa, body()))[0] == 201  # the other went: no wait before this one
    assert db.turns == {"other_committed": 1, "timed_out": 0}
    await db.turn()  # the other writes nothing now
    assert db.turns == {"other_committed": 1, "timed_out": 1}
    await db.turn()  # no more waiting until the next collision
    assert (await api.publish(usa, body()))[0] == 201
    assert db.turns == {"other_committed": 1, "timed_out": 1}


async def test_the_processs_own_notifications_are_not_another_process_announcing(api: Api) -> None:
    # Taking turns waits only for a process that announces its commits. This process's own
    # commits NOTIFY too (on any of its pooled connections, not only the guarded one): they
    # must not count as another process heard of, whenever they arrive.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    db = api.server_ctx.db
    await asyncio.sleep(0.2)  # the NOTIFY of the node added by the test's own process
    heard = db._heard_at
    for i in range(5):  # ordinary transactions of the broker's own, each with a NOTIFY
        spec = {"id": f"own-{i}", "nation": "USA", "clearance": "SECRET", "roles": ["subscribe"]}
        await admin.add_node(api.server_ctx, spec, actor="test")
    assert (await api.publish(usa, body()))[0] == 201
    await asyncio.sleep(0.3)
    assert db._heard_at == heard
    await _announce(api)
    await _learned(api, api.ctx.db)
    assert db._heard_at > heard


async def test_the_processs_own_two_group_commits_are_no_collision(ctx: Context) -> None:
    # Publishes and audit events are two group commits deciding against the same known head; the
    # second to be sent finds the head the first left. That head is this process's own: no
    # reason to wait for anyone.
    async with ctx.db.transaction() as tx:  # the process now knows the head
        await audit.record(tx, [AuditDraft(action="test", actor="a", reason="warm")], now=ctx.now())

    retried: list[bool] = []

    async def append(reason: str) -> None:
        try:
            async with ctx.db.guarded_transaction() as tx:
                await audit.record(tx, [AuditDraft(action="test", actor="a", reason=reason)], now=ctx.now())
        except HeadMoved as exc:
            retried.append(exc.retry)
            async with ctx.db.guarded_transaction() as tx:
                await audit.record(tx, [AuditDraft(action="test", actor="a", reason=reason)], now=ctx.now())

    await asyncio.gather(append("first"), append("second"))
    assert retried == [True]
    assert ctx.db.guarded == {"committed": 2, "refused": 1}
    assert not ctx.db._contended
    await chain_holds(ctx)


async def test_a_forged_head_ahead_of_the_row_costs_one_refusal(api: Api, database_url: str) -> None:
    # A NOTIFY naming a head far ahead of the row (any role may send one) is learned, as heads
    # only move forward. The next batch cannot be guarded (its node must be read again at that
    # change counter) and runs as an ordinary transaction; the head it locked, read from the row,
    # replaces the forged one, and the batches after go through as guarded statements again
    # (before, every batch was refused for as long as the process ran).
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    db = api.server_ctx.db
    real = db._head
    assert real is not None
    forged = replace(real, audit_seq=real.audit_seq + 1000, change_counter=real.change_counter + 1000)
    await _notify(database_url, statements.head_payload(statements.head_values(forged)))
    for _ in range(200):
        if db._head == forged:
            break
        await asyncio.sleep(0.01)
    assert db._head == forged
    before = dict(db.guarded)
    for _ in range(3):
        assert (await api.publish(usa, body()))[0] == 201
    assert db.guarded == {"committed": before["committed"] + 2, "refused": before["refused"] + 1}
    assert db._head != forged
    await chain_holds(api.ctx)


async def _notify(database_url: str, payload: str) -> None:
    url = make_url(database_url)
    other = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        await other.execute("SELECT pg_notify($1, $2)", statements.CHANGE_CHANNEL, payload)
    finally:
        await other.close()


async def test_a_guarded_statement_that_cannot_run_leaves_the_ordinary_path(
    api: Api, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Should the function of migration 0008 be missing (a downgrade under a running broker) or
    # not executable by the broker's role, every guarded statement would fail as a whole before
    # writing anything. The broker says so once and publishes through ordinary transactions.
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    url = make_url(database_url)
    other = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, database=url.database
    )
    try:
        await other.execute("DROP FUNCTION broker_current_head()")
    finally:
        await other.close()
    sequences = []
    for i in range(3):
        status, receipt = await api.publish(usa, body(payload={"n": i}))
        assert status == 201, receipt
        sequences.append(receipt["sequence"])
    assert sequences == list(range(sequences[0], sequences[0] + 3))
    assert time.monotonic() < api.server_ctx.db._guarded_off_until  # for a while, then again
    said = [r.getMessage() for r in caplog.records if "guarded_statements_off" in r.getMessage()]
    assert len(said) == 1 and "seconds=60 sqlstate=42883" in said[0], said
    assert await report_count(api.ctx) == 4
    await chain_holds(api.ctx)


async def test_a_naive_datetime_is_refused_as_on_the_ordinary_path(ctx: Context) -> None:
    # Sent through the driver, a guarded statement skips SQLAlchemy's bind processing, where
    # models.UTCDateTime refuses a naive datetime (it would be stored shifted by the server's
    # time zone). The guarded path refuses it too, before sending anything.
    async with ctx.db.transaction() as tx:  # the process now knows the head
        await audit.record(tx, [AuditDraft(action="test", actor="a", reason="warm")], now=ctx.now())
    size = await chain_holds(ctx)
    with pytest.raises(ValueError, match="naive datetime"):
        async with ctx.db.guarded_transaction() as tx:
            await audit.record(tx, [AuditDraft(action="test", actor="a")], now=datetime(2026, 11, 25, 12))  # noqa: DTZ001
    assert await chain_holds(ctx) == size
