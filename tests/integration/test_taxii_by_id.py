"""One object through TAXII: 404 once it is gone, an empty answer is ``{}`` (issue 22 finding 5),
and ``limit`` pages by id and versions with ``more`` and ``next`` (finding 2)."""

from __future__ import annotations

import uuid

from tests.integration.conftest import Api
from tests.integration.test_taxii import bundle, collection_id, indicator, publish, raw


async def test_after_delete_by_id_and_versions_answer_404(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    await publish(api, usa, bundle(indicator(1, ident=ident)))
    path = f"/taxii2/api/collections/{cid}/objects/{ident}/"
    assert (await raw(api, "GET", path, token=usa))[0] == 200
    assert (await raw(api, "GET", path + "versions/", token=usa))[0] == 200
    assert (await raw(api, "DELETE", path, token=usa))[0] == 200
    for target in (path, path + "versions/"):
        status, _, answer = await raw(api, "GET", target, token=usa)
        assert status == 404 and answer["http_status"] == "404", target


async def test_an_empty_answer_is_an_empty_envelope(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    await publish(api, usa, bundle(indicator(1, ident=ident)))
    base = f"/taxii2/api/collections/{cid}/"
    later = "added_after=2099-01-01T00:00:00Z"
    for path in (f"objects/{ident}/versions/?{later}", f"objects/{ident}/?{later}", f"objects/?{later}"):
        status, _, answer = await raw(api, "GET", base + path, token=usa)
        assert status == 200 and answer == {}, path


async def test_limit_pages_by_id_and_versions(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    stamps = [f"2026-01-0{n}T00:00:00.000Z" for n in range(1, 6)]
    for stamp in stamps:
        await publish(api, usa, bundle(indicator(1, ident=ident, modified=stamp)))
    base = f"/taxii2/api/collections/{cid}/objects/{ident}/"
    for path, key, query in ((base, "objects", "match[version]=all&"), (base + "versions/", "versions", "")):
        got: list[str] = []
        firsts: list[str] = []
        url = f"{path}?{query}limit=2"
        for _ in range(5):
            status, headers, answer = await raw(api, "GET", url, token=usa)
            assert status == 200, answer
            items = answer[key]
            got += [o["modified"] if key == "objects" else o for o in items]
            firsts.append(headers["X-TAXII-Date-Added-First"])
            if not answer.get("more"):
                assert "next" not in answer
                break
            assert len(items) == 2 and answer["next"]
            url = f"{path}?{query}limit=2&next={answer['next']}"
        assert got == stamps, path
        assert len(set(firsts)) == 3  # the date headers span the page, not every version
