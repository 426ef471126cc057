"""Versions per object, not per report (issue 22 finding 1), through an index of keyed hashes of
STIX ids that tells someone holding the database alone nothing about which objects it holds."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from broker.services import admin
from tests.integration.conftest import Api
from tests.integration.helpers import body
from tests.integration.test_taxii import bundle, collection_id, indicator, raw


def _stamp(n: int) -> str:
    return f"2026-01-0{n}T00:00:00.000Z"


async def _objects(api: Api, token: str, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    return await raw(api, "GET", path, token=token)


async def _three_versions(api: Api, usa: str) -> tuple[str, list[str]]:
    """One indicator at three versions in three reports, posted out of order, and four other
    objects beside them: 5 objects exist."""
    ident = f"indicator--{uuid.uuid4()}"
    others = [indicator(10 + n) for n in range(4)]
    payloads = [
        bundle(indicator(1, ident=ident, modified=_stamp(2)), others[0], others[1]),
        bundle(indicator(1, ident=ident, modified=_stamp(3)), others[2]),
        bundle(indicator(1, ident=ident, modified=_stamp(1)), others[3]),
    ]
    for payload in payloads:
        status, answer = await api.publish(usa, body(payload=payload))
        assert status == 201, answer
    return ident, [o["id"] for o in others]


async def test_latest_first_and_all_are_per_object_across_reports(api: Api) -> None:
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    cid = await collection_id(api)
    ident, others = await _three_versions(api, usa)
    base = f"/taxii2/api/collections/{cid}/"
    for path in ("objects/", "manifest/"):
        for query, version in (
            ("", _stamp(3)),
            ("?match[version]=last", _stamp(3)),
            ("?match[version]=first", _stamp(1)),
        ):
            status, _, answer = await _objects(api, gbr, base + path + query)
            assert status == 200, answer
            items = [o for o in answer["objects"] if not o["id"].startswith("marking-definition--")]
            assert sorted(o["id"] for o in items) == sorted([ident, *others]), (path, query)
            (found,) = [o for o in items if o["id"] == ident]
            assert (found.get("modified") or found.get("version")) == version, (path, query)
        status, _, answer = await _objects(api, gbr, base + path + "?match[version]=all")
        assert len([o for o in answer["objects"] if o["id"] == ident]) == 3

    status, _, answer = await _objects(api, gbr, base + f"objects/{ident}/")
    assert status == 200 and [o["modified"] for o in answer["objects"]] == [_stamp(3)]
    status, _, answer = await _objects(api, gbr, base + f"objects/{ident}/?match[version]=first")
    assert [o["modified"] for o in answer["objects"]] == [_stamp(1)]
    status, _, answer = await _objects(api, gbr, base + f"objects/{ident}/?match[version]=all")
    assert sorted(o["modified"] for o in answer["objects"]) == [_stamp(1), _stamp(2), _stamp(3)]
    status, _, answer = await _objects(api, gbr, base + f"objects/{ident}/versions/")
    assert sorted(answer["versions"]) == [_stamp(1), _stamp(2), _stamp(3)]


async def test_a_version_the_node_may_not_see_does_not_hide_the_one_it_may(api: Api) -> None:
    """The latest version a node gets is the latest of those it may see: a newer version in a
    report released to others neither hides it nor shows through."""
    usa = await api.node("usa", "USA")
    aus = await api.node("aus", "AUS")
    cid = await collection_id(
        api, label={"classification": "SECRET", "releasable_to": ["NATO", "AUS"], "caveats": []}
    )
    ident = f"indicator--{uuid.uuid4()}"
    seen = body(payload=bundle(indicator(1, ident=ident, modified=_stamp(1))), to=["NATO", "AUS"])
    hidden = body(payload=bundle(indicator(1, ident=ident, modified=_stamp(2))), to=["NATO"])
    for submission in (seen, hidden):
        assert (await api.publish(usa, submission))[0] == 201
    base = f"/taxii2/api/collections/{cid}/"
    for path in ("objects/", f"objects/{ident}/"):
        status, _, answer = await _objects(api, aus, base + path + "?match[type]=indicator")
        assert status == 200 and [o["modified"] for o in answer["objects"]] == [_stamp(1)], path
    status, _, answer = await _objects(api, aus, base + f"objects/{ident}/versions/")
    assert answer["versions"] == [_stamp(1)]


async def test_the_index_holds_no_object_id_in_plaintext(api: Api) -> None:
    usa = await api.node("usa", "USA")
    await collection_id(api)
    ident, others = await _three_versions(api, usa)
    async with api.ctx.db.read_transaction() as tx:
        rows = await tx.run(
            lambda c: [tuple(r) for r in c.execute(text("SELECT * FROM taxii_objects")).all()]
        )
    assert len(rows) == 7
    dumped = repr(rows)
    for object_id in (ident, *others):
        assert object_id.split("--")[1] not in dumped and object_id not in dumped


async def test_a_next_cursor_survives_a_key_rotation(api: Api) -> None:
    """``next`` is sealed under a key derived from the keyring's stable secret, not from the
    current KEK, which rotation and every erasure replace."""
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    await _three_versions(api, usa)
    path = f"/taxii2/api/collections/{cid}/objects/?limit=2"
    status, _, answer = await _objects(api, usa, path)
    assert status == 200 and answer["more"] is True
    await admin.rotate_keys(api.server_ctx, rewrap=True)
    status, _, again = await _objects(api, usa, path + f"&next={answer['next']}")
    assert status == 200, again
