"""The ``broker`` command line. Every command accepts ``--json`` for machine-readable output."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from broker import __version__
from broker.crypto import keyring, notes, pki, verify_export
from broker.crypto.files import write_atomically
from broker.crypto.keys import new_sealing_key, new_signing_key, private_b64, public_b64
from broker.domain.time import parse_time
from broker.errors import BrokerError, InvalidInput
from broker.services import admin, ledger, reports
from broker.services import collections as taxii_collections
from broker.services.context import Context
from broker.settings import Settings, TlsSettings
from broker.storage import db
from broker.web.tls import check_bind, is_loopback, server_context

CLI_ACTOR = "cli"


ROLES = "publish, subscribe, audit, admin, federate (a link to another broker, alone)"
HISTORY_HELP = (
    "full: members see every report released to the alliance; since-join: only reports created "
    "after they joined (default: %(default)s)"
)


class UsageError(Exception):
    """A command line argparse cannot read: reported like every other error (one line, JSON
    with --json), not as argparse's usage text."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _port(value: str) -> int:
    """A TCP port (0 picks a free one), refused by argparse in words otherwise."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number: give 0-65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: give 0-65535")
    return port


def _parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line. Help texts name valid values and defaults; the classification levels
    and the server's defaults are those of ``settings`` (the built-in ones when not given)."""
    settings = settings or Settings()
    levels = ", ".join(settings.policy.levels)
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output (also for errors)")
    parser = _Parser(
        prog="broker",
        description="Alliance Broker. Settings come from BROKER_CONFIG_DIR (default: ./config), "
        "BROKER_DATABASE_URL and BROKER_KEYRING.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    config.add_parser("check", parents=[common], help="load and validate the configuration, print a summary")

    dbp = sub.add_parser("db", help="database").add_subparsers(dest="action", required=True, metavar="ACTION")
    dbp.add_parser(
        "upgrade",
        parents=[common],
        help="run migrations, bind the database to the keyring, seed alliances into an empty database",
    )

    serve = sub.add_parser("serve", parents=[common], help="start the broker")
    serve.add_argument(
        "--host", help=f"address to listen on (default: {settings.host}, [server] host in broker.toml)"
    )
    serve.add_argument(
        "--port",
        type=_port,
        help=f"port to listen on (default: {settings.port}, [server] port in broker.toml)",
    )
    _log_options(serve)
    serve.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="server certificate chain; enables TLS (default: [tls] cert, else none)",
    )
    serve.add_argument(
        "--tls-key", metavar="PEM", help="the server certificate's private key (default: [tls] key)"
    )
    serve.add_argument(
        "--tls-client-ca",
        action="append",
        default=None,
        metavar="PEM",
        help="alliance CA for client certificates, repeatable (default: [tls] client_ca, else none)",
    )
    serve.add_argument(
        "--tls-client-auth",
        choices=("off", "optional", "required"),
        help="client certificates: off, optional (a certificate or a token) or required "
        f"(default: {settings.tls.client_auth}, [tls] client_auth)",
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="allow plain HTTP on a non-loopback address (default: refused)",
    )

    demo = sub.add_parser("demo", parents=[common], help="fresh demo database, nodes and server")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    demo.add_argument("--port", type=_port, default=8080, help="port to listen on (default: %(default)s)")
    demo.add_argument(
        "--dir",
        default="var/demo",
        help="where the demo database, keyring and certificates live: a new or empty directory, or "
        "one an earlier demo made (its files are replaced) (default: %(default)s)",
    )
    demo.add_argument(
        "--federation",
        action="store_true",
        help="start three linked brokers (usa, a nato hub, fra) on PORT..PORT+2 in --dir "
        "(default there: var/federation) and show a report crossing them",
    )
    _log_options(demo)

    node = sub.add_parser("node", help="nodes").add_subparsers(dest="action", required=True, metavar="ACTION")
    add = node.add_parser("add", parents=[common], help="register a node, print its token once")
    add.add_argument("id", help="node id, never reused (e.g. usa-cyber)")
    add.add_argument("--nation", required=True, help="ISO 3166-1 alpha-3 code (e.g. USA)")
    add.add_argument("--clearance", required=True, help=f"highest level it may read: {levels}")
    add.add_argument("--roles", required=True, help=f"comma-separated, any of: {ROLES}")
    add.add_argument("--caveats", default="", help="comma-separated caveats it holds (default: none)")
    _link_options(add)
    _key_options(add)
    add.add_argument(
        "--certificate",
        metavar="PEM",
        help="client certificate file to pin the node to, by its SHA-256 (default: no pin)",
    )
    add.add_argument(
        "--token-days", type=int, metavar="DAYS", help="the token expires after DAYS days (default: never)"
    )
    keygen = node.add_parser(
        "keygen",
        parents=[common],
        help="make a node's Ed25519 (signing) and X25519 (sealing) key pairs: the private keys go "
        "to files (mode 0600), the public halves are printed as node add/update flags",
    )
    keygen.add_argument("id", help="node id the keys are for (names the files)")
    keygen.add_argument("--out", required=True, metavar="DIR", help="where to write the private keys")
    keygen.add_argument(
        "--force", action="store_true", help="replace key files already in DIR (default: refuse)"
    )
    node.add_parser("list", parents=[common], help="every node, revoked ones too")
    node.add_parser("revoke", parents=[common], help="revoke a node at once, for good").add_argument(
        "id", help="node id"
    )
    rotate = node.add_parser(
        "rotate-token", parents=[common], help="new token (shown once); the old one stops working at once"
    )
    rotate.add_argument("id", help="node id")
    rotate.add_argument(
        "--token-days",
        type=int,
        metavar="DAYS",
        help="the new token expires after DAYS days (default: never)",
    )
    upd = node.add_parser(
        "update",
        parents=[common],
        help="change clearance, caveats, roles, keys, certificate pin (what is not given is kept)",
    )
    upd.add_argument("id", help="node id")
    upd.add_argument("--clearance", help=f"one of: {levels} (default: unchanged)")
    upd.add_argument("--caveats", help="comma-separated; empty for none (default: unchanged)")
    upd.add_argument("--roles", help=f"comma-separated, any of: {ROLES} (default: unchanged)")
    _link_options(upd, unchanged=True)
    _key_options(upd, unchanged=True)
    pin = upd.add_mutually_exclusive_group()
    pin.add_argument(
        "--certificate", metavar="PEM", help="client certificate file to pin the node to (default: unchanged)"
    )
    pin.add_argument(
        "--no-certificate", action="store_true", help="remove the certificate pin (default: it stays)"
    )

    alliance = sub.add_parser("alliance", help="alliances").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = alliance.add_parser("create", parents=[common], help="define a new alliance (no members yet)")
    create.add_argument("id", help="2-32 of A-Z, 0-9, '-' and '_', starting with a letter; not a nation code")
    create.add_argument("--name", required=True, help="its full name")
    create.add_argument("--history", choices=["full", "since-join"], default="full", help=HISTORY_HELP)
    for name, verb in (("join", "joins"), ("leave", "leaves")):
        p = alliance.add_parser(name, parents=[common], help=f"a nation {verb} an alliance")
        p.add_argument("id", help="alliance id (e.g. NATO)")
        p.add_argument("nation", help="ISO 3166-1 alpha-3 code (e.g. SWE)")
        p.add_argument("--date", help="when, ISO-8601 (default: now)")
    alliance.add_parser("list", parents=[common], help="alliances with their current members")

    keys = sub.add_parser("keys", help="keyring").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    keys.add_parser(
        "rotate", parents=[common], help="make a new key-encryption key current (the checkpoint key stays)"
    ).add_argument(
        "--rewrap",
        action="store_true",
        help="also re-wrap every stored data key under it, then destroy the retired KEKs "
        "(default: old KEKs stay)",
    )

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    audit.add_parser("export", parents=[common], help="write an NDJSON export").add_argument(
        "file", help="file to write (replaced)"
    )
    verify = audit.add_parser(
        "verify", parents=[common], help="verify an export offline (exit 1 if tampered)"
    )
    verify.add_argument("file", help="an NDJSON export (from audit export or GET /v1/audit/export)")
    verify.add_argument("--key", help="the broker's checkpoint public key, base64 (default: local keyring's)")
    verify.add_argument(
        "--trusted-checkpoint",
        metavar="NOTE",
        help="a file holding a checkpoint note saved earlier (the note, or JSON holding it): "
        "the export must extend it (exit 1 if it was rolled back or rewritten) (default: none)",
    )
    audit.add_parser("key", parents=[common], help="print the checkpoint public key auditors pin")
    from broker import federation_cli

    federation_cli.register_audit(audit, common)
    federation_cli.register(sub, common)

    report = sub.add_parser("report", help="reports").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    report.add_parser("erase", parents=[common], help="crypto-shred a report").add_argument(
        "id", help="report id"
    )

    collection = sub.add_parser("collection", help="TAXII collections").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    cadd = collection.add_parser("add", parents=[common], help="define a collection, print its id")
    cadd.add_argument("--title", required=True, help="its title")
    cadd.add_argument("--topics", required=True, help="comma-separated topics it serves")
    cadd.add_argument(
        "--label",
        required=True,
        help='the label writes through it get, JSON (e.g. \'{"classification": "SECRET", '
        f'"releasable_to": ["NATO"]}}\'); classification one of: {levels}',
    )
    cadd.add_argument("--description", help="(default: none)")
    collection.add_parser("list", parents=[common], help="every collection")
    collection.add_parser("remove", parents=[common], help="remove a collection").add_argument(
        "id", help="collection id"
    )

    _pki_parser(sub, common)
    return parser


def _key_options(parser: argparse.ArgumentParser, *, unchanged: bool = False) -> None:
    default = "unchanged" if unchanged else "none"
    parser.add_argument(
        "--ed25519-public-key",
        metavar="BASE64",
        help=f"raw 32-byte key that verifies the node's signed reports (default: {default})",
    )
    parser.add_argument(
        "--x25519-public-key",
        metavar="BASE64",
        help=f"raw 32-byte key payloads are sealed to for this node (default: {default})",
    )


def _pki_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``broker pki``: a development CA for mutual TLS (production brings its own CA)."""
    pkip = sub.add_parser("pki", help="development CA and certificates for mutual TLS")
    actions = pkip.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_type = {
        "choices": pki.KEY_TYPES,
        "default": pki.DEFAULT_KEY_TYPE,
        "help": f"key algorithm, one of: {', '.join(pki.KEY_TYPES)} (default: %(default)s)",
    }
    init = actions.add_parser("init-ca", parents=[common], help="create a self-signed CA in DIR")
    init.add_argument("dir", metavar="DIR", help="where to write ca.pem and ca.key")
    init.add_argument(
        "--name", default=pki.DEFAULT_CA_NAME, help="the CA's common name (default: %(default)s)"
    )
    init.add_argument("--key-type", **key_type)
    init.add_argument("--days", type=int, default=pki.CA_DAYS, help="validity in days (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace a CA already in DIR (default: refuse)")
    issue = actions.add_parser("issue", parents=[common], help="a client certificate for a node")
    issue.add_argument("node", metavar="NODE-ID", help="the node it identifies (its URI SAN)")
    server = actions.add_parser("server-cert", parents=[common], help="a server certificate for HOSTs")
    server.add_argument("hosts", metavar="HOST", nargs="+", help="DNS names and IP addresses")
    for p in (issue, server):
        p.add_argument("--ca", required=True, metavar="DIR", help="the CA directory (from init-ca)")
        p.add_argument("--out", required=True, metavar="DIR", help="where to write the .pem and .key")
        p.add_argument("--key-type", **key_type)
        p.add_argument(
            "--days", type=int, default=pki.LEAF_DAYS, help="validity in days (default: %(default)s)"
        )


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


async def _with_context(settings: Settings, work: Callable[[Context], Awaitable[Any]]) -> Any:
    """Run ``work`` on a migrated database whose keyring is the one given (``serve`` checks here
    too before it starts): a keyring that does not match the database is refused."""
    _refuse_missing_sqlite(settings.database_url)
    ctx = await Context.open_bound(settings)
    try:
        if not await db.at_head(ctx.db.engine):
            raise BrokerError(
                f"the database {_database_name(settings.database_url)} is not migrated: "
                "run `broker db upgrade` first"
            )
        await ctx.check_keyring()
        return await work(ctx)
    finally:
        await ctx.close()


def _database_name(url: str) -> str:
    """The database as a message names it: a SQLite file by its absolute path, else the URL
    without its password."""
    path = db.sqlite_file(url)
    return str(path.resolve()) if path is not None else db.redacted(url)


def _refuse_missing_sqlite(url: str) -> None:
    """Only ``db upgrade`` (and the demo) create a database: a mistyped path must not leave an
    empty file behind, and the message says which file was looked for."""
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
    ctx = await Context.open_bound(settings)
    try:
        await db.upgrade(ctx.db.engine)
        await ctx.check_keyring()  # binds a new database to this keyring
        seeded = await admin.seed_alliances(ctx, settings.alliances)
    finally:
        await ctx.close()
    return {"migrated": True, "alliances_seeded": seeded}


def _command(args: argparse.Namespace, settings: Settings) -> Callable[[Context], Awaitable[Any]]:
    key = (args.command, getattr(args, "action", None))
    date = parse_time(getattr(args, "date", None), name="date")
    table: dict[tuple[str, str | None], Callable[[Context], Awaitable[Any]]] = {
        ("node", "add"): lambda c: admin.add_node(c, _node_spec(args), actor=CLI_ACTOR),
        ("node", "list"): admin.list_nodes,
        ("node", "revoke"): lambda c: admin.revoke_node(c, args.id, actor=CLI_ACTOR),
        ("node", "rotate-token"): lambda c: admin.rotate_token(
            c, args.id, actor=CLI_ACTOR, token_days=args.token_days
        ),
        ("node", "update"): lambda c: admin.update_node(c, args.id, _node_changes(args), actor=CLI_ACTOR),
        ("alliance", "create"): lambda c: admin.create_alliance(
            c, args.id, name=args.name, history=args.history, actor=CLI_ACTOR
        ),
        ("alliance", "join"): lambda c: admin.join(c, args.id, args.nation, at=date, actor=CLI_ACTOR),
        ("alliance", "leave"): lambda c: admin.leave(c, args.id, args.nation, at=date, actor=CLI_ACTOR),
        ("alliance", "list"): admin.list_alliances,
        ("keys", "rotate"): lambda c: admin.rotate_keys(c, rewrap=args.rewrap),
        ("report", "erase"): lambda c: _erase(c, args.id),
        ("collection", "add"): lambda c: taxii_collections.add_collection(
            c, _collection_spec(args), actor=CLI_ACTOR
        ),
        ("collection", "list"): taxii_collections.list_collections,
        ("collection", "remove"): lambda c: taxii_collections.remove_collection(c, args.id, actor=CLI_ACTOR),
        ("audit", "export"): lambda c: _export(c, Path(args.file)),
        ("audit", "key"): lambda c: asyncio.sleep(0, ledger.public_key(c)),
    }
    if args.command == "peer":
        from broker import federation_cli

        return federation_cli.command(args)
    return table[key]


async def _export(ctx: Context, path: Path) -> dict[str, Any]:
    lines = 0
    try:
        fh = path.open("w")
    except OSError as exc:
        raise BrokerError(f"cannot write {path}: {exc.strerror or exc}", code="invalid_input") from exc
    with fh:
        async for line in ledger.export(ctx):
            fh.write(line)
            lines += 1
            if lines % 10_000 == 0:
                print(f"exported {lines} lines...", file=sys.stderr)
    return {"file": str(path), "lines": lines}


def _verify(args: argparse.Namespace, settings: Settings | None) -> int:
    """Offline: no database. Exit 0 when intact, 1 when tampered (naming the place), 2 when the
    key, the export or the trusted checkpoint cannot be read or is malformed (one line on stderr)."""
    public = _checkpoint_public_key(args.key, settings)
    trusted = None
    if args.trusted_checkpoint is not None:
        trusted = _read_text(Path(args.trusted_checkpoint))
    try:
        with Path(args.file).open(encoding="utf-8") as fh:
            finding = verify_export.verify(fh, public_key=public, trusted=trusted)
    except OSError as exc:
        raise BrokerError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    if finding.exit_code == 2:
        raise BrokerError(" ".join(f"cannot verify {args.file}: {finding.message}".splitlines()))
    if args.json:
        print(json.dumps(finding.__dict__, indent=2))
    else:
        print(("OK " if finding.ok else "TAMPERED ") + finding.message)
    return finding.exit_code


def _checkpoint_public_key(key: str | None, settings: Settings | None) -> bytes:
    """The raw Ed25519 key checkpoints must be signed by: ``--key`` (the key in base64, or the
    vkey ``audit key`` prints), else the local keyring's."""
    if key is None:
        if settings is None or not settings.keyring_path.exists():
            where = "" if settings is None else f" at {settings.keyring_path}"
            raise BrokerError(
                f"no keyring{where}: pass --key (the public key or vkey `broker audit key` prints)"
            )
        return notes.public_key(keyring.load(settings.keyring_path).checkpoint_key)
    if key.count("+") >= 2 and not key.endswith("="):  # a raw key in base64 ends with "="
        public = _vkey_public(key)
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
    return public


def _local_log_key(settings: Settings | None) -> tuple[str, bytes] | None:
    """This broker's audit origin and checkpoint key, when a keyring is at hand."""
    if settings is None or not settings.keyring_path.exists():
        return None
    return settings.audit_origin, notes.public_key(keyring.load(settings.keyring_path).checkpoint_key)


def _vkey_public(vkey: str) -> bytes:
    """The raw public key of a C2SP vkey ``NAME+KEYID+base64(0x01 || key)``; the key id must be
    the one its name and key make, so a vkey edited by hand is not taken at its word."""
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
    return public


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise BrokerError(f"{path} is not UTF-8 text") from None


def _keygen(args: argparse.Namespace) -> dict[str, Any]:
    """``broker node keygen``: files only. Both private keys are written before anything is
    printed, each 0600 and never over an existing file unless --force."""
    pki.node_uri(args.id)  # the id names files: a node id's characters only
    folder = Path(args.out)
    pairs = ((f"{args.id}.ed25519.key", new_signing_key()), (f"{args.id}.x25519.key", new_sealing_key()))
    if not args.force:
        for name, _key in pairs:
            if (folder / name).exists():
                raise BrokerError(f"{folder / name} exists: choose another --out, or --force to replace it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, key in pairs:
            write_atomically(folder / name, (private_b64(key) + "\n").encode(), mode=0o600, replace=True)
    except OSError as exc:
        raise BrokerError(f"cannot write the keys to {folder}: {exc.strerror or exc}") from exc
    signing, sealing = (public_b64(key) for _name, key in pairs)
    return {
        "node": args.id,
        "ed25519_private_key": str(folder / pairs[0][0]),
        "x25519_private_key": str(folder / pairs[1][0]),
        "ed25519_public_key": signing,
        "x25519_public_key": sealing,
        "flags": f"--ed25519-public-key {signing} --x25519-public-key {sealing}",
    }


def _pki_main(args: argparse.Namespace) -> int:
    """``broker pki ...`` and ``broker node keygen``: files only, no settings or database. Exit
    2 with one line on error."""
    try:
        result = _keygen(args) if args.command == "node" else _pki(args)
    except BrokerError as exc:
        return _fail(" ".join(exc.message.splitlines()), as_json=args.json, code=exc.code)
    _print(result, as_json=args.json)
    return 0


def _pki(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "init-ca":
        folder = Path(args.dir)
        ca = pki.create_ca(name=args.name, key_type=args.key_type, days=args.days)
        cert_path, key_path = pki.save_ca(folder, ca, force=args.force)
        return {
            "certificate": str(cert_path),
            "key": str(key_path),
            "subject": ca.certificate.subject.rfc4514_string(),
            "key_type": ca.key_type,
            "not_after": ca.certificate.not_valid_after_utc.isoformat(),
            "fingerprint_sha256": pki.fingerprint_sha256(pki.certificate_der(ca.certificate)),
        }
    ca_dir, out = Path(args.ca), Path(args.out)
    if args.action == "issue":
        pki.node_uri(args.node)  # a bad node id is reported before the CA is read
        ca = pki.load_ca(ca_dir)
        node = pki.issue_node_certificate(args.node, ca=ca, key_type=args.key_type, days=args.days)
        cert_path, key_path = pki.save_issued(out, args.node, node, ca_directory=ca_dir)
        return {
            "node": args.node,
            "certificate": str(cert_path),
            "key": str(key_path),
            "fingerprint_sha256": pki.fingerprint_sha256(pki.certificate_der(node.certificate)),
        }
    pki.server_names(args.hosts)
    ca = pki.load_ca(ca_dir)
    server = pki.issue_server_certificate(args.hosts, ca=ca, key_type=args.key_type, days=args.days)
    cert_path, key_path = pki.save_issued(
        out, pki.SERVER_STEM, server, chain=[ca.certificate], ca_directory=ca_dir
    )
    return {
        "hosts": args.hosts,
        "certificate": str(cert_path),
        "key": str(key_path),
        "fingerprint_sha256": pki.fingerprint_sha256(pki.certificate_der(server.certificate)),
    }


async def _erase(ctx: Context, report_id: str) -> dict[str, Any]:
    return {"id": await reports.erase(ctx, report_id, actor=CLI_ACTOR), "erased": True}


def _link_options(parser: argparse.ArgumentParser, *, unchanged: bool = False) -> None:
    default = "unchanged" if unchanged else "none"
    parser.add_argument(
        "--audience",
        help="federate links: comma-separated nations and alliance ids it receives for (e.g. NATO,FRA; "
        f"default: {default})",
    )
    parser.add_argument(
        "--origins",
        help=f"federate links: comma-separated originator nations it carries (e.g. USA; default: {default})",
    )


def _node_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if args.clearance:
        changes["clearance"] = args.clearance
    if args.caveats is not None:
        changes["caveats"] = _csv(args.caveats)
    if args.roles is not None:
        changes["roles"] = _csv(args.roles)
    for key in ("audience", "origins"):
        if getattr(args, key) is not None:
            changes[key] = _csv(getattr(args, key))
    for key in ("ed25519_public_key", "x25519_public_key"):
        if getattr(args, key):
            changes[key] = getattr(args, key)
    if args.no_certificate:
        changes["certificate"] = None
    elif args.certificate:
        changes["certificate"] = _read_certificate(args.certificate)
    if not changes:
        raise InvalidInput(
            f"nothing to change for {args.id}: give one or more of --clearance, --caveats, --roles, "
            "--audience, --origins, "
            "--ed25519-public-key, --x25519-public-key, --certificate, --no-certificate",
            code="invalid_node",
        )
    return changes


def _read_certificate(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--certificate {path}: {exc}", code="invalid_certificate") from exc


def _collection_spec(args: argparse.Namespace) -> dict[str, Any]:
    try:
        label = json.loads(args.label)
    except ValueError as exc:
        raise InvalidInput(f"--label is not JSON: {exc}", code="invalid_label") from exc
    spec: dict[str, Any] = {"title": args.title, "topics": _csv(args.topics), "label": label}
    if args.description is not None:
        spec["description"] = args.description
    return spec


def _node_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": args.id,
        "nation": args.nation,
        "clearance": args.clearance,
        "roles": _csv(args.roles),
        "caveats": _csv(args.caveats),
    }
    for key in ("audience", "origins"):
        if getattr(args, key) is not None:
            spec[key] = _csv(getattr(args, key))
    if args.ed25519_public_key:
        spec["ed25519_public_key"] = args.ed25519_public_key
    if args.x25519_public_key:
        spec["x25519_public_key"] = args.x25519_public_key
    if args.certificate:
        spec["certificate"] = _read_certificate(args.certificate)
    if args.token_days is not None:
        spec["token_days"] = args.token_days
    return spec


def _print(result: Any, *, as_json: bool) -> None:
    """JSON, or for people: ``key: value`` lines for one result and an aligned table for a list
    (lists joined with commas, nothing shown as ``-``, never a Python repr)."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if not isinstance(result, list):
        for key, value in result.items():
            print(f"{key}: {_human(value, sep=', ')}")
    elif not result:
        print("(none)")
    elif all("members" in row for row in result):  # alliance list
        for row in result:
            members = ", ".join(row["members"]) or "-"
            print(
                f"{row['id']:8} {row['name']} ({len(row['members'])} members, history {row['history']}): "
                + members
            )
    else:
        _table(result)


def _table(rows: list[dict[str, Any]]) -> None:
    """``rows`` as aligned columns under a header; a column empty in every row is left out."""
    cells = [{key: _human(value) for key, value in row.items()} for row in rows]
    columns = [
        key
        for key in dict.fromkeys(k for row in cells for k in row)
        if any(c.get(key, "-") != "-" for c in cells)
    ]
    widths = {key: max(len(key), *(len(c.get(key, "-")) for c in cells)) for key in columns}
    for line in [{key: key for key in columns}, *cells]:
        print("  ".join(f"{line.get(key, '-'):{widths[key]}}" for key in columns).rstrip())


def _human(value: Any, *, sep: str = ",") -> str:
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):  # a label: classification=SECRET releasable_to=NATO,SWE
        return " ".join(f"{k}={_human(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return sep.join(_human(v) for v in value)
    return str(value)


def _check_port(host: str, port: int) -> None:
    """Refuse at once, before anything is printed or opened, when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot listen on {host}:{port}: {exc.strerror}", code="address_in_use"
            ) from exc


def _tls_flags(tls: TlsSettings, args: argparse.Namespace) -> TlsSettings:
    """``[tls]`` from broker.toml with the ``serve`` flags given on the command line on top."""
    return TlsSettings(
        cert=Path(args.tls_cert) if args.tls_cert else tls.cert,
        key=Path(args.tls_key) if args.tls_key else tls.key,
        client_ca=tuple(Path(c) for c in args.tls_client_ca) if args.tls_client_ca else tls.client_ca,
        client_auth=args.tls_client_auth or tls.client_auth,
        insecure_http=bool(args.insecure_http) or tls.insecure_http,
    )


def _serve(settings: Settings, *, alongside: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until interrupted; ``alongside`` runs as a background task once the app starts."""
    from aiohttp import web

    from broker.app import create_app, start_serving
    from broker.demo import background

    async def _check() -> None:
        await _with_context(settings, lambda _c: asyncio.sleep(0))

    check_bind(host=settings.host, tls=settings.tls)
    ssl_context = server_context(settings.tls)
    _check_port(settings.host, settings.port)
    asyncio.run(_check())
    app = create_app(settings)
    if alongside is not None:
        job = alongside

        async def _alongside(_app: web.Application) -> AsyncIterator[None]:
            async with background(job()):
                yield

        app.cleanup_ctx.append(_alongside)
    loop = _event_loop(settings.event_loop)
    log = logging.getLogger(__name__)
    if ssl_context is None and not is_loopback(settings.host):
        log.warning(
            "INSECURE: serving plain HTTP on %s (--insecure-http): tokens and reports cross the network "
            "unencrypted",
            settings.host,
        )
    scheme = "https" if ssl_context is not None else "http"

    # Not web.run_app: its sites accept every connection with no deadline for a request head
    # (start_serving's site guards them); SIGINT and SIGTERM stop it as they stopped run_app.
    async def run() -> None:
        runner, _site = await start_serving(
            app, host=settings.host, port=settings.port, ssl_context=ssl_context
        )
        stop = asyncio.Event()
        received: list[str] = []
        running = asyncio.get_running_loop()

        def _stop(signum: signal.Signals) -> None:
            received.append(signum.name)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(signum, _stop, signum)
        # Once listening and stoppable: a supervisor that waits for this line may signal at once.
        # The port is the one bound (--port 0 picks a free one).
        port = runner.addresses[0][1] if runner.addresses else settings.port
        log.info(
            "serving on %s://%s:%s (client certificates: %s; event loop: %s)",
            scheme,
            settings.host,
            port,
            settings.tls.client_auth,
            type(loop).__module__,
        )
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        # An operator who pressed Ctrl-C, or a supervisor's log, sees that it ended and why.
        log.info("stopped on %s: open streams were closed with 1001", ", ".join(received) or "request")

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(run())


def _event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop where it is installed and not declined ("auto"), else the standard loop."""
    if choice == "auto":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _demo(args: argparse.Namespace, settings: Settings) -> None:
    from broker.demo import DEMO_NODES, demo_pki, exchange, prepare

    if args.federation:
        from broker import demo_federation

        folder = Path("var/federation" if args.dir == "var/demo" else args.dir).resolve()
        demo_federation.run(folder, port=args.port, config_dir=settings.config_dir)
        return

    folder = Path(args.dir).resolve()  # absolute: the printed paths work from any directory
    _check_demo_dir(folder, given=args.dir)
    _check_port(args.host, args.port)  # before the tokens are printed
    _clear_demo_dir(folder)
    settings = replace(
        settings,
        database_url=f"sqlite+aiosqlite:///{folder / 'broker.db'}",
        keyring_path=folder / "keyring.json",
        host=args.host,
        port=args.port,
    )
    nodes = [n["id"] for n in DEMO_NODES] + ["usa-sdk", "gbr-sdk"]
    settings = replace(settings, tls=demo_pki(folder / "pki", host=args.host, nodes=nodes))
    asyncio.run(upgrade(settings))
    certificates = folder / "pki"
    guide, live = asyncio.run(_with_context(settings, lambda c: prepare(c, settings, certificates)))
    print(guide, flush=True)
    base = f"https://{settings.host}:{settings.port}"
    _serve(settings, alongside=lambda: exchange(base, live, lambda line: print(line, flush=True)))


# Written by `broker demo` into the directory it makes: only a directory holding it is emptied.
DEMO_MARKER = ".broker-demo"
# What a demo creates in its directory, the only entries it ever removes.
DEMO_FILES = (
    "broker.db",
    "broker.db-wal",
    "broker.db-shm",
    "broker.db-journal",
    "keyring.json",
    ".keyring.json.lock",
    "pki",
)


def _check_demo_dir(folder: Path, *, given: str) -> None:
    """A demo starts afresh, but never at the cost of data it did not create: the directory must
    be new, empty, or one an earlier demo marked as its own."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise BrokerError(f"--dir {given}: {folder} is a file, not a directory", code="invalid_input")
    if (folder / DEMO_MARKER).is_file() or not any(folder.iterdir()):
        return
    raise BrokerError(
        f"--dir {given}: {folder} is not empty and was not made by broker demo (no {DEMO_MARKER} "
        "file): refusing to replace what is in it; give a new or empty directory (a demo from "
        "before the marker left none: delete its directory yourself)",
        code="invalid_input",
    )


def _clear_demo_dir(folder: Path) -> None:
    """Remove what an earlier demo left (its own files only), and mark the directory as the demo's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    (folder / DEMO_MARKER).write_text("made by `broker demo`: the next demo here replaces its files\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr and exit 2 (``audit verify``: 1 means
    tampered); ``--json`` may stand anywhere and makes errors JSON too."""
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in words
    words = [w for w in words if w != "--json"] + (["--json"] if as_json and _takes_json(words) else [])
    try:
        return _main(words, as_json=as_json)
    except BrokenPipeError:  # `broker node list | head`: the reader went away, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _takes_json(words: list[str]) -> bool:
    """Whether the subcommand accepts --json (all do but `--help` and `--version` alone)."""
    return any(not w.startswith("-") for w in words)


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="least severe log records written to stderr: debug, info, warning or error "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text, or json: one object per line (default: %(default)s)",
    )


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and the error, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _configure_logging(args: argparse.Namespace) -> None:
    """Commands that serve log at --log-level (default info); the others only warnings."""
    level = getattr(logging, str(getattr(args, "log_level", "warning")).upper())
    handler = logging.StreamHandler()
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # Alembic's "Context impl ..." lines at every schema check tell an operator nothing.
    if level > logging.DEBUG:
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)


def _fail(message: str, *, as_json: bool, code: str = "error") -> int:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return 2


def _main(words: list[str], *, as_json: bool) -> int:
    try:
        args = _parser(_help_settings(words)).parse_args(words)
    except UsageError as exc:
        return _fail(str(exc), as_json=as_json, code="usage")
    if args.command == "pki" or (args.command, getattr(args, "action", None)) == ("node", "keygen"):
        return _pki_main(args)
    _configure_logging(args)
    try:
        if args.command == "audit" and args.action == "trace":
            from broker import federation_cli

            return federation_cli.trace(args, _local_log_key(_settings_if_any()))
        if args.command == "audit" and args.action == "verify":
            # Offline: the export and the key are enough; the configuration only finds a keyring.
            return _verify(args, None if args.key is not None else _settings_if_any())
        settings = Settings.load()
        if args.command == "config":
            result: Any = _config_summary(settings)
        elif args.command == "serve":
            _serve(
                replace(
                    settings,
                    host=args.host or settings.host,
                    port=settings.port if args.port is None else args.port,
                    tls=_tls_flags(settings.tls, args),
                )
            )
            return 0
        elif args.command == "demo":
            _demo(args, settings)
            return 0
        elif args.command == "db":
            result = asyncio.run(upgrade(settings))
        else:
            result = asyncio.run(_with_context(settings, _command(args, settings)))
    except BrokerError as exc:
        return _fail(exc.message, as_json=as_json, code=exc.code if exc.code != "internal_error" else "error")
    except binascii.Error:
        return _fail("--key must be base64", as_json=as_json)
    except KeyboardInterrupt:
        return _fail("interrupted", as_json=as_json)
    except Exception as exc:  # one line for the user; the traceback in the log, at ERROR
        logging.getLogger(__name__).error("command_failed", exc_info=True)
        return _fail(_plain(exc), as_json=as_json, code="unexpected")
    _print(result, as_json=args.json)
    return 0


def _settings_if_any() -> Settings | None:
    """The configured settings, or None where there is no usable configuration."""
    try:
        return Settings.load()
    except BrokerError:
        return None


def _help_settings(words: list[str]) -> Settings | None:
    """For ``--help``: the configured settings, so the help names this deployment's
    classification levels and defaults (the built-in ones when the configuration is unusable)."""
    if "-h" not in words and "--help" not in words:
        return None
    try:
        return Settings.load()
    except BrokerError:
        return None


def _plain(exc: BaseException) -> str:
    """An unexpected error as a user can act on it: the database, the network, the disk."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"cannot listen: the address is already in use ({text})"
    if _connection_failed(exc):
        return f"database unavailable: {text}"
    return f"{type(exc).__name__}: {text}"


def _connection_failed(exc: BaseException) -> bool:
    """The error, or one it was raised from, is a connection that could not be made or was lost
    (a refused or reset socket, a name that does not resolve, a timeout, SQLSTATE class 08):
    only then is the database "unavailable"; a missing table or a bug is reported as itself."""
    seen: BaseException | None = exc
    while seen is not None:
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(seen, OSError | TimeoutError) or (
            isinstance(sqlstate, str) and sqlstate.startswith("08")
        ):
            return True
        if type(seen).__name__ in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
            return True  # asyncpg's own: the connection closed mid-operation
        seen = seen.__cause__
    return False


def _config_summary(settings: Settings) -> dict[str, Any]:
    """`broker config check`: everything loaded and valid (unknown keys are refused on load)."""
    return {
        "config_dir": str(settings.config_dir),
        "database": db.redacted(settings.database_url),
        "keyring": str(settings.keyring_path),
        "listen": f"{settings.host}:{settings.port}",
        "tls": "on" if settings.tls.enabled else "off",
        "client_certificates": settings.tls.client_auth,
        "classification_levels": list(settings.policy.levels),
        "alliances": len(settings.alliances),
        "valid": True,
    }


if __name__ == "__main__":
    sys.exit(main())
