"""What a publish costs PostgreSQL in round trips, and that what is spared changes no answer.

A lone publish is BEGIN, the head's lock, the combined write and COMMIT. The per-node limit
shared by broker processes is counted in a statement of its own only when the head row cannot
rule the limit out (fewer reports in the whole log since the window began than the burst leaves
room for); the idempotency keys and client-chosen ids of a batch are looked up in one statement."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event

from broker.services import publishing
from broker.services.context import Context
from tests.conftest import FakeClock
from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, events, publish_acts, report_count


def _postgresql(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip(
            "SQLite's statements are function calls on the broker's writer thread (test_sqlite_writer)"
        )


def _trips(ctx: Context) -> list[str]:
    """From now on, each round trip ``ctx``'s engine makes: BEGIN, COMMIT, or a statement's
    first words (``SELECT log_head``, ``SELECT reports``, ``WITH``...)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        seen.append(" ".join(words[:2] if words[0] == "WITH" else [words[0], words[1].split(".")[0]]))

    engine = ctx.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "begin", lambda _conn: seen.append("BEGIN"))
    event.listen(engine, "commit", lambda _conn: seen.append("COMMIT"))
    return seen


async def test_a_lone_publish_is_four_round_trips(api: Api, database_url: str, clock: FakeClock) -> None:
    _postgresql(database_url)
    usa = await api.node("usa-1", "USA")
    for _ in range(2):  # the node cached, the statements prepared
        assert (await api.publish(usa, body()))[0] == 201
    clock.advance(
        seconds=api.server_ctx.settings.publish_burst / api.server_ctx.settings.publish_rate_per_second
    )
    assert (await api.publish(usa, body()))[0] == 201
    trips = _trips(api.server_ctx)
    assert (await api.publish(usa, body()))[0] == 201
    assert trips == ["BEGIN", "SELECT log_head", "WITH w0", "COMMIT"]


async def test_keys_and_ids_of_a_publish_are_read_in_one_statement(
    api: Api, database_url: str, clock: FakeClock
) -> None:
    _postgresql(database_url)
    usa = await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201
    clock.advance(seconds=60)
    assert (await api.publish(usa, body()))[0] == 201
    chosen = {**body(), "id": str(uuid.uuid4())}
    trips = _trips(api.server_ctx)
    status, receipt = await api.publish(usa, chosen, headers={"Idempotency-Key": "k-1"})
    assert status == 201
    assert trips == ["BEGIN", "SELECT log_head", "SELECT reports", "WITH w0", "COMMIT"]
    assert await api.publish(usa, chosen, headers={"Idempotency-Key": "k-1"}) == (201, receipt)
    assert await api.publish(usa, chosen) == (201, receipt)  # the same id, no key
    assert (await api.publish(usa, body(), headers={"Idempotency-Key": "k-1"}))[0] == 409
    assert await report_count(api.ctx) == 3


async def test_a_burst_another_process_stored_after_a_quiet_spell_is_counted(
    start_server: StartServer, database_url: str, clock: FakeClock
) -> None:
    # The broker last saw the log before a quiet spell longer than the window: what it saw proves
    # nothing about what another process stored since, so it counts, and refuses the sixth.
    _postgresql(database_url)
    api = await start_server(publish_burst=5, publish_rate_per_second=1.0)
    usa = await api.node("usa-1", "USA")
    for _ in range(2):
        assert (await api.publish(usa, body()))[0] == 201
    clock.advance(seconds=10)
    assert (await api.publish(usa, body()))[0] == 201  # the log is quiet: no count needed
    limits = replace(api.ctx.settings, publish_burst=5, publish_rate_per_second=1.0)
    other = replace(api.ctx, settings=limits)  # another process's view, with the same limit
    acts = await publish_acts(other, usa, 4)
    async with other.db.transaction() as tx:
        assert all(not isinstance(r, Exception) for r in await publishing.store_publishes(other, tx, acts))
    trips = _trips(api.server_ctx)
    assert (await api.publish(usa, body()))[0] == 429
    assert trips.count("SELECT reports") == 1  # counted
    assert await report_count(api.ctx) == 7
    assert {e["reason"] for e in await events(api.ctx, action="publish", decision="deny")} == {"rate_limited"}
    clock.advance(seconds=10)
    assert (await api.publish(usa, body()))[0] == 201
