"""What every service needs: the database, the policy, the keyring and a clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.crypto import keyring as keyring_file
from broker.crypto.keyring import Keyring
from broker.domain.alliances import Directory
from broker.domain.labels import Policy
from broker.domain.records import NodeRecord
from broker.services.groupcommit import GroupCommit
from broker.settings import Settings
from broker.storage.db import create_engine
from broker.storage.repos import Database, WriteTx


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """Shared state of one broker process.

    The alliance directory and the keyring are cached, and the cache is checked against the
    database's change counter in every transaction that decides, so a change made by another
    process (the CLI, another broker) applies to the very next decision.
    """

    db: Database
    policy: Policy
    keyring_path: Path
    keyring: Keyring
    settings: Settings
    clock: Callable[[], datetime] = utc_now
    # Authenticated nodes by token hash. Dropped whenever the change counter moves (every
    # revocation bumps it; the hub reads it every change_poll_ms) and on a local revocation.
    tokens: dict[str, NodeRecord] = field(default_factory=dict, repr=False)
    # Publishes in flight share transactions (see services.reports._publisher).
    publishes: GroupCommit[Any, Any] | None = field(default=None, repr=False)
    _counter: int = field(default=-1, repr=False)
    _directory: Directory = field(default_factory=Directory, repr=False)

    @classmethod
    def open(cls, settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Context:
        """Connect to the database and load (or create) the keyring."""
        return cls(
            db=Database(create_engine(settings.database_url)),
            policy=settings.policy,
            keyring_path=settings.keyring_path,
            keyring=keyring_file.load_or_create(settings.keyring_path),
            settings=settings,
            clock=clock,
        )

    async def directory(self, tx: WriteTx) -> Directory:
        """The current alliance directory, reloaded when the change counter moved."""
        return await self.directory_at(tx, await tx.change_counter())

    async def directory_at(self, tx: WriteTx, counter: int) -> Directory:
        """As ``directory``, for a caller that already read the change counter (with the head)."""
        if counter != self._counter:
            self._directory = await tx.load_directory()
            self.keyring = keyring_file.load(self.keyring_path)
            self.tokens.clear()
            self._counter = counter
        return self._directory

    async def cached_directory(self) -> Directory:
        """The directory as last loaded (loading it once if never), without a database read.

        Alliances are only ever added, never removed, so a label valid against this copy is
        valid against the current one; callers retry with ``directory`` when an id is unknown."""
        if self._counter < 0:
            async with self.db.transaction() as tx:
                return await self.directory(tx)
        return self._directory

    def now(self) -> datetime:
        return self.clock()

    async def close(self) -> None:
        await self.db.dispose()
