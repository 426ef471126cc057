"""``broker peer add|list|remove`` and ``broker audit trace``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from broker.errors import BrokerError

CLI_ACTOR = "cli"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``peer`` command group to ``sub`` (the top-level subparsers)."""
    peer = sub.add_parser("peer", help="upstream brokers this one pulls reports from").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = peer.add_parser("add", parents=[common], help="pull from an upstream broker over a link")
    add.add_argument("name", metavar="NAME", help="what this broker calls the peer")
    add.add_argument("--url", required=True, help="the upstream broker, https://HOST:PORT")
    add.add_argument(
        "--ca", required=True, metavar="PEM", help="the CA the upstream's server certificate chains to"
    )
    add.add_argument("--cert", required=True, metavar="PEM", help="the link's client certificate")
    add.add_argument("--key", required=True, metavar="PEM", help="the link's client key (stored sealed)")
    add.add_argument(
        "--token", help="the link node's token, if the upstream wants one (stored sealed) (default: none)"
    )
    add.add_argument(
        "--origins",
        default="",
        metavar="USA,...",
        help="nations whose reports this link may carry; any other is refused (default: none)",
    )
    add.add_argument(
        "--broker-key",
        metavar="VKEY",
        help="the upstream's checkpoint vkey (default: fetched over the link once and pinned)",
    )
    peer.add_parser("list", parents=[common], help="peers with their state, lag and last error")
    peer.add_parser("remove", parents=[common], help="stop pulling from a peer").add_argument(
        "name", metavar="NAME", help="the peer to forget"
    )


def register_audit(audit: Any, common: argparse.ArgumentParser) -> None:
    """Add ``audit trace`` to ``audit`` (the audit command's subparsers)."""
    trace = audit.add_parser(
        "trace",
        parents=[common],
        help="a report's path across brokers' exports, each verified (exit 1 if not)",
    )
    trace.add_argument("report", metavar="REPORT_ID", help="the report whose path to follow")
    trace.add_argument("exports", metavar="EXPORT", nargs="+", help="NDJSON exports of the brokers")
    trace.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="BROKER=LOGKEY",
        help="a broker's checkpoint key (vkey or base64; a vkey names its broker itself); repeat "
        "(default: only the local keyring's key, for the local broker)",
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(f"cannot read {path}: {exc.strerror or exc}", code="invalid_input") from exc


def command(args: argparse.Namespace) -> Callable[[Any], Awaitable[Any]]:
    """The work of a ``peer`` command, on a Context."""
    from broker.services import peers

    if args.action == "add":
        spec = {
            "name": args.name,
            "url": args.url,
            "ca": _read(args.ca),
            "cert": _read(args.cert),
            "key": _read(args.key),
            "token": args.token,
            "origins": [o.strip() for o in args.origins.split(",") if o.strip()],
            "broker_key": args.broker_key,
        }
        return lambda ctx: peers.add_peer(ctx, spec, actor=CLI_ACTOR)
    if args.action == "list":
        return peers.list_peers
    return lambda ctx: peers.remove_peer(ctx, args.name, actor=CLI_ACTOR)


def trace(args: argparse.Namespace, local_key: tuple[str, bytes] | None) -> int:
    """Offline. Exit 0 when every export verifies and every hop is found, 1 otherwise."""
    from broker.crypto import trace as tracing

    keys: dict[str, bytes] = {}
    if local_key is not None:
        keys[local_key[0]] = local_key[1]
    for given in args.key:
        try:
            name, raw = tracing.key_of(given)
        except ValueError as exc:
            raise BrokerError(f"--key {given}: {exc}", code="usage") from None
        if name is None:
            raise BrokerError(f"--key {given}: name the broker (BROKER=KEY) or give its vkey", code="usage")
        keys[name] = raw
    for path in args.exports:
        if not Path(path).is_file():
            raise BrokerError(f"cannot read {path}", code="invalid_input")
    result = tracing.trace(args.report, [Path(p) for p in args.exports], keys)
    if args.json:
        print(json.dumps(tracing.as_json(result), indent=2))
    else:
        for number, hop in enumerate(result.hops):
            came = f" from {hop.upstream}" if hop.upstream else ""
            print(f"{number}. {hop.broker}  seq {hop.sequence}  {hop.action}{came}  event {hop.event_hash}")
        for problem in result.problems:
            print(f"PROBLEM {problem}")
        print("OK every hop found and verified" if result.ok else "NOT VERIFIED")
    return 0 if result.ok else 1
