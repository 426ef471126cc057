"""The one-time backfill of TAXII's object index (reports stored before migration 0011) against
an erasure at once. The backfill read the pending reports without locking them, decrypted them
and inserted their index rows; an erasure committing between that read and those inserts had
already deleted the (not yet written) index rows, so the keyed digests of an erased report's
objects stayed in the database. The backfill now reads the reports it indexes FOR SHARE: an
erasure under way is waited for and its report skipped, and an erasure that comes later waits
for the backfill and deletes what it indexed."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import delete, select, text

from broker.services import admin, publishing, shred
from broker.services.auth import authenticate
from broker.services.context import Context
from broker.services.taxii.common import ensure_indexed
from broker.storage import collections
from broker.storage import statements as st
from tests.integration.helpers import body, eventually
from tests.integration.test_taxii import bundle, indicator

# Row locks: SQLite serialises every writer at BEGIN IMMEDIATE, so the race is PostgreSQL's.
WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


async def _indexed_reports(ctx: Context) -> set[int]:
    async with ctx.db.read_transaction() as tx:
        return {int(r.report_seq) for r in await tx.rows(select(st.TAXII_OBJECTS.c.report_seq).distinct())}


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_erasure_during_the_index_backfill_leaves_no_index_rows(ctx: Context) -> None:
    spec = {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["publish"]}
    node = await authenticate(ctx, (await admin.add_node(ctx, spec, actor="test"))["token"], source="test")
    receipts = [
        await publishing.publish(ctx, node, body(payload=bundle(indicator(n))), idempotency_key=None)
        for n in (1, 2)
    ]
    kept, erased = (int(r["sequence"]) for r in receipts)
    # As a database upgraded from before 0011: no index rows, both reports waiting for the backfill.
    async with ctx.db.transaction() as tx:
        await tx.execute(delete(st.TAXII_OBJECTS))
        await collections.set_pending_below(tx, erased + 1)

    async def backfill_waits() -> bool:
        async with ctx.db.read_transaction() as probe:
            return bool(await probe.scalar(WAITING))

    async with ctx.db.transaction() as erasing:  # holds its row locks until it commits
        assert [age.seq for age in await shred.erase(ctx, erasing, [erased], now=ctx.now())] == [erased]
        backfill = asyncio.create_task(ensure_indexed(ctx))
        await eventually(backfill_waits)
    await backfill

    assert await _indexed_reports(ctx) == {kept}
    async with ctx.db.read_transaction() as tx:
        assert await collections.pending_below(tx) == 0
