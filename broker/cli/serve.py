"""``broker serve`` and ``broker demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli.common import log_options, port, tls_options
from broker.cli.database import upgrade, with_context

if TYPE_CHECKING:
    from broker.settings import Settings, TlsSettings

# Written by `broker demo` into the directory it makes: only a directory holding it is emptied.
DEMO_MARKER = ".broker-demo"
# What a demo creates in its directory, the only entries it ever removes.
DEMO_FILES = (
    "broker.db",
    "broker.db-wal",
    "broker.db-shm",
    "broker.db-journal",
    "keyring.json",
    ".keyring.json.lock",
    "pki",
    *("witness-fra", "witness-fra.log", "witness-deu", "witness-deu.log"),  # demo_witnesses.FILES
)


def add_parsers(sub: Any, common: argparse.ArgumentParser, *, settings: Settings) -> None:
    serve = sub.add_parser("serve", parents=[common], help="start the broker")
    serve.add_argument(
        "--host", help=f"address to listen on (default: {settings.host}, [server] host in broker.toml)"
    )
    serve.add_argument(
        "--port",
        type=port,
        help=f"port to listen on (default: {settings.port}, [server] port in broker.toml)",
    )
    log_options(serve)
    tls_options(serve, client_auth_default=settings.tls.client_auth)
    demo = sub.add_parser("demo", parents=[common], help="fresh demo database, nodes and server")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    demo.add_argument("--port", type=port, default=8080, help="port to listen on (default: %(default)s)")
    demo.add_argument(
        "--dir",
        default="var/demo",
        help="where the demo database, keyring and certificates live: a new or empty directory, or "
        "one an earlier demo made (its files are replaced) (default: %(default)s)",
    )
    demo.add_argument(
        "--federation",
        action="store_true",
        help="start three linked brokers (usa, a nato hub, fra) on PORT..PORT+2 in --dir "
        "(default there: var/federation) and show a report crossing them",
    )
    log_options(demo)


def serve_command(args: argparse.Namespace, settings: Settings) -> None:
    serve(
        replace(
            settings,
            host=args.host or settings.host,
            port=settings.port if args.port is None else args.port,
            tls=tls_flags(settings.tls, args),
        )
    )


def check_port(host: str, port: int) -> None:
    """Refuse at once, before anything is printed or opened, when the address is taken."""
    from broker.errors import BrokerError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot listen on {host}:{port}: {exc.strerror}", code="address_in_use"
            ) from exc


def tls_flags(tls: TlsSettings, args: argparse.Namespace) -> TlsSettings:
    """``[tls]`` from broker.toml with the TLS flags given on the command line on top."""
    from broker.settings import TlsSettings

    return TlsSettings(
        cert=Path(args.tls_cert) if args.tls_cert else tls.cert,
        key=Path(args.tls_key) if args.tls_key else tls.key,
        client_ca=tuple(Path(c) for c in args.tls_client_ca) if args.tls_client_ca else tls.client_ca,
        client_auth=args.tls_client_auth or tls.client_auth,
        insecure_http=bool(args.insecure_http) or tls.insecure_http,
    )


def serve(settings: Settings, *, alongside: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until interrupted; ``alongside`` runs as a background task once the app starts."""
    from aiohttp import web

    from broker.app import create_app
    from broker.demo import background
    from broker.web.tls import check_bind, server_context

    check_bind(host=settings.host, tls=settings.tls)
    ssl_context = server_context(settings.tls)
    check_port(settings.host, settings.port)
    asyncio.run(with_context(settings, lambda _c: asyncio.sleep(0)))
    app = create_app(settings)
    if alongside is not None:
        job = alongside

        async def _alongside(_app: web.Application) -> AsyncIterator[None]:
            async with background(job()):
                yield

        app.cleanup_ctx.append(_alongside)
    loop = _event_loop(settings.event_loop)
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(_run(app, settings, ssl_context, loop))


async def _run(app: Any, settings: Settings, ssl_context: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Not web.run_app: its sites accept every connection with no deadline for a request head
    (start_serving's site guards them); SIGINT and SIGTERM stop it as they stopped run_app."""
    from broker.app import start_serving
    from broker.web.tls import is_loopback

    log = logging.getLogger(__name__)
    if ssl_context is None and not is_loopback(settings.host):
        log.warning(
            "INSECURE: serving plain HTTP on %s (--insecure-http): tokens and reports cross the network "
            "unencrypted",
            settings.host,
        )
    scheme = "https" if ssl_context is not None else "http"
    runner, _site = await start_serving(app, host=settings.host, port=settings.port, ssl_context=ssl_context)
    stop = asyncio.Event()
    received: list[str] = []

    def _stop(signum: signal.Signals) -> None:
        if signum.name not in received:
            received.append(signum.name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, _stop, signum)
    # Once listening and stoppable: a supervisor that waits for this line may signal at once.
    # The port is the one bound (--port 0 picks a free one).
    bound = runner.addresses[0][1] if runner.addresses else settings.port
    log.info(
        "serving on %s://%s:%s (client certificates: %s; event loop: %s)",
        scheme,
        settings.host,
        bound,
        settings.tls.client_auth,
        type(loop).__module__,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    # An operator who pressed Ctrl-C, or a supervisor's log, sees that it ended and why.
    log.info("stopped on %s: open streams were closed with 1001", ", ".join(received) or "request")


def _event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop where it is installed and not declined ("auto"), else the standard loop."""
    if choice == "auto":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def demo(args: argparse.Namespace, settings: Settings) -> None:
    from broker import demo_witnesses
    from broker.demo import DEMO_NODES, demo_pki, exchange, prepare

    if args.federation:
        from broker import demo_federation

        folder = Path("var/federation" if args.dir == "var/demo" else args.dir).resolve()
        demo_federation.run(folder, port=args.port, config_dir=settings.config_dir)
        return

    folder = Path(args.dir).resolve()  # absolute: the printed paths work from any directory
    _check_demo_dir(folder, given=args.dir)
    check_port(args.host, args.port)  # before the tokens are printed
    _clear_demo_dir(folder)
    settings = replace(
        settings,
        database_url=f"sqlite+aiosqlite:///{folder / 'broker.db'}",
        keyring_path=folder / "keyring.json",
        host=args.host,
        port=args.port,
    )
    nodes = [n["id"] for n in DEMO_NODES] + ["usa-sdk", "gbr-sdk"]
    settings = replace(settings, tls=demo_pki(folder / "pki", host=args.host, nodes=nodes))
    asyncio.run(upgrade(settings))
    certificates = folder / "pki"
    guide, live = asyncio.run(with_context(settings, lambda c: prepare(c, settings, certificates)))
    print(guide, flush=True)
    base = f"https://{settings.host}:{settings.port}"

    def say(line: str) -> None:
        print(line, flush=True)

    with demo_witnesses.witnesses(settings, folder) as pinned:
        # Two nations' witnesses cosign every checkpoint; one is signed every 2 s in the demo.
        settings = replace(settings, witnesses=pinned, witness_quorum=2, checkpoint_every_seconds=2.0)
        key = demo_witnesses.log_vkey(settings)

        async def alongside() -> None:
            await exchange(base, live, say)
            await demo_witnesses.show_witnessed(
                base, live.tls("auditor"), log_vkey=key, pinned=pinned, say=say
            )

        serve(settings, alongside=alongside)


def _check_demo_dir(folder: Path, *, given: str) -> None:
    """A demo starts afresh, but never at the cost of data it did not create: the directory must
    be new, empty, or one an earlier demo marked as its own."""
    from broker.errors import BrokerError

    if not folder.exists():
        return
    if not folder.is_dir():
        raise BrokerError(f"--dir {given}: {folder} is a file, not a directory", code="invalid_input")
    if (folder / DEMO_MARKER).is_file() or not any(folder.iterdir()):
        return
    raise BrokerError(
        f"--dir {given}: {folder} is not empty and was not made by broker demo (no {DEMO_MARKER} "
        "file): refusing to replace what is in it; give a new or empty directory (a demo from "
        "before the marker left none: delete its directory yourself)",
        code="invalid_input",
    )


def _clear_demo_dir(folder: Path) -> None:
    """Remove what an earlier demo left (its own files only), and mark the directory as the demo's."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    (folder / DEMO_MARKER).write_text("made by `broker demo`: the next demo here replaces its files\n")
