"""``broker alliance``: define alliances and record nations joining and leaving them."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from broker.cli.common import CLI_ACTOR, actions

if TYPE_CHECKING:
    from broker.services.context import Context

HISTORY_HELP = (
    "full: members see every report released to the alliance; since-join: only reports created "
    "after they joined (default: %(default)s)"
)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    alliance = actions(sub, "alliance", "alliances")
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


def command(args: argparse.Namespace) -> Callable[[Context], Awaitable[Any]]:
    from broker.domain.time import parse_time
    from broker.services import alliances

    date = parse_time(getattr(args, "date", None), name="date")
    table: dict[str, Callable[[Context], Awaitable[Any]]] = {
        "create": lambda c: alliances.create_alliance(
            c, args.id, name=args.name, history=args.history, actor=CLI_ACTOR
        ),
        "join": lambda c: alliances.join(c, args.id, args.nation, at=date, actor=CLI_ACTOR),
        "leave": lambda c: alliances.leave(c, args.id, args.nation, at=date, actor=CLI_ACTOR),
        "list": alliances.list_alliances,
    }
    return table[args.action]
