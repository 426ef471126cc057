"""An admin act is decided on the admin as it stands when the act commits, not when it
authenticated.

An admin request was authenticated in a read transaction of its own; the act (adding a node,
here) then ran in a later transaction that never looked at the admin again. Between the two the
handler reads the body, whose arrival the client controls: an admin revoked meanwhile (or whose
``admin`` role was taken away) still had the act committed, after the revocation committed, and
could so mint itself a fresh admin node. Under the head lock the act now re-checks its admin at
the current change counter, as every other act re-checks its node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from broker.crypto.tokens import hash_token
from broker.services import admin
from tests.integration.conftest import Api
from tests.integration.helpers import eventually

SPEC = {"id": "usa-new", "nation": "USA", "clearance": "SECRET", "roles": ["admin"], "caveats": []}


async def _add_node_after(api: Api, token: str, change: Any) -> tuple[int, Any]:
    """POST /v1/admin/nodes: the headers and a first byte; once the server has authenticated the admin,
    ``change`` commits in another process; then the body."""
    go = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        raw = json.dumps(SPEC).encode()
        yield raw[:1]  # the client sends the headers with the first chunk
        await go.wait()
        yield raw[1:]

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = asyncio.ensure_future(api.client.post("/v1/admin/nodes", data=body(), headers=headers))
    digest = hash_token(token)

    async def authenticated() -> bool:
        return digest in api.server_ctx.tokens

    await eventually(authenticated)  # the server read the admin, and waits for the body
    await change()
    go.set()
    async with await request as response:
        return response.status, await response.json(content_type=None)


async def test_an_admin_revoked_during_its_request_adds_no_node(api: Api) -> None:
    token = await api.node("usa-adm", "USA", roles=("admin",))

    async def revoke() -> None:
        await admin.revoke_node(api.ctx, "usa-adm", actor="other-admin")

    status, answer = await _add_node_after(api, token, revoke)
    assert status == 401, answer
    assert "usa-new" not in {n["id"] for n in await admin.list_nodes(api.ctx)}
    async with api.ctx.db.read_transaction() as tx:
        added = await tx.events(action="node_add", node="usa-new")
        refused = await tx.events(action="admin", node="usa-adm", decision="deny")
    assert added == []
    assert [e.draft.reason for e in refused] == ["node_revoked"]


async def test_an_admin_losing_its_role_during_its_request_adds_no_node(api: Api) -> None:
    token = await api.node("usa-adm", "USA", roles=("admin",))

    async def demote() -> None:
        await admin.update_node(api.ctx, "usa-adm", {"roles": ["subscribe"]}, actor="other-admin")

    status, answer = await _add_node_after(api, token, demote)
    assert status == 403, answer
    assert "usa-new" not in {n["id"] for n in await admin.list_nodes(api.ctx)}
