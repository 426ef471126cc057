"""DELETE with ``match[version]`` removes that version only (issue 22 finding 4): the report stays
one signed, encrypted unit, and the version is excluded from what TAXII serves, on the record."""

from __future__ import annotations

import uuid

from tests.integration.conftest import Api
from tests.integration.helpers import events
from tests.integration.test_taxii import bundle, collection_id, indicator, publish, raw


def _stamp(n: int) -> str:
    return f"2026-01-0{n}T00:00:00.000Z"


async def test_delete_one_version_keeps_the_others_and_the_rest_of_its_report(api: Api) -> None:
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    beside = indicator(9)
    await publish(api, usa, bundle(indicator(1, ident=ident, modified=_stamp(1))))
    await publish(api, usa, bundle(indicator(1, ident=ident, modified=_stamp(2)), beside))
    await publish(api, usa, bundle(indicator(1, ident=ident, modified=_stamp(3))))
    base = f"/taxii2/api/collections/{cid}/objects/"

    async def versions() -> list[str]:
        status, _, answer = await raw(api, "GET", f"{base}{ident}/versions/", token=gbr)
        assert status == 200, answer
        return list(answer["versions"])

    assert (await raw(api, "DELETE", f"{base}{ident}/?match[version]={_stamp(2)}", token=usa))[0] == 200
    assert await versions() == [_stamp(1), _stamp(3)]
    status, _, other = await raw(api, "GET", f"{base}{beside['id']}/", token=gbr)
    assert status == 200 and [o["id"] for o in other["objects"]] == [beside["id"]]
    status, _, answer = await raw(api, "GET", f"{base}?match[id]={ident}&match[version]=all", token=gbr)
    assert sorted(o["modified"] for o in answer["objects"]) == [_stamp(1), _stamp(3)]

    assert (await raw(api, "DELETE", f"{base}{ident}/?match[version]=last", token=usa))[0] == 200
    assert await versions() == [_stamp(1)]
    status, _, answer = await raw(api, "GET", f"{base}{ident}/", token=gbr)
    assert [o["modified"] for o in answer["objects"]] == [_stamp(1)]

    # Another node may not remove USA's version; a version nobody holds is not found.
    assert (await raw(api, "DELETE", f"{base}{ident}/?match[version]=first", token=gbr))[0] == 403
    assert (await raw(api, "DELETE", f"{base}{ident}/?match[version]={_stamp(5)}", token=usa))[0] == 404
    assert await versions() == [_stamp(1)]
    reasons = [e["reason"] for e in await events(api.ctx, action="recall")]
    assert reasons.count("version_excluded") == 2 and "not_originator" in reasons
