"""Collections defined by admins: the CLI and /v1/admin/collections, audited."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import Api
from tests.integration.helpers import Cli, events

LABEL = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}


async def test_admin_rest_collections(api: Api) -> None:
    admin = await api.node("admin", "USA", roles=("admin",))
    usa = await api.node("usa", "USA")
    spec = {"title": "Ransomware", "topics": ["ransomware", "ddos"], "label": LABEL, "description": "d"}
    status, created = await api.call("POST", "/v1/admin/collections", admin, json=spec)
    assert status == 201
    status, listing = await api.get("/v1/admin/collections", admin)
    assert status == 200 and [c["id"] for c in listing["collections"]] == [created["id"]]
    assert listing["collections"][0]["topics"] == ["ransomware", "ddos"]
    assert (await api.get("/v1/admin/collections", usa))[0] == 403
    bad = {**spec, "label": {**LABEL, "releasable_to": ["ATLANTIS"]}}
    assert (await api.call("POST", "/v1/admin/collections", admin, json=bad))[0] == 422
    assert (await api.call("POST", "/v1/admin/collections", admin, json={**spec, "topics": []}))[0] == 422
    status, _ = await api.call("DELETE", f"/v1/admin/collections/{created['id']}", admin)
    assert status == 200
    assert (await api.call("DELETE", f"/v1/admin/collections/{created['id']}", admin))[0] == 404
    actions = [e["action"] for e in await events(api.ctx) if e["action"].startswith("collection_")]
    assert actions == ["collection_add", "collection_remove"]


def test_cli_collection_add_list_remove(database_url: str, tmp_path: Path, cli: Cli) -> None:
    cli.use(database_url, tmp_path / "keyring.json")
    add = cli.ok(
        "collection", "add", "--title", "T", "--topics", "a,b", "--label", json.dumps(LABEL), "--json"
    )
    cid = json.loads(add.stdout)["id"]
    listed = cli("collection", "list", "--json")
    assert [c["id"] for c in json.loads(listed.stdout)] == [cid]
    assert "label" in cli.refused(
        "collection", "add", "--title", "T", "--topics", "a", "--label", "{", "--json"
    )
    cli.ok("collection", "remove", cid, "--json")
    cli.refused("collection", "remove", cid, "--json")
