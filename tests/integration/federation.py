"""The federation harness: certificates from `broker pki`'s code, a test double that speaks the
stream protocol as an upstream broker (for hostile-peer tests), and helpers to make frames."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import runpy
import secrets
import shutil
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from broker.crypto import attest, pki, signing
from broker.crypto.keys import new_signing_key, public_b64
from broker.domain.canonical import canonical
from broker.services import admin, peers
from broker.services.context import Context
from broker.settings import Settings
from broker.waiting import wait_event
from tests.conftest import CONFIG

CREATED = "2026-11-25T12:00:00+00:00"


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and client certificates, as files."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    def server(self) -> tuple[Path, Path]:
        return self.folder / "server.pem", self.folder / "server.key"

    def client(self, node_id: str) -> tuple[Path, Path]:
        ca = pki.load_ca(self.folder / "ca")
        return pki.save_issued(self.folder, node_id, pki.issue_node_certificate(node_id, ca=ca))


def make_pki(folder: Path) -> Pki:
    ca = pki.create_ca()
    pki.save_ca(folder / "ca", ca)
    (folder / "ca.pem").write_bytes(ca.certificate_pem())
    pki.save_issued(folder, "server", pki.issue_server_certificate(["127.0.0.1", "localhost"], ca=ca))
    return Pki(folder)


def server_context(found: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(found.ca))
    context.load_cert_chain(*(str(p) for p in found.server()))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class Upstream:
    """An upstream broker's identity: its name and checkpoint key (raw Ed25519 private)."""

    name: str
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def vkey(self) -> str:
        return attest.vkey_of(name=self.name, private_key=self.key)


@dataclass
class Originator:
    node: str
    nation: str
    key: Any = field(default_factory=new_signing_key)

    @property
    def public(self) -> str:
        return public_b64(self.key)


def report_frame(
    upstream: Upstream,
    originator: Originator,
    *,
    sequence: int,
    label: dict[str, Any],
    payload: dict[str, Any] | None = None,
    report_id: str | None = None,
    created: str = CREATED,
    topics: list[str] | None = None,
) -> dict[str, Any]:
    """A well-formed frame as an origin broker sends it: A0 over the report's facts."""
    payload = payload or {
        "type": "indicator",
        "pattern": f"[ipv4-addr:value = '198.51.100.{sequence % 250}']",
    }
    label_json = json.dumps(label)
    message = signing.signing_message(canonical_label=canonical(label), canonical_payload=canonical(payload))
    report: dict[str, Any] = {
        "id": report_id or str(uuid.uuid4()),
        "sequence": sequence,
        "originator": {"node": originator.node, "nation": originator.nation},
        "label": label,
        "topics": ["ransomware"] if topics is None else topics,
        "created": created,
        "signature": signing.sign(private_key=originator.key, message=message),
        "payload": payload,
    }
    facts = attest.report_facts(
        report_id=report["id"],
        originator_node=originator.node,
        originator_nation=originator.nation,
        label_json=label_json,
        topics=report["topics"],
        created=created,
        payload=payload,
        signature=report["signature"],
    )
    a0 = attest.attest_origin(
        broker=upstream.name,
        sequence=sequence,
        event_hash=secrets.token_hex(32),
        facts=facts,
        originator_key=originator.public,
        private_key=upstream.key,
    )
    return {
        "type": "report",
        "report": report,
        "federation": {"label_json": label_json, "attestations": [a0]},
    }


class StreamDouble:
    """A loopback TLS server answering ``GET /v1/stream`` with the frames it is given (from
    after the requested sequence), recording acks and the query of each connection."""

    def __init__(self, found: Pki, *, together: int = 1) -> None:
        """``together``: connections that must be open before any is sent a frame (several
        broker processes pulling at once)."""
        self.frames: list[dict[str, Any]] = []
        self.acks: list[int] = []
        self.queries: list[dict[str, str]] = []
        self.acked = asyncio.Event()
        self._together = together
        self._all_open = asyncio.Event()
        self._pki = found
        self._runner: web.AppRunner | None = None
        self._open: set[web.WebSocketResponse] = set()
        self.port = 0

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        self.queries.append(dict(request.query))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._open.add(ws)
        if len(self.queries) >= self._together:
            self._all_open.set()
        await self._all_open.wait()
        after = int(request.query.get("after", "0"))
        for frame in self.frames:
            sequence = frame.get("report", {}).get("sequence", after + 1)
            if sequence > after:
                await ws.send_str(json.dumps(frame))
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(int(json.loads(message.data)["sequence"]))
                self.acked.set()
        return ws

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/stream", self._stream)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=server_context(self._pki))
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return f"https://127.0.0.1:{self.port}"

    async def wait_acked(self, sequence: int, seconds: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while sequence not in self.acks:
            self.acked.clear()
            assert await wait_event(self.acked, max(deadline - loop.time(), 0.0)), f"no ack of {sequence}"

    async def stop(self) -> None:
        for ws in list(self._open):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()


async def import_frames(
    ctx: Context,
    folder: Path,
    frames: list[dict[str, Any]],
    *,
    vkey: str,
    name: str = "usa",
    origins: tuple[str, ...] = ("USA",),
) -> list[int]:
    """Peer ``name`` (pinned to ``vkey``, carrying ``origins``) at ``ctx``'s broker, fed
    ``frames`` by a double until the last is acked; the peer is removed again. The acks the
    double received."""
    found = make_pki(folder)
    double = StreamDouble(found)
    double.frames = frames
    url = await double.start()
    cert, key = found.client("nato-link")
    spec = {"name": name, "url": url, "ca": found.ca.read_text(), "cert": cert.read_text()}
    try:
        await peers.add_peer(
            ctx, {**spec, "key": key.read_text(), "origins": list(origins), "broker_key": vkey}, actor="test"
        )
        await double.wait_acked(frames[-1]["report"]["sequence"])
        return list(double.acks)
    finally:
        await double.stop()
        await peers.remove_peer(ctx, name, actor="test")


# -- brokers as processes ------------------------------------------------------------------

# `python -m broker serve` spends most of its start importing the broker. Each broker process is
# forked from a server process that imported it once (multiprocessing's forkserver: no thread and
# no event loop in it yet), then runs `python -m broker ARGS` itself: what runs is the command,
# and it is a process of its own, killed and restarted as one.
_PRELOAD = ["broker.app", "broker.cli", "broker.cli.serve", "tests.integration.federation"]
_LAUNCHER = multiprocessing.get_context("forkserver")


def _run_broker(argv: list[str], env: dict[str, str], stderr: str, stdout: str = os.devnull) -> None:
    """In the forked process: ``python -m broker ARGV`` with ``env`` as its whole environment,
    stdout and stderr appended to the files named."""
    for fd, path in ((1, stdout), (2, stderr)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["broker", *argv]
    runpy.run_module("broker", run_name="__main__", alter_sys=True)


@dataclass
class BrokerProcess:
    """One `broker serve` process with its own database, keyring, config dir (audit origin =
    its federation name) and TLS (server certificate from the shared development CA)."""

    name: str
    folder: Path
    database_url: str
    found: Pki
    port: int = 0
    proc: BaseProcess | None = None

    @property
    def origin(self) -> str:
        return f"{self.name}.example/broker"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BROKER_CONFIG_DIR": str(self.folder / "config"),
            "BROKER_DATABASE_URL": self.database_url,
            "BROKER_KEYRING": str(self.folder / "keyring.json"),
        }

    def settings(self) -> Settings:
        return Settings.load(env=self.env)

    def prepare(self) -> None:
        shutil.copytree(CONFIG, self.folder / "config")
        toml = self.folder / "config" / "broker.toml"
        text = toml.read_text().replace(
            'origin = "alliance-broker.example/audit"', f'origin = "{self.origin}"'
        )
        toml.write_text(text)
        self.port = free_port()

    def start(self) -> None:
        cert, key = self.found.server()
        argv = [
            *("serve", "--port", str(self.port)),
            *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(self.found.ca)),
            *("--tls-client-auth", "optional"),
        ]
        _LAUNCHER.set_forkserver_preload(_PRELOAD)  # read when the server starts, once per worker
        log = str(self.folder / "stderr.log")
        # daemon: a worker that ends (a test failed mid-way) ends the brokers it left running
        self.proc = _LAUNCHER.Process(target=_run_broker, args=(argv, self.env, log), daemon=True)
        self.proc.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.exitcode is None

    async def healthy(self, seconds: float = 30.0) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.found.ca))
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.running, f"{self.name} exited"
                try:
                    async with session.get(f"{self.url}/v1/health", ssl=context) as response:
                        if response.status == 200:
                            found: dict[str, Any] = await response.json()
                            return found
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"{self.name} did not become healthy"
                await asyncio.sleep(0.05)  # a process starting has no event to wait on

    def kill(self) -> None:
        if self.proc is not None and self.running:
            self.proc.kill()
            self.proc.join(10)

    def stop(self) -> None:
        stop_all([self])


def stop_all(brokers: Iterable[BrokerProcess]) -> None:
    """SIGTERM to every broker at once, then wait for each (SIGKILL past 15 s)."""
    running = [b for b in brokers if b.proc is not None and b.running]
    for broker in running:
        assert broker.proc is not None
        broker.proc.terminate()
    deadline = time.monotonic() + 15
    for broker in running:
        assert broker.proc is not None
        broker.proc.join(max(deadline - time.monotonic(), 0.0))
        broker.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free now, below the system's ephemeral
    range: a port next to one the system handed out may be any outgoing connection's own port
    (another test's) by the time it is bound."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        lowest = int(ranges.read().split()[0])
    for _ in range(100):
        base = secrets.randbelow(lowest - 10_000 - count) + 10_000
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {count} consecutive free ports below {lowest}")


async def add_link(ctx: Context, found: Pki, link_id: str, **spec: Any) -> tuple[Path, Path]:
    """A federate node at a sending broker, pinned to a fresh certificate; its cert and key."""
    cert, key = found.client(link_id)
    full = {
        "id": link_id,
        "roles": ["federate"],
        "clearance": "SECRET",
        "certificate": cert.read_text(),
        **spec,
    }
    await admin.add_node(ctx, full, actor="test")
    return cert, key


async def add_peer(
    ctx: Context, found: Pki, upstream: BrokerProcess, link: tuple[Path, Path], origins: list[str]
) -> dict[str, Any]:
    """The receiving half of a link: the upstream's key is fetched over mutual TLS and pinned."""
    spec = {
        "name": upstream.name,
        "url": upstream.url,
        "ca": found.ca.read_text(),
        "cert": link[0].read_text(),
        "key": link[1].read_text(),
        "origins": origins,
    }
    return await peers.add_peer(ctx, spec, actor="test")
