"""``python -m broker.witness ...``: the same commands as ``broker witness ...``, without loading
the broker's own command line (a witness restarts in about half the time)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from broker.errors import BrokerError
from broker.witness.cli import register, run


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output (also for errors)")
    parser = argparse.ArgumentParser(prog="broker")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    args = parser.parse_args(["witness", *(sys.argv[1:] if argv is None else argv)])
    level = str(getattr(args, "log_level", "warning")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return run(args)
    except BrokerError as exc:
        error = {"error": {"code": exc.code, "message": exc.message}}
        print(json.dumps(error) if args.json else f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
