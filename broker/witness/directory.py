"""A witness's directory: its Ed25519 key (``witness.key``) and its state (``witness.db``), both
0600. ``init`` makes both, never over an existing one; ``load`` opens both and refuses to go on
when the state is not the one made for the key (a witness that forgot what it cosigned must be
retired, not restarted)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from broker.crypto import cosignature, notes
from broker.crypto.files import write_atomically
from broker.crypto.keys import new_signing_key, private_b64
from broker.errors import BrokerError
from broker.witness import state

KEY_FILE = "witness.key"
STATE_FILE = "witness.db"
MAX_NAME = 255


@dataclass(frozen=True)
class Identity:
    """The witness's name and key; ``vkey`` is what logs and auditors pin (type 0x04)."""

    name: str
    private_key: bytes = field(repr=False)
    public: bytes

    @property
    def vkey(self) -> str:
        return cosignature.cosigner_vkey(self.name, self.public)

    @property
    def key_id(self) -> str:
        return cosignature.cosigner_key_id(self.name, self.public).hex()


def check_name(name: str) -> str:
    """A signed-note key name: non-empty, no spaces or "+" (C2SP signed-note), printable."""
    if not name or len(name) > MAX_NAME:
        raise BrokerError(f"--name must be 1 to {MAX_NAME} characters", code="invalid_input")
    if any(ch.isspace() or ch == "+" or not ch.isprintable() for ch in name):
        raise BrokerError("--name may hold no spaces, '+' or control characters", code="invalid_input")
    return name


def init(directory: Path, *, name: str) -> Identity:
    """Make a new witness in ``directory`` (created 0700 if missing). Refuses a directory that
    already holds a witness key or state: replacing either would make the witness forget."""
    check_name(name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for present in (directory / KEY_FILE, directory / STATE_FILE):
        if present.exists():
            raise BrokerError(
                f"{present} exists: {directory} already holds a witness, and a witness's key and "
                "state are never replaced; give a new directory",
                code="witness_exists",
            )
    key = new_signing_key()
    raw = base64.b64decode(private_b64(key))
    identity = Identity(name=name, private_key=raw, public=notes.public_key(raw))
    # The state first: a key without its state is refused by serve, a state without a key is inert.
    try:
        state.create(directory / STATE_FILE, key_id=identity.key_id, name=name, vkey=identity.vkey)
        text = json.dumps({"name": name, "private_key": base64.b64encode(raw).decode()}) + "\n"
        write_atomically(directory / KEY_FILE, text.encode(), mode=0o600, replace=False)
    except FileExistsError as exc:  # another init raced this one into the same directory
        raise BrokerError(
            f"{exc.filename} appeared meanwhile: give a new directory", code="witness_exists"
        ) from None
    return identity


def read_key(directory: Path) -> Identity:
    """The witness key in ``directory``; BrokerError naming the problem."""
    path = directory / KEY_FILE
    try:
        data = json.loads(path.read_text())
        raw = base64.b64decode(data["private_key"], validate=True)
        name = check_name(str(data["name"]))
        if len(raw) != 32:
            raise ValueError("not 32 bytes")
    except FileNotFoundError:
        raise BrokerError(f"no witness key at {path}: run `broker witness init --dir {directory}`") from None
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BrokerError(f"{path}: not a witness key ({exc})", code="config_error") from None
    if os.stat(path).st_mode & 0o077:
        raise BrokerError(f"{path} is readable by others: chmod 600 it", code="config_error")
    return Identity(name=name, private_key=raw, public=notes.public_key(raw))


def load(directory: Path) -> tuple[Identity, state.State]:
    """The witness in ``directory`` and its open state; BrokerError (``witness_lost_state``,
    with how to retire the witness) when the state is not the key's."""
    identity = read_key(directory)
    try:
        opened = state.State.open(directory / STATE_FILE, key_id=identity.key_id)
    except state.LostState as exc:
        raise BrokerError(lost_state_message(exc, identity), code="witness_lost_state") from None
    return identity, opened


def lost_state_message(exc: Exception, identity: Identity) -> str:
    return (
        f"refusing to start: {exc}. This witness key may already have cosigned checkpoints that "
        "it no longer remembers, so cosigning afresh could vouch for a log's fork. Retire it: "
        f"remove its vkey {identity.vkey} from every log's witness list (and from auditors' "
        "pinned keys), then run `broker witness init --dir NEW_DIR --name NEW_NAME` and give "
        "the logs the new vkey. Do not restore an older copy of the state database."
    )
