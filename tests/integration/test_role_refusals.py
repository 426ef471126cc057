"""Refusals for a missing role are counted and audited once per node, act and window, as failed
authentications are (red-team finding 11): a node hammering an act it may not do costs no
durable write per request."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import Api, StartServer
from tests.integration.helpers import body, events

N = 50
# Longer than any test: only the flushes the test asks for (or shutdown) write the counts.
NO_PERIODIC_FLUSH = 3600.0


async def _refused_publishes(api: Api, auditor: str) -> list[dict[str, Any]]:
    status, page = await api.get("/v1/audit/events?action=publish&decision=deny&limit=1000", auditor)
    assert status == 200
    return [e for e in page["events"] if e["reason"] == "missing_role"]


async def test_fifty_refusals_make_one_counted_event(start_server: StartServer) -> None:
    api = await start_server(auth_failure_window_seconds=NO_PERIODIC_FLUSH)
    reader = await api.node("reader", "USA", roles=("subscribe",))
    auditor = await api.node("aud", "BEL", roles=("audit",))
    for _ in range(N):
        status, problem = await api.publish(reader, body())
        assert status == 403 and problem["type"].endswith("missing_role")  # the answer is unchanged

    await api.flush_auth_failures()
    refused = await _refused_publishes(api, auditor)
    assert len(refused) <= 2, [e["details"] for e in refused]  # not one event per request
    assert all(e["node"] == "reader" and e["nation"] == "USA" for e in refused)
    (aggregate,) = [e for e in refused if "refusals" in e["details"]]
    assert aggregate["details"]["refusals"] == N
    assert aggregate["details"]["role"] == "publish"
    assert aggregate["details"]["from"] <= aggregate["details"]["to"]

    # The counts start again after a flush: a later refusal is audited, not folded into the past.
    assert (await api.publish(reader, body()))[0] == 403
    await api.flush_auth_failures()
    assert len(await _refused_publishes(api, auditor)) == len(refused) + 1


async def test_counts_per_node_and_act_are_written_at_shutdown(start_server: StartServer) -> None:
    api = await start_server(auth_failure_window_seconds=NO_PERIODIC_FLUSH)
    reader = await api.node("reader", "USA", roles=("subscribe",))
    writer = await api.node("writer", "FRA", roles=("publish",))
    for _ in range(3):
        assert (await api.publish(reader, body()))[0] == 403
        assert (await api.get("/v1/reports", writer))[0] == 403
    assert (await api.get("/v1/audit/whoami", writer))[0] == 403

    await api.client.close()  # the app's shutdown writes what was counted
    async with api.ctx.db.transaction() as tx:
        found = await tx.events(decision="deny", limit=1000)
    totals: dict[tuple[str | None, str], int] = {}
    for event in found:
        if event.draft.reason == "missing_role":
            key = (event.draft.node, event.draft.action)
            counted = event.draft.details.get("refusals")
            totals[key] = max(totals.get(key, 0), counted if isinstance(counted, int) else 1)
    assert totals == {("reader", "publish"): 3, ("writer", "list"): 3, ("writer", "audit_whoami"): 1}
    assert len([e for e in await events(api.ctx) if e["reason"] == "missing_role"]) <= 5
