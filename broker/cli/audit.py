"""``broker audit``: export the log, verify an export offline, print the checkpoint key."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli import peer
from broker.cli.common import actions, read_text

if TYPE_CHECKING:
    from broker.services.context import Context
    from broker.settings import Settings


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = actions(sub, "audit", "the audit log")
    audit.add_parser("export", parents=[common], help="write an NDJSON export").add_argument(
        "file", help="file to write (replaced; mode 0600)"
    )
    verify = audit.add_parser(
        "verify", parents=[common], help="verify an export offline (exit 1 if tampered)"
    )
    verify.add_argument("file", help="an NDJSON export (from audit export or GET /v1/audit/export)")
    verify.add_argument(
        "--key",
        help="the broker's checkpoint key: its vkey (NAME+KEYID+BASE64, as `audit key` prints it), "
        "whose name the checkpoints' origin must be, or the bare public key in base64, which names "
        "no log (default: the local keyring's, named by this broker's [audit] origin)",
    )
    verify.add_argument(
        "--trusted-checkpoint",
        metavar="NOTE",
        help="a file holding a checkpoint note saved earlier (the note, or JSON holding it): "
        "the export must extend it (exit 1 if it was rolled back or rewritten) (default: none)",
    )
    verify.add_argument(
        "--witness",
        metavar="VKEY",
        action="append",
        default=[],
        help="a witness's cosigner vkey (NAME+KEYID+BASE64, type 0x04) the final checkpoint's "
        "cosignatures are checked against; repeat for each (default: none)",
    )
    verify.add_argument(
        "--quorum",
        metavar="K",
        type=int,
        help="valid cosignatures from the --witness keys the final checkpoint must carry "
        "(exit 1 naming the missing ones) (default: every --witness)",
    )
    audit.add_parser("key", parents=[common], help="print the checkpoint public key auditors pin")
    peer.register_audit(audit, common)


def command(args: argparse.Namespace) -> Callable[[Context], Awaitable[Any]]:
    from broker.services import ledger

    async def key(ctx: Context) -> dict[str, str]:
        return ledger.public_key(ctx)

    if args.action == "export":
        target = _export_target(args.file)  # before the database is opened
        return lambda c: _export(c, target)
    return key


def _export_target(file: str) -> Path:
    """Where to write an export: a new name or a regular file, which is replaced. A link or a
    device is refused rather than replaced (``/dev/stdout`` is a link too)."""
    from broker.errors import BrokerError

    path = Path(file)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise BrokerError(
            f"{path} is a symbolic link or not a regular file: give a regular file's path "
            "(GET /v1/audit/export streams the export)",
            code="invalid_input",
        )
    return path


async def _export(ctx: Context, path: Path) -> dict[str, Any]:
    """Written like the keyring: a new file (0600: the log says who received what) renamed over
    ``path``, so nothing is ever written through a link planted at that name in a shared
    folder, and a failed export leaves the previous one."""
    from broker.crypto.files import replacing
    from broker.errors import BrokerError
    from broker.services import ledger

    lines = 0
    try:
        with replacing(path, mode=0o600) as fh:
            async for line in ledger.export(ctx):
                fh.write(line.encode())
                lines += 1
                if lines % 10_000 == 0:
                    print(f"exported {lines} lines...", file=sys.stderr)
    except OSError as exc:
        raise BrokerError(f"cannot write {path}: {exc.strerror or exc}", code="invalid_input") from exc
    return {"file": str(path), "lines": lines}


def verify(args: argparse.Namespace, settings: Settings | None) -> int:
    """Offline: no database. Exit 0 when intact, 1 when tampered (naming the place), 2 when the
    key, the export or the trusted checkpoint cannot be read or is malformed (one line on stderr)."""
    from broker.crypto import quorum, verify_export
    from broker.errors import BrokerError

    origin, public = _checkpoint_key(args.key, settings)
    try:
        witnesses = quorum.parse_witnesses(args.witness)
    except quorum.QuorumInputError as exc:
        raise BrokerError(f"--witness: {exc}") from None
    required = len(witnesses) if args.quorum is None else args.quorum
    if not 0 <= required <= len(witnesses):
        raise BrokerError(
            f"--quorum {required} needs at least that many --witness keys (given {len(witnesses)})"
        )
    trusted = None
    if args.trusted_checkpoint is not None:
        trusted = read_text(Path(args.trusted_checkpoint))
    try:
        with Path(args.file).open(encoding="utf-8") as fh:
            finding = verify_export.verify(
                fh, public_key=public, origin=origin, trusted=trusted, witnesses=witnesses, quorum=required
            )
    except OSError as exc:
        raise BrokerError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    if finding.exit_code == 2:
        raise BrokerError(" ".join(f"cannot verify {args.file}: {finding.message}".splitlines()))
    if args.json:
        shown = {k: v for k, v in finding.__dict__.items() if k != "final_note"}
        print(json.dumps(shown, indent=2))
    else:
        verdict = "OK" if finding.ok else "UNWITNESSED" if finding.kind == "unwitnessed" else "TAMPERED"
        print(f"{verdict} {finding.message}")
    return finding.exit_code


def _checkpoint_key(key: str | None, settings: Settings | None) -> tuple[str | None, bytes]:
    """The log's name (the checkpoints' origin) and the raw Ed25519 key checkpoints must be
    signed by: ``--key`` (the vkey ``audit key`` prints, or the bare key in base64, which names
    no log: None), else the local keyring's, named by this broker's ``[audit] origin``."""
    from broker.crypto import keyring, notes
    from broker.errors import BrokerError

    if key is None:
        if settings is None or not settings.keyring_path.exists():
            where = "" if settings is None else f" at {settings.keyring_path}"
            raise BrokerError(
                f"no keyring{where}: pass --key (the public key or vkey `broker audit key` prints)"
            )
        return settings.audit_origin, notes.public_key(keyring.load(settings.keyring_path).checkpoint_key)
    name: str | None = None
    if key.count("+") >= 2 and not key.endswith("="):  # a raw key in base64 ends with "="
        name, public = _vkey_public(key)
    else:
        try:
            public = base64.b64decode(key, validate=True)
        except ValueError:  # binascii.Error, or characters outside ASCII
            raise BrokerError("--key must be base64 or a vkey (NAME+KEYID+BASE64)") from None
    if not notes.valid_public_key(public):
        raise BrokerError(
            f"--key is not an Ed25519 public key: {len(public)} bytes"
            + (" that are not a curve point" if len(public) == 32 else ", not 32")
        )
    return name, public


def local_log_key(settings: Settings | None) -> tuple[str, bytes] | None:
    """This broker's audit origin and checkpoint key, when a keyring is at hand."""
    from broker.crypto import keyring, notes

    if settings is None or not settings.keyring_path.exists():
        return None
    return settings.audit_origin, notes.public_key(keyring.load(settings.keyring_path).checkpoint_key)


def _vkey_public(vkey: str) -> tuple[str, bytes]:
    """The name and raw public key of a C2SP vkey ``NAME+KEYID+base64(0x01 || key)``; the key id
    must be the one its name and key make, so a vkey edited by hand is not taken at its word."""
    from broker.crypto import notes
    from broker.errors import BrokerError

    name, key_id, encoded = vkey.split("+", 2)  # a name holds no "+"; base64 may
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise BrokerError("--key: the vkey's last part is not base64 (NAME+KEYID+BASE64)") from None
    if len(raw) != 33 or raw[0] != 1:
        raise BrokerError("--key: the vkey does not hold an Ed25519 key (type 0x01, 32 bytes)")
    public = raw[1:]
    if notes.key_id(name, public).hex() != key_id.lower():
        raise BrokerError(
            f"--key: the vkey's key id {key_id} is not the one of name {name} and its key "
            f"({notes.key_id(name, public).hex()})"
        )
    return name, public
