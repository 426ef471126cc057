"""Node lifecycle and what the edge says about itself: token rotation, ids never reused,
401 challenges, no version banner, and plain HTTP kept on loopback."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from broker.settings import Settings
from tests.conftest import FakeClock
from tests.integration.conftest import Api
from tests.integration.helpers import Cli, body, cli_env, events, run_cli


async def test_rotating_a_token_kills_the_old_one_at_once(api: Api) -> None:
    usa = await api.node("usa-1", "USA")
    root = await api.node("root", "BEL", roles=("admin",))
    assert (await api.publish(usa, body()))[0] == 201  # the old token is cached by the server
    status, rotated = await api.call("POST", "/v1/admin/nodes/usa-1/rotate-token", root)
    assert status == 200 and rotated["id"] == "usa-1" and rotated["token"] != usa
    assert (await api.publish(usa, body()))[0] == 401
    assert (await api.get("/v1/reports", usa))[0] == 401
    assert (await api.publish(rotated["token"], body()))[0] == 201
    assert [e["actor"] for e in await events(api.ctx, action="token_rotate")] == ["root"]


async def test_rotate_token_from_the_cli(api: Api, settings: Settings, cli: Cli) -> None:
    usa = await api.node("usa-1", "USA")
    cli.use(settings.database_url, settings.keyring_path)
    done = await asyncio.to_thread(cli.ok, "node", "rotate-token", "usa-1", "--json")
    fresh = json.loads(done.stdout)
    assert fresh["id"] == "usa-1"
    assert (await api.get("/v1/reports", usa))[0] == 401  # another process rotated it: binds at once
    assert (await api.get("/v1/reports", fresh["token"]))[0] == 200


async def test_a_revoked_id_is_never_reused(api: Api) -> None:
    root = await api.node("root", "BEL", roles=("admin",))
    spec = {"id": "fra-1", "nation": "FRA", "clearance": "SECRET", "roles": ["subscribe"]}
    assert (await api.call("POST", "/v1/admin/nodes", root, json=spec))[0] == 201
    assert (await api.call("POST", "/v1/admin/nodes/fra-1/revoke", root))[0] == 200
    status, problem = await api.call("POST", "/v1/admin/nodes", root, json=spec)
    assert (
        status == 409 and problem["type"].endswith("node_id_revoked") and "never reused" in problem["detail"]
    )


async def test_401s_carry_a_challenge_and_no_response_names_its_software(api: Api) -> None:
    async with api.client.get("/v1/reports") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        assert resp.headers["Server"] == "alliance-broker"
        assert resp.headers["X-Request-Id"]
    async with api.client.get("/v1/health") as resp:
        assert "aiohttp" not in resp.headers.get("Server", "") and "Python" not in resp.headers.get(
            "Server", ""
        )


def test_plain_http_on_a_network_address_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    env = cli_env(database_url, tmp_path / "keyring.json")
    # the real binary: a refusal that regressed into serving ends with its timeout
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0", env=env)  # noqa: S104 (refused)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a loopback address" in lines[0] and "--tls-cert" in lines[0]


async def test_updating_a_node_applies_to_its_next_act(api: Api) -> None:
    usa, swe = await api.node("usa-1", "USA"), await api.node("swe-1", "SWE", clearance="SECRET")
    root = await api.node("root", "BEL", roles=("admin",))
    _, receipt = await api.publish(usa, body(classification="SECRET"))
    assert (await api.get(f"/v1/reports/{receipt['id']}", swe))[0] == 200
    status, updated = await api.call(
        "PATCH", "/v1/admin/nodes/swe-1", root, json={"clearance": "CONFIDENTIAL", "caveats": ["CT-OPS"]}
    )
    assert status == 200 and updated["clearance"] == "CONFIDENTIAL" and updated["caveats"] == ["CT-OPS"]
    assert (await api.get(f"/v1/reports/{receipt['id']}", swe))[0] == 404  # its cached record is not used
    assert (await api.call("PATCH", "/v1/admin/nodes/swe-1", root, json={"clearance": "COSMIC"}))[0] == 422
    assert (await api.call("PATCH", "/v1/admin/nodes/swe-1", root, json={"nation": "RUS"}))[0] == 422
    (event,) = await events(api.ctx, action="node_update")
    assert event["actor"] == "root" and event["node"] == "swe-1"


async def test_a_browser_offers_its_token_as_a_subprotocol_not_in_the_url(api: Api) -> None:
    swe, usa = await api.node("swe-1", "SWE"), await api.node("usa-1", "USA")
    assert (await api.publish(usa, body()))[0] == 201  # a first frame now, not at the heartbeat
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"{api.base_url}/v1/stream?after=0", protocols=("alliance-broker.v1", f"bearer.{swe}")
        ) as ws:
            assert ws.protocol == "alliance-broker.v1"  # the token is never echoed back
            async with asyncio.timeout(20):
                assert (await ws.receive_json())["type"] == "report"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"{api.base_url}/v1/stream", protocols=("alliance-broker.v1", "bearer.abk_x")
            )
        assert refused.value.status == 401


async def test_a_405_says_which_methods_exist_and_every_answer_has_a_request_id(api: Api) -> None:
    async with api.client.delete("/v1/reports") as resp:
        assert resp.status == 405
        assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}
        assert resp.headers["X-Request-Id"]


async def test_a_token_issued_for_some_days_expires(api: Api, clock: FakeClock) -> None:
    usa = await api.node("usa-1", "USA", token_days=2)
    root = await api.node("root", "BEL", roles=("admin",))
    assert (await api.get("/v1/reports", usa))[0] == 200
    clock.advance(days=3)
    assert (await api.get("/v1/reports", usa))[0] == 401
    await api.flush_auth_failures()
    assert (await events(api.ctx, action="authenticate"))[-1]["reason"] == "token_expired"
    status, fresh = await api.call("POST", "/v1/admin/nodes/usa-1/rotate-token", root, json={"token_days": 1})
    assert status == 200 and fresh["expires"].startswith(
        (clock.moment.date() + timedelta(days=1)).isoformat()
    )
    assert (await api.get("/v1/reports", fresh["token"]))[0] == 200
    assert (await api.call("POST", "/v1/admin/nodes/usa-1/rotate-token", root, json={"token_days": 0}))[
        0
    ] == 422
