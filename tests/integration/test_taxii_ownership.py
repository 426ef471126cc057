"""Only an object's creator versions it (STIX 2.1), decided on the read side: a hostile member
posting an object at an id another node published, with the same or a later ``modified``, must
not become what a reader entitled to both is served, in any TAXII view. The publish itself is
never refused (ids like ATT&CK's are copied by everyone, and a refusal would tell the poster
whether a report it may not see holds the id): what a reader is served is decided from the
reports it may see alone, by the node that published the first stored version among them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from broker.domain import stix as ours
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import body
from tests.integration.test_taxii import TAXII, bundle, collection_id, indicator, raw
from tests.integration.test_taxii_markings import TLP_GREEN

POST = {"Content-Type": TAXII}
FIRST, LATER, LATEST = "2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z", "2026-01-04T00:00:00.000Z"
MATCHES = (None, "last", "first", "all", FIRST, LATER, LATEST)


def _named(name: str, ident: str, modified: str) -> dict[str, Any]:
    return indicator(0, ident=ident, modified=modified) | {"name": name}


async def _post(api: Api, token: str, cid: str, *objects: dict[str, Any]) -> dict[str, Any]:
    """A TAXII add-objects that must store every object."""
    path = f"/taxii2/api/collections/{cid}/objects/"
    data = json.dumps({"objects": list(objects)}).encode()
    status, _, answer = await raw(api, "POST", path, token=token, headers=POST, data=data)
    assert status == 202 and answer["success_count"] == len(objects), answer
    assert "failures" not in answer, answer
    return dict(answer)


async def _publish(api: Api, token: str, *objects: dict[str, Any], **label: Any) -> datetime:
    """A REST publish that must succeed: its report's date_added."""
    status, answer = await api.publish(token, body(payload=bundle(*objects), **label))
    assert status == 201, answer
    return datetime.fromisoformat(str(answer["created"]).replace("Z", "+00:00"))


async def _report(api: Api, token: str, *objects: dict[str, Any]) -> str:
    status, answer = await api.publish(token, body(payload=bundle(*objects)))
    assert status == 201, answer
    return str(answer["id"])


async def _get(api: Api, token: str, path: str) -> dict[str, Any]:
    status, _, answer = await raw(api, "GET", path, token=token)
    assert status == 200, (path, answer)
    return dict(answer)


def _query(match: str | None, extra: str = "") -> str:
    parts = [p for p in (extra, None if match is None else f"match[version]={match}") if p]
    return "?" + "&".join(parts) if parts else ""


async def _names(api: Api, token: str, cid: str, ident: str, match: str | None, extra: str = "") -> list[str]:
    """The names of the versions of ``ident`` served under ``match[version]`` (None: the
    default): by id, in a listing by id and in the whole listing, in that order."""
    base = f"/taxii2/api/collections/{cid}/objects/"
    found = []
    for path, filtered in ((f"{base}{ident}/", ""), (base, f"match[id]={ident}"), (base, "")):
        both = "&".join(p for p in (filtered, extra) if p)
        answer = await _get(api, token, path + _query(match, both))
        found += [o["name"] for o in answer.get("objects", []) if o["id"] == ident]
    return found


async def _manifest(
    api: Api, token: str, cid: str, ident: str, match: str | None
) -> list[tuple[str, datetime]]:
    """(version, date_added) of the manifest records of ``ident``, by id and in the whole manifest."""
    base = f"/taxii2/api/collections/{cid}/manifest/"
    found = []
    for filtered in (f"match[id]={ident}", ""):
        answer = await _get(api, token, base + _query(match, filtered))
        found += [
            (m["version"], ours.instant(m["date_added"]))
            for m in answer.get("objects", [])
            if m["id"] == ident
        ]
    return found


async def _versions(api: Api, token: str, cid: str, ident: str, extra: str = "") -> list[str]:
    path = f"/taxii2/api/collections/{cid}/objects/{ident}/versions/" + (f"?{extra}" if extra else "")
    return list((await _get(api, token, path)).get("versions", []))


async def _only(api: Api, token: str, cid: str, ident: str, name: str, version: str, added: datetime) -> None:
    """``token``'s node is served one version of ``ident``, ``name`` at ``version`` (added
    ``added``), in every view under every ``match[version]``."""
    for match in MATCHES:
        expected = [name] * 3 if match in (None, "last", "first", "all", version) else []
        assert await _names(api, token, cid, ident, match) == expected, f"match[version]={match}"
    for match in (None, "all", version):
        assert await _manifest(api, token, cid, ident, match) == [(version, added)] * 2, f"manifest {match}"
    assert await _versions(api, token, cid, ident) == [version]


async def test_a_copy_of_another_nodes_object_is_not_served_to_a_reader_of_both(api: Api) -> None:
    usa = await api.node("usa", "USA")
    hostile = await api.node("gbr", "GBR")
    fra = await api.node("fra", "FRA", roles=("subscribe",))
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    added = await _publish(api, usa, _named("usa", ident, FIRST))

    # The same version through TAXII, a later one through REST: both stored, nothing refused.
    await _post(api, hostile, cid, _named("forged", ident, FIRST), indicator(2))
    report = await _report(api, hostile, _named("forged", ident, LATER))

    # A reader entitled to both, and the hostile node itself (it may see usa's report), are
    # served usa's version only, in every view.
    await _only(api, fra, cid, ident, "usa", FIRST, added)
    await _only(api, hostile, cid, ident, "usa", FIRST, added)
    await _only(api, usa, cid, ident, "usa", FIRST, added)
    # The rule is about TAXII's object views: the report itself is served whole, as always.
    status, answer = await api.get(f"/v1/reports/{report}", fra)
    assert status == 200 and [o["name"] for o in answer["payload"]["objects"]] == ["forged"]


async def test_a_reader_that_may_see_only_the_copy_is_served_the_copy(api: Api) -> None:
    """What a node is served is decided from the reports it may see alone: the creator's report
    hidden from it neither shows through nor hides the copy it may see."""
    usa = await api.node("usa", "USA")
    usa_reader = await api.node("usa-2", "USA", roles=("subscribe",))
    gbr = await api.node("gbr", "GBR")
    fra = await api.node("fra", "FRA", roles=("subscribe",))
    aus = await api.node("aus", "AUS", roles=("subscribe",))
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    first = await _publish(api, usa, _named("usa", ident, FIRST), to=["NATO"])  # hidden from AUS
    copied = await _publish(api, gbr, _named("gbr", ident, LATER), to=["NATO", "AUS"])
    await _only(api, aus, cid, ident, "gbr", LATER, copied)
    await _only(api, fra, cid, ident, "usa", FIRST, first)

    # A report of usa released to USA alone: gbr, and every other nation, see gbr's own version.
    other = f"indicator--{uuid.uuid4()}"
    hidden = await _publish(api, usa, _named("usa", other, LATER), to=[])
    copied = await _publish(api, gbr, _named("gbr", other, FIRST), to=["NATO", "AUS"])
    for token in (gbr, fra, aus):
        await _only(api, token, cid, other, "gbr", FIRST, copied)
    await _only(api, usa_reader, cid, other, "usa", LATER, hidden)


async def test_the_creator_versions_its_own_object(api: Api) -> None:
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    fra = await api.node("fra", "FRA", roles=("subscribe",))
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    await _post(api, usa, cid, _named("usa 1", ident, FIRST))
    await _post(api, gbr, cid, _named("forged", ident, LATEST))
    await _post(api, usa, cid, _named("usa 2", ident, LATER))
    assert await _names(api, fra, cid, ident, None) == ["usa 2"] * 3
    await _post(api, usa, cid, _named("usa 3", ident, LATEST))  # equal to the copy's
    await _post(api, usa, cid, _named("usa 4", ident, LATEST))  # equal to its own: the later report's
    for token in (fra, gbr, usa):
        assert await _names(api, token, cid, ident, None) == ["usa 4"] * 3
        assert await _names(api, token, cid, ident, "last") == ["usa 4"] * 3
        assert await _names(api, token, cid, ident, "first") == ["usa 1"] * 3
        assert await _names(api, token, cid, ident, LATEST) == ["usa 3", "usa 4"] * 3
        every = ["usa 1", "usa 2", "usa 3", "usa 4"]
        assert await _names(api, token, cid, ident, "all") == [*every, *every, *every]
        assert await _versions(api, token, cid, ident) == [FIRST, LATER, LATEST, LATEST]
        records = await _manifest(api, token, cid, ident, "all")
        assert [version for version, _ in records] == [FIRST, LATER, LATEST, LATEST] * 2


async def test_a_poller_by_added_after_or_spec_version_is_not_served_the_copy(
    api: Api, clock: FakeClock
) -> None:
    """Which node's versions count is decided from every version the reader may see, not only
    those the request's filters keep: a poller asking for what was added after the creator's
    version, or for another spec_version, is not served a copy posted later."""
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    fra = await api.node("fra", "FRA", roles=("subscribe",))
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    await _publish(api, usa, _named("usa", ident, FIRST))
    clock.advance(seconds=10)
    since = f"added_after={ours.timestamp(clock())}"
    clock.advance(seconds=10)
    await _publish(api, gbr, _named("forged", ident, LATER))
    await _publish(api, gbr, _named("forged", ident, LATEST) | {"spec_version": "2.0"})
    for match in MATCHES:
        assert await _names(api, fra, cid, ident, match, since) == [], match
        assert await _names(api, fra, cid, ident, match, "match[spec_version]=2.0") == [], match
    assert await _versions(api, fra, cid, ident, since) == []
    assert await _versions(api, fra, cid, ident, "match[spec_version]=2.0") == []
    # The creator's new version is what the poller gets next.
    await _publish(api, usa, _named("usa 2", ident, LATEST))
    assert await _names(api, fra, cid, ident, None, since) == ["usa 2"] * 3
    assert await _versions(api, fra, cid, ident, since) == [LATEST]


async def _status(api: Api, token: str, method: str, path: str) -> int:
    return (await raw(api, method, path, token=token))[0]


async def test_the_creators_deletes_name_its_own_versions(api: Api) -> None:
    """DELETE by version resolves ``first``/``last`` over the versions reads serve: a later copy
    does not stand in the creator's way, and removing its versions does not hand the object to
    the node that posted the copy. A recall of the creator's reports is another matter: a reader
    then sees only the copy's report."""
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    fra = await api.node("fra", "FRA", roles=("subscribe",))
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    path = f"/taxii2/api/collections/{cid}/objects/{ident}/"
    first = await _report(api, usa, _named("usa 1", ident, FIRST))
    await _report(api, gbr, _named("forged", ident, LATEST))
    second = await _report(api, usa, _named("usa 2", ident, LATER))
    assert await _status(api, usa, "DELETE", path + "?match[version]=last") == 200
    assert await _names(api, fra, cid, ident, None) == ["usa 1"] * 3
    # The copy is not a version of the object gbr may remove, for a node that sees usa's report.
    assert await _status(api, gbr, "DELETE", path + f"?match[version]={LATEST}") == 404
    assert await _status(api, gbr, "DELETE", path + "?match[version]=last") == 403
    assert await _status(api, usa, "DELETE", path + "?match[version]=first") == 200
    for token in (fra, gbr):
        assert await _status(api, token, "GET", path) == 404
        assert await _status(api, token, "GET", path + "versions/") == 404
        listing = await _get(api, token, f"/taxii2/api/collections/{cid}/objects/")
        assert [o for o in listing.get("objects", []) if o["id"] == ident] == []
    # usa recalls its reports: a reader now sees only gbr's, and is served its copy.
    for report in (first, second):
        assert (await api.call("POST", f"/v1/reports/{report}/recall", usa))[0] == 200
    assert await _names(api, fra, cid, ident, None) == ["forged"] * 3


ATTACK_PATTERN = {  # MITRE ATT&CK T1566 as ATT&CK publishes it: every nation copies this id
    "type": "attack-pattern",
    "spec_version": "2.1",
    "id": "attack-pattern--a62a8db3-f23a-4d8f-afd6-9dbc77e7813b",
    "created": "2020-03-02T18:45:07.892Z",
    "modified": "2023-10-01T02:28:45.147Z",
    "name": "Phishing",
    "external_references": [
        {
            "source_name": "mitre-attack",
            "external_id": "T1566",
            "url": "https://attack.mitre.org/techniques/T1566",
        }
    ],
}
TLP1_GREEN = TLP_GREEN  # the STIX 2.1 TLP 1.0 marking-definition


async def test_a_bundle_carrying_ids_others_published_is_stored_whole(api: Api) -> None:
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    fra = await api.node("fra", "FRA", roles=("subscribe",))
    cid = await collection_id(api)
    mine = {"usa": indicator(1), "gbr": indicator(2), "fra": indicator(3)}
    await _post(api, usa, cid, ATTACK_PATTERN, TLP1_GREEN, mine["usa"])
    await _post(api, gbr, cid, ATTACK_PATTERN, TLP1_GREEN, mine["gbr"])
    await _publish(api, gbr, ATTACK_PATTERN | {"name": "copied"}, TLP1_GREEN, mine["fra"])
    answer = await _get(api, fra, f"/taxii2/api/collections/{cid}/objects/?match[version]=all")
    served = [(o["id"], o.get("name")) for o in answer["objects"]]
    assert sorted(served) == sorted(
        [
            (ATTACK_PATTERN["id"], "Phishing"),
            (TLP1_GREEN["id"], "TLP:GREEN"),
            *((o["id"], o["name"]) for o in mine.values()),
        ]
    )
