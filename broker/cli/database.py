"""``broker db``, and the database every other command runs against."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from broker.cli.common import actions

if TYPE_CHECKING:
    import argparse

    from broker.services.context import Context
    from broker.settings import Settings


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    actions(sub, "db", "database").add_parser(
        "upgrade",
        parents=[common],
        help="run migrations, bind the database to the keyring, seed alliances into an empty database",
    )


async def with_context(settings: Settings, work: Callable[[Context], Awaitable[Any]]) -> Any:
    """Run ``work`` on a migrated database whose keyring is the one given (``serve`` checks here
    too before it starts): a keyring that does not match the database is refused."""
    from broker.errors import BrokerError
    from broker.services.context import Context
    from broker.storage import db

    refuse_missing_sqlite(settings.database_url)
    ctx = await Context.open_bound(settings)
    try:
        if not await db.at_head(ctx.db.engine):
            raise BrokerError(
                f"the database {database_name(settings.database_url)} is not migrated: "
                "run `broker db upgrade` first"
            )
        await ctx.check_keyring()
        return await work(ctx)
    finally:
        await ctx.close()


def database_name(url: str) -> str:
    """The database as a message names it: a SQLite file by its absolute path, else the URL
    without its password."""
    from broker.storage import db

    path = db.sqlite_file(url)
    return str(path.resolve()) if path is not None else db.redacted(url)


def refuse_missing_sqlite(url: str) -> None:
    """Only ``db upgrade`` (and the demo) create a database: a mistyped path must not leave an
    empty file behind, and the message says which file was looked for."""
    from broker.errors import BrokerError
    from broker.storage import db

    db.check_url(url)  # a URL of another form is told so first
    path = db.sqlite_file(url)
    if path is None or path.exists():
        return
    hint = ""
    if not path.is_absolute():
        hint = (
            f" (three slashes make a path relative to the working directory; an absolute path "
            f"takes four: sqlite+aiosqlite:////{path})"
        )
    raise BrokerError(
        f"no database at {path.resolve()}{hint}: run `broker db upgrade` to create it, or fix "
        "BROKER_DATABASE_URL",
        code="database_missing",
    )


async def upgrade(settings: Settings) -> dict[str, Any]:
    """Migrate the database and seed the configured alliances into an empty one."""
    from broker.services import alliances
    from broker.services.context import Context
    from broker.storage import db

    ctx = await Context.open_bound(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await ctx.check_keyring()  # binds a new database to this keyring
        seeded = await alliances.seed_alliances(ctx, settings.alliances)
    finally:
        await ctx.close()
    return {"migrated": True, "alliances_seeded": seeded}
