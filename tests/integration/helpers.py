"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event

import broker.cli
from broker.crypto import merkle
from broker.crypto.chain import GENESIS, event_hash
from broker.services import auth, ledger, publishing
from broker.services.context import Context
from tests.conftest import CONFIG

if TYPE_CHECKING:
    from tests.integration.conftest import Api


async def eventually(check: Callable[[], Awaitable[bool]], *, seconds: float = 10.0) -> None:
    """Until ``check``, an observation through a public interface (``/metrics``, an HTTP answer,
    the audit log), holds; fail after ``seconds``. The pause between two looks paces the polling
    of a state nothing announces; it synchronises nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        assert loop.time() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.02)


STREAM = re.compile(r'^broker_stream_queue_frames\{node="([^"]+)",stream="([^"]*)"\} \S+$', re.MULTILINE)


def open_streams(metrics_text: str) -> list[str]:
    """The node of every stream a broker serves, as its ``/metrics`` shows them: a stream is
    there from when it runs until its handler ends."""
    return sorted(node for node, _stream in STREAM.findall(metrics_text))


async def streaming(api: Api, auditor: str, nodes: Sequence[str], *, seconds: float = 10.0) -> None:
    """Until ``api`` serves open streams to exactly ``nodes`` (one entry per stream), as its
    ``/metrics`` shows them to ``auditor``: a stream is live before anything is published."""

    async def served() -> bool:
        status, text = await api.get("/metrics", auditor)
        assert status == 200, text
        return open_streams(text) == sorted(nodes)

    await eventually(served, seconds=seconds)


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
    """Run `python -m broker ARGS` to completion: for what only the real binary shows (its exit
    status, its start-up, what its logging writes to stderr); otherwise use :class:`Cli`."""
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class Ran:
    """What one command returned and printed (the fields of ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str

    def __iter__(self) -> Iterator[Any]:
        """``code, out, err = cli(...)``."""
        return iter((self.returncode, self.stdout, self.stderr))


class Cli:
    """`broker ARGS` in this process, through ``broker.cli.main(argv)``: what a subprocess would
    return and print, without starting Python and importing the broker for every command.

    The command reads this process's environment and working directory, which :meth:`use` and
    ``monkeypatch`` set for the test only. ``main`` runs an event loop of its own: an async test
    awaits :meth:`run`, which calls it in a thread."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def use(self, url: str | None = None, keyring: Path | None = None, **more: str) -> Cli:
        """Only these ``BROKER_*`` variables: the database, the project's configuration and the
        keyring, as :func:`cli_env` gives them, and ``more`` by name without the prefix
        (``CONFIG_DIR=...``); none at all when nothing is given."""
        for name in [n for n in os.environ if n.startswith("BROKER_")]:
            self.monkeypatch.delenv(name)
        chosen = {}
        if url is not None:
            assert keyring is not None, "a database comes with its keyring"
            chosen = {"DATABASE_URL": url, "CONFIG_DIR": str(CONFIG), "KEYRING": str(keyring)}
        for name, value in {**chosen, **more}.items():
            self.monkeypatch.setenv(f"BROKER_{name}", value)
        return self

    def like(self, env: dict[str, str]) -> Cli:
        """The ``BROKER_*`` variables of ``env`` (another process's environment), and only those."""
        return self.use(**{k.removeprefix("BROKER_"): v for k, v in env.items() if k.startswith("BROKER_")})

    def __call__(self, *argv: str) -> Ran:
        self.capsys.readouterr()
        try:
            code = broker.cli.main(list(argv))
        except SystemExit as exc:  # argparse's --help and --version
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
        seen = self.capsys.readouterr()
        return Ran(code, seen.out, seen.err)

    async def run(self, *argv: str) -> Ran:
        """The command from an async test: in a thread, as ``main`` runs an event loop of its own."""
        return await asyncio.to_thread(self, *argv)

    async def run_ok(self, *argv: str) -> Ran:
        """:meth:`ok` from an async test."""
        return await asyncio.to_thread(self.ok, *argv)

    def ok(self, *argv: str) -> Ran:
        """The command, which must exit 0."""
        done = self(*argv)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done

    def refused(self, *argv: str) -> str:
        """The command, which must exit 2 with nothing on stdout and one line on stderr: that line."""
        done = self(*argv)
        assert done.returncode == 2 and done.stdout == "", (argv, done.stdout, done.stderr)
        return one_line(done.stderr)


def one_line(stderr: str) -> str:
    """The one line an error prints (no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def statements_seen(ctx: Context) -> list[str]:
    """From now on, the first word of every statement ``ctx``'s engine sends (WITH, SELECT...)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(ctx.db.engine.sync_engine, "before_cursor_execute", before)
    return seen


async def publish_acts(ctx: Context, token: str, count: int) -> list[publishing.PublishAct]:
    """``count`` checked publish acts of ``body()`` for the node holding ``token``, as the
    group commit hands them to ``publishing.store_publishes``."""
    node = await auth.authenticate(ctx, token, source="test", rechecked=True)
    directory = await ctx.cached_directory()
    return [
        publishing.PublishAct(
            node=node,
            sub=publishing.parse_submission(body(), ctx=ctx, known_alliances=directory.alliances),
            idempotency_key=None,
        )
        for _ in range(count)
    ]


async def keep_alive_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET on an open connection: its status (the body is read and dropped)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(10):
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
    return status
