"""``GET /metrics``: Prometheus text for an auditor's or operator's scraper (role ``audit``).

The services' counters and histograms (services/metrics.py, the process-wide registry), and per
open stream, read when scraped: queue depth in frames and bytes, and lag (reports the broker has
seen past the stream's cursor). Stream labels are the node and the stream's name. Per node, the
stream slots held against ``max_streams_per_node``; the failing sources the authentication
limiter tracks; the bytes the stream feed's window holds.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.services import auth
from broker.web.handlers import CONTEXT, authenticated_node
from broker.web.ws import FEED, PER_NODE, SESSIONS, StreamSession


class _Streams(Collector):
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> list[GaugeMetricFamily]:
        live: set[StreamSession] = self._app[SESSIONS]
        sessions = list(live)
        head = self._app[FEED].head
        open_streams = GaugeMetricFamily("broker_open_streams", "Open websocket streams")
        open_streams.add_metric([], len(sessions))
        labels = ["node", "stream"]
        frames = GaugeMetricFamily("broker_stream_queue_frames", "Frames queued for a stream", labels=labels)
        size = GaugeMetricFamily("broker_stream_queue_bytes", "Bytes queued for a stream", labels=labels)
        lag = GaugeMetricFamily(
            "broker_stream_lag", "Reports seen by the broker past the stream's cursor", labels=labels
        )
        for s in sessions:
            key = [s.node.id, s.name]
            frames.add_metric(key, s.queue.qsize())
            size.add_metric(key, s.queued_bytes)
            lag.add_metric(key, max(0, head - s.cursor))
        # Counted from the handshake's admission to the handler's end, so a slot that is never
        # given back shows here even when no stream runs on it.
        slots = GaugeMetricFamily(
            "broker_stream_slots",
            "Stream slots held per node, against server.max_streams_per_node",
            labels=["node"],
        )
        for node, held in sorted(self._app[PER_NODE].items()):
            slots.add_metric([node], held)
        limiter = GaugeMetricFamily(
            "broker_auth_failure_sources",
            "Failing source addresses the authentication limiter holds a bucket for "
            "(at most server.auth_failure_max_sources)",
        )
        limiter.add_metric([], self._app[CONTEXT].auth_failures.sources)
        feed = GaugeMetricFamily(
            "broker_stream_feed_bytes",
            "Bytes held by the window of recent reports live streams are served from "
            "(at most server.stream_feed_bytes)",
        )
        feed.add_metric([], self._app[FEED].held_bytes)
        return [open_streams, frames, size, lag, slots, limiter, feed]


async def metrics(request: web.Request) -> web.Response:
    node = await authenticated_node(request)
    await auth.require_role(request.app[CONTEXT], node, "audit", act="metrics")
    streams = CollectorRegistry(auto_describe=False)
    streams.register(_Streams(request.app))
    body = generate_latest(REGISTRY) + generate_latest(streams)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
