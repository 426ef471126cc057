"""The keyring file: key-encryption keys (KEKs) with ids, created on first use with mode 0600.

Format (JSON)::

    {"version": 1, "current": "kek-...", "keks": {"kek-...": "<base64 32 bytes>", ...},
     "checkpoint_key": "<base64 32-byte Ed25519 private key>"}

The file is written atomically (temporary file + rename) so a crash never leaves half a keyring.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.errors import ConfigError

KEK_BYTES = 32


@dataclass(frozen=True)
class Keyring:
    current: str
    keks: dict[str, bytes]
    # Ed25519 private key (raw 32 bytes) that signs audit-log checkpoints.
    checkpoint_key: bytes = b""

    def kek(self, kek_id: str) -> bytes:
        """The KEK named ``kek_id``; KeyError when it was destroyed or never existed."""
        return self.keks[kek_id]

    def with_new_kek(self) -> Keyring:
        """A keyring whose current KEK is a fresh one; old KEKs stay for unwrapping."""
        kek_id = _new_kek_id()
        keks = {**self.keks, kek_id: secrets.token_bytes(KEK_BYTES)}
        return Keyring(current=kek_id, keks=keks, checkpoint_key=self.checkpoint_key)

    def only_current(self) -> Keyring:
        """A keyring without retired KEKs (after every data key was re-wrapped)."""
        keks = {self.current: self.keks[self.current]}
        return Keyring(current=self.current, keks=keks, checkpoint_key=self.checkpoint_key)


def _new_kek_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"kek-{stamp}-{secrets.token_hex(4)}"


def load_or_create(path: Path) -> Keyring:
    """Load the keyring at ``path``, creating it (mode 0600) with one KEK when absent."""
    if not path.exists():
        kek_id = _new_kek_id()
        ring = Keyring(
            current=kek_id,
            keks={kek_id: secrets.token_bytes(KEK_BYTES)},
            checkpoint_key=secrets.token_bytes(32),
        )
        save(path, ring)
        return ring
    ring = load(path)
    if not ring.checkpoint_key:  # a keyring from before checkpoints existed
        ring = Keyring(current=ring.current, keks=ring.keks, checkpoint_key=secrets.token_bytes(32))
        save(path, ring)
    return ring


def load(path: Path) -> Keyring:
    """Load and validate the keyring; ConfigError names what is wrong."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(file=str(path), key="-", problem=f"mode {mode:o} lets others read keys; chmod 600")
    try:
        raw = json.loads(path.read_text())
        keks = {str(k): base64.b64decode(v, validate=True) for k, v in raw["keks"].items()}
        current = str(raw["current"])
        checkpoint_key = base64.b64decode(raw.get("checkpoint_key", ""), validate=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(file=str(path), key="-", problem=f"not a valid keyring: {exc}") from exc
    if current not in keks or any(len(k) != KEK_BYTES for k in keks.values()):
        raise ConfigError(file=str(path), key="keks", problem="current KEK missing or a KEK is not 32 bytes")
    if checkpoint_key and len(checkpoint_key) != 32:
        raise ConfigError(file=str(path), key="checkpoint_key", problem="must be 32 bytes")
    return Keyring(current=current, keks=keks, checkpoint_key=checkpoint_key)


def save(path: Path, ring: Keyring) -> None:
    """Write ``ring`` to ``path`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps(
        {
            "version": 1,
            "current": ring.current,
            "keks": {k: base64.b64encode(v).decode() for k, v in ring.keks.items()},
            "checkpoint_key": base64.b64encode(ring.checkpoint_key).decode(),
        },
        indent=2,
    )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
