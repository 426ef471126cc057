"""Alembic environment. The broker passes an open connection in ``config.attributes`` (so
migrations run inside its own event loop); the ``alembic`` command line opens its own."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from broker.storage.db import create_engine, lock_for_migrations
from broker.storage.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_own_engine(url: str) -> None:
    engine = create_engine(url)  # the broker's own settings (read committed on PostgreSQL)
    async with engine.connect() as connection:
        await connection.run_sync(lock_for_migrations)  # as broker.storage.db.upgrade does
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_own_engine(config.get_main_option("sqlalchemy.url") or ""))
