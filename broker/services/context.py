"""What every service needs: the database, the policy, the keyring and a clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from broker.crypto import keyring as keyring_file
from broker.crypto import notes
from broker.crypto.keyring import Keyring
from broker.domain.alliances import Directory
from broker.domain.labels import Policy
from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import BrokerError
from broker.services import journal
from broker.services.failures import AuthFailures
from broker.services.groupcommit import GroupCommit
from broker.services.limits import ReportMarks, TokenBucket
from broker.services.scanhints import ScanHints
from broker.settings import Settings
from broker.storage import keyringcheck
from broker.storage.database import Database
from broker.storage.db import Deadlines, create_engine, redacted
from broker.storage.repos import Tx

if TYPE_CHECKING:  # they import this module: named here for the type checker only
    from broker.domain.records import ReportRecord
    from broker.services.audit import Batcher
    from broker.services.publishing import PublishAct


def open_database(settings: Settings) -> Database:
    """The database with the configured deadlines (docs/operations.md)."""
    deadlines = Deadlines(
        connect=settings.db_connect_timeout_seconds,
        statement=settings.db_statement_timeout_seconds,
        pool=settings.db_pool_timeout_seconds,
        idle_in_transaction=settings.db_idle_in_transaction_timeout_seconds,
    )
    return Database(
        create_engine(settings.database_url, deadlines), deadline=settings.db_transaction_timeout_seconds
    )


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
    recalls: TokenBucket = field(init=False, repr=False)  # per-node recall limit
    # What the head showed of the report log: spares the shared publish limit its count.
    report_marks: ReportMarks = field(init=False, repr=False)
    # Publishes in flight share transactions (see services.reports._publisher).
    publishes: GroupCommit[PublishAct, ReportRecord] | None = field(default=None, repr=False)
    # Audit events of reads, listings and deliveries share group commits (services.audit.batcher).
    audit_batcher: Batcher | None = field(default=None, repr=False)
    # Set (each of them) whenever this process signs a checkpoint: the witness loops wait on them.
    checkpoint_waiters: set[asyncio.Event] = field(default_factory=set, repr=False)
    _counter: int = field(default=-1, repr=False)
    _directory: Directory = field(default_factory=Directory, repr=False)

    def __post_init__(self) -> None:
        self.auth_failures = AuthFailures(
            rate=self.settings.auth_failures_per_second,
            burst=self.settings.auth_failure_burst,
            max_sources=self.settings.auth_failure_max_sources,
        )
        self.recalls = TokenBucket(
            rate=self.settings.recall_rate_per_second, burst=self.settings.recall_burst
        )
        window = self.settings.publish_burst / self.settings.publish_rate_per_second
        self.report_marks = ReportMarks(spacing=timedelta(seconds=window / 8))

    @classmethod
    def open(cls, settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Context:
        """Connect to the database and load (or create) the keyring."""
        return cls(
            db=open_database(settings),
            policy=settings.policy,
            keyring_path=settings.keyring_path,
            keyring=keyring_file.load_or_create(settings.keyring_path),
            settings=settings,
            clock=clock,
        )

    @classmethod
    async def open_bound(cls, settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Context:
        """As ``open``, for the command line and ``broker serve``: a missing keyring is created
        only for a database not bound to a keyring yet, and refused for a bound one (a new
        keyring could neither unwrap the stored reports nor sign checkpoints auditors verify).
        Call ``check_keyring`` once the schema is known to be migrated."""
        database = open_database(settings)
        try:
            if not settings.keyring_path.exists():
                async with database.read_transaction() as tx:
                    bound = await keyringcheck.binding(tx, if_migrated=True)
                    used = bound is None and await keyringcheck.holds_data(tx)
                if used:  # from before the binding (migration 0007): its keyring is somewhere
                    raise BrokerError(
                        f"no keyring at {settings.keyring_path} (BROKER_KEYRING), but the database "
                        f"{redacted(settings.database_url)} already holds reports or signed checkpoints: "
                        "restore the keyring it was used with or point BROKER_KEYRING at it (a new "
                        "keyring is made only for a database without them)",
                        code="keyring_missing",
                    )
                if bound is not None:
                    raise BrokerError(
                        f"no keyring at {settings.keyring_path} (BROKER_KEYRING), but the database "
                        f"{redacted(settings.database_url)} is bound to the keyring "
                        f"{keyring_file.fingerprint(bound.checkpoint_public_key)}: restore that keyring "
                        "file or point BROKER_KEYRING at it (a new keyring is made only for an unbound "
                        "database)",
                        code="keyring_missing",
                    )
            ring = keyring_file.load_or_create(settings.keyring_path)
        except BaseException:
            await database.dispose()
            raise
        return cls(
            db=database,
            policy=settings.policy,
            keyring_path=settings.keyring_path,
            keyring=ring,
            settings=settings,
            clock=clock,
        )

    async def check_keyring(self) -> None:
        """Refuse (BrokerError) a keyring that does not match the database, else bind an unbound
        database to it.

        It matches when the database is bound to its checkpoint key (the keyring's identity,
        which rotation keeps) and it holds every key-encryption key that wraps a stored report
        (an older copy of the right keyring may lack some). Binding happens under the head lock,
        so of several processes starting on a new database with different keyrings the first
        binds and the rest are refused. A database from before the binding (migration 0007) is
        bound on its first start, unless its newest checkpoint was signed by another key."""
        async with self.db.read_transaction() as tx:
            bound = await keyringcheck.binding(tx)
        if bound is not None:
            self._refuse_unless_bound_to_this(bound)
        await self._refuse_missing_keks()
        if bound is not None:
            return
        async with self.db.transaction() as tx:
            head = await tx.lock_head()
            bound = await keyringcheck.binding(tx)
            if bound is None:
                checkpoint = await tx.latest_checkpoint()
                if checkpoint is not None and not _signed_by(checkpoint.note, self.public_key):
                    raise self._mismatch(
                        f"did not sign the newest audit checkpoint (size {checkpoint.size}) in the database"
                    )
                now = self.now()
                await keyringcheck.bind(tx, checkpoint_public_key=self.public_key, at=now)
                # In the log, as every other change to what the database trusts: which keyring,
                # and when (the key itself is the public checkpoint key auditors already hold).
                details = {"keyring": keyring_file.fingerprint(self.public_key)}
                draft = AuditDraft(action="keyring_bind", actor="broker", decision="allow", details=details)
                await journal.record(tx, [draft], now=now, head=head, changed=True)
                return
        self._refuse_unless_bound_to_this(bound)  # another process bound it meanwhile

    @property
    def public_key(self) -> bytes:
        return self.keyring.checkpoint_public_key

    def _refuse_unless_bound_to_this(self, bound: keyringcheck.Binding) -> None:
        if bound.checkpoint_public_key != self.public_key:
            raise BrokerError(
                f"the database {redacted(self.settings.database_url)} is bound to the keyring "
                f"{keyring_file.fingerprint(bound.checkpoint_public_key)}, but the keyring at "
                f"{self.keyring_path} (BROKER_KEYRING) is {keyring_file.fingerprint(self.public_key)}: "
                "point BROKER_KEYRING at the keyring this database was created with",
                code="keyring_mismatch",
            )

    async def _refuse_missing_keks(self) -> None:
        """Refuse a keyring lacking a KEK that wraps a stored report. A rotation in another
        process may add a KEK (and reports use it) after this one read the keyring: the file is
        read again before a KEK is called missing."""
        for _attempt in range(3):
            async with self.db.read_transaction() as tx:
                used = await keyringcheck.kek_ids_in_use(tx)
            missing = sorted(set(used) - set(self.keyring.keks))
            if not missing:
                return
            self.keyring = keyring_file.load(self.keyring_path)
        raise self._mismatch(
            f"lacks the key-encryption key {', '.join(missing)} that wraps reports in the database"
        )

    def _mismatch(self, problem: str) -> BrokerError:
        return BrokerError(
            f"the keyring at {self.keyring_path} (BROKER_KEYRING, "
            f"{keyring_file.fingerprint(self.public_key)}) {problem} "
            f"{redacted(self.settings.database_url)}: point BROKER_KEYRING at the keyring this "
            "database is used with",
            code="keyring_mismatch",
        )

    async def directory(self, tx: Tx) -> Directory:
        """The current alliance directory, reloaded when the change counter moved."""
        return await self.directory_at(tx, await tx.change_counter())

    async def directory_at(self, tx: Tx, counter: int) -> Directory:
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


def _signed_by(note: str, public: bytes) -> bool:
    """Whether a signature on the checkpoint ``note`` verifies with ``public`` (under any name:
    the audit origin may have been renamed since)."""
    try:
        _text, _body, signatures = notes.parse(note)
    except notes.NoteError:
        return False
    for name, _stamp in signatures:
        try:
            notes.verify(note, name=name, public=public)
        except notes.NoteError:
            continue
        return True
    return False
