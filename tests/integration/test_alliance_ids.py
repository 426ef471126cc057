"""Through services.admin on both engines: no alliance named like a nation, whole-string ids."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from broker.config_files import AllianceSeed
from broker.domain.alliances import Alliance, Membership
from broker.errors import InvalidInput
from broker.services import admin, alliances
from broker.services.context import Context


async def test_alliance_named_like_a_nation_is_refused(ctx: Context) -> None:
    with pytest.raises(InvalidInput) as caught:
        await alliances.create_alliance(ctx, "UKR", name="Not Ukraine", actor="t")
    assert caught.value.code == "alliance_id_is_nation"
    assert caught.value.status == 422
    assert "UKR" not in {a["id"] for a in await alliances.list_alliances(ctx)}


async def test_alliance_id_with_trailing_newline_is_refused(ctx: Context) -> None:
    with pytest.raises(InvalidInput) as caught:
        await alliances.create_alliance(ctx, "NORDEFCO\n", name="Nordic", actor="t")
    assert caught.value.code == "invalid_alliance"


async def test_ukraine_can_join_an_alliance(ctx: Context) -> None:
    joined = await alliances.join(ctx, "NATO", "UKR", at=None, actor="t")
    assert joined["nation"] == "UKR"


async def test_seeding_refuses_alliance_named_like_a_nation(ctx: Context) -> None:
    joined = datetime(2020, 1, 1, tzinfo=UTC)
    seed = AllianceSeed(
        alliance=Alliance(id="UKR", name="Not Ukraine"),
        members=(Membership(alliance="UKR", nation="RUS", joined=joined),),
    )
    with pytest.raises(InvalidInput) as caught:
        await alliances.seed_alliances(ctx, (seed,))
    assert caught.value.code == "alliance_id_is_nation"


def _spec(**changes: Any) -> dict[str, Any]:
    return {"id": "usa-1", "nation": "USA", "clearance": "SECRET", "roles": ["subscribe"], **changes}


@pytest.mark.parametrize(
    "spec", [_spec(id="usa-1\n"), _spec(caveats=["CT-OPS\n"])], ids=["node_id", "caveat"]
)
async def test_node_fields_with_trailing_newline_are_refused(ctx: Context, spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as caught:
        await admin.add_node(ctx, spec, actor="t")
    assert caught.value.code == "invalid_node"
    assert not {"usa-1", "usa-1\n"} & {n["id"] for n in await admin.list_nodes(ctx)}
    assert (await admin.add_node(ctx, _spec(), actor="t"))["id"] == "usa-1"


async def test_legacy_alliance_named_like_a_nation_takes_no_members(ctx: Context) -> None:
    async with ctx.db.transaction() as tx:  # as an older broker may have stored it
        await tx.insert_alliance(Alliance(id="UKR", name="Not Ukraine"), at=ctx.now())
    with pytest.raises(InvalidInput) as caught:
        await alliances.join(ctx, "UKR", "RUS", at=None, actor="t")
    assert caught.value.code == "alliance_id_is_nation"
