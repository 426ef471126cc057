"""create_app: the one place where settings, services and the web edge are wired together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web

from broker.realtime.hub import Hub
from broker.services import deliver, ledger
from broker.services.context import Context, utc_now
from broker.settings import Settings
from broker.web.handlers import CONTEXT, LIMITER, WAKE, TokenBucket
from broker.web.middleware import problems
from broker.web.routes import add_routes
from broker.web.ws import FEED, HUB, STREAMS, close_all


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> web.Application:
    """The aiohttp application. The database schema must already be migrated."""
    app = web.Application(middlewares=[problems], client_max_size=settings.max_body_bytes)
    app[LIMITER] = TokenBucket(rate=settings.publish_rate_per_second, burst=settings.publish_burst)

    app[STREAMS] = set()

    async def context(app: web.Application) -> AsyncIterator[None]:
        ctx = Context.open(settings, clock=clock)
        app[CONTEXT] = ctx
        feed = deliver.Feed(ctx)
        streams = app[STREAMS]

        async def probe() -> tuple[int, int]:
            return await feed.refresh(load=bool(streams))

        def wake() -> None:  # after a local publish: only open streams need to hear at once
            if streams:
                hub.nudge()

        hub = Hub(probe, interval=settings.change_poll_seconds)
        app[FEED], app[HUB], app[WAKE] = feed, hub, wake
        hub.start()
        stop = asyncio.Event()
        checkpoints = asyncio.create_task(ledger.checkpointer(ctx, stop), name="checkpointer")
        yield
        stop.set()
        await checkpoints  # it finishes the transaction it is in, then returns
        await hub.stop()
        await ctx.close()

    app.cleanup_ctx.append(context)
    app.on_shutdown.append(close_all)
    add_routes(app)
    return app
