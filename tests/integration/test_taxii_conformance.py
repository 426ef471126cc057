"""TAXII 2.1 conformance, written from the specification's MUSTs (OASIS Standard, 10 June 2021)
and the HTTP-level behaviour a TAXII client relies on, against a live broker on each engine.
Every object served is checked with the OASIS STIX 2.1 validator (``stix2-validator``).

Section numbers are the specification's. The data set is this project's own: a small threat
report with objects of the kinds TAXII servers are usually exercised with (SDOs at several
versions, an SCO, a relationship, a STIX 2.1 TLP marking, an identity)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any
from urllib.parse import quote

from stix2validator import ValidationOptions, validate_instance  # type: ignore[import-untyped]

from broker.domain import stix as ours
from tests.integration.conftest import Api
from tests.integration.test_taxii import TAXII, collection_id, indicator, raw
from tests.integration.test_taxii_markings import TLP_GREEN

MICRO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
VALIDATION = ValidationOptions(version="2.1")


def _assert_valid_stix(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        result = validate_instance(obj, VALIDATION)
        assert result.is_valid, (obj.get("id"), [str(e) for e in result.errors])


def _no_empty_lists(value: Any, where: str = "$") -> None:
    """§2 (and STIX §3.3): an empty list MUST NOT be used."""
    if isinstance(value, list):
        assert value, f"empty list at {where}"
        for i, item in enumerate(value):
            _no_empty_lists(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_empty_lists(item, f"{where}.{key}")


class Checked:
    """Every answer goes through the checks that hold for all of them."""

    def __init__(self, api: Api, token: str) -> None:
        self.api, self.token = api, token
        self.served = 0

    async def get(self, path: str, status: int = 200) -> tuple[dict[str, str], dict[str, Any]]:
        code, headers, answer = await raw(self.api, "GET", path, token=self.token)
        assert code == status, (path, answer)
        assert headers["Content-Type"].replace(" ", "").startswith("application/taxii+json;version=2.1")
        _no_empty_lists(answer)
        if code >= 400:  # §3.6.1: an error message has a title
            assert answer["title"] and answer["http_status"] == str(code)
        for name in ("X-TAXII-Date-Added-First", "X-TAXII-Date-Added-Last"):
            if name in headers:  # §2 / §5.4: timestamps with microsecond precision
                assert MICRO.fullmatch(headers[name]), (path, name, headers[name])
        if code == 200 and "/objects/" in path and "versions/" not in path and "objects" in answer:
            _assert_valid_stix(answer["objects"])
            self.served += len(answer["objects"])
        if "more" in answer:  # §3.7: next only with more, more true only with next
            assert ("next" in answer) == answer["more"], answer
        return headers, answer

    async def all_pages(self, path: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        items: list[dict[str, Any]] = []
        heads: list[dict[str, str]] = []
        joiner = "&" if "?" in path else "?"
        url = path
        for _ in range(50):
            headers, answer = await self.get(url)
            items += answer.get("objects", [])
            heads.append(headers)
            if not answer.get("more"):
                return items, heads
            url = f"{path}{joiner}next={quote(answer['next'])}"
        raise AssertionError("paging did not end")


def _data() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An identity, an indicator at three versions, malware, a relationship, an SCO, TLP:GREEN."""
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": "Example CERT",
        "identity_class": "organization",
    }
    ident = f"indicator--{uuid.uuid4()}"
    versions = [
        indicator(1, ident=ident, modified=f"2026-01-0{n}T00:00:00.000Z") | {"created_by_ref": identity["id"]}
        for n in (1, 2, 3)
    ]
    malware = {
        "type": "malware",
        "spec_version": "2.1",
        "id": f"malware--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": "Example",
        "is_family": True,
        "object_marking_refs": [TLP_GREEN["id"]],
    }
    relationship = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": f"relationship--{uuid.uuid4()}",
        "created": "2026-01-02T00:00:00.000Z",
        "modified": "2026-01-02T00:00:00.000Z",
        "relationship_type": "indicates",
        "source_ref": ident,
        "target_ref": malware["id"],
    }
    address = {"type": "ipv4-addr", "spec_version": "2.1", "id": f"ipv4-addr--{uuid.uuid4()}"}
    address["value"] = "203.0.113.5"
    posts = [
        {"objects": [TLP_GREEN, identity, versions[0], malware]},
        {"objects": [versions[2], relationship]},
        {"objects": [versions[1], address]},
    ]
    return {"identity": identity, "indicator": ident, "malware": malware, "address": address}, posts


async def test_taxii_2_1_musts_against_a_live_broker(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    taxii = Checked(api, usa)
    root = "/taxii2/api/"
    coll = f"{root}collections/{cid}/"

    # §4.1 discovery, §4.2 API root, §5.1/5.2 collections.
    _, discovery = await taxii.get("/taxii2/")
    assert discovery["title"] and root in discovery["api_roots"]
    _, api_root = await taxii.get(root)
    assert api_root["title"] and TAXII in api_root["versions"]
    assert isinstance(api_root["max_content_length"], int)
    _, listed = await taxii.get(f"{root}collections/")
    for collection in listed["collections"]:
        assert {"id", "title", "can_read", "can_write"} <= set(collection)
        assert "application/stix+json;version=2.1" in collection["media_types"]
    _, one = await taxii.get(coll)
    assert one["id"] == cid and one["can_read"] is True and one["can_write"] is True
    await taxii.get(f"{root}collections/{uuid.uuid4()}/", status=404)

    # §3.1 and §3.6: media types, authentication.
    assert (await raw(api, "GET", "/taxii2/", token=usa, headers={"Accept": "application/xml"}))[0] == 406
    status, headers, _ = await raw(api, "GET", coll + "objects/")
    assert status == 401 and "WWW-Authenticate" in headers

    # §5.5 add objects: 202 and a status resource; §4.3 get status.
    named, posts = _data()
    statuses = []
    for envelope in posts:
        status, _, answer = await raw(
            api,
            "POST",
            coll + "objects/",
            token=usa,
            headers={"Content-Type": TAXII},
            data=json.dumps(envelope).encode(),
        )
        assert status == 202, answer
        statuses.append(answer)
    bad = await raw(
        api, "POST", coll + "objects/", token=usa, headers={"Content-Type": "application/json"}, data=b"{}"
    )
    assert bad[0] == 415
    for answer in statuses:
        _, polled = await taxii.get(f"{root}status/{answer['id']}/")
        assert polled["status"] == "complete" and polled["total_count"] == polled["success_count"]
        assert all({"id", "version"} <= set(s) for s in polled["successes"])
        _no_empty_lists(polled)

    # §5.4 get objects: latest only without match[version] (§3.4.1), one entry per object.
    items, heads = await taxii.all_pages(coll + "objects/?limit=2")
    payload = [
        o for o in items if not ours.is_label_marking_id(o["id"]) and o["id"] not in ours.TLP_IDS.values()
    ]
    ids = [o["id"] for o in payload]
    assert len(ids) == len(set(ids)) == 6, ids
    latest = next(o for o in payload if o["id"] == named["indicator"])
    assert latest["modified"] == "2026-01-03T00:00:00.000Z"
    assert all("X-TAXII-Date-Added-First" in h for h in heads)
    _, every = await taxii.get(coll + f"objects/?match[id]={named['indicator']}&match[version]=all")
    assert sorted(o["modified"] for o in every["objects"]) == [
        f"2026-01-0{n}T00:00:00.000Z" for n in (1, 2, 3)
    ]
    _, first = await taxii.get(coll + f"objects/?match[id]={named['indicator']}&match[version]=first")
    assert [o["modified"] for o in first["objects"]] == ["2026-01-01T00:00:00.000Z"]
    _, exact = await taxii.get(
        coll + f"objects/?match[id]={named['indicator']}&match[version]=2026-01-02T00:00:00.000Z"
    )
    assert [o["modified"] for o in exact["objects"]] == ["2026-01-02T00:00:00.000Z"]

    # The label travels as a marking: the broker's marking-definitions are valid STIX too.
    kinds_path = coll + "objects/?match[type]=marking-definition,identity,extension-definition"
    _, markings = await taxii.get(kinds_path)
    label = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}
    assert ours.label_marking_id(label) in {o["id"] for o in markings["objects"]}
    for fixed in (ours.BROKER_IDENTITY_ID, ours.LABEL_EXTENSION_ID, ours.TLP_IDS["RED"]):
        await taxii.get(coll + f"objects/{fixed}/")

    # §3.4.2 filters: type, id (several), spec_version; added_after (§3.4.1).
    _, kinds = await taxii.get(coll + "objects/?match[type]=malware,ipv4-addr")
    assert {o["type"] for o in kinds["objects"]} == {"malware", "ipv4-addr"}
    both = f"{named['malware']['id']},{named['address']['id']}"
    _, chosen = await taxii.get(coll + f"objects/?match[id]={both}")
    assert {o["id"] for o in chosen["objects"]} == set(both.split(","))
    _, old_spec = await taxii.get(coll + "objects/?match[spec_version]=2.0")
    assert old_spec == {}
    last = heads[-1]["X-TAXII-Date-Added-Last"]
    _, after = await taxii.get(coll + f"objects/?added_after={quote(last)}")
    assert after == {}
    first_added = heads[0]["X-TAXII-Date-Added-First"]
    _, later = await taxii.get(coll + f"objects/?added_after={quote(first_added)}")
    assert named["identity"]["id"] not in {o["id"] for o in later.get("objects", [])}

    # §5.3 manifest: one record per object version served, with the four properties.
    manifest, _ = await taxii.all_pages(coll + "manifest/?limit=3")
    for record in manifest:
        assert set(record) == {"id", "date_added", "version", "media_type"}
        assert MICRO.fullmatch(record["date_added"])
    assert len([m for m in manifest if m["id"] == named["indicator"]]) == 1

    # §5.6 get an object, §5.8 versions: by id, every kind of object posted.
    for ident in (named["identity"]["id"], TLP_GREEN["id"], named["address"]["id"], named["indicator"]):
        _, found = await taxii.get(coll + f"objects/{ident}/")
        assert [o["id"] for o in found["objects"]] == [ident]
        _, versions = await taxii.get(coll + f"objects/{ident}/versions/")
        assert versions["versions"]
    _, versions = await taxii.get(coll + f"objects/{named['indicator']}/versions/?limit=2")
    assert versions["more"] is True and len(versions["versions"]) == 2
    await taxii.get(coll + f"objects/indicator--{uuid.uuid4()}/", status=404)
    await taxii.get(coll + f"objects/indicator--{uuid.uuid4()}/versions/", status=404)

    # §5.7 delete: later requests for the object answer 404.
    assert (await raw(api, "DELETE", coll + f"objects/{named['address']['id']}/", token=usa))[0] == 200
    await taxii.get(coll + f"objects/{named['address']['id']}/", status=404)
    await taxii.get(coll + f"objects/{named['address']['id']}/versions/", status=404)
    assert taxii.served > 20
