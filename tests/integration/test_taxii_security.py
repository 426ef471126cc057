"""TAXII red-team findings (issue 19), each against a real broker on loopback: revocations made by
another process bind every route at once, and what a node may not see leaves no trace in what it
is answered."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from broker.services import admin
from tests.integration.conftest import Api
from tests.integration.helpers import events
from tests.integration.test_taxii import TAXII, collection_id, indicator, publish, raw

POST = {"Content-Type": TAXII}


def _routes(cid: str, object_id: str, status_id: str) -> list[tuple[str, str, bytes | None]]:
    """Every TAXII route, as (method, path, body)."""
    coll = f"/taxii2/api/collections/{cid}/"
    envelope = json.dumps({"objects": [indicator(7)]}).encode()
    return [
        ("GET", "/taxii2/", None),
        ("GET", "/taxii2/api/", None),
        ("GET", "/taxii2/api/collections/", None),
        ("GET", coll, None),
        ("GET", f"/taxii2/api/status/{status_id}/", None),
        ("GET", coll + "objects/", None),
        ("GET", coll + "manifest/", None),
        ("GET", coll + f"objects/{object_id}/", None),
        ("GET", coll + f"objects/{object_id}/versions/", None),
        ("POST", coll + "objects/", envelope),
        ("DELETE", coll + f"objects/{object_id}/", None),
    ]


async def _call(api: Api, token: str, route: tuple[str, str, bytes | None]) -> tuple[int, Any]:
    method, path, data = route
    headers = POST if data is not None else None
    status, _, answer = await raw(api, method, path, token=token, headers=headers, data=data)
    return status, answer


async def _posted(api: Api, token: str, cid: str) -> tuple[str, str]:
    """An object posted through TAXII by ``token``'s node, and the status id of that post."""
    obj = indicator(1)
    path = f"/taxii2/api/collections/{cid}/objects/"
    envelope = json.dumps({"objects": [obj]}).encode()
    status, _, answer = await raw(api, "POST", path, token=token, headers=POST, data=envelope)
    assert status == 202, answer
    return str(obj["id"]), str(answer["id"])


Change = Callable[[Api, str], Awaitable[None]]


async def _revoke(api: Api, node: str) -> None:
    await admin.revoke_node(api.ctx, node, actor="other-process")


async def _rotate(api: Api, node: str) -> None:
    await admin.rotate_token(api.ctx, node, actor="other-process")


@pytest.mark.parametrize("change", [_revoke, _rotate], ids=["revoked", "token_rotated"])
async def test_every_route_refuses_a_node_changed_by_another_process(api: Api, change: Change) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    object_id, status_id = await _posted(api, usa, cid)
    routes = _routes(cid, object_id, status_id)
    # Every route serves the node first (so its record is cached by the serving process)...
    for route in routes[:-2]:  # not the writes: they would change what the reads answer
        assert (await _call(api, usa, route))[0] == 200, route
    # ...then another process (its own Context on the same database) revokes it or rotates its token.
    await change(api, "usa")
    for route in routes:
        status, answer = await _call(api, usa, route)
        assert (status, answer.get("error_code")) == (401, "unauthenticated"), route


async def test_role_gated_routes_follow_a_role_change_by_another_process(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    object_id, status_id = await _posted(api, usa, cid)
    routes = _routes(cid, object_id, status_id)
    for route in routes[5:9]:
        assert (await _call(api, usa, route))[0] == 200, route
    await admin.update_node(api.ctx, "usa", {"roles": ["audit"]}, actor="other-process")
    for route in routes[5:]:  # objects, manifest, by id, versions need subscribe; post, delete publish
        status, answer = await _call(api, usa, route)
        expected = "not_writable" if route[0] == "POST" else "missing_role"
        assert (status, answer.get("error_code")) == (403, expected), route
    # The collections the node lists say so too.
    status, answer = await _call(api, usa, routes[2])
    assert status == 200
    assert [(c["can_read"], c["can_write"]) for c in answer["collections"]] == [(False, False)]
    denials = [e for e in await events(api.ctx, decision="deny") if e["node"] == "usa"]
    assert {e["reason"] for e in denials} == {"missing_role", "not_writable"}
