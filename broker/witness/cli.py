"""``broker witness init|serve|show``: a C2SP tlog-witness that any member nation can run beside
(not inside) the broker it watches. The heavy imports (aiohttp) happen in ``serve`` only."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import signal
from pathlib import Path
from typing import Any

from broker.cli.common import log_options, port
from broker.crypto import cosignature
from broker.errors import BrokerError
from broker.settings import TlsSettings
from broker.witness import directory

log = logging.getLogger("broker.witness")
DEFAULT_PORT = 7380


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``witness init|serve|show`` to the ``broker`` command's subparsers."""
    actions = sub.add_parser(
        "witness", help="a C2SP tlog-witness that cosigns a log's checkpoints"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init", parents=[common], help="make a witness key and state in DIR, print its vkey"
    )
    init.add_argument("--dir", required=True, type=Path, help="a new or empty directory for the witness")
    init.add_argument("--name", required=True, help="the witness's key name, e.g. witness.fra.example/w1")
    show = actions.add_parser("show", parents=[common], help="the witness's vkey, logs and refused requests")
    show.add_argument("--dir", required=True, type=Path, help="the witness's directory")
    show.add_argument("--refused", type=int, default=20, metavar="N", help="newest refusals (default: 20)")
    serve = actions.add_parser("serve", parents=[common], help="answer POST /add-checkpoint")
    serve.add_argument("--dir", required=True, type=Path, help="the witness's directory (from init)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port, default=DEFAULT_PORT, help="port (default: %(default)s; 0: any)")
    serve.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="VKEY",
        dest="logs",
        help="a log's vkey, type 0x01 (repeatable; required)",
    )
    _serve_options(serve)


def _serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--tls-cert", metavar="PEM", help="server certificate chain; enables TLS (default: none)"
    )
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (default: none)")
    serve.add_argument(
        "--tls-client-ca",
        action="append",
        default=[],
        metavar="PEM",
        help="CA for client certificates (default: none)",
    )
    serve.add_argument(
        "--tls-client-auth",
        choices=("off", "optional", "required"),
        default="off",
        help="client certificates: off, optional or required (default: %(default)s)",
    )
    serve.add_argument(
        "--insecure-http", action="store_true", help="allow plain HTTP off loopback (default: refused)"
    )
    log_options(serve)


def run(args: argparse.Namespace) -> int:
    """Run a ``broker witness`` command; BrokerError for anything the operator must fix."""
    if args.action == "init":
        identity = directory.init(args.dir, name=args.name)
        _print({"name": identity.name, "vkey": identity.vkey}, as_json=args.json)
    elif args.action == "show":
        _print(_show(args.dir, args.refused), as_json=args.json)
    else:
        _serve(args)
    return 0


def _print(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, list | dict) else value}")


def _show(folder: Path, limit: int) -> dict[str, Any]:
    identity, state = directory.load(folder)
    try:
        refused = [
            {
                "origin": e.origin,
                "received_at": e.received_at,
                "status": e.status,
                "reason": e.reason,
                "body": base64.b64encode(e.body).decode(),
                "fork": e.fork,
            }
            for e in state.evidence(max(limit, 0))
        ]
        return {"name": identity.name, "vkey": identity.vkey, "logs": state.logs(), "refused": refused}
    finally:
        state.close()


def _log_keys(vkeys: list[str]) -> list[cosignature.VerifierKey]:
    keys = []
    for vkey in vkeys:
        try:
            keys.append(cosignature.parse_vkey(vkey, kind=cosignature.NOTE_TYPE))
        except cosignature.CosignatureError as exc:
            raise BrokerError(
                f"--log {vkey[:80]}: {exc} (a log's vkey has type 0x01)", code="config_error"
            ) from None
    return keys


def _serve(args: argparse.Namespace) -> None:
    from broker.web.tls import check_bind, server_context
    from broker.witness import protocol, server

    tls = TlsSettings(
        cert=Path(args.tls_cert) if args.tls_cert else None,
        key=Path(args.tls_key) if args.tls_key else None,
        client_ca=tuple(Path(c) for c in args.tls_client_ca),
        client_auth=args.tls_client_auth,
        insecure_http=args.insecure_http,
    )
    logs = protocol.logs_by_origin(_log_keys(args.logs))
    check_bind(host=args.host, tls=tls)
    ssl_context = server_context(tls)
    identity, state = directory.load(args.dir)
    witness = server.Witness(identity, logs, state)

    async def main() -> None:
        runner, bound = await server.start(witness, host=args.host, port=args.port, ssl_context=ssl_context)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        scheme = "https" if ssl_context is not None else "http"
        log.info("witness %s (%s) for logs %s", identity.name, identity.vkey, ", ".join(sorted(logs)))
        log.info("serving on %s://%s:%s", scheme, args.host, bound)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        log.info("stopped")

    try:
        asyncio.run(main())
    finally:
        witness.close()
