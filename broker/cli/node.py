"""``broker node``: register, list, revoke, rotate and update nodes; make a node's key pairs."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli.common import CLI_ACTOR, ROLES, actions, csv

if TYPE_CHECKING:
    from broker.services.context import Context


def add_parsers(sub: Any, common: argparse.ArgumentParser, *, levels: str) -> None:
    node = actions(sub, "node", "nodes")
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
    _update_parser(node, common, levels=levels)


def _update_parser(node: Any, common: argparse.ArgumentParser, *, levels: str) -> None:
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


def command(args: argparse.Namespace) -> Callable[[Context], Awaitable[Any]]:
    """The database work of ``broker node ACTION`` (all but ``keygen``)."""
    from broker.services import admin

    table: dict[str, Callable[[Context], Awaitable[Any]]] = {
        "add": lambda c: admin.add_node(c, _node_spec(args), actor=CLI_ACTOR),
        "list": admin.list_nodes,
        "revoke": lambda c: admin.revoke_node(c, args.id, actor=CLI_ACTOR),
        "rotate-token": lambda c: admin.rotate_token(c, args.id, actor=CLI_ACTOR, token_days=args.token_days),
        "update": lambda c: admin.update_node(c, args.id, _node_changes(args), actor=CLI_ACTOR),
    }
    return table[args.action]


def keygen(args: argparse.Namespace) -> dict[str, Any]:
    """``broker node keygen``: files only. Both private keys are written before anything is
    printed, each 0600 and never over an existing file unless --force."""
    from broker.crypto import pki
    from broker.crypto.files import write_atomically
    from broker.crypto.keys import new_sealing_key, new_signing_key, private_b64, public_b64
    from broker.errors import BrokerError

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


def read_certificate(path: str) -> str:
    from broker.errors import InvalidInput

    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"--certificate {path}: {exc}", code="invalid_certificate") from exc


def _node_changes(args: argparse.Namespace) -> dict[str, Any]:
    from broker.errors import InvalidInput

    changes: dict[str, Any] = {}
    if args.clearance:
        changes["clearance"] = args.clearance
    if args.caveats is not None:
        changes["caveats"] = csv(args.caveats)
    if args.roles is not None:
        changes["roles"] = csv(args.roles)
    for key in ("audience", "origins"):
        if getattr(args, key) is not None:
            changes[key] = csv(getattr(args, key))
    for key in ("ed25519_public_key", "x25519_public_key"):
        if getattr(args, key):
            changes[key] = getattr(args, key)
    if args.no_certificate:
        changes["certificate"] = None
    elif args.certificate:
        changes["certificate"] = read_certificate(args.certificate)
    if not changes:
        raise InvalidInput(
            f"nothing to change for {args.id}: give one or more of --clearance, --caveats, --roles, "
            "--audience, --origins, "
            "--ed25519-public-key, --x25519-public-key, --certificate, --no-certificate",
            code="invalid_node",
        )
    return changes


def _node_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": args.id,
        "nation": args.nation,
        "clearance": args.clearance,
        "roles": csv(args.roles),
        "caveats": csv(args.caveats),
    }
    for key in ("audience", "origins"):
        if getattr(args, key) is not None:
            spec[key] = csv(getattr(args, key))
    if args.ed25519_public_key:
        spec["ed25519_public_key"] = args.ed25519_public_key
    if args.x25519_public_key:
        spec["x25519_public_key"] = args.x25519_public_key
    if args.certificate:
        spec["certificate"] = read_certificate(args.certificate)
    if args.token_days is not None:
        spec["token_days"] = args.token_days
    return spec
