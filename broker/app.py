"""create_app: the one place where settings, services and the web edge are wired together."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from aiohttp import web
from prometheus_client import Gauge

from broker.realtime.hub import Hub
from broker.services import auth, deliver, ledger, metrics, retention, shred, witnessing
from broker.services.context import Context, utc_now
from broker.services.limits import TokenBucket
from broker.services.puller import Links
from broker.services.supervisor import supervise
from broker.settings import Settings
from broker.storage.listen import ChangeListener, is_postgresql
from broker.waiting import wait_event
from broker.web.accesslog import AccessLogger
from broker.web.connections import CONNECTIONS, ConnectionGuard, GuardedSite, head_arrived
from broker.web.handlers import CONTEXT, LIMITER, LINKS, WAKE
from broker.web.middleware import BODY_TIMEOUT, problems, same_origin_only, server_header
from broker.web.routes import add_routes
from broker.web.sources import TRUSTED_PROXIES, networks
from broker.web.ws import FEED, HUB, PER_NODE, SESSIONS, STREAMS, close_all
from broker.witness_settings import WitnessSettings

log = logging.getLogger(__name__)
IDLE = (-1, -1)  # what the hub's probe answers while no stream is open
KEEPALIVE_SECONDS = 75.0  # an idle keep-alive connection closes after this (aiohttp's run_app default)
LISTENER_CONNECTED = Gauge(
    "broker_change_listener_connected",
    "1 while this process is LISTENing for other processes' changes (PostgreSQL), else 0",
)


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> web.Application:
    """The aiohttp application. The database schema must already be migrated."""
    app = web.Application(middlewares=[head_arrived, problems], client_max_size=settings.max_body_bytes)
    app[CONNECTIONS] = ConnectionGuard(
        head_seconds=settings.request_head_timeout_seconds,
        per_source=settings.max_connections_per_source,
        exempt=settings.connection_cap_exempt,
    )

    def cross_origin_refused(source: str) -> None:  # counted and audited like a failed sign-in
        ctx = app[CONTEXT]
        ctx.auth_failures.note(source, "cross_origin_request", None, now=ctx.now())

    app.middlewares.append(same_origin_only(settings.allowed_origins, refused=cross_origin_refused))
    app[LIMITER] = TokenBucket(rate=settings.publish_rate_per_second, burst=settings.publish_burst)
    app[TRUSTED_PROXIES] = networks(settings.trusted_proxies)

    app.on_response_prepare.append(server_header)
    app[STREAMS] = set()
    app[PER_NODE] = {}
    app[SESSIONS] = set()
    app[BODY_TIMEOUT] = settings.body_read_timeout_seconds

    async def context(app: web.Application) -> AsyncIterator[None]:
        ctx = Context.open(settings, clock=clock)
        ctx.db.on_lock_held = metrics.WRITE_LOCK_SECONDS.observe
        app[CONTEXT] = ctx
        feed = deliver.Feed(ctx)
        streams = app[STREAMS]

        async def probe() -> tuple[int, ...]:
            if not streams:  # nobody to wake: nothing to read
                feed.forget()
                return IDLE
            return await feed.refresh()

        def wake() -> None:  # after a local publish or a NOTIFY: only open streams need to hear at once
            if streams:
                hub.nudge()

        listener: ChangeListener | None = None

        def interval() -> float:  # poll fast unless LISTEN/NOTIFY is working
            if listener is not None and listener.connected:
                return settings.safety_poll_seconds
            return settings.change_poll_seconds

        hub = Hub(probe, interval=interval)
        app[FEED], app[HUB], app[WAKE] = feed, hub, wake
        stop = asyncio.Event()
        if is_postgresql(settings.database_url):
            # With no open stream a notification has nobody to wake (the probe would answer IDLE).
            listener = ChangeListener(settings.database_url, wake)
            listener.start(lambda run: supervise("change-listener", run, stop))
            await listener.wait_ready(5)
        LISTENER_CONNECTED.set_function(lambda: float(listener is not None and listener.connected))
        hub.start(lambda watch: supervise("hub-watch", watch, stop))
        links = app[LINKS] = Links(ctx, wake)
        loops = {
            "federation": lambda: links.run(stop),
            "checkpointer": lambda: ledger.checkpointer(ctx, stop),
            "auth-failures": lambda: _flush_failures(ctx, stop),
            "retention": lambda: retention.expirer(ctx, stop),
            "kek-periods": lambda: shred.rotator(ctx, stop),
            **{f"witness:{w.name}": _witness_loop(ctx, w, stop) for w in settings.witnesses},
        }
        tasks = [asyncio.create_task(supervise(name, loop, stop), name=name) for name, loop in loops.items()]
        yield
        stop.set()
        try:
            # Each finishes the transaction it is in (the flush writes what was counted), then
            # returns. Whatever one of them raised, the cleanup below still runs.
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("background_task_stop_failed", exc_info=outcome)
        finally:
            try:
                if listener is not None:
                    await listener.stop()
            finally:
                try:
                    await hub.stop()
                finally:
                    await ctx.close()

    app.cleanup_ctx.append(context)
    app.on_shutdown.append(close_all)
    add_routes(app)
    return app


async def start_serving(
    app: web.Application, *, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> tuple[web.AppRunner, GuardedSite]:
    """Serve ``app`` (from create_app) on ``host``:``port`` until the runner is cleaned up; the
    site's port is the one listened on. The app's ConnectionGuard admits and times connections."""
    runner = web.AppRunner(app, keepalive_timeout=KEEPALIVE_SECONDS, access_log_class=AccessLogger)
    await runner.setup()
    site = GuardedSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


def _witness_loop(
    ctx: Context, witness: WitnessSettings, stop: asyncio.Event
) -> Callable[[], Awaitable[None]]:
    return lambda: witnessing.loop(ctx, witness, stop)


async def _flush_failures(ctx: Context, stop: asyncio.Event) -> None:
    """Every ``auth_failure_window_seconds``, and once more at shutdown, write the failed
    authentications counted meanwhile as one audit event per source, and the repeated
    missing-role refusals as one per node and act."""
    while not stop.is_set():
        await wait_event(stop, ctx.settings.auth_failure_window_seconds)
        try:
            await auth.flush_failures(ctx)
        except Exception:  # the database may be down: keep counting, write them next time
            log.warning("auth_failures_flush_failed", exc_info=True)
