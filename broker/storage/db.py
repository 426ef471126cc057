"""Engines, their URLs, migrations and the health ping.

SQLite: WAL, ``synchronous=FULL`` (a 201 survives kill -9), foreign keys on, and every
transaction opened with ``BEGIN IMMEDIATE`` so writers queue on the lock instead of failing
to upgrade a read lock. PostgreSQL: ``synchronous_commit=on``; writers serialise on the
``log_head`` row instead. New SQLite files are created mode 0600, like the keyring.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from broker.errors import ConfigError, Unavailable
from broker.storage.models import Base

SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL advisory lock key that migrations hold (per database): "alembic" in ASCII.
MIGRATION_LOCK_KEY = int.from_bytes(b"alembic", "big")
# Every SQLite connection: the async engine's and the threads' of storage/database.py.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    # Freed space (an erased report's ciphertext and wrapped key) is zeroed rather than left in
    # the file; some builds default to it, not all. Not a guarantee (see services/shred.py).
    "PRAGMA secure_delete=ON",
)


@dataclass(frozen=True)
class Deadlines:
    """How long a PostgreSQL connection may take to open, a statement to run, a checkout to wait
    for a pooled connection, and a session to sit idle inside a transaction (seconds). Without
    them a server that stops answering (a silent network, a paused VM) holds every request until
    TCP gives up, minutes later; with them each wait ends in a 503. SQLite waits only on its
    own file lock (``SQLITE_BUSY_TIMEOUT_MS``)."""

    connect: float = 3.0
    statement: float = 5.0
    pool: float = 2.0
    idle_in_transaction: float = 10.0


def redacted(url: str) -> str:
    """``url`` with its password hidden, for messages (an unparsable URL is not shown at all).
    asyncpg takes a password from the query too (``?password=``): hidden alike."""
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError):  # ValueError: a port that is not a number
        return "BROKER_DATABASE_URL"
    hidden = {key: "***" for key in parsed.query if "password" in key.lower()}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


# What a refused URL is told to look like.
URL_FORMS = (
    "sqlite+aiosqlite:///relative/path.db, sqlite+aiosqlite:////absolute/path.db "
    "or postgresql+asyncpg://user@host:5432/dbname"
)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (relative to the working directory unless absolute), else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def check_url(url: str) -> URL:
    """``url`` parsed, if it is one the broker can use: only the async drivers serve it, and
    another form is named with the forms that work (SQLAlchemy would answer about its asyncio
    extension, or an unknown backend)."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise ConfigError(file="BROKER_DATABASE_URL", key="url", problem=f"{exc}; give {URL_FORMS}") from exc
    except ValueError:  # its text quotes the URL, which may be the password's
        raise ConfigError(
            file="BROKER_DATABASE_URL",
            key="url",
            problem="the port is not a number (is an '@' or ':' in the password not percent-encoded?); "
            f"give {URL_FORMS}",
        ) from None
    if parsed.drivername in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        return parsed
    raise ConfigError(
        file="BROKER_DATABASE_URL",
        key="url",
        problem=f"{parsed.drivername}:// is not a form the broker uses; give {URL_FORMS}",
    )


def _create_private(path: Path) -> None:
    """Create the SQLite file with mode 0600 unless it exists: SQLite would create it with the
    umask's mode, and gives its -wal and -shm files the main file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # an existing database keeps the mode its operator gave it
    os.close(fd)  # an empty file is an empty SQLite database


def create_engine(url: str, deadlines: Deadlines | None = None) -> AsyncEngine:
    """An async engine for ``url`` with the durability settings and ``deadlines`` applied."""
    deadlines = deadlines or Deadlines()
    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            _create_private(path)
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        configure_sqlite(engine.sync_engine)
        return engine
    engine = create_async_engine(
        url,
        pool_size=10,
        pool_timeout=deadlines.pool,
        # Connections are replaced after 5 minutes: a connection that died silently (a NAT or
        # firewall idle timeout: no closed socket for _refuse_closed to see) fails at most the
        # one transaction that meets it (503), and rarely.
        pool_recycle=300,
        # The head row is locked, or compared and set in one statement, under READ COMMITTED: a
        # stricter default set on the database or role would turn a write that meets another
        # broker's commit into a serialization error (a 500) instead of a wait. The server ends
        # a statement (or an abandoned transaction) on its own; the client gives up on a server
        # that does not answer at all (``command_timeout``).
        connect_args={
            "timeout": deadlines.connect,
            "command_timeout": deadlines.statement,
            "server_settings": {
                "synchronous_commit": "on",
                "default_transaction_isolation": "read committed",
                "statement_timeout": str(round(deadlines.statement * 1000)),
                "idle_in_transaction_session_timeout": str(round(deadlines.idle_in_transaction * 1000)),
            },
        },
    )
    event.listen(engine.sync_engine.pool, "checkout", _refuse_closed)
    return engine


def _refuse_closed(_dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    """A pooled connection the server closed (a restart, an administrator's terminate) is
    replaced before use. asyncpg notices the closed socket by itself, so this costs no round trip,
    where SQLAlchemy's ``pool_pre_ping`` sends one with every checkout."""
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the server closed this connection")


def configure_sqlite(engine: Engine, *, read_only: bool = False) -> None:
    """The pragmas above on every new connection of ``engine``, and ``BEGIN IMMEDIATE`` (or, for
    a ``read_only`` engine, a deferred ``BEGIN`` under ``query_only``) opening every transaction:
    SQLAlchemy's documented recipe for taking transaction control away from pysqlite."""
    pragmas = (*SQLITE_PRAGMAS, "PRAGMA query_only=ON") if read_only else SQLITE_PRAGMAS
    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            _execute_pragma(cursor, pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)


def _execute_pragma(cursor: Any, pragma: str) -> None:
    """Run ``pragma``; "database is locked" is retried until the busy timeout. SQLite answers it at
    once, without its busy handler, to a connection that asks for WAL on a new file while another
    process is switching that file to WAL (processes started together on one new database)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute(pragma)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def alembic_config() -> Config:
    """Alembic's configuration without an ini file. The environment is the top-level
    ``migrations`` package beside ``broker``, where the wheel installs it and where it is in a
    checkout. Found by path, not by import: ``python -m broker`` puts the working directory first
    on ``sys.path``, so run from another project's directory, an import would find that project's
    ``migrations`` and run it on our database."""
    location = Path(__file__).resolve().parents[2] / "migrations"
    if not (location / "env.py").is_file() or not (location / "versions").is_dir():
        raise RuntimeError(f"the broker's migrations are not installed beside it (looked in {location})")
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    return cfg


def lock_for_migrations(connection: Connection) -> None:
    """On PostgreSQL, wait for the migration lock; held until ``connection``'s transaction ends."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


async def upgrade(engine: AsyncEngine) -> None:
    """Run every migration up to head on ``engine``, in one transaction.

    Several processes may upgrade one database at once (replicas starting together): on
    PostgreSQL each first takes a transaction-scoped advisory lock, so they migrate one after
    another and the later ones find the schema at head; on SQLite the transaction's
    ``BEGIN IMMEDIATE`` already serialises them."""

    def _upgrade(connection: Connection) -> None:
        lock_for_migrations(connection)
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def schema_drift(engine: AsyncEngine) -> list[Any]:
    """Differences between the models and the migrated database (empty when they agree)."""

    def _compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(_compare)


# Pings given up on, still closing their connection: held here so they are not collected early.
_abandoned: set[asyncio.Task[None]] = set()


async def ping(engine: AsyncEngine, *, seconds: float = 1.0) -> None:
    """Raise Unavailable unless the database answers within ``seconds``. The ping runs as a task
    of its own so that the answer does not wait for a stuck connection to be cleaned up (a
    rollback on a server that stopped answering waits for the statement deadline)."""
    task = asyncio.ensure_future(_select_one(engine))
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        raise Unavailable("database did not answer in time")
    try:
        task.result()
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise Unavailable("database unreachable") from exc


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned ping's failure is no news


async def at_head(engine: AsyncEngine) -> bool:
    """True when the database has been migrated to the newest revision."""
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())

    def _current(connection: Connection) -> set[str]:
        return set(MigrationContext.configure(connection).get_current_heads())

    async with engine.connect() as connection:
        return await connection.run_sync(_current) == heads
