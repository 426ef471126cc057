"""Migration 0011: reports stored before TAXII's object index existed are indexed by the first
TAXII request, once, so versions stay per object across the upgrade; the downgrade drops it."""

from __future__ import annotations

import uuid

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from broker.storage import db
from tests.integration.conftest import Api
from tests.integration.test_taxii import bundle, collection_id, indicator, publish, raw


def _downgrade(connection: Connection) -> None:
    cfg = db.alembic_config()
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "0010")


async def test_reports_stored_before_the_index_are_indexed_on_the_first_request(api: Api) -> None:
    usa = await api.node("usa", "USA")
    cid = await collection_id(api)
    ident = f"indicator--{uuid.uuid4()}"
    for month in (1, 3, 2):
        modified = f"2026-0{month}-01T00:00:00.000Z"
        await publish(api, usa, bundle(indicator(month, ident=ident, modified=modified)))
    async with api.ctx.db.engine.begin() as connection:
        await connection.run_sync(_downgrade)
    await db.upgrade(api.ctx.db.engine)
    assert await db.schema_drift(api.ctx.db.engine) == []
    async with api.ctx.db.engine.connect() as connection:
        held = (await connection.execute(text("SELECT count(*) FROM taxii_objects"))).scalar()
        pending = (await connection.execute(text("SELECT pending_below FROM taxii_index_state"))).scalar()
    assert held == 0 and pending == 4

    status, _, answer = await raw(api, "GET", f"/taxii2/api/collections/{cid}/objects/{ident}/", token=usa)
    assert status == 200 and [o["modified"] for o in answer["objects"]] == ["2026-03-01T00:00:00.000Z"]
    status, _, answer = await raw(
        api, "GET", f"/taxii2/api/collections/{cid}/objects/{ident}/versions/", token=usa
    )
    assert status == 200 and len(answer["versions"]) == 3
    async with api.ctx.db.engine.connect() as connection:
        held = (await connection.execute(text("SELECT count(*) FROM taxii_objects"))).scalar()
        pending = (await connection.execute(text("SELECT pending_below FROM taxii_index_state"))).scalar()
    assert held == 3 and pending == 0
