"""Every writing transaction locks the head before any row it writes.

An import locks the head, then inserts or updates the node row standing for a foreign
originator. Admin acts wrote their node row first and locked the head after (for their audit
event): an act on the same node as an import in flight deadlocked on PostgreSQL ("deadlock
detected"), and the act answered ``unexpected``. Here a transaction holds the head as an import
does, the act starts and waits, then the import writes the node row.

The rule is held in ``Tx.lock_head`` itself (``LockOrder``, on both engines), so every test
that runs an audited act checks it; the PostgreSQL tests below show what it prevents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from broker.crypto.tokens import hash_token, new_token
from broker.domain.records import NodeRecord
from broker.errors import Conflict
from broker.services import admin, alliances
from broker.services.context import Context
from broker.storage.repos import LockOrder, Tx
from tests.integration.helpers import eventually

WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)
SPEC = {"id": "usa-9", "nation": "USA", "clearance": "SECRET", "roles": ["subscribe"], "caveats": []}
NEW_KEY = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="


async def _while_an_import_holds_the_head(
    ctx: Context, act: Awaitable[Any], then: Callable[[Tx], Awaitable[None]]
) -> Any:
    """Start ``act`` while a transaction holds the head; once it waits on a lock, run ``then``
    in the holding transaction (as an import writes its originator's row) and commit."""

    async with ctx.db.transaction() as importing:
        await importing.lock_head()
        acting = asyncio.ensure_future(act)
        await eventually(lambda: _waiting(ctx, 1))
        await then(importing)
    return await acting


async def _waiting(ctx: Context, count: int) -> bool:
    """Whether ``count`` transactions wait on a lock."""
    async with ctx.db.read_transaction() as probe:
        return int(await probe.scalar(WAITING)) >= count


async def _new_key(tx: Tx) -> None:
    node = await tx.node("usa-9")
    assert node is not None
    await tx.update_node(replace(node, ed25519_public_key=NEW_KEY))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_revoking_a_node_takes_the_head_before_the_node_row(ctx: Context) -> None:
    await admin.add_node(ctx, SPEC, actor="t")
    answer = await _while_an_import_holds_the_head(ctx, admin.revoke_node(ctx, "usa-9", actor="t"), _new_key)
    assert answer == {"id": "usa-9", "revoked": True}
    assert (await admin.node_keys(ctx, "usa-9"))["ed25519_public_key"] == NEW_KEY


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_adding_a_node_takes_the_head_before_inserting_it(ctx: Context) -> None:
    """An import inserting a foreign originator under the id an operator is adding: the second
    to commit is refused, neither deadlocks."""

    async def foreign(tx: Tx) -> None:
        await tx.insert_node(
            NodeRecord(
                id="usa-9",
                nation="USA",
                clearance="UNCLASSIFIED",
                caveats=(),
                roles=(),
                token_hash=hash_token(new_token()),
                created_at=ctx.now(),
                ed25519_public_key=NEW_KEY,
            )
        )

    with pytest.raises(Conflict) as refused:
        await _while_an_import_holds_the_head(ctx, admin.add_node(ctx, SPEC, actor="t"), foreign)
    assert refused.value.code == "node_exists"


async def test_a_row_written_before_the_head_is_refused(ctx: Context) -> None:
    """The rule itself, on both engines: a transaction that wrote a row may not lock the head."""
    await admin.add_node(ctx, SPEC, actor="t")

    async def wrong_order() -> None:
        async with ctx.db.transaction() as tx:
            await _new_key(tx)
            await tx.lock_head()

    with pytest.raises(LockOrder):
        await wrong_order()
    assert (await admin.node_keys(ctx, "usa-9"))["ed25519_public_key"] != NEW_KEY  # rolled back


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_joins_of_one_nation_at_once_store_one_period(ctx: Context) -> None:
    """Each join read the directory, found no period and inserted one, before it locked the head:
    two joins at once (two operators, two dates) both committed, and the nation held two
    overlapping periods. Under the head, the second finds the first's period and is refused."""

    async def join(at: datetime) -> Any:
        try:
            return await alliances.join(ctx, "NATO", "UKR", at=at, actor="t")
        except Conflict as refused:
            return refused.code

    async def second_join(_tx: Tx) -> None:
        second.append(asyncio.ensure_future(join(datetime(2026, 2, 1, tzinfo=UTC))))
        await eventually(lambda: _waiting(ctx, 2))

    second: list[asyncio.Future[Any]] = []
    first = await _while_an_import_holds_the_head(ctx, join(datetime(2026, 1, 1, tzinfo=UTC)), second_join)
    answers = [first, await second[0]]
    assert sorted(map(str, answers)) == sorted([str(first), "already_member"]), answers
    listed = next(a for a in await alliances.list_alliances(ctx) if a["id"] == "NATO")
    assert [m["joined"][:10] for m in listed["memberships"] if m["nation"] == "UKR"] == ["2026-01-01"]
