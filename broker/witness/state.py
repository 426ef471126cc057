"""The witness's own state: per log the latest checkpoint it cosigned, and refused requests kept
as evidence. One SQLite file beside the key (stdlib sqlite3: the witness is a program apart from
the broker and shares nothing with its storage), in WAL mode with ``synchronous=FULL`` so that a
commit has reached the disk before the witness answers.

The check and the update are one ``BEGIN IMMEDIATE`` transaction: two requests for one log can
never both compare against the same stored size (C2SP tlog-witness: otherwise a late request
rolls the stored size back), even from two processes on one directory.

The database is made by ``create`` for one key, whose key id it stores; ``open`` refuses a
missing, empty or foreign database (``LostState``): a witness that forgot what it cosigned could
cosign a fork.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from broker.witness.protocol import Latest, Refused, Submission, check

SCHEMA_VERSION = "1"
MAX_EVIDENCE = 10_000
BUSY_SECONDS = 10.0
# Refusals that prove the log signed two histories (``Refused.fork``) are kept apart from the
# others: anyone can replay the log's genuine checkpoints with a stale old size, each refused and
# kept, and MAX_EVIDENCE of those must not push such a proof out. Added to a database made before
# them when it is opened (the column's default: not a fork).
_FORKS = (
    "ALTER TABLE refused ADD COLUMN fork INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX refused_by_kind ON refused (fork, id)",
)
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # size as decimal text: a checkpoint size may exceed SQLite's signed 64-bit integers
    "CREATE TABLE checkpoints (origin TEXT PRIMARY KEY, origin_hash TEXT NOT NULL UNIQUE,"
    " size TEXT NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL, cosigned_at INTEGER NOT NULL)",
    # one row per checkpoint refused (by the SHA-256 of its note text): a replayed request, or
    # one log-signed checkpoint sent with ever new proofs, cannot push other evidence out
    "CREATE TABLE refused (id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL,"
    " checkpoint BLOB NOT NULL UNIQUE, received_at INTEGER NOT NULL, status INTEGER NOT NULL,"
    " reason TEXT NOT NULL, body BLOB NOT NULL)",
    *_FORKS,
)


class StateError(Exception):
    """The state database cannot be made or used."""


class LostState(StateError):
    """The state database is missing, empty or not this key's: the witness must not start."""


@dataclass(frozen=True)
class Evidence:
    """A refused request for a known log whose signature verified."""

    origin: str
    received_at: int
    status: int
    reason: str
    body: bytes
    fork: bool = False  # the log signed a checkpoint contradicting one cosigned (Refused.fork)


def origin_hash(origin: str) -> str:
    """The lowercase hex SHA-256 of a log origin: its monitoring path (C2SP tlog-witness)."""
    return hashlib.sha256(origin.encode()).hexdigest()


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(
        f"file:{quote(str(path.resolve()))}?mode={mode}",
        uri=True,
        isolation_level=None,
        timeout=BUSY_SECONDS,
        check_same_thread=False,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def create(path: Path, *, key_id: str, name: str, vkey: str) -> None:
    """Make the state database for one witness key; FileExistsError if ``path`` exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # 0600 from the start
    conn = _connect(path, create=True)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        meta = {"schema": SCHEMA_VERSION, "key_id": key_id, "name": name, "vkey": vkey}
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
    finally:
        conn.close()


def _add_forks(conn: sqlite3.Connection) -> None:
    """Give a database made before fork evidence was kept apart its column and index (once,
    under the write lock: witnesses opening one directory together add them once)."""
    if "fork" in _columns(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "fork" not in _columns(conn):
            for statement in _FORKS:
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _columns(conn: sqlite3.Connection) -> set[str]:
    return {str(row[1]) for row in conn.execute("PRAGMA table_info(refused)")}


class State:
    """An open state database. Not thread-safe: the server uses it from one thread."""

    def __init__(self, conn: sqlite3.Connection, meta: dict[str, str]) -> None:
        self._conn = conn
        self.meta = meta

    @classmethod
    def open(cls, path: Path, *, key_id: str) -> State:
        """Open the database made for ``key_id``; LostState (saying what is wrong) otherwise."""
        if not path.is_file():
            raise LostState(f"the state database {path} is missing")
        if path.stat().st_size == 0:
            raise LostState(f"the state database {path} is empty")
        try:
            conn = _connect(path, create=False)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise LostState(f"the state database {path} is unreadable ({exc})") from None
        if meta.get("key_id") != key_id:
            conn.close()
            raise LostState(f"the state database {path} was made for another key ({meta.get('key_id')})")
        _add_forks(conn)
        return cls(conn, meta)

    def close(self) -> None:
        self._conn.close()

    def add(self, submission: Submission, *, body: bytes, now: int, cosign: Callable[[], str]) -> str:
        """Check ``submission`` against the stored checkpoint and, if it passes, store it with the
        cosignature line ``cosign()`` makes, and return that line: one transaction, committed
        before this returns. A refusal (all are of log-signed checkpoints) is stored as evidence,
        once per checkpoint (the newest MAX_EVIDENCE kept), then raised."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            latest = self._latest(submission.origin)
            try:
                check(submission, latest)
            except Refused as refused:
                self._keep(submission, refused, body=body, now=now)
                conn.execute("COMMIT")
                raise
            line = cosign()
            note = submission.text + "\n" + "".join(submission.log_lines) + line
            conn.execute(
                "INSERT INTO checkpoints (origin, origin_hash, size, root, note, cosigned_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET size = excluded.size,"
                " root = excluded.root, note = excluded.note, cosigned_at = excluded.cosigned_at",
                (
                    submission.origin,
                    origin_hash(submission.origin),
                    str(submission.checkpoint.size),
                    submission.checkpoint.root,
                    note,
                    now,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return line

    def _latest(self, origin: str) -> Latest | None:
        row = self._conn.execute("SELECT size, root FROM checkpoints WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else Latest(size=int(row[0]), root=bytes(row[1]))

    def _keep(self, submission: Submission, refused: Refused, *, body: bytes, now: int) -> None:
        """Keep a refusal: the newest MAX_EVIDENCE of the others, the first MAX_EVIDENCE forks
        (any one of them proves the fork; only the log can sign more)."""
        fork = int(refused.fork)
        if fork:
            (forks,) = self._conn.execute("SELECT count(*) FROM refused WHERE fork = 1").fetchone()
            if forks >= MAX_EVIDENCE:
                return
        cursor = self._conn.execute(
            "INSERT INTO refused (origin, checkpoint, received_at, status, reason, body, fork)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (checkpoint) DO NOTHING",
            (
                submission.origin,
                hashlib.sha256(submission.text.encode()).digest(),
                now,
                refused.status,
                refused.reason,
                body,
                fork,
            ),
        )
        if cursor.rowcount == 1 and not fork:
            self._conn.execute(
                "DELETE FROM refused WHERE fork = 0 AND id <= (SELECT id FROM refused WHERE fork = 0"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (MAX_EVIDENCE,),
            )

    def note(self, hashed_origin: str) -> str | None:
        """The latest cosigned checkpoint (log and witness signatures) for a log, by origin hash."""
        row = self._conn.execute(
            "SELECT note FROM checkpoints WHERE origin_hash = ?", (hashed_origin,)
        ).fetchone()
        return None if row is None else str(row[0])

    def logs(self) -> list[dict[str, Any]]:
        """Every log's latest cosigned checkpoint: origin, size, root (base64), cosigned_at."""
        rows = self._conn.execute("SELECT origin, size, note, cosigned_at FROM checkpoints ORDER BY origin")
        return [
            {"origin": origin, "size": int(size), "root": note.split("\n")[2], "cosigned_at": at}
            for origin, size, note, at in rows
        ]

    def evidence(self, limit: int) -> list[Evidence]:
        """``limit`` refused requests kept: proofs of a fork first, then the others, each newest
        first."""
        rows = self._conn.execute(
            "SELECT origin, received_at, status, reason, body, fork FROM refused"
            " ORDER BY fork DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [
            Evidence(origin=o, received_at=t, status=s, reason=r, body=bytes(b), fork=bool(f))
            for o, t, s, r, b, f in rows
        ]
