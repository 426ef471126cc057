"""``broker keys``, ``broker report`` and ``broker collection``: the keyring, reports and TAXII
collections."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from broker.cli.common import CLI_ACTOR, actions, csv

if TYPE_CHECKING:
    from broker.services.context import Context


def add_parsers(sub: Any, common: argparse.ArgumentParser, *, levels: str) -> None:
    actions(sub, "keys", "keyring").add_parser(
        "rotate", parents=[common], help="make a new key-encryption key current (the checkpoint key stays)"
    ).add_argument(
        "--rewrap",
        action="store_true",
        help="also re-wrap every stored data key under it, then destroy the retired KEKs "
        "(default: old KEKs stay)",
    )
    actions(sub, "report", "reports").add_parser(
        "erase", parents=[common], help="crypto-shred a report"
    ).add_argument("id", help="report id")
    collection = actions(sub, "collection", "TAXII collections")
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


def command(args: argparse.Namespace) -> Callable[[Context], Awaitable[Any]]:
    from broker.services import admin, reports
    from broker.services import collections as taxii_collections

    async def erase(ctx: Context) -> dict[str, Any]:
        return {"id": await reports.erase(ctx, args.id, actor=CLI_ACTOR), "erased": True}

    table: dict[tuple[str, str], Callable[[Context], Awaitable[Any]]] = {
        ("keys", "rotate"): lambda c: admin.rotate_keys(c, rewrap=args.rewrap),
        ("report", "erase"): erase,
        ("collection", "add"): lambda c: taxii_collections.add_collection(
            c, _collection_spec(args), actor=CLI_ACTOR
        ),
        ("collection", "list"): taxii_collections.list_collections,
        ("collection", "remove"): lambda c: taxii_collections.remove_collection(c, args.id, actor=CLI_ACTOR),
    }
    return table[(args.command, args.action)]


def _collection_spec(args: argparse.Namespace) -> dict[str, Any]:
    from broker.errors import InvalidInput

    try:
        label = json.loads(args.label)
    except ValueError as exc:
        raise InvalidInput(f"--label is not JSON: {exc}", code="invalid_label") from exc
    spec: dict[str, Any] = {"title": args.title, "topics": csv(args.topics), "label": label}
    if args.description is not None:
        spec["description"] = args.description
    return spec
