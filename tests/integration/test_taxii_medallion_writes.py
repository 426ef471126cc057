"""medallion's HTTP-level checks, continued (see test_taxii_medallion_checks.py): refusals
(401, 403, 404, 400, 406, 413, 415, 422), then the checks that write: add, status, delete by
version and by spec_version, SCO versions, duplicates. Registered after the read-only ones."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from tests.integration.test_taxii_medallion_checks import check, ids
from tests.integration.test_taxii_medallion_target import (
    COURSE_OF_ACTION,
    MALICIOUS_SITE,
    POISON_IVY_HASH,
    RELATIONSHIP,
    TAXII,
    Target,
    assert_taxii,
    course_of_action,
)

MISSING_COLLECTION = "12345678-1234-1234-1234-123456789012"


async def refused(t: Target, method: str, path: str, status: int, **kw: Any) -> dict[str, Any]:
    """A refusal is a TAXII error message (§3.6.1) carrying the status it was sent with."""
    _, headers, answer = await t.request(method, path, status=status, **kw)
    assert_taxii(headers)
    assert answer["title"] and str(answer["http_status"]) == str(status), answer
    return dict(answer)


# -- refusals ----------------------------------------------------------------------------------


@check
async def check_unauthenticated_401(t: Target) -> None:
    coll = t.coll()
    for path in (f"{t.root}collections/", f"{t.root}status/2223/", coll + "manifest/", coll + "objects/"):
        await t.request("GET", path, status=401, auth=None)
    await t.request("GET", coll + f"objects/{MALICIOUS_SITE}/", status=401, auth=None)
    await t.request(
        "POST", t.coll(t.writable) + "objects/", status=401, auth=None, body={"objects": [course_of_action()]}
    )


@check
async def check_forbidden_403(t: Target) -> None:
    coll = t.coll(t.forbidden)
    for path in (coll + "manifest/", coll + f"objects/{POISON_IVY_HASH}/", coll + "objects/"):
        await refused(t, "GET", path, 403, auth=t.forbidden_auth)
    await refused(
        t, "POST", coll + "objects/", 403, auth=t.forbidden_auth, body={"objects": [course_of_action()]}
    )


@check
async def check_unknown_things_404(t: Target) -> None:
    await t.request("GET", t.unknown_root, status=404)
    await t.request("GET", t.unknown_root + "collections/", status=404)
    await t.request("GET", t.unknown_root + f"collections/{MISSING_COLLECTION}/", status=404)
    await refused(t, "GET", t.coll(MISSING_COLLECTION), 404)
    await refused(t, "GET", t.coll(MISSING_COLLECTION) + "objects/", 404)
    await refused(
        t, "POST", t.coll(MISSING_COLLECTION) + "objects/", 404, body={"objects": [course_of_action()]}
    )
    await refused(t, "GET", f"{t.root}collections/24042009/manifest/", 404)
    await refused(t, "GET", f"{t.root}status/22101993/", 404)


@check
async def check_unknown_object_404_or_empty(t: Target) -> None:
    path = t.coll() + "objects/malware--cee60c30-a68c-11e3-b0c1-a01aac20d000/"
    status, headers, answer = await t.request("GET", path, status=(200, 404))
    assert_taxii(headers)
    assert not answer.get("objects") if status == 200 else answer["http_status"] == "404"


@check
async def check_bad_limit_400(t: Target) -> None:
    await refused(t, "GET", t.coll() + "objects/?limit=-20", 400)


@check
async def check_next_with_changed_filters_400(t: Target) -> None:
    base = t.coll() + "objects/?match[version]=all&limit=2"
    _, answer = await t.taxii_get(base)
    assert len(ids(answer)) == 2 and answer["more"] is True
    _, answer = await t.taxii_get(f"{base}&next={quote(answer['next'])}")
    assert len(ids(answer)) == 2 and answer["more"] is True
    changed = t.coll() + f"objects/?match[version]=first&limit=2&next={quote(answer['next'])}"
    await refused(t, "GET", changed, 400)


@check
async def check_content_negotiation_406_415(t: Target) -> None:
    for accept in ("application/xml", "application/taxii+json;version=2.0"):
        await t.request("GET", t.coll() + "objects/", status=406, headers={"Accept": accept})
    path = t.coll(t.writable) + "objects/"
    envelope = json.dumps({"objects": [course_of_action()]}).encode()
    for kind in ("application/json", "application/taxii+json;version=2.0"):
        await t.request("POST", path, status=415, headers={"Content-Type": kind}, data=envelope)


@check
async def check_too_large_413(t: Target) -> None:
    _, root = await t.taxii_get(t.root)
    padding = "x" * (int(root["max_content_length"]) + 1)
    body = json.dumps({"objects": [course_of_action(description=padding)]}).encode()
    await t.request(
        "POST", t.coll(t.writable) + "objects/", status=413, headers={"Content-Type": TAXII}, data=body
    )


@check
async def check_not_an_envelope_422(t: Target) -> None:
    body = json.dumps(course_of_action()).encode()
    await refused(t, "POST", t.coll(t.writable) + "objects/", 422, headers={"Content-Type": TAXII}, data=body)


# -- writes ------------------------------------------------------------------------------------


@check
async def check_add_read_status_manifest_delete(t: Target) -> None:
    coll = t.coll(t.writable)
    status, added = await t.post(t.writable, [course_of_action()])
    assert status == 202 and added["success_count"] == 1, added
    _, listed = await t.taxii_get(coll + "objects/")
    assert COURSE_OF_ACTION in ids(listed)
    _, chosen = await t.taxii_get(coll + f"objects/?match[id]={COURSE_OF_ACTION}")
    assert ids(chosen)[0] == COURSE_OF_ACTION
    _, polled = await t.taxii_get(f"{t.root}status/{added['id']}/")
    assert polled["success_count"] == 1
    _, records = await t.taxii_get(coll + f"manifest/?match[id]={COURSE_OF_ACTION}")
    assert ids(records) == [COURSE_OF_ACTION]
    _, headers, _ = await t.request("DELETE", coll + f"objects/{COURSE_OF_ACTION}/")
    assert_taxii(headers)
    await refused(t, "GET", coll + f"objects/{COURSE_OF_ACTION}/", 404)
    await t.request("GET", coll + f"manifest/{COURSE_OF_ACTION}/", status=404)


async def _versions(t: Target) -> list[str]:
    _, answer = await t.taxii_get(t.coll(t.writable) + f"objects/{COURSE_OF_ACTION}/versions/")
    assert answer["more"] is False
    return list(answer["versions"])


async def _delete(t: Target, query: str, status: int = 200) -> None:
    path = t.coll(t.writable) + f"objects/{COURSE_OF_ACTION}/{query}"
    _, headers, _ = await t.request("DELETE", path, status=status)
    assert_taxii(headers)


@check
async def check_delete_by_version(t: Target) -> None:
    years = ("2017", "2015", "2016", "2018", "2019")
    posted = [
        course_of_action(created="2014-01-27T13:49:53.935Z", modified=f"{y}-01-27T13:49:53.935Z")
        for y in years
    ]
    status, added = await t.post(t.writable, posted)
    assert status == 202 and added["success_count"] == 5, added
    assert len(await _versions(t)) == 5
    for query, gone, left in (
        ("2018-01-27T13:49:53.935Z", "2018", 4),
        ("first", "2015", 3),
        ("last", "2019", 2),
    ):
        await _delete(t, f"?match[version]={query}")
        remaining = await _versions(t)
        assert len(remaining) == left and f"{gone}-01-27T13:49:53.935Z" not in remaining, remaining
    await _delete(t, "?match[version]=all")
    await refused(t, "GET", t.coll(t.writable) + f"objects/{COURSE_OF_ACTION}/versions/", 404)


@check
async def check_delete_by_spec_version(t: Target) -> None:
    old = course_of_action(modified="2019-01-27T13:49:53.935Z", spec_version="2.0")
    status, added = await t.post(t.writable, [course_of_action(), old])
    assert status == 202, added
    # The broker stores this one (it states its spec_version and is valid under the 2.1 schema),
    # in one report with the 2.1 version: only the 2.0 version may go.
    await _delete(t, "?match[spec_version]=2.0")
    remaining = await _versions(t)
    assert remaining == ["2017-01-27T13:49:53.935Z"], remaining
    await _delete(t, "?match[spec_version]=2.1")
    await refused(t, "GET", t.coll(t.writable) + f"objects/{COURSE_OF_ACTION}/versions/", 404)


@check
async def check_sco_versions(t: Target) -> None:
    artifact = {
        "type": "artifact",
        "spec_version": "2.1",
        "id": "artifact--6f437177-6e48-5cf8-9d9e-872a2bddd641",
        "mime_type": "application/zip",
        "encryption_algorithm": "mime-type-indicated",
        "decryption_key": "My voice is my passport",
        # Not in medallion's object, which is not valid STIX 2.1 (an artifact needs `payload_bin`
        # or `url`, and an id made from contributing properties, here `hashes`): the broker
        # refuses invalid objects, and the check is about an SCO's versions, not validation.
        "url": "https://example.com/passport.zip",
        "hashes": {"SHA-256": "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"},
    }
    status, _ = await t.post(t.writable, [artifact])
    assert status == 202
    path = t.coll(t.writable) + f"objects/{artifact['id']}/"
    for keyword in ("all", "first", "last"):
        _, answer = await t.taxii_get(f"{path}?match[version]={keyword}")
        assert ids(answer) == [artifact["id"]], (keyword, answer)
    _, answer = await t.taxii_get(f"{path}?added_after=2017-01-27T13:49:53.935Z")
    assert ids(answer) == [artifact["id"]]
    _, records = await t.taxii_get(t.coll(t.writable) + f"objects/{artifact['id']}/versions/")
    _, record = await t.taxii_get(t.coll(t.writable) + f"manifest/?match[id]={artifact['id']}")
    added = record["objects"][0]["date_added"]
    status, headers, answer = await t.request("GET", f"{path}?added_after={added}", status=(200, 404))
    assert_taxii(headers)
    assert not (answer or {}).get("objects"), answer
    assert records["versions"] == [record["objects"][0]["version"]]


@check
async def check_duplicate_is_no_failure(t: Target) -> None:
    relationship = {
        "created": "2014-05-08T09:00:00.000Z",
        "modified": "2014-05-08T09:00:00.000Z",
        "id": RELATIONSHIP,
        "relationship_type": "indicates",
        "source_ref": "indicator--cd981c25-8042-4166-8945-51178443bdac",
        "spec_version": "2.1",
        "target_ref": "malware--c0931cc6-c75e-47e5-9036-78fabc95d4ec",
        "type": "relationship",
    }
    # medallion's test also posts a copy without `modified`: invalid STIX 2.1 (an SRO requires it),
    # which the broker lists as a failure, so only the valid duplicate is restated here.
    await t.post(t.writable, [relationship])
    status, answer = await t.post(t.writable, [relationship])
    assert status == 202 and "failures" not in answer and answer["success_count"] == 1, answer


@check
async def check_type_and_spec_version_after_a_20_post(t: Target) -> None:
    old = {
        "type": "indicator",
        "spec_version": "2.0",
        "id": "indicator--68794cd5-28db-429d-ab1e-1256704ef906",
        "created": "2017-01-27T13:49:53.935Z",
        "modified": "2017-01-27T13:49:53.935Z",
        "name": "Test object",
    }
    # medallion stores it; the broker refuses it (not valid STIX 2.1): 422, nothing stored.
    await t.post(t.loaded, [old], status=(202, 422))
    _, answer = await t.taxii_get(t.coll() + "objects/?match[type]=indicator&match[spec_version]=2.1")
    assert ids(answer) == [POISON_IVY_HASH, MALICIOUS_SITE]
    _, answer = await t.taxii_get(t.coll() + "objects/?match[type]=indicator&match[spec_version]=2.0")
    assert ids(answer) == ([old["id"]] if t.stores_stix20 else []), answer
