"""``broker demo --federation``: three brokers on loopback (usa, a nato hub, fra), linked over
mutual TLS with a fresh development CA, a report published at usa read at fra, then left
running until Ctrl-C. Everything lives in ``--dir`` (default ``var/federation``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from broker.client import BrokerClient
from broker.crypto.keys import new_signing_key, public_b64
from broker.demo import demo_pki
from broker.services import admin, alliances, peers
from broker.services.context import Context
from broker.settings import Settings
from broker.storage import db

BROKERS = ("usa", "nato", "fra")
MARKER = ".broker-demo-federation"
NATO = {"classification": "SECRET", "releasable_to": ["NATO"], "caveats": []}


def _prepare_dir(folder: Path) -> None:
    """A new or empty directory, or one an earlier federation demo made (then emptied)."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise SystemExit(f"error: {folder} is not empty and was not made by `broker demo --federation`")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by `broker demo --federation`: the next one here replaces it\n")


def _env(folder: Path, name: str, config_dir: Path) -> dict[str, str]:
    target = folder / name / "config"
    shutil.copytree(config_dir, target)
    toml = target / "broker.toml"
    lines = [
        f'origin = "{name}.example/broker"' if ln.startswith("origin =") else ln
        for ln in toml.read_text().splitlines()
    ]
    toml.write_text("\n".join(lines) + "\n")
    return {
        "BROKER_CONFIG_DIR": str(target),
        "BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{folder / name / 'broker.db'}",
        "BROKER_KEYRING": str(folder / name / "keyring.json"),
    }


async def _setup(envs: dict[str, dict[str, str]], pki_dir: Path, key: Any) -> dict[str, str]:
    tokens: dict[str, str] = {}
    nodes = {
        "usa": [
            {
                "id": "usa-1",
                "nation": "USA",
                "clearance": "SECRET",
                "roles": ["publish"],
                "ed25519_public_key": public_b64(key),
            },
            _link("nato-link", "BEL", "NATO", pki_dir),
        ],
        "nato": [_link("fra-link", "FRA", "FRA", pki_dir)],
        "fra": [{"id": "fra-1", "nation": "FRA", "clearance": "SECRET", "roles": ["subscribe"]}],
    }
    for name in BROKERS:
        settings = Settings.load(env=envs[name])
        ctx = await Context.open_bound(settings)
        try:
            await db.upgrade(ctx.db.engine)
            await ctx.check_keyring()
            await alliances.seed_alliances(ctx, settings.alliances)
            for spec in nodes[name]:
                tokens[spec["id"]] = (await admin.add_node(ctx, spec, actor="demo"))["token"]
        finally:
            await ctx.close()
    return tokens


def _link(link: str, nation: str, audience: str, pki_dir: Path) -> dict[str, Any]:
    certificate = (pki_dir / f"{link}.pem").read_text()
    return {"id": link, "nation": nation, "clearance": "SECRET", "roles": ["federate"]} | {
        "audience": [audience],
        "origins": ["USA"],
        "certificate": certificate,
    }


async def _healthy(url: str, trust: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"error: the broker at {url} exited; see its log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/v1/health", ssl=trust) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit(f"error: the broker at {url} did not start")


async def _link_up(envs: dict[str, dict[str, str]], urls: dict[str, str], pki_dir: Path) -> None:
    for at, upstream, link in (("nato", "usa", "nato-link"), ("fra", "nato", "fra-link")):
        spec = {"name": upstream, "url": urls[upstream], "ca": (pki_dir / "ca.pem").read_text()}
        spec |= {"cert": (pki_dir / f"{link}.pem").read_text(), "key": (pki_dir / f"{link}.key").read_text()}
        ctx = Context.open(Settings.load(env=envs[at]))
        try:
            added = await peers.add_peer(ctx, spec | {"origins": ["USA"]}, actor="demo")
        finally:
            await ctx.close()
        print(f"{at} pulls from {upstream}: pinned {added['broker_key']}", flush=True)


async def _show(urls: dict[str, str], tokens: dict[str, str], trust: ssl.SSLContext, key: Any) -> None:
    async with BrokerClient(urls["usa"], tokens["usa-1"], tls=trust, signing_key=key) as usa:
        receipt = await usa.publish(
            label=NATO, payload={"type": "note", "text": "hello, alliance"}, topics=["demo"]
        )
    print(f"usa-1 published {receipt['id']} (SECRET REL NATO) at usa", flush=True)
    async with BrokerClient(urls["fra"], tokens["fra-1"], tls=trust) as fra:
        stream = fra.stream(after=0, name="demo")
        async with asyncio.timeout(20):
            got = await stream.__anext__()
        await stream.aclose()
        headers = {"Authorization": f"Bearer {tokens['fra-1']}"}
        async with fra.session.get(f"{urls['fra']}/v1/reports/{got.id}", headers=headers) as resp:
            doc = await resp.json()
    path = " -> ".join(hop["broker"] for hop in doc["provenance"])
    print(f"fra-1 received it at fra: signature verified={got.verified}, path {path}", flush=True)


def run(folder: Path, *, port: int, config_dir: Path) -> None:
    """Set up, start, show one report crossing, and serve until interrupted."""
    _prepare_dir(folder)
    pki_dir = folder / "pki"
    tls = demo_pki(pki_dir, host="127.0.0.1", nodes=["nato-link", "fra-link"])
    envs = {name: _env(folder, name, config_dir) for name in BROKERS}
    key = new_signing_key()
    tokens = asyncio.run(_setup(envs, pki_dir, key))
    urls = {name: f"https://127.0.0.1:{port + i}" for i, name in enumerate(BROKERS)}
    trust = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, name in enumerate(BROKERS):
            argv = [
                sys.executable,
                "-m",
                "broker",
                "serve",
                "--port",
                str(port + i),
                "--tls-cert",
                str(tls.cert),
            ]
            argv += [
                "--tls-key",
                str(tls.key),
                "--tls-client-ca",
                str(pki_dir / "ca.pem"),
                "--tls-client-auth",
                "optional",
            ]
            with (folder / name / "broker.log").open("ab") as log:
                procs.append(
                    # our own interpreter and arguments, no shell
                    subprocess.Popen(argv, env={**_base_env(), **envs[name]}, stdout=log, stderr=log)  # noqa: S603
                )
        asyncio.run(_start(urls, procs, trust, envs, pki_dir, tokens, key))
        stopping = _hold_interrupts()  # before "ready": a Ctrl-C from then on is a clean stop
        print("demo federation ready: " + ", ".join(f"{n} {u}" for n, u in urls.items()), flush=True)
        for name, token in tokens.items():
            if not name.endswith("-link"):
                print(f"token {name}: {token}", flush=True)
        print(
            f"CA: {pki_dir / 'ca.pem'}; logs: {folder}/<broker>/broker.log. Ctrl-C stops all three.",
            flush=True,
        )
        signal.sigwait(stopping)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)


async def _start(
    urls: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
    trust: ssl.SSLContext,
    envs: dict[str, dict[str, str]],
    pki_dir: Path,
    tokens: dict[str, str],
    key: Any,
) -> None:
    await asyncio.gather(*(_healthy(urls[n], trust, p) for n, p in zip(BROKERS, procs, strict=True)))
    await _link_up(envs, urls, pki_dir)
    await _show(urls, tokens, trust, key)


def _base_env() -> dict[str, str]:
    return dict(os.environ)


def _hold_interrupts() -> set[signal.Signals]:
    """Hold Ctrl-C and SIGTERM pending, for ``signal.sigwait`` to take. Not a handler setting a
    threading.Event: a handler runs in the main thread, and one that arrives while that thread
    holds the event's lock (entering its wait) deadlocks on it."""
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    return signals
