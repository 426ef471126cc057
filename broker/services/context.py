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
from broker.services.failures import AuthFailures
from broker.services.groupcommit import GroupCommit
from broker.services.scanhints import ScanHints
from broker.settings import Settings
from broker.storage.database import Database
from broker.storage.db import create_engine
from broker.storage.repos import WriteTx


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
    # Authenticated nodes by token hash, each tagged with the change counter it was read at
    # (NodeRecord.version). Only a record at least as new as the newest counter this process has
    # seen is kept, so a record read before a revocation is never written back after it; acts
    # re-check the record in their own transaction anyway (services.auth.recheck).
    tokens: dict[str, NodeRecord] = field(default_factory=dict, repr=False)
    seen: int = field(default=-1, repr=False)
    scan_hints: ScanHints = field(default_factory=ScanHints, repr=False)
    auth_failures: AuthFailures = field(init=False, repr=False)
    # Publishes in flight share transactions (see services.reports._publisher).
    publishes: GroupCommit[Any, Any] | None = field(default=None, repr=False)
    # Audit events of reads, listings and deliveries share group commits (services.audit.batcher).
    audit_batcher: Any = field(default=None, repr=False)
    _counter: int = field(default=-1, repr=False)
    _directory: Directory = field(default_factory=Directory, repr=False)

    def __post_init__(self) -> None:
        self.auth_failures = AuthFailures(
            rate=self.settings.auth_failures_per_second, burst=self.settings.auth_failure_burst
        )

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
            self._counter = counter
        self.observe(counter)
        return self._directory

    def observe(self, counter: int) -> None:
        """Note a change counter read from the database: cached nodes older than it go."""
        if counter > self.seen:
            self.seen = counter
            self.tokens.clear()

    def remember(self, token_hash: str, node: NodeRecord) -> None:
        """Cache an authenticated node unless a newer counter was seen since it was read."""
        if node.version >= self.seen and node.revoked_at is None:
            self.tokens[token_hash] = node

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
