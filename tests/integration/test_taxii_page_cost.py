"""What a TAXII page of 100 costs does not depend on what follows it: a full page reads one batch
of reports (one past the page, to know whether there is more), not a second batch with its
object index rows and access decisions only to find the next object."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Api
from tests.integration.test_taxii import collection_id, indicator, publish, raw


async def _publish(api: Api, token: str, first: int, count: int) -> None:
    for n in range(first, first + count):
        await publish(api, token, indicator(n))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # trips to the SQLite thread
async def test_a_full_page_costs_the_same_whatever_follows(api: Api, sqlite_trips: list[str]) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    path = f"/taxii2/api/collections/{cid}/objects/?limit=100"

    async def page_trips() -> tuple[int, bool]:
        """The fewest trips of three pages: the broker's background loops (the peers scan, the
        checkpointer) make trips of their own now and then, which only ever add to a page's."""
        await raw(api, "GET", path, token=usa)  # caches warm (node, directory, index state)
        counts, more = [], set()
        for _ in range(3):
            before = len(sqlite_trips)
            status, _, answer = await raw(api, "GET", path, token=usa)
            assert status == 200 and len(answer["objects"]) == 100
            counts.append(len(sqlite_trips) - before)
            more.add(answer["more"])
        assert len(more) == 1
        return min(counts), more.pop()

    await _publish(api, usa, 0, 100)
    alone, more = await page_trips()
    assert more is False
    await _publish(api, usa, 100, 50)
    followed, more = await page_trips()
    assert more is True
    assert followed == alone, (alone, followed)
