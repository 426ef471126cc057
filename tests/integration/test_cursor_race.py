"""Two acknowledgements of a new named cursor at once (two streams of one node, or two
instances): the second found no row, inserted too and hit the primary key, which closed its
stream with 1011 (seen in CI on PostgreSQL). The cursor is stored by one upsert now."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from broker.services import admin
from broker.services.context import Context
from tests.integration.helpers import eventually

# Row locks: SQLite serialises every writer at BEGIN IMMEDIATE, so the race is PostgreSQL's.
WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_first_acks_of_a_cursor_both_store(ctx: Context) -> None:
    spec = {"id": "usa-sub", "nation": "USA", "clearance": "SECRET", "roles": ["subscribe"], "caveats": []}
    node = str((await admin.add_node(ctx, spec, actor="test"))["id"])
    at = datetime(2026, 12, 6, tzinfo=UTC)

    async def second_waits() -> bool:
        async with ctx.db.read_transaction() as probe:
            return bool(await probe.scalar(WAITING))

    async def ack(sequence: int) -> None:
        async with ctx.db.transaction() as tx:
            await tx.save_cursor(node=node, name="default", sequence=sequence, at=at)

    async with ctx.db.transaction() as first:
        await first.save_cursor(node=node, name="default", sequence=5, at=at)
        second = asyncio.create_task(ack(7))
        await eventually(second_waits)
    await second
    await ack(6)  # never backwards
    async with ctx.db.read_transaction() as tx:
        assert await tx.cursor(node=node, name="default") == 7
