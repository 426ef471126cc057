"""Operating the broker: concurrent `broker db upgrade`, database file modes, migration 0004."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from broker.services import alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db
from tests.conftest import CONFIG
from tests.integration.helpers import Forked, chain_holds, cli_env, events

INDEX = "ix_reports_originator_created"


def _settings(url: str, keyring: Path) -> Settings:
    return Settings.load(
        env={"BROKER_CONFIG_DIR": str(CONFIG), "BROKER_DATABASE_URL": url, "BROKER_KEYRING": str(keyring)}
    )


async def test_two_upgrades_started_together_both_succeed(empty_database_url: str, tmp_path: Path) -> None:
    keyring = tmp_path / "keys" / "keyring.json"
    env = cli_env(empty_database_url, keyring)
    procs = [
        Forked(
            ["-m", "broker", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, _out, err in outcomes:
        assert code == 0, err
    ctx = Context.open(_settings(empty_database_url, keyring))
    try:
        assert await db.at_head(ctx.db.engine)
        assert await db.schema_drift(ctx.db.engine) == []
        # Seeded and bound exactly once: six alliances, six seed events, one binding, one
        # intact chain.
        assert len(await alliances.list_alliances(ctx)) == 6
        assert len(await events(ctx, action="alliance_seed")) == 6
        assert len(await events(ctx, action="keyring_bind")) == 1
        assert await chain_holds(ctx) == 7
    finally:
        await ctx.close()


# Connects first, says so, then waits for the word to go: the migrations really start together.
MIGRATE_ONLY = """
import asyncio, sys
from broker.storage import db

async def main():
    engine = db.create_engine(sys.argv[1])
    try:
        await db.ping(engine)
        print("connected", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await db.upgrade(engine)
    finally:
        await engine.dispose()

asyncio.run(main())
"""


def test_migrations_run_by_three_processes_at_once_all_succeed(empty_database_url: str) -> None:
    procs = [
        Forked(
            ["-c", MIGRATE_ONLY, empty_database_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for proc in procs:  # each ends its line or exits (EOF): readline cannot wait for ever
        assert proc.stdout is not None and proc.stdout.readline() == "connected\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    asyncio.run(_migrated(empty_database_url))


async def _migrated(url: str) -> None:
    engine = db.create_engine(url)
    try:
        assert await db.at_head(engine)
        assert await db.schema_drift(engine) == []
    finally:
        await engine.dispose()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
async def test_new_sqlite_database_and_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "broker.db"
    old = os.umask(0o022)
    try:
        engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await db.upgrade(engine)
            async with engine.connect() as connection:  # holds the WAL open
                await connection.exec_driver_sql("SELECT count(*) FROM alliances")
                wal = path.with_name(path.name + "-wal")
                assert wal.exists()
                assert wal.stat().st_mode & 0o777 == 0o600
            assert path.stat().st_mode & 0o777 == 0o600
        finally:
            await engine.dispose()
    finally:
        os.umask(old)


async def test_existing_sqlite_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    engine = db.create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()
    assert path.stat().st_mode & 0o777 == 0o640


def _indexes(connection: Connection) -> dict[str, list[str | None]]:
    return {ix["name"] or "": ix["column_names"] for ix in inspect(connection).get_indexes("reports")}


async def test_migration_0004_adds_and_drops_the_originator_index(ctx: Context) -> None:
    def _downgrade(connection: Connection) -> None:
        cfg = db.alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0003")

    async with ctx.db.engine.connect() as connection:
        assert (await connection.run_sync(_indexes))[INDEX] == ["originator_node", "created_at"]
    async with ctx.db.engine.begin() as connection:
        await connection.run_sync(_downgrade)
    async with ctx.db.engine.connect() as connection:
        assert INDEX not in await connection.run_sync(_indexes)
    await db.upgrade(ctx.db.engine)
    assert await db.at_head(ctx.db.engine)
    assert await db.schema_drift(ctx.db.engine) == []
