"""Every broker process runs the witness loops, so two may store one witness's state (or its
cosignature on one checkpoint) at once. Both were stored by a delete then an insert: the second
found no row to delete, inserted too and hit the primary key (on PostgreSQL), and its loop
crashed; and a process could write back a smaller ``cosigned_size`` than another had stored.
Both are one upsert now, and ``cosigned_size`` never goes down."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from broker.domain.witnessing import Cosignature, WitnessState
from broker.services.context import Context
from broker.storage import witnessing as store
from broker.storage.repos import Tx
from tests.integration.helpers import eventually

# Row locks: SQLite serialises every writer at BEGIN IMMEDIATE, so the race is PostgreSQL's.
WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)
AT = datetime(2026, 12, 6, tzinfo=UTC)


async def _at_once(
    ctx: Context, first: Callable[[Tx], Awaitable[None]], second: Callable[[Tx], Awaitable[None]]
) -> None:
    """``first`` in a transaction left open until ``second``, in another, waits on its lock;
    then ``first`` commits and ``second`` finishes."""

    async def waits() -> bool:
        async with ctx.db.read_transaction() as probe:
            return bool(await probe.scalar(WAITING))

    async def alone() -> None:
        async with ctx.db.transaction() as tx:
            await second(tx)

    async with ctx.db.transaction() as tx:
        await first(tx)
        other = asyncio.create_task(alone())
        await eventually(waits)
    await other


async def _state(ctx: Context, witness: str) -> WitnessState:
    async with ctx.db.read_transaction() as tx:
        return (await store.states(tx))[witness]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_processes_store_one_witness_state_at_once(ctx: Context) -> None:
    def save(size: int) -> Callable[[Tx], Awaitable[None]]:
        return lambda tx: store.save_state(tx, WitnessState(witness="w1", cosigned_size=size, updated_at=AT))

    await _at_once(ctx, save(7), save(5))
    assert (await _state(ctx, "w1")).cosigned_size == 7


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_processes_store_one_cosignature_at_once(ctx: Context) -> None:
    def store_line(line: str) -> Callable[[Tx], Awaitable[None]]:
        cosigned = Cosignature(size=3, witness="w1", line=line, timestamp=1, received_at=AT)
        return lambda tx: store.store_cosignature(tx, cosigned)

    await _at_once(ctx, store_line("— w1 first\n"), store_line("— w1 second\n"))
    async with ctx.db.read_transaction() as tx:
        assert [c.line for c in await store.cosignatures(tx, 3)] == ["— w1 second\n"]


async def test_a_witness_cosigned_size_never_goes_down(ctx: Context) -> None:
    async with ctx.db.transaction() as tx:
        await store.save_state(tx, WitnessState(witness="w1", cosigned_size=7, updated_at=AT))
    refused = WitnessState(
        witness="w1", cosigned_size=5, updated_at=AT, refused_size=9, refused_status=409, refused_reason="x"
    )
    async with ctx.db.transaction() as tx:  # read before the 7 was stored
        await store.save_state(tx, refused)
    state = await _state(ctx, "w1")
    assert (state.cosigned_size, state.refused_size, state.refused_reason) == (7, 9, "x")
