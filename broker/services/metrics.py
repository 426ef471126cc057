"""Prometheus metrics: counters and histograms the services update, exposed at ``/metrics``.

Counted where the act is recorded: every audit event by action, decision and reason (so
publishes, deliveries, reads and denials by reason all come from one place, the log's own
choke point), reports crypto-shredded by cause (counted from the same erase events, so as they
are written, before commit), when the retention task last completed a pass, seal and commit
latencies, and the age of the newest signed checkpoint. Stream gauges (open streams, queue depth
and lag per stream) are read from the live streams when scraped (web/metrics.py). Labels never
carry report ids, tokens or payloads.
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
WRITE_LOCK_SECONDS = Histogram(
    "broker_write_lock_seconds",
    "How long one write transaction held the write lock every publish and audit event queues on "
    "(PostgreSQL: the log_head row, from when it was granted through the commit; SQLite: the "
    "whole write transaction)",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0),
)
REPORTS_ERASED = Counter(
    "broker_reports_erased",
    "Reports crypto-shredded, by cause: manual (broker report erase) or retention (expired)",
    ["cause"],
)
RETENTION_LAST_RUN = Gauge(
    "broker_retention_last_run_timestamp_seconds",
    "When (epoch seconds) this process's retention task last completed a pass",
)
# The reason of an erase event, by cause; any other reason is a manual erasure.
_ERASE_CAUSES = {"retention_expired": "retention"}
for _cause in ("manual", "retention"):  # both series exist (at 0) before the first erasure
    REPORTS_ERASED.labels(_cause)
_last_checkpoint = [0.0]
CHECKPOINT_AGE = Gauge("broker_checkpoint_age_seconds", "Seconds since the newest signed checkpoint's time")
CHECKPOINT_AGE.set_function(
    lambda: time.time() - _last_checkpoint[0] if _last_checkpoint[0] else float("nan")
)


def events(drafts: Sequence[AuditDraft]) -> None:
    for draft in drafts:
        EVENTS.labels(draft.action, draft.decision, draft.reason or "").inc()
        if draft.action == "erase" and draft.decision == "allow":
            REPORTS_ERASED.labels(erase_cause(draft.reason)).inc()


def erase_cause(reason: str | None) -> str:
    """The ``cause`` label of an erasure recorded with ``reason``."""
    return _ERASE_CAUSES.get(reason or "", "manual")


def retention_ran() -> None:
    """Note that a retention pass just completed."""
    RETENTION_LAST_RUN.set_to_current_time()


def checkpoint_signed(at: float) -> None:
    """Note the time (epoch seconds) of the newest signed checkpoint."""
    _last_checkpoint[0] = max(_last_checkpoint[0], at)
