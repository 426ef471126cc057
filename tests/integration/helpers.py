"""Helpers shared by the integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import event

from broker.crypto import merkle
from broker.crypto.chain import GENESIS, event_hash
from broker.services import auth, ledger, reports
from broker.services.context import Context
from tests.conftest import CONFIG


async def events(ctx: Context, **filters: Any) -> list[dict[str, Any]]:
    """Audit events as plain dicts (seq, action, decision, reason, report, node)."""
    async with ctx.db.transaction() as tx:
        found = await tx.events(limit=10_000, **filters)
    return [
        {
            "seq": e.seq,
            "action": e.draft.action,
            "decision": e.draft.decision,
            "reason": e.draft.reason,
            "report": e.draft.report,
            "node": e.draft.node,
            "actor": e.draft.actor,
        }
        for e in found
    ]


async def chain_holds(ctx: Context) -> int:
    """Check the audit hash chain and the Merkle frontier end to end; return the event count."""
    async with ctx.db.transaction() as tx:
        found = await tx.events(limit=100_000)
        head = await tx.lock_head()
    assert [e.seq for e in found] == list(range(1, len(found) + 1))
    prev = GENESIS
    for e in found:
        doc = ledger.event_json(e)
        assert doc["prev_hash"] == prev and event_hash(doc) == e.hash
        prev = e.hash
    frontier, _ = merkle.append([], [bytes.fromhex(e.hash) for e in found], 0)
    assert merkle.root_of(frontier) == merkle.root_of(head.frontier)
    return len(found)


async def report_count(ctx: Context) -> int:
    async with ctx.db.transaction() as tx:
        return len(await tx.reports_after(after=0, topics=[], limit=100_000))


def body(
    classification: str = "SECRET",
    to: list[str] | None = None,
    caveats: list[str] | None = None,
    topics: list[str] | None = None,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "label": {
            "classification": classification,
            "releasable_to": ["NATO"] if to is None else to,
            "caveats": caveats or [],
        },
        "topics": topics or ["ransomware"],
        "payload": payload or {"type": "indicator", "pattern": "[ipv4-addr:value = '198.51.100.7']"},
    }


def cli_env(url: str, keyring: Path) -> dict[str, str]:
    """The environment a `broker` subprocess needs for one test database and keyring."""
    return {
        **os.environ,
        "BROKER_DATABASE_URL": url,
        "BROKER_CONFIG_DIR": str(CONFIG),
        "BROKER_KEYRING": str(keyring),
    }


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m broker ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def statements_seen(ctx: Context) -> list[str]:
    """From now on, the first word of every statement ``ctx``'s engine sends (WITH, SELECT...)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(ctx.db.engine.sync_engine, "before_cursor_execute", before)
    return seen


async def publish_acts(ctx: Context, token: str, count: int) -> list[reports.PublishAct]:
    """``count`` checked publish acts of ``body()`` for the node holding ``token``, as the
    group commit hands them to ``reports.store_publishes``."""
    node = await auth.authenticate(ctx, token, source="test", rechecked=True)
    directory = await ctx.cached_directory()
    return [
        reports.PublishAct(
            node=node,
            sub=reports.parse_submission(body(), ctx=ctx, known_alliances=directory.alliances),
            idempotency_key=None,
        )
        for _ in range(count)
    ]
