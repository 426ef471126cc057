"""The ``broker`` command line: one module per command group, each importing the services it
needs only when its command runs. Every command accepts ``--json`` for machine-readable output.

Exit codes: 0 done; 2 any failure, as one line on stderr (JSON with ``--json``); ``audit
verify`` exits 1 when the export was tampered with."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from broker import __version__
from broker.cli.common import Parser, UsageError, configure_logging, fail, print_result

if TYPE_CHECKING:
    from broker.services.context import Context
    from broker.settings import Settings


def build_parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line. Help texts name valid values and defaults; the classification levels
    and the server's defaults are those of ``settings`` (the built-in ones when not given)."""
    from broker.cli import alliance, audit, database, node, peer, pki, serve, store
    from broker.settings import Settings

    settings = settings or Settings()
    levels = ", ".join(settings.policy.levels)
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output (also for errors)")
    parser = Parser(
        prog="broker",
        description="Alliance Broker. Settings come from BROKER_CONFIG_DIR (default: ./config), "
        "BROKER_DATABASE_URL and BROKER_KEYRING.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("config", help="configuration").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    ).add_parser("check", parents=[common], help="load and validate the configuration, print a summary")
    database.add_parsers(sub, common)
    serve.add_parsers(sub, common, settings=settings)
    node.add_parsers(sub, common, levels=levels)
    alliance.add_parsers(sub, common)
    store.add_parsers(sub, common, levels=levels)
    audit.add_parsers(sub, common)
    pki.add_parsers(sub, common)
    peer.register(sub, common)
    from broker.witness import cli as witness_cli  # its own program beside the broker

    witness_cli.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr and exit 2 (``audit verify``: 1 means
    tampered); ``--json`` may stand anywhere and makes errors JSON too."""
    words = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in words
    words = [w for w in words if w != "--json"] + (["--json"] if as_json and _takes_json(words) else [])
    if words == ["--version"]:  # answered before the parser and its imports are built
        print(f"broker {__version__}")
        return 0
    try:
        return _main(words, as_json=as_json)
    except BrokenPipeError:  # `broker node list | head`: the reader went away, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _takes_json(words: list[str]) -> bool:
    """Whether the subcommand accepts --json (all do but `--help` and `--version` alone)."""
    return any(not w.startswith("-") for w in words)


def _main(words: list[str], *, as_json: bool) -> int:
    try:
        args = build_parser(_help_settings(words)).parse_args(words)
    except UsageError as exc:
        return fail(str(exc), as_json=as_json, code="usage")
    if args.command == "pki" or (args.command, getattr(args, "action", None)) == ("node", "keygen"):
        return _offline(args)
    configure_logging(args)
    try:
        result = _run(args)
        if result is None:
            return 0
        if isinstance(result, int):
            return result
    except KeyboardInterrupt:
        return fail("interrupted", as_json=as_json)
    except Exception as exc:  # one line for the user; the traceback in the log, at ERROR
        return _failed(exc, as_json=as_json)
    print_result(result, as_json=args.json)
    return 0


def _run(args: argparse.Namespace) -> Any:
    """Run the command: None when it printed nothing to print (serve, demo), an int for an exit
    status of its own, else the result to print."""
    import asyncio

    from broker.cli import alliance, audit, database, node, peer, serve, store
    from broker.settings import Settings

    if args.command == "witness":  # no broker configuration: a witness runs apart from it
        from broker.witness.cli import run

        return run(args)
    if args.command == "audit" and args.action == "trace":
        return peer.trace(args, audit.local_log_key(_settings_if_any()))
    if args.command == "audit" and args.action == "verify":
        # Offline: the export and the key are enough; the configuration only finds a keyring.
        return audit.verify(args, None if args.key is not None else _settings_if_any())
    settings = Settings.load()
    if args.command == "config":
        return _config_summary(settings)
    if args.command == "serve":
        return serve.serve_command(args, settings)
    if args.command == "demo":
        return serve.demo(args, settings)
    if args.command == "db":
        return asyncio.run(database.upgrade(settings))
    groups: dict[str, Callable[[argparse.Namespace], Callable[[Context], Awaitable[Any]]]] = {
        "node": node.command,
        "alliance": alliance.command,
        "audit": audit.command,
        "peer": peer.command,
        "keys": store.command,
        "report": store.command,
        "collection": store.command,
    }
    work = groups[args.command](args)
    return asyncio.run(database.with_context(settings, work))


def _offline(args: argparse.Namespace) -> int:
    """``broker pki ...`` and ``broker node keygen``: files only, no settings or database. Exit
    2 with one line on error."""
    from broker.cli import node, pki
    from broker.errors import BrokerError

    try:
        result = node.keygen(args) if args.command == "node" else pki.run(args)
    except BrokerError as exc:
        return fail(" ".join(exc.message.splitlines()), as_json=args.json, code=exc.code)
    print_result(result, as_json=args.json)
    return 0


def _failed(exc: Exception, *, as_json: bool) -> int:
    import binascii

    from broker.errors import BrokerError

    if isinstance(exc, BrokerError):
        return fail(exc.message, as_json=as_json, code=exc.code if exc.code != "internal_error" else "error")
    if isinstance(exc, binascii.Error):
        return fail("--key must be base64", as_json=as_json)
    logging.getLogger(__name__).error("command_failed", exc_info=exc)
    return fail(_plain(exc), as_json=as_json, code="unexpected")


def _settings_if_any() -> Settings | None:
    """The configured settings, or None where there is no usable configuration."""
    from broker.errors import BrokerError
    from broker.settings import Settings

    try:
        return Settings.load()
    except BrokerError:
        return None


def _help_settings(words: list[str]) -> Settings | None:
    """For ``--help``: the configured settings, so the help names this deployment's
    classification levels and defaults (the built-in ones when the configuration is unusable)."""
    if "-h" not in words and "--help" not in words:
        return None
    return _settings_if_any()


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
    from broker.storage import db

    db.check_url(settings.database_url)  # a URL the broker cannot use is not a valid configuration
    return {
        "config_dir": str(settings.config_dir),
        "database": db.redacted(settings.database_url),
        "keyring": str(settings.keyring_path),
        "listen": f"{settings.host}:{settings.port}",
        "tls": "on" if settings.tls.enabled else "off",
        "client_certificates": settings.tls.client_auth,
        "classification_levels": list(settings.policy.levels),
        "alliances": len(settings.alliances),
        "settings": {key: value for key, value in settings.effective().items() if key != "database.url"},
        "valid": True,
    }
