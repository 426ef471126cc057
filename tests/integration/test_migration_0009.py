"""Migration 0009 drops ``broker_current_head()`` (PostgreSQL); its downgrade puts it back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from broker.services.context import Context
from broker.storage import db


def _functions(connection: Connection) -> list[str]:
    if connection.dialect.name != "postgresql":
        return []
    found = connection.execute(text("SELECT proname FROM pg_proc WHERE proname = 'broker_current_head'"))
    return [row[0] for row in found]


async def test_the_head_function_is_gone_at_head_and_back_at_0008(ctx: Context) -> None:
    def downgrade(connection: Connection) -> None:
        cfg = db.alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0008")

    async with ctx.db.engine.connect() as connection:
        assert await connection.run_sync(_functions) == []
    async with ctx.db.engine.begin() as connection:
        await connection.run_sync(downgrade)
    postgresql = ctx.db.engine.dialect.name == "postgresql"
    async with ctx.db.engine.connect() as connection:
        assert await connection.run_sync(_functions) == (["broker_current_head"] if postgresql else [])
    await db.upgrade(ctx.db.engine)
    assert await db.at_head(ctx.db.engine)
    assert await db.schema_drift(ctx.db.engine) == []
    async with ctx.db.engine.connect() as connection:
        assert await connection.run_sync(_functions) == []
