"""Posted marking-definitions, identities and extension-definitions are objects like any other
(issue 22 finding 3): reachable by id, by ``match[type]`` and ``match[id]``, in the manifest and
``versions/``, and deletable."""

from __future__ import annotations

import json
import uuid
from typing import Any

from stix2validator import ValidationOptions, validate_instance  # type: ignore[import-untyped]

from tests.integration.conftest import Api
from tests.integration.test_taxii import TAXII, collection_id, indicator, raw

# The STIX 2.1 TLP:GREEN marking-definition (STIX 2.1 §7.2.1.4), as medallion's test data posts it.
TLP_GREEN = {
    "type": "marking-definition",
    "spec_version": "2.1",
    "id": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    "created": "2017-01-20T00:00:00.000Z",
    "definition_type": "tlp",
    "name": "TLP:GREEN",
    "definition": {"tlp": "green"},
}


def _identity() -> dict[str, Any]:
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": f"identity--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": "ACME CERT",
        "identity_class": "organization",
    }


def _extension(creator: str) -> dict[str, Any]:
    return {
        "type": "extension-definition",
        "spec_version": "2.1",
        "id": f"extension-definition--{uuid.uuid4()}",
        "created_by_ref": creator,
        "created": "2026-01-01T00:00:00.000Z",
        "modified": "2026-01-01T00:00:00.000Z",
        "name": "ACME extension",
        "schema": "https://example.com/acme.json",
        "version": "1.0.0",
        "extension_types": ["property-extension"],
    }


async def test_posted_markings_identities_and_extensions_are_reachable(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    base = f"/taxii2/api/collections/{cid}/"
    identity = _identity()
    extension = _extension(identity["id"])
    named = indicator(1) | {"created_by_ref": identity["id"]}
    posted = [TLP_GREEN, identity, extension, named]
    status, _, answer = await raw(
        api,
        "POST",
        base + "objects/",
        token=usa,
        headers={"Content-Type": TAXII},
        data=json.dumps({"objects": posted}).encode(),
    )
    assert status == 202 and answer["success_count"] == 4, answer
    for obj in posted[:3]:
        ident, kind = obj["id"], obj["type"]
        status, _, one = await raw(api, "GET", f"{base}objects/{ident}/", token=usa)
        assert status == 200 and [o["id"] for o in one["objects"]] == [ident], kind
        for query in (f"match[type]={kind}", f"match[id]={ident}"):
            for path in ("objects/", "manifest/"):
                status, _, listed = await raw(api, "GET", f"{base}{path}?{query}", token=usa)
                assert status == 200 and ident in [o["id"] for o in listed.get("objects", [])], (path, query)
        status, _, versions = await raw(api, "GET", f"{base}objects/{ident}/versions/", token=usa)
        assert status == 200 and len(versions["versions"]) == 1, kind
    # The identity an object names as its creator can be fetched.
    status, _, creator = await raw(api, "GET", f"{base}objects/{named['created_by_ref']}/", token=usa)
    assert status == 200 and creator["objects"][0]["name"] == "ACME CERT"
    status, _, _ = await raw(api, "DELETE", f"{base}objects/{TLP_GREEN['id']}/", token=usa)
    assert status == 200
    assert (await raw(api, "GET", f"{base}objects/{TLP_GREEN['id']}/", token=usa))[0] == 404


async def test_markings_served_pass_the_oasis_validator(api: Api) -> None:
    """Finding 6: a posted TLP marking-definition is served as posted (no marking refs added to
    it), and the broker's label marking for a label without caveats sends no empty list."""
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    base = f"/taxii2/api/collections/{cid}/"
    status, _, answer = await raw(
        api,
        "POST",
        base + "objects/",
        token=usa,
        headers={"Content-Type": TAXII},
        data=json.dumps({"objects": [TLP_GREEN, indicator(1)]}).encode(),
    )
    assert status == 202, answer
    for query in ("", "?match[type]=marking-definition"):
        status, _, listed = await raw(api, "GET", base + "objects/" + query, token=usa)
        assert status == 200
        served = {o["id"]: o for o in listed["objects"]}
        assert served[TLP_GREEN["id"]] == TLP_GREEN, query
        for obj in served.values():
            result = validate_instance(obj, ValidationOptions(version="2.1"))
            assert result.is_valid, (obj["id"], [str(e) for e in result.errors])
