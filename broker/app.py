"""create_app: the one place where settings, services and the web edge are wired together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web

from broker.realtime.hub import Hub
from broker.services import auth, deliver, ledger, metrics, retention, shred
from broker.services.context import Context, utc_now
from broker.settings import Settings
from broker.storage.listen import ChangeListener, is_postgresql
from broker.waiting import wait_event
from broker.web.handlers import CONTEXT, LIMITER, WAKE, TokenBucket
from broker.web.middleware import BODY_TIMEOUT, problems, server_header
from broker.web.routes import add_routes
from broker.web.ws import FEED, HUB, PER_NODE, SESSIONS, STREAMS, close_all

log = logging.getLogger(__name__)
IDLE = (-1, -1)  # what the hub's probe answers while no stream is open


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> web.Application:
    """The aiohttp application. The database schema must already be migrated."""
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app[LIMITER] = TokenBucket(rate=settings.publish_rate_per_second, burst=settings.publish_burst)

    app.on_response_prepare.append(server_header)
    app[STREAMS] = set()
    app[PER_NODE] = {}
    app[SESSIONS] = set()
    app[BODY_TIMEOUT] = settings.body_read_timeout_seconds

    async def context(app: web.Application) -> AsyncIterator[None]:
        ctx = Context.open(settings, clock=clock)
        ctx.db.on_lock_held = metrics.WRITE_LOCK_SECONDS.observe
        ctx.db.on_guarded = lambda outcome: metrics.GUARDED.labels(outcome).inc()
        ctx.db.on_turn = lambda outcome: metrics.GUARDED_TURNS.labels(outcome).inc()
        app[CONTEXT] = ctx
        feed = deliver.Feed(ctx)
        streams = app[STREAMS]

        async def probe() -> tuple[int, int]:
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
        if is_postgresql(settings.database_url):
            # With no open stream a notification has nobody to wake (the probe would answer IDLE).
            listener = ChangeListener(settings.database_url, wake, ctx.db.learn_payload)
            listener.start()
            await listener.wait_ready(5)
        hub.start()
        stop = asyncio.Event()
        checkpoints = asyncio.create_task(ledger.checkpointer(ctx, stop), name="checkpointer")
        failures = asyncio.create_task(_flush_failures(ctx, stop), name="auth-failures")
        expiry = asyncio.create_task(retention.expirer(ctx, stop), name="retention")
        periods = asyncio.create_task(shred.rotator(ctx, stop), name="kek-periods")
        yield
        stop.set()
        await checkpoints  # it finishes the transaction it is in, then returns
        await expiry  # likewise
        await periods  # likewise
        await failures  # it writes what was counted, then returns
        if listener is not None:
            await listener.stop()
        await hub.stop()
        await ctx.close()

    app.cleanup_ctx.append(context)
    app.on_shutdown.append(close_all)
    add_routes(app)
    return app


async def _flush_failures(ctx: Context, stop: asyncio.Event) -> None:
    """Every ``auth_failure_window_seconds``, and once more at shutdown, write the failed
    authentications counted meanwhile as one audit event per source."""
    while not stop.is_set():
        await wait_event(stop, ctx.settings.auth_failure_window_seconds)
        try:
            await auth.flush_failures(ctx)
        except Exception:  # the database may be down: keep counting, write them next time
            log.warning("auth_failures_flush_failed", exc_info=True)
