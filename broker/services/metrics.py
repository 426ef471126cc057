"""Prometheus metrics: counters and histograms the services update, exposed at ``/metrics``.

Counted where the act is recorded: every audit event by action, decision and reason (so
publishes, deliveries, reads and denials by reason all come from one place, the log's own
choke point), seal and commit latencies, and the age of the newest signed checkpoint. Stream
gauges (open streams, queue depth and lag per stream) are read from the live streams when
scraped (web/metrics.py). Labels never carry report ids, tokens or payloads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from broker.domain.records import AuditDraft

EVENTS = Counter(
    "broker_audit_events",
    "Audit events appended, by act, decision and reason (publishes, deliveries, reads, denials)",
    ["action", "decision", "reason"],
)
SEAL_SECONDS = Histogram(
    "broker_seal_seconds",
    "HPKE sealing of one payload to one recipient",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
)
COMMIT_SECONDS = Histogram(
    "broker_commit_seconds",
    "One group-committed transaction (publishes or delivery events), begin to durable commit",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0),
)
_last_checkpoint = [0.0]
CHECKPOINT_AGE = Gauge("broker_checkpoint_age_seconds", "Seconds since the newest signed checkpoint's time")
CHECKPOINT_AGE.set_function(
    lambda: time.time() - _last_checkpoint[0] if _last_checkpoint[0] else float("nan")
)


def events(drafts: Sequence[AuditDraft]) -> None:
    for draft in drafts:
        EVENTS.labels(draft.action, draft.decision, draft.reason or "").inc()


def checkpoint_signed(at: float) -> None:
    """Note the time (epoch seconds) of the newest signed checkpoint."""
    _last_checkpoint[0] = max(_last_checkpoint[0], at)
