"""The keyring file: key-encryption keys (KEKs) with ids, created on first use with mode 0600.

Format (JSON)::

    {"version": 1, "current": "kek-...", "keks": {"kek-...": "<base64 32 bytes>", ...},
     "retiring": ["kek-...", ...], "checkpoint_key": "<base64 32-byte Ed25519 private key>",
     "unrecorded": ["kek-...", ...]}

``retiring`` (absent in older files) lists KEKs an erasure condemned: each wrapped an erased
report's data key, its other data keys were re-wrapped under a replacement, and it is deleted
from the file as soon as no stored report uses it (``broker.services.shred``). A retiring KEK is
never made current again. ``unrecorded`` (present only when not empty) names KEKs already
deleted whose ``keys_destroy`` audit event may not have committed: a KEK leaves the file before
its event commits (an event claiming a destruction that a crash then stopped would be false), and
the id stays here until the event is in the log, so a crash between the two is recorded later.

The file is written atomically (temporary file + rename) so a crash never leaves half a keyring;
creation links the finished file into place, so of several processes creating it at once exactly
one wins and the rest read its keyring. To change a keyring use ``update``: it re-reads the file
under a lock file (``.<name>.lock`` beside it), so concurrent changes do not drop each other's KEKs.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from broker.crypto.files import write_atomically
from broker.crypto.notes import public_key
from broker.errors import ConfigError

KEK_BYTES = 32


@dataclass(frozen=True)
class Keyring:
    current: str
    keks: dict[str, bytes]
    # Ed25519 private key (raw 32 bytes) that signs audit-log checkpoints.
    checkpoint_key: bytes = b""
    retiring: frozenset[str] = frozenset()
    unrecorded: frozenset[str] = frozenset()  # ids of KEKs deleted, their event maybe not logged

    def kek(self, kek_id: str) -> bytes:
        """The KEK named ``kek_id``; KeyError when it was destroyed or never existed."""
        return self.keks[kek_id]

    def with_new_kek(self, at: datetime | None = None) -> Keyring:
        """A keyring whose current KEK is a fresh one (created ``at``, default now); old KEKs
        stay for unwrapping."""
        kek_id = new_kek_id(at)
        keks = {**self.keks, kek_id: secrets.token_bytes(KEK_BYTES)}
        return replace(self, current=kek_id, keks=keks)

    def replacing(self, kek_id: str, replacement: str) -> Keyring:
        """A keyring where ``kek_id`` is retiring and a fresh KEK named ``replacement`` (see
        ``new_kek_id``) takes its place, as the current one if ``kek_id`` was current.
        Idempotent: a second call with the same names changes nothing."""
        if kek_id not in self.keks:
            raise KeyError(kek_id)
        keks = (
            self.keks
            if replacement in self.keks
            else {**self.keks, replacement: secrets.token_bytes(KEK_BYTES)}
        )
        current = replacement if self.current == kek_id else self.current
        return replace(self, current=current, keks=keks, retiring=self.retiring | {kek_id})

    def without(self, kek_ids: frozenset[str]) -> Keyring:
        """A keyring with the KEKs ``kek_ids`` destroyed (never the current one)."""
        gone = kek_ids - {self.current}
        if not gone & set(self.keks):
            return self
        keks = {k: v for k, v in self.keks.items() if k not in gone}
        return replace(self, keks=keks, retiring=self.retiring - gone)

    def destroying(self, kek_ids: frozenset[str]) -> Keyring:
        """``without`` those KEKs, their ids noted as ``unrecorded`` until their event is logged."""
        gone = (kek_ids - {self.current}) & set(self.keks)
        return replace(self.without(gone), unrecorded=self.unrecorded | gone) if gone else self

    def recorded(self, kek_ids: frozenset[str]) -> Keyring:
        """The keyring once the destruction of ``kek_ids`` is in the audit log."""
        return replace(self, unrecorded=self.unrecorded - kek_ids)

    def only_current(self) -> Keyring:
        """A keyring without retired KEKs (after every data key was re-wrapped)."""
        return self.without(frozenset(self.keks))

    @property
    def checkpoint_public_key(self) -> bytes:
        """The raw Ed25519 public key of ``checkpoint_key``: the keyring's identity, which the
        database is bound to (KEKs come and go with rotation; this key never changes)."""
        return public_key(self.checkpoint_key)


def fingerprint(checkpoint_public_key: bytes) -> str:
    """How messages name a keyring: ``sha256:`` and the first 16 hex digits of the SHA-256 of its
    checkpoint public key."""
    return "sha256:" + hashlib.sha256(checkpoint_public_key).hexdigest()[:16]


_STAMP = "%Y%m%dT%H%M%S"


def new_kek_id(at: datetime | None = None) -> str:
    """A fresh KEK name; it carries its creation time (``created_at``)."""
    stamp = (datetime.now(UTC) if at is None else at.astimezone(UTC)).strftime(_STAMP)
    return f"kek-{stamp}-{secrets.token_hex(4)}"


def created_at(kek_id: str) -> datetime | None:
    """When the KEK ``kek_id`` was made, from its name; None for a name not made by
    ``new_kek_id``."""
    parts = kek_id.split("-")
    if len(parts) != 3 or parts[0] != "kek":
        return None
    try:
        return datetime.strptime(parts[1], _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def load_or_create(path: Path) -> Keyring:
    """Load the keyring at ``path``, creating it (mode 0600) with one KEK when absent.

    Processes racing to create it all end with the same keyring: the first to link its file
    into place wins and the others read the winner's."""
    if not path.exists():
        created = _create(path, _new_keyring())
        if created is not None:
            return created
    ring = load(path)
    if not ring.checkpoint_key:  # a keyring from before checkpoints existed
        ring = update(path, _with_checkpoint_key)
    return ring


def _new_keyring() -> Keyring:
    kek_id = new_kek_id()
    return Keyring(
        current=kek_id, keks={kek_id: secrets.token_bytes(KEK_BYTES)}, checkpoint_key=secrets.token_bytes(32)
    )


def _with_checkpoint_key(ring: Keyring) -> Keyring:
    if ring.checkpoint_key:
        return ring
    return replace(ring, checkpoint_key=secrets.token_bytes(32))


def _create(path: Path, ring: Keyring) -> Keyring | None:
    """Put ``ring`` at ``path`` unless a file is already there; None when another was first.

    The complete file is linked into place, so nobody ever reads a partial keyring and exactly
    one of several racing creators wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, _body(ring), mode=0o600, replace=False)
    except FileExistsError:
        return None
    return ring


def load(path: Path) -> Keyring:
    """Load and validate the keyring; ConfigError names what is wrong."""
    status = path.stat()
    mode = status.st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(file=str(path), key="-", problem=f"mode {mode:o} lets others read keys; chmod 600")
    runs_as = os.geteuid() if hasattr(os, "geteuid") else None
    if runs_as is not None and status.st_uid not in (runs_as, 0):
        # Its owner may rewrite it: replace the checkpoint key, or the KEKs new reports are sealed under.
        raise ConfigError(
            file=str(path),
            key="-",
            problem=f"owned by uid {status.st_uid}, who may replace its keys; the broker runs as uid "
            f"{runs_as}: chown it to that user (or to root)",
        )
    try:
        raw = json.loads(path.read_text())
        keks = {str(k): base64.b64decode(v, validate=True) for k, v in raw["keks"].items()}
        current = str(raw["current"])
        checkpoint_key = base64.b64decode(raw.get("checkpoint_key", ""), validate=True)
        retiring = frozenset(str(k) for k in raw.get("retiring", []))
        unrecorded = frozenset(str(k) for k in raw.get("unrecorded", []))
    except KeyError as exc:  # str() of a KeyError is the key's repr
        raise ConfigError(
            file=str(path), key=str(exc.args[0]), problem="missing: this is not a keyring the broker wrote"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            file=str(path), key="keyring", problem=f"cannot read: {exc.strerror or exc}"
        ) from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            file=str(path),
            key="keyring",
            problem=f"not a keyring the broker wrote (JSON with keks, current): {exc}",
        ) from exc
    if current not in keks or any(len(k) != KEK_BYTES for k in keks.values()):
        raise ConfigError(file=str(path), key="keks", problem="current KEK missing or a KEK is not 32 bytes")
    if checkpoint_key and len(checkpoint_key) != 32:
        raise ConfigError(file=str(path), key="checkpoint_key", problem="must be 32 bytes")
    if current in retiring:
        raise ConfigError(file=str(path), key="retiring", problem="the current KEK cannot be retiring")
    return Keyring(
        current=current,
        keks=keks,
        checkpoint_key=checkpoint_key,
        retiring=retiring & set(keks),
        unrecorded=unrecorded - set(keks),
    )


def save(path: Path, ring: Keyring) -> None:
    """Write ``ring`` to ``path`` atomically with mode 0600 (temporary file, then rename).

    A blind overwrite: to change the keyring on disk, ``update`` re-reads it under a lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, _body(ring), mode=0o600, replace=True)


def update(path: Path, change: Callable[[Keyring], Keyring]) -> Keyring:
    """Apply ``change`` to the keyring on disk and save the result, with concurrent updates
    from other processes serialised on a lock file, so none of them loses another's KEK."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        # Never through a link planted at its name: O_CREAT would make or open the link's target.
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        problem = "is a symbolic link: remove it" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise ConfigError(file=str(lock_path), key="-", problem=f"the keyring's lock file {problem}") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ring = load(path)
        changed = change(ring)
        if changed != ring:
            save(path, changed)
        return changed
    finally:
        os.close(lock)  # releases the lock


def _body(ring: Keyring) -> bytes:
    body = {
        "version": 1,
        "current": ring.current,
        "keks": {k: base64.b64encode(v).decode() for k, v in ring.keks.items()},
        "retiring": sorted(ring.retiring),
        "checkpoint_key": base64.b64encode(ring.checkpoint_key).decode(),
    }
    if ring.unrecorded:
        body["unrecorded"] = sorted(ring.unrecorded)
    return json.dumps(body, indent=2).encode()
