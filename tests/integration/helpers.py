"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import multiprocessing.forkserver
import os
import re
import runpy
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest
from sqlalchemy import event

import broker.cli
from broker.crypto import merkle
from broker.crypto.chain import GENESIS, event_hash
from broker.services import auth, ledger, publishing
from broker.services.context import Context
from tests.conftest import CONFIG, ROOT

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


# What the broker's processes import, imported once by the fork server that forks them: this
# module (the broker's command line, services and storage, and this module's function that a
# forked process runs), the web application, TLS, and the witness's server.
FORK_PRELOAD = ("tests.integration.helpers", "broker.app", "broker.web.tls", "broker.witness.server")


def fork_server() -> ForkServerContext:
    """multiprocessing's fork server, which imports :data:`FORK_PRELOAD` once (when this worker
    first starts a process from it) and forks every process from there: a process of its own,
    without a new interpreter importing the broker again."""
    context = multiprocessing.get_context("forkserver")
    _start_fork_server()
    return context


@functools.cache
def _start_fork_server() -> None:
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(FORK_PRELOAD))
    # The server finds the preloaded modules on the sys.path of a new interpreter, whose first
    # entry is its working directory: the project's, whatever directory a test has moved to.
    with contextlib.chdir(ROOT):
        multiprocessing.forkserver.ensure_running()


def _forked_main(
    args: list[str], env: dict[str, str], cwd: str | None, stdio: list[Connection | None]
) -> None:
    """In the forked process: its standard streams, environment and working directory, then
    ``python ARGS`` for ``-m MODULE ...`` and ``-c CODE ...``, as the interpreter runs them."""
    for fd, end in enumerate(stdio):
        if end is None:
            end_fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(end_fd, fd)
            os.close(end_fd)
        else:
            os.dup2(end.fileno(), fd)
            end.close()
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 -- the process's stdin, as Python opens it
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    option, target, *rest = args
    if option == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        assert option == "-c", args
        sys.argv = ["-c", *rest]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102


class Forked:
    """``[sys.executable, *args]`` as :class:`subprocess.Popen` runs it (the same keyword
    arguments, attributes and methods, as far as the tests use them), for ``-m MODULE ...`` and
    ``-c CODE ...``: a process of its own, which kill -9 kills alone and which races other
    processes on the same files and databases, forked from :func:`fork_server`.

    It differs from a new interpreter in its start-up only: it imports nothing the fork server
    imported, and its ``sys.path`` is this process's (``python -m`` would put the working
    directory first). A test of those starts the real binary (:func:`run_cli`)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        text: bool = False,
    ) -> None:
        self.args = [sys.executable, *args]
        self.returncode: int | None = None
        self.text = text
        ours: list[int] = []  # this process's ends of the pipes
        theirs: list[int | None] = []  # the child's ends, closed here once it has them
        for fd, how in enumerate((stdin, stdout, stderr)):
            if how == subprocess.PIPE:
                read, write = os.pipe()
                ours.append(write if fd == 0 else read)
                theirs.append(read if fd == 0 else write)
            elif how == subprocess.STDOUT:
                assert fd == 2, "only stderr goes to stdout"
                theirs.append(None if theirs[1] is None else os.dup(theirs[1]))
            elif how == subprocess.DEVNULL:
                theirs.append(None)
            else:
                assert how is None, how
                theirs.append(os.dup(fd) if fd else None)  # this process's stdout and stderr
        ends = [None if fd is None else Connection(fd) for fd in theirs]
        self._process = fork_server().Process(
            target=_forked_main,
            args=(
                list(args),
                dict(os.environ if env is None else env),
                None if cwd is None else str(cwd),
                ends,
            ),
            daemon=True,  # one left running when this worker exits is terminated
        )
        try:
            self._process.start()
        finally:
            for end in ends:
                if end is not None:
                    end.close()
        assert self._process.pid is not None
        self.pid: int = self._process.pid
        mode = "" if text else "b"
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        for fd, how in enumerate((stdin, stdout, stderr)):
            if how == subprocess.PIPE:
                pipe = os.fdopen(ours.pop(0), ("w" if fd == 0 else "r") + mode)
                setattr(self, ("stdin", "stdout", "stderr")[fd], pipe)
        self._output: dict[int, list[bytes]] = {}

    def poll(self) -> int | None:
        if self.returncode is None and self._process.exitcode is not None:
            self.returncode = self._process.exitcode
            self._process.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._process.join(timeout)
            if self.poll() is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Close stdin, read stdout and stderr to their ends (from the pipes, as Popen does),
        wait for the exit: what they held. TimeoutExpired leaves what was read for the next call."""
        if self.stdin is not None and not self.stdin.closed:
            self.stdin.close()
        pipes = [p for p in (self.stdout, self.stderr) if p is not None and not p.closed]
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            for pipe in pipes:
                self._output.setdefault(pipe.fileno(), [])
                selector.register(pipe.fileno(), selectors.EVENT_READ, pipe)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                for key, _events in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self._output[key.fd].append(chunk)
                    else:
                        selector.unregister(key.fd)
        found = []
        for pipe in (self.stdout, self.stderr):
            if pipe is None:
                found.append(None)
                continue
            data = b"".join(self._output.pop(pipe.fileno(), []))
            pipe.close()
            found.append(data.decode().replace("\r\n", "\n").replace("\r", "\n") if self.text else data)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return found[0], found[1]

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *_exc: object) -> None:
        """Popen's: close the pipes, wait for the exit."""
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        self.wait()


def run_forked(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """:func:`subprocess.run` of ``[sys.executable, *args]`` through :class:`Forked`, text and
    output captured; killed (and TimeoutExpired) after ``timeout``."""
    proc = Forked(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.wait(), out, err)
