"""Admin REST for peers (role ``admin``): ``/v1/admin/peers``."""

from __future__ import annotations

from aiohttp import web

from broker.errors import InvalidInput
from broker.services import peers
from broker.web.handlers import CONTEXT, require_admin
from broker.web.middleware import read_json


async def add(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_body")
    return web.json_response(
        await peers.add_peer(request.app[CONTEXT], body, actor=actor.id, by=actor), status=201
    )


async def listing(request: web.Request) -> web.Response:
    await require_admin(request)
    return web.json_response({"peers": await peers.list_peers(request.app[CONTEXT])})


async def remove(request: web.Request) -> web.Response:
    actor = await require_admin(request)
    name = request.match_info["name"]
    return web.json_response(await peers.remove_peer(request.app[CONTEXT], name, actor=actor.id, by=actor))


ROUTES = [
    web.post("/v1/admin/peers", add),
    web.get("/v1/admin/peers", listing),
    web.delete("/v1/admin/peers/{name}", remove),
]
