"""What a TAXII page of 100 costs does not depend on what follows it: a full page reads one batch
of reports (one past the page, to know whether there is more), not a second batch with its
object index rows and access decisions only to find the next object. Nor does it depend on
whose versions of its objects other reports hold: only an object's creator's versions count,
decided from the report records the page reads anyway."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import Api
from tests.integration.test_taxii import collection_id, indicator, publish, raw


async def _publish(api: Api, token: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        await publish(api, token, indicator(n))


async def _page_trips(api: Api, token: str, path: str, trips: list[str], served: int) -> tuple[int, bool]:
    """The fewest trips of three pages: the broker's background loops (the peers scan, the
    checkpointer) make trips of their own now and then, which only ever add to a page's."""
    await raw(api, "GET", path, token=token)  # caches warm (node, directory, index state)
    counts, more = [], set()
    for _ in range(3):
        before = len(trips)
        status, _, answer = await raw(api, "GET", path, token=token)
        assert status == 200 and len(answer.get("objects", [])) == served
        counts.append(len(trips) - before)
        more.add(answer.get("more", False))
    assert len(more) == 1
    return min(counts), more.pop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # trips to the SQLite thread
async def test_a_full_page_costs_the_same_whatever_follows(api: Api, sqlite_trips: list[str]) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    path = f"/taxii2/api/collections/{cid}/objects/?limit=100"
    await _publish(api, usa, 0, 100)
    alone, more = await _page_trips(api, usa, path, sqlite_trips, 100)
    assert more is False
    await _publish(api, usa, 100, 50)
    followed, more = await _page_trips(api, usa, path, sqlite_trips, 100)
    assert more is True
    assert followed == alone, (alone, followed)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # trips to the SQLite thread
async def test_copies_by_other_nodes_cost_a_page_no_read_of_its_own(
    api: Api, sqlite_trips: list[str]
) -> None:
    """Only an object's creator's versions count (``domain.versioning``), decided from the
    report records a page reads anyway to resolve versions: a page of objects that another node
    posted copies of costs what one whose creator posted newer versions of them costs."""
    usa, gbr = await api.node("usa", "USA"), await api.node("gbr", "GBR")
    costs = {}
    for topic, later in (("ransomware", usa), ("phishing", gbr)):
        cid = await collection_id(api, topics=[topic])
        idents = [f"indicator--{uuid.uuid4()}" for _ in range(100)]
        for modified, token in (("2026-01-01T00:00:00.000Z", usa), ("2026-01-02T00:00:00.000Z", later)):
            for n, ident in enumerate(idents):
                await publish(api, token, indicator(n, ident=ident, modified=modified), topics=[topic])
        path = f"/taxii2/api/collections/{cid}/objects/?limit=100"
        costs[topic] = await _page_trips(api, usa, path, sqlite_trips, 100)
    assert costs["ransomware"][0] == costs["phishing"][0], costs
