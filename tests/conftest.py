"""Shared fixtures: databases on both engines, settings, a fixed clock, a real server.

PostgreSQL: the server at BROKER_TEST_DATABASE_URL (default: the local one, user postgres).
Each test gets a database of its own, cloned from a template migrated once per worker by
``alembic upgrade head``, and dropped afterwards. Without a reachable server the PostgreSQL
tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from broker.services import alliances
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
START = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    moment: datetime = START

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> datetime:
        self.moment += timedelta(**delta)
        return self.moment


def _settings(url: str, keyring: Path) -> Settings:
    return Settings.load(
        env={"BROKER_CONFIG_DIR": str(CONFIG), "BROKER_DATABASE_URL": url, "BROKER_KEYRING": str(keyring)}
    )


async def _migrate_and_seed(url: str, keyring: Path) -> None:
    settings = _settings(url, keyring)
    ctx = Context.open(settings, clock=FakeClock(datetime(2026, 1, 1, tzinfo=UTC)))
    try:
        await db.upgrade(ctx.db.engine)
        await alliances.seed_alliances(ctx, settings.alliances)
    finally:
        await ctx.close()


async def _pg_connect(server_url: str) -> Any:
    import asyncpg

    url = make_url(server_url)
    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )


async def _pg_exec(server_url: str, *statements: str) -> None:
    conn = await _pg_connect(server_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


class _PgSession:
    """One connection to the server, kept for the statements of one thread (on an event loop of
    its own): a statement costs no connection, and no server process started for it."""

    def __init__(self, server: str) -> None:
        self._server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None

    def run(self, statement: str) -> None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        if self._conn is None or self._conn.is_closed():
            self._conn = self._loop.run_until_complete(_pg_connect(self._server))
        try:
            self._loop.run_until_complete(self._conn.execute(statement))
        except BaseException:
            self.close()  # the next statement connects again
            raise

    def close(self) -> None:
        if self._loop is None:
            return
        if self._conn is not None and not self._conn.is_closed():
            self._loop.run_until_complete(self._conn.close())
        self._conn = None
        self._loop.close()
        self._loop = None


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Name of a migrated template database on the PostgreSQL server (one per worker)."""
    server = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    name = f"broker_tmpl_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg_exec(server, f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, Exception) as exc:
        reason = (
            f"PostgreSQL not reachable at {make_url(server).render_as_string(hide_password=True)}: {exc!r}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI requires PostgreSQL tests to run; {reason}")
        pytest.skip(reason)
    template_url = make_url(server).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_migrate_and_seed(template_url, tmp_path_factory.mktemp("pgkeys") / "keyring.json"))
    yield name
    asyncio.run(_pg_exec(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class PgClones:
    """Databases cloned from the worker's template ahead of the tests that take them, and dropped
    behind them, in threads of this worker's own: a test waits for neither. CREATE DATABASE and
    DROP DATABASE wait mostly on the server's disk, not on this worker's CPU. The drops have a
    thread of their own: a clone a test waits for is never queued behind them (a module that
    used several databases leaves several drops at once)."""

    AHEAD = 2  # clones ready before they are asked for

    def __init__(self, server: str, template: str) -> None:
        self._server, self._template = server, template
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-clones")
        self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-drops")
        self._creating, self._dropping = _PgSession(server), _PgSession(server)  # one per thread
        self._ready: deque[Future[str]] = deque()

    def _create(self) -> str:
        name = f"broker_t_{secrets.token_hex(6)}"
        self._creating.run(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        return name

    def _drop(self, name: str) -> None:
        self._dropping.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def take(self) -> str:
        """A fresh clone of the template, for one test."""
        while len(self._ready) <= self.AHEAD:
            self._ready.append(self._thread.submit(self._create))
        return self._ready.popleft().result(timeout=120)

    def drop(self, name: str) -> None:
        """Drop a clone taken (its test is over), behind the next tests."""
        self._dropper.submit(self._drop, name)

    def close(self) -> None:
        """Drop the clones made and never taken; wait for every drop."""
        for made in self._ready:
            self._dropper.submit(self._drop_made, made)
        self._dropper.submit(self._dropping.close)
        self._thread.submit(self._creating.close)
        self._dropper.shutdown(wait=True)
        self._thread.shutdown(wait=True)

    def _drop_made(self, made: Future[str]) -> None:
        self._drop(made.result())


@pytest.fixture(scope="session")
def pg_clones(pg_template: str) -> Iterator[PgClones]:
    clones = PgClones(os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT), pg_template)
    yield clones
    clones.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    asyncio.run(_migrate_and_seed(f"sqlite+aiosqlite:///{path}", path.parent / "keyring.json"))
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, seeded database on each engine."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "broker.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    clones: PgClones = request.getfixturevalue("pg_clones")
    server = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    name = clones.take()
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    clones.drop(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database that does not exist yet (SQLite) or exists and is empty (PostgreSQL)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'broker.db'}"
        return
    request.getfixturevalue("pg_template")  # skips (or fails under CI) without a server
    server = os.environ.get("BROKER_TEST_DATABASE_URL", PG_DEFAULT)
    name = f"broker_e_{secrets.token_hex(6)}"
    asyncio.run(_pg_exec(server, f'CREATE DATABASE "{name}"'))
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_pg_exec(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return _settings(database_url, tmp_path / "keyring.json")


@pytest.fixture
async def ctx(settings: Settings, clock: FakeClock) -> AsyncIterator[Context]:
    context = Context.open(settings, clock=clock)
    yield context
    await context.close()


def label(
    classification: str = "UNCLASSIFIED",
    releasable_to: list[str] | None = None,
    caveats: list[str] | None = None,
) -> dict[str, Any]:
    return {"classification": classification, "releasable_to": releasable_to or [], "caveats": caveats or []}
