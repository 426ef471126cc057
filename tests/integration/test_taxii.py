"""TAXII 2.1 through the real taxii2-client and stix2, against a real broker on loopback."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import pytest
import requests
import stix2
from taxii2client.v21 import ApiRoot, Collection, Server, as_pages

from broker.domain import stix as ours
from broker.services import collections
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import body, chain_holds, events, report_count

TAXII = "application/taxii+json;version=2.1"
NATO_SECRET = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}


def indicator(
    n: int, *, ident: str | None = None, modified: str = "2026-01-01T00:00:00.000Z"
) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": ident or f"indicator--{uuid.uuid4()}",
        "created": "2026-01-01T00:00:00.000Z",
        "modified": modified,
        "name": f"indicator {n}",
        "pattern": f"[ipv4-addr:value = '198.51.100.{n % 250}']",
        "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00Z",
    }


def bundle(*objects: dict[str, Any]) -> dict[str, Any]:
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects)}


async def collection_id(
    api: Api, topics: list[str] | None = None, label: dict[str, Any] | None = None
) -> str:
    spec = {"title": "Ransomware", "topics": topics or ["ransomware"], "label": label or NATO_SECRET}
    return str((await collections.add_collection(api.ctx, spec, actor="test"))["id"])


def client(api: Api, node: str, token: str, cid: str) -> Collection:
    url = f"{api.base_url}/taxii2/api/collections/{cid}/"
    return Collection(url, user=node, password=token)


async def publish(api: Api, token: str, payload: dict[str, Any], **kw: Any) -> str:
    status, answer = await api.publish(token, body(payload=payload, **kw))
    assert status == 201, answer
    return str(answer["id"])


async def raw(
    api: Api,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], Any]:
    all_headers = {"Accept": TAXII, **(headers or {})}
    if token is not None:
        all_headers.setdefault("Authorization", f"Bearer {token}")
    async with api.client.request(method, path, headers=all_headers, data=data) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def test_discovery_api_root_and_collections_as_each_node_sees_them(api: Api) -> None:
    usa = await api.node("usa", "USA")
    low = await api.node("low", "GBR", clearance="RESTRICTED")
    reader = await api.node("reader", "FRA", roles=("subscribe",))
    cid = await collection_id(api)

    def look(node: str, token: str) -> tuple[str, str, str, list[str], list[tuple[str, bool, bool]]]:
        server = Server(f"{api.base_url}/taxii2/", user=node, password=token)  # all I/O in this thread
        root: ApiRoot = server.api_roots[0]
        found: list[Collection] = root.collections
        kept = [(c.id, c.can_read, c.can_write) for c in found]
        return server.title, server.default.url, root.url, root.versions, kept

    title, default, root, versions, found = await asyncio.to_thread(look, "usa", usa)
    assert title == "Alliance Broker" and default == root
    assert root.endswith("/taxii2/api/") and TAXII in versions
    assert found == [(cid, True, True)]
    assert (await asyncio.to_thread(look, "low", low))[4] == [(cid, True, False)]
    assert (await asyncio.to_thread(look, "reader", reader))[4] == [(cid, True, False)]


async def test_media_types_authentication_and_errors(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    objects = f"/taxii2/api/collections/{cid}/objects/"
    status, headers, answer = await raw(
        api, "GET", "/taxii2/", headers={"Accept": "application/json"}, token=usa
    )
    assert status == 406 and headers["Content-Type"].startswith("application/taxii+json")
    assert answer["http_status"] == "406" and answer["title"]
    status, headers, answer = await raw(api, "GET", "/taxii2/")
    assert (
        status == 401 and "Basic" in headers["WWW-Authenticate"] and "Bearer" in headers["WWW-Authenticate"]
    )
    basic = "Basic " + base64.b64encode(f"usa:{usa}".encode()).decode()
    assert (await raw(api, "GET", "/taxii2/", headers={"Authorization": basic}))[0] == 200
    other = "Basic " + base64.b64encode(f"gbr:{usa}".encode()).decode()
    assert (await raw(api, "GET", "/taxii2/", headers={"Authorization": other}))[0] == 401
    assert (await raw(api, "GET", "/taxii2/", token=usa))[0] == 200
    assert (await raw(api, "GET", "/taxii2/", token=usa, headers={"Accept": "*/*"}))[0] == 200
    envelope = b'{"objects": []}'
    status, _, answer = await raw(
        api, "POST", objects, token=usa, data=envelope, headers={"Content-Type": "application/json"}
    )
    assert status == 415 and answer["http_status"] == "415"
    missing = f"/taxii2/api/collections/{uuid.uuid4()}/objects/"
    assert (await raw(api, "GET", missing, token=usa))[0] == 404
    assert (await raw(api, "GET", objects + "?limit=x", token=usa))[0] == 400
    assert (await raw(api, "GET", objects + "?next=bogus", token=usa))[0] == 400
    assert (await raw(api, "GET", objects + "?match[version]=yesterday", token=usa))[0] == 400
    assert await report_count(api.ctx) == 0


async def test_add_objects_status_polling_and_markings(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    coll = client(api, "usa", usa, cid)
    first, second = indicator(1), indicator(2)

    def add() -> Any:
        status = coll.add_objects({"objects": [first, second]}, wait_for_completion=False)
        status.refresh()  # polls GET .../status/{id}/
        return status

    status = await asyncio.to_thread(add)
    assert status.status == "complete" and status.success_count == 2 and status.failure_count == 0
    assert {s["id"] for s in status.successes} == {first["id"], second["id"]}
    envelope = await asyncio.to_thread(coll.get_objects)
    served = {o["id"]: o for o in envelope["objects"]}
    assert set(served) == {first["id"], second["id"]}
    label_marking = ours.label_marking_id(NATO_SECRET)
    assert served[first["id"]]["object_marking_refs"] == [label_marking, ours.TLP_IDS["RED"]]
    # The marking-definitions are served in the collection, by type and by id.
    markings = await asyncio.to_thread(coll.get_objects, type="marking-definition")
    by_id = {m["id"]: m for m in markings["objects"]}
    assert set(by_id) == {label_marking, ours.TLP_IDS["RED"]}
    statement = by_id[label_marking]["extensions"][ours.LABEL_EXTENSION_ID]
    assert statement["classification"] == "SECRET" and statement["releasable_to"] == ["NATO"]
    for mid in (label_marking, ours.TLP_IDS["RED"], ours.LABEL_EXTENSION_ID):
        assert (await asyncio.to_thread(coll.get_object, mid))["objects"][0]["id"] == mid
    stix2.parse(by_id[label_marking], allow_custom=True)  # valid STIX 2.1 for the stix2 library
    # Stored as one report under the collection's label and topics.
    status_code, listing = await api.get("/v1/reports", usa)
    assert status_code == 200 and len(listing["reports"]) == 1
    report = listing["reports"][0]
    assert report["label"] == NATO_SECRET and report["topics"] == ["ransomware"]
    assert [o["id"] for o in report["payload"]["objects"]] == [first["id"], second["id"]]
    # Someone else's status is 404.
    gbr = await api.node("gbr", "GBR")
    path = f"/taxii2/api/status/{status.id}/"
    assert (await raw(api, "GET", path, token=gbr))[0] == 404
    await chain_holds(api.ctx)


async def test_invalid_stix_wrong_writers_and_sealed_readers_store_nothing(api: Api) -> None:
    usa = await api.node("usa", "USA")
    low = await api.node("low", "GBR", clearance="RESTRICTED")
    signer_key = base64.b64encode(b"\x01" * 32).decode()
    cid = await collection_id(api)
    path = f"/taxii2/api/collections/{cid}/objects/"
    post = {"Content-Type": TAXII}
    bad = indicator(1)
    del bad["pattern"]
    status, _, answer = await raw(api, "POST", path, token=usa, headers=post, data=_json({"objects": [bad]}))
    assert status == 422 and answer["error_code"] == "invalid_stix"
    assert (await raw(api, "POST", path, token=usa, headers=post, data=b'{"objects": 1}'))[0] == 422
    assert (await raw(api, "POST", path, token=usa, headers=post, data=b"[1"))[0] == 400
    status, _, answer = await raw(
        api, "POST", path, token=low, headers=post, data=_json({"objects": [indicator(2)]})
    )
    assert status == 403 and answer["error_code"] == "not_writable"
    missing = f"/taxii2/api/collections/{uuid.uuid4()}/objects/"
    assert (
        await raw(api, "POST", missing, token=usa, headers=post, data=_json({"objects": [indicator(3)]}))
    )[0] == 404
    assert await report_count(api.ctx) == 0
    # A mix: the valid object is stored, the invalid one is reported as a failure.
    status, _, answer = await raw(
        api, "POST", path, token=usa, headers=post, data=_json({"objects": [bad, indicator(4)]})
    )
    assert status == 202 and answer["success_count"] == 1 and answer["failure_count"] == 1
    assert await report_count(api.ctx) == 1
    # Nodes with keys: a signing node cannot write, a sealing node cannot read, through TAXII.
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    xk = x25519.X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    del signer_key
    signer = await api.node("signer", "USA", ed25519_public_key=base64.b64encode(ed).decode())
    sealed = await api.node("sealed", "USA", x25519_public_key=base64.b64encode(xk).decode())
    status, _, answer = await raw(
        api, "POST", path, token=signer, headers=post, data=_json({"objects": [indicator(5)]})
    )
    assert status == 403 and answer["error_code"] == "signature_required"
    status, _, answer = await raw(api, "GET", path, token=sealed)
    assert status == 403 and answer["error_code"] == "sealed_delivery_required"
    assert await report_count(api.ctx) == 1
    refused = {(e["node"], e["reason"]) for e in await events(api.ctx, decision="deny")}
    assert {
        ("low", "not_writable"),
        ("signer", "signature_required"),
        ("sealed", "sealed_delivery_required"),
    } <= refused
    assert ("usa", "invalid_stix") in refused


def _json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


async def test_paging_250_objects_with_limit_50_never_past_hidden_reports(api: Api, clock: FakeClock) -> None:
    usa = await api.node("usa", "USA")
    swe = await api.node("swe", "SWE")
    cid = await collection_id(api)
    expected: list[str] = []
    for r in range(36):  # 35 reports of 7 objects and one of 5: pages end inside reports
        objects = [indicator(r * 7 + i) for i in range(7 if r < 35 else 5)]
        expected += [o["id"] for o in objects]
        await publish(api, usa, bundle(*objects))
        if r % 5 == 0:  # a report SWE may not see, between those it may
            await publish(api, usa, bundle(indicator(999)), to=["FVEY"])
        clock.advance(seconds=1)
    coll = client(api, "swe", swe, cid)

    def pages() -> list[dict[str, Any]]:
        return list(as_pages(coll.get_objects, per_request=50))

    envelopes = await asyncio.to_thread(pages)
    got = [o["id"] for e in envelopes for o in e.get("objects", [])]
    assert got == expected and len(got) == 250
    assert [len(e.get("objects", [])) for e in envelopes][:5] == [50] * 5
    # Every report served once per page that held some of its objects, and audited so.
    reads = [e for e in await events(api.ctx, action="read") if e["node"] == "swe"]
    assert {e["report"] for e in reads} <= {e["report"] for e in await events(api.ctx, action="publish")}
    assert len({e["report"] for e in reads}) == 36 and all(e["decision"] == "allow" for e in reads)
    # The cursor names a served place: the page after it starts with the next object SWE may see.
    status, _, first = await raw(api, "GET", f"/taxii2/api/collections/{cid}/objects/?limit=7", token=swe)
    assert status == 200 and first["more"] is True
    query = f"/taxii2/api/collections/{cid}/objects/?limit=1&next={first['next']}"
    status, _, after = await raw(api, "GET", query, token=swe)
    assert [o["id"] for o in after["objects"]] == [expected[7]]  # the report after the first


async def test_filters_headers_manifest_versions_and_delete(api: Api, clock: FakeClock) -> None:
    usa = await api.node("usa", "USA")
    gbr = await api.node("gbr", "GBR")
    cid = await collection_id(api)
    shared = f"indicator--{uuid.uuid4()}"
    v1, v2 = "2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z"
    await publish(api, usa, indicator(1, ident=shared, modified=v1))
    clock.advance(seconds=10)
    middle = ours.timestamp(clock())
    clock.advance(seconds=10)
    malware = {
        "type": "malware",
        "spec_version": "2.1",
        "id": f"malware--{uuid.uuid4()}",
        "created": v1,
        "modified": v1,
        "name": "x",
        "is_family": False,
    }
    await publish(api, usa, indicator(2, ident=shared, modified=v2))  # only its creator versions it
    await publish(api, gbr, bundle(malware))
    await publish(api, usa, indicator(3), topics=["phishing"])  # outside the collection
    coll = client(api, "usa", usa, cid)

    def get(**kw: Any) -> list[dict[str, Any]]:
        return list(coll.get_objects(**kw).get("objects", []))

    assert [o["type"] for o in await asyncio.to_thread(get, type="malware")] == ["malware"]
    # Without match[version], the latest version of each object only (TAXII 2.1 §3.4.1).
    assert [o["modified"] for o in await asyncio.to_thread(get, id=shared)] == [v2]
    assert [o["modified"] for o in await asyncio.to_thread(get, id=shared, version="all")] == [v1, v2]
    assert [o["id"] for o in await asyncio.to_thread(get, added_after=middle)] == [shared, malware["id"]]
    assert await asyncio.to_thread(get, spec_version="2.0") == []
    assert len(await asyncio.to_thread(get, spec_version="2.1")) == 2  # the latest of each
    assert [o["modified"] for o in await asyncio.to_thread(get, id=shared, version=v2)] == [v2]
    # By id, versions resolve across the collection.
    one = await asyncio.to_thread(coll.get_object, shared)
    assert [o["modified"] for o in one["objects"]] == [v2]
    first = await asyncio.to_thread(coll.get_object, shared, version="first")
    assert [o["modified"] for o in first["objects"]] == [v1]
    every = await asyncio.to_thread(coll.get_object, shared, version="all")
    assert len(every["objects"]) == 2
    versions = await asyncio.to_thread(coll.object_versions, shared)
    assert versions["versions"] == [v1, v2]
    manifest = await asyncio.to_thread(coll.get_manifest)
    assert {(m["id"], m["version"]) for m in manifest["objects"]} == {(shared, v2), (malware["id"], v1)}
    assert all(m["media_type"] == "application/stix+json;version=2.1" for m in manifest["objects"])
    every_path = f"/taxii2/api/collections/{cid}/objects/?match[version]=all"
    status, headers, _ = await raw(api, "GET", every_path, token=usa)
    assert status == 200 and headers["X-TAXII-Date-Added-First"] < headers["X-TAXII-Date-Added-Last"]
    # Delete: USA recalls both its reports that carry the object.
    await asyncio.to_thread(coll.delete_object, shared)
    assert await asyncio.to_thread(get, id=shared) == []
    with pytest.raises(requests.HTTPError) as refused:
        await asyncio.to_thread(coll.delete_object, malware["id"])  # GBR's
    assert refused.value.response.status_code == 403
    with pytest.raises(requests.HTTPError) as absent:
        await asyncio.to_thread(coll.delete_object, f"indicator--{uuid.uuid4()}")
    assert absent.value.response.status_code == 404
    assert {e["reason"] for e in await events(api.ctx, action="recall")} == {
        "allowed",
        "not_originator",
        "not_found",
    }


async def test_access_matrix_matches_rest(api: Api) -> None:
    """Each node sees through TAXII exactly the objects of the reports REST lists for it."""
    publisher = await api.node("pub", "USA", clearance="TOP_SECRET", caveats=("CT-OPS",))
    nodes = {
        "usa": await api.node("usa", "USA"),
        "gbr": await api.node("gbr", "GBR", clearance="CONFIDENTIAL"),
        "fra": await api.node("fra", "FRA", caveats=("CT-OPS",)),
        "swe": await api.node("swe", "SWE"),
        "aus": await api.node("aus", "AUS"),
    }
    cid = await collection_id(api)
    labels = [
        ("UNCLASSIFIED", ["NATO"], []),
        ("SECRET", ["FVEY"], []),
        ("CONFIDENTIAL", ["GBR", "FRA"], []),
        ("SECRET", ["NATO"], ["CT-OPS"]),
        ("TOP_SECRET", ["NATO"], []),
        ("SECRET", ["SWE"], []),
    ]
    for classification, to, caveats in labels:
        await publish(
            api, publisher, bundle(indicator(1)), to=to, caveats=caveats, classification=classification
        )
    seen: dict[str, int] = {}
    for node, token in nodes.items():
        status, listing = await api.get("/v1/reports?limit=100", token)
        assert status == 200
        expected = {o["id"] for r in listing["reports"] for o in r["payload"]["objects"]}
        envelope = await asyncio.to_thread(client(api, node, token, cid).get_objects)
        assert {o["id"] for o in envelope.get("objects", [])} == expected, node
        seen[node] = len(expected)
    assert seen == {"usa": 4, "gbr": 2, "fra": 3, "swe": 2, "aus": 1}


async def test_stix2_taxii_collection_source(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    target = indicator(1)
    await publish(api, usa, bundle(target, indicator(2)))

    def query() -> tuple[Any, list[Any], list[Any]]:
        source = stix2.TAXIICollectionSource(client(api, "usa", usa, cid), allow_custom=True)
        return (
            source.get(target["id"]),
            source.query([stix2.Filter("type", "=", "indicator")]),
            source.all_versions(target["id"]),
        )

    got, found, versions = await asyncio.to_thread(query)
    assert got.id == target["id"] and ours.label_marking_id(NATO_SECRET) in got.object_marking_refs
    assert len(found) == 2 and len(versions) == 1


async def test_scan_budget_resumes_in_process_and_the_cursor_stays_put(start_server: Any) -> None:
    # Two payloads a page, and so twenty rows: more rows than that hidden from SWE end the page early.
    api = await start_server(max_scan_rows=2)
    usa = await api.node("usa", "USA")
    swe = await api.node("swe", "SWE")
    cid = await collection_id(api)
    for _ in range(45):
        await publish(api, usa, bundle(indicator(1)), to=["FVEY"])  # hidden from SWE
    visible = indicator(2)
    await publish(api, usa, bundle(visible))
    path = f"/taxii2/api/collections/{cid}/objects/"
    status, _, answer = await raw(api, "GET", path, token=swe)
    assert status == 200 and answer["more"] is True and "objects" not in answer
    start = answer["next"]
    found: list[str] = []
    for _ in range(5):
        status, _, answer = await raw(api, "GET", f"{path}?next={start}", token=swe)
        found += [o["id"] for o in answer.get("objects", [])]
        if found:
            break
        assert answer["next"] == start  # it never moves past hidden reports
    assert found == [visible["id"]]
