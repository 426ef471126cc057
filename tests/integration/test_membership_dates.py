"""A membership cannot end before it began (red-team finding 12c)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.errors import InvalidInput
from broker.services import alliances
from tests.integration.conftest import Api
from tests.integration.helpers import events


async def _swe(api: Api, root: str) -> dict[str, str | None]:
    _, listed = await api.get("/v1/alliances", root)
    (nato,) = [a for a in listed["alliances"] if a["id"] == "NATO"]
    (period,) = [m for m in nato["memberships"] if m["nation"] == "SWE"]
    return dict(period)


async def test_a_leave_dated_before_the_join_is_refused(api: Api) -> None:
    root = await api.node("root", "BEL", roles=("admin",))
    before = await _swe(api, root)
    assert str(before["joined"]).startswith("2024-03-07") and before["left"] is None

    path = "/v1/admin/alliances/NATO/members/SWE"
    status, problem = await api.call("DELETE", path, root, json={"date": "2024-03-06T23:59:59Z"})
    assert status == 422 and problem["type"].endswith("leave_before_join")
    assert "2024-03-06T23:59:59" in problem["detail"] and "2024-03-07T00:00:00" in problem["detail"]
    assert await _swe(api, root) == before  # still a member, period untouched
    assert not [e for e in await events(api.ctx) if e["action"] == "membership_leave"]

    # The command line goes through the same service.
    with pytest.raises(InvalidInput) as refused:
        await alliances.leave(api.ctx, "NATO", "SWE", at=datetime(2020, 1, 1, tzinfo=UTC), actor="cli")
    assert refused.value.code == "leave_before_join"

    # On the join date itself, or after it, a leave is accepted.
    status, left = await api.call("DELETE", path, root, json={"date": "2024-03-07"})
    assert status == 200 and left["left"].startswith("2024-03-07")
    assert (await _swe(api, root))["left"] is not None
