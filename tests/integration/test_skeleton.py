"""The walking skeleton: migrations on both engines, shipped alliances, health, CLI."""

from __future__ import annotations

import json
from pathlib import Path

from broker.services import alliances
from broker.services.context import Context
from broker.storage import db
from tests.integration.conftest import Api
from tests.integration.helpers import Cli, Ran


async def test_models_and_migrations_agree(ctx: Context) -> None:
    assert await db.at_head(ctx.db.engine)
    assert await db.schema_drift(ctx.db.engine) == []


async def test_shipped_alliances_are_seeded(ctx: Context) -> None:
    found = {a["id"]: a for a in await alliances.list_alliances(ctx)}
    assert set(found) == {"NATO", "FVEY", "AU", "ASEAN", "GCC", "EU"}
    assert len(found["NATO"]["members"]) == 32
    assert found["FVEY"]["members"] == ["AUS", "CAN", "GBR", "NZL", "USA"]
    assert len(found["AU"]["members"]) == 55
    assert len(found["ASEAN"]["members"]) == 11
    assert len(found["GCC"]["members"]) == 6
    assert len(found["EU"]["members"]) == 27
    assert "GBR" not in found["EU"]["members"]  # history kept, membership ended
    joined = {m["nation"]: m["joined"][:10] for m in found["NATO"]["memberships"]}
    assert joined["FIN"] == "2023-04-04"
    assert joined["SWE"] == "2024-03-07"
    assert joined["MKD"] == "2020-03-27"
    eu_gbr = [m for m in found["EU"]["memberships"] if m["nation"] == "GBR"]
    assert eu_gbr[0]["left"][:10] == "2020-02-01"


async def test_seeding_twice_adds_nothing(ctx: Context) -> None:
    assert await alliances.seed_alliances(ctx, ctx.settings.alliances) == 0


async def test_health(api: Api) -> None:
    assert await api.get("/v1/health") == (200, {"status": "ok"})


def test_cli_upgrade_list_and_nodes(database_url: str, tmp_path: Path, cli: Cli) -> None:
    def _cli(tmp_path: Path, url: str, *args: str) -> Ran:
        return cli.use(url, tmp_path / "cli-keyring.json")(*args)

    assert _cli(tmp_path, database_url, "db", "upgrade", "--json").returncode == 0
    listed = _cli(tmp_path, database_url, "alliance", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {a["id"] for a in json.loads(listed.stdout)} >= {"NATO", "FVEY", "AU", "ASEAN", "GCC", "EU"}
    added = _cli(
        tmp_path,
        database_url,
        "node",
        "add",
        "fra-1",
        "--nation",
        "FRA",
        "--clearance",
        "SECRET",
        "--roles",
        "publish,subscribe",
        "--json",
    )
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    assert token.startswith("abk_")
    assert len(token) > 40
    nodes = json.loads(_cli(tmp_path, database_url, "node", "list", "--json").stdout)
    assert [n["id"] for n in nodes] == ["fra-1"]
    assert "token_hash" not in nodes[0]
    assert token not in _cli(tmp_path, database_url, "node", "list", "--json").stdout
    bad = _cli(
        tmp_path,
        database_url,
        "node",
        "add",
        "x",
        "--nation",
        "XXX",
        "--clearance",
        "SECRET",
        "--roles",
        "publish",
    )
    assert bad.returncode == 2
    assert "ISO 3166" in bad.stderr
    assert _cli(tmp_path, database_url, "alliance", "create", "NORDEFCO", "--name", "Nordic").returncode == 0
    assert (
        _cli(tmp_path, database_url, "alliance", "join", "NORDEFCO", "SWE", "--date", "2009-11-04").returncode
        == 0
    )
    assert _cli(tmp_path, database_url, "alliance", "leave", "NORDEFCO", "SWE").returncode == 0
    again = _cli(tmp_path, database_url, "alliance", "leave", "NORDEFCO", "SWE")
    assert again.returncode == 2
    assert "not a member" in again.stderr
    revoked = _cli(tmp_path, database_url, "node", "revoke", "fra-1", "--json")
    assert json.loads(revoked.stdout) == {"id": "fra-1", "revoked": True}
