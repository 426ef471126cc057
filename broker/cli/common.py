"""What every command group shares: the parser class, argument helpers, output and errors.

Only the standard library is imported here, so building the parser (and ``--version``) stays
fast; each group imports the services it needs when its command runs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

CLI_ACTOR = "cli"
ROLES = "publish, subscribe, audit, admin, federate (a link to another broker, alone)"


class UsageError(Exception):
    """A command line argparse cannot read: reported like every other error (one line, JSON
    with --json), not as argparse's usage text."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def port(value: str) -> int:
    """A TCP port (0 picks a free one), refused by argparse in words otherwise."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number: give 0-65535") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: give 0-65535")
    return number


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def actions(sub: Any, name: str, help_text: str) -> Any:
    """A command group (``broker NAME ACTION``) and its subparsers."""
    return sub.add_parser(name, help=help_text).add_subparsers(dest="action", required=True, metavar="ACTION")


def log_options(parser: argparse.ArgumentParser) -> None:
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


def tls_options(parser: argparse.ArgumentParser, *, client_auth_default: str) -> None:
    """The TLS flags ``serve`` takes (and any other command that serves HTTPS)."""
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="server certificate chain; enables TLS (default: [tls] cert, else none)",
    )
    parser.add_argument(
        "--tls-key", metavar="PEM", help="the server certificate's private key (default: [tls] key)"
    )
    parser.add_argument(
        "--tls-client-ca",
        action="append",
        default=None,
        metavar="PEM",
        help="alliance CA for client certificates, repeatable (default: [tls] client_ca, else none)",
    )
    parser.add_argument(
        "--tls-client-auth",
        choices=("off", "optional", "required"),
        help="client certificates: off, optional (a certificate or a token) or required "
        f"(default: {client_auth_default}, [tls] client_auth)",
    )
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="allow plain HTTP on a non-loopback address (default: refused)",
    )


def read_text(path: Path) -> str:
    from broker.errors import BrokerError

    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise BrokerError(f"{path} is not UTF-8 text") from None


def print_result(result: Any, *, as_json: bool) -> None:
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


def fail(message: str, *, as_json: bool, code: str = "error") -> int:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return 2


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


def configure_logging(args: argparse.Namespace) -> None:
    """Commands that serve log at --log-level (default info); the others only warnings."""
    level = getattr(logging, str(getattr(args, "log_level", "warning")).upper())
    handler = logging.StreamHandler()
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # Alembic's "Context impl ..." and plugin lines at every schema check tell an operator nothing.
    if level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
