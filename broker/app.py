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
from broker.web.ws import FEED, HUB, PER_NODE, SESSIONS, STREAMS, StreamSocket, close_all
from broker.witness_settings import WitnessSettings

log = logging.getLogger(__name__)
# How long the background loops have to end after a stop (a container's grace is 10 s by default).
STOP_GRACE_SECONDS = 5.0
IDLE = (-1, -1)  # what the hub's probe answers while no stream is open
KEEPALIVE_SECONDS = 75.0  # an idle keep-alive connection closes after this (aiohttp's run_app default)
LISTENER_CONNECTED = Gauge(
    "broker_change_listener_connected",
    "1 while this process is LISTENing for other processes' changes (PostgreSQL), else 0",
)


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> web.Application:
    """The aiohttp application. The database schema must already be migrated."""
    app = web.Application(middlewares=[head_arrived, problems], client_max_size=settings.max_body_bytes)
    _wire_edge(app, settings)

    def lifetime(app: web.Application) -> AsyncIterator[None]:
        return _lifetime(app, settings, clock)

    app.cleanup_ctx.append(lifetime)
    app.on_shutdown.append(close_all)
    add_routes(app)
    return app


def _wire_edge(app: web.Application, settings: Settings) -> None:
    """The web edge's own state: the connection guard, the same-origin check, the publish
    limiter, the trusted proxies, the open streams and the body deadline."""
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


async def _lifetime(
    app: web.Application, settings: Settings, clock: Callable[[], datetime]
) -> AsyncIterator[None]:
    """The services for the app's lifetime: opened at start-up with the live side and every
    background loop (each supervised), stopped and closed at cleanup whatever fails."""
    ctx = Context.open(settings, clock=clock)
    ctx.db.on_lock_held = metrics.WRITE_LOCK_SECONDS.observe
    app[CONTEXT] = ctx
    live = _Live(ctx, app[STREAMS])
    app[FEED], app[HUB], app[WAKE] = live.feed, live.hub, live.wake
    stop = asyncio.Event()
    await live.start(stop)
    links = app[LINKS] = Links(ctx, live.wake)
    tasks = _background(ctx, links, stop)
    yield
    stop.set()
    try:
        # Each finishes the transaction it is in (the flush writes what was counted), then
        # returns; one still running after STOP_GRACE_SECONDS (in a call to a witness or a peer
        # that does not answer) is cancelled. Whatever one of them raised, the cleanup below
        # still runs.
        _, running = await asyncio.wait(tasks, timeout=STOP_GRACE_SECONDS)
        for task in running:
            log.warning("background_task_cancelled_at_stop task=%s", task.get_name())
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("background_task_stop_failed", exc_info=outcome)
    finally:
        try:
            await live.stop()
        finally:
            await ctx.close()


class _Live:
    """The live side: the feed streams read, the hub that wakes them, and on PostgreSQL the
    listener that hears other processes' changes."""

    def __init__(self, ctx: Context, streams: set[StreamSocket]) -> None:
        self._settings = ctx.settings
        self._streams = streams
        self.feed = deliver.Feed(ctx)
        self.listener: ChangeListener | None = None
        self.hub = Hub(self._probe, interval=self._interval)

    async def _probe(self) -> tuple[int, ...]:
        if not self._streams:  # nobody to wake: nothing to read
            self.feed.forget()
            return IDLE
        return await self.feed.refresh()

    def wake(self) -> None:
        """After a local publish or a NOTIFY: only open streams need to hear at once."""
        if self._streams:
            self.hub.nudge()

    def _interval(self) -> float:  # poll fast unless LISTEN/NOTIFY is working
        if self.listener is not None and self.listener.connected:
            return self._settings.safety_poll_seconds
        return self._settings.change_poll_seconds

    async def start(self, stop: asyncio.Event) -> None:
        """Listen (PostgreSQL) and watch, each under the supervisor until ``stop``."""
        url = self._settings.database_url
        if is_postgresql(url):
            # With no open stream a notification has nobody to wake (the probe would answer IDLE).
            self.listener = ChangeListener(url, self.wake)
            self.listener.start(lambda run: supervise("change-listener", run, stop))
            await self.listener.wait_ready(5)
        LISTENER_CONNECTED.set_function(lambda: float(self.listener is not None and self.listener.connected))
        self.hub.start(lambda watch: supervise("hub-watch", watch, stop))

    async def stop(self) -> None:
        """Stop listening, then watching (the second even when the first fails)."""
        try:
            if self.listener is not None:
                await self.listener.stop()
        finally:
            await self.hub.stop()


def _background(ctx: Context, links: Links, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Every background loop, started under the supervisor until ``stop``."""
    loops = {
        "federation": lambda: links.run(stop),
        "checkpointer": lambda: ledger.checkpointer(ctx, stop),
        "auth-failures": lambda: _flush_failures(ctx, stop),
        "retention": lambda: retention.expirer(ctx, stop),
        "kek-periods": lambda: shred.rotator(ctx, stop),
        **{f"witness:{w.name}": _witness_loop(ctx, w, stop) for w in ctx.settings.witnesses},
    }
    return [asyncio.create_task(supervise(name, loop, stop), name=name) for name, loop in loops.items()]


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
