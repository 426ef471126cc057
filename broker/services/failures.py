"""Failed authentications per source address: a limit ahead of authentication, and counts that
become one audit event per source and window (see services.auth)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from broker.domain.records import AuditDraft, NodeRecord


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class AuthFailures:
    """Failed authentications per source address: a token bucket each (``rate`` failures a
    second, ``burst`` saved up) that refuses a source once empty, and counts that ``flush``
    turns into one audit event per source (and node, when the token named one)."""

    rate: float
    burst: float
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _counts: dict[tuple[str, str | None, str | None], Counter[str]] = field(default_factory=dict)
    _since: datetime | None = None

    def allowed(self, source: str) -> bool:
        """False when ``source`` has used up its failures: refuse it without any write."""
        bucket = self._buckets.get(source)
        if bucket is None:
            return True
        now = time.monotonic()
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= self.burst:
            del self._buckets[source]  # full again: forget it (memory stays bounded)
        return bucket.tokens >= 1

    def note(self, source: str, reason: str, node: NodeRecord | None, *, now: datetime) -> None:
        bucket = self._buckets.setdefault(source, _Bucket(self.burst, time.monotonic()))
        bucket.tokens -= 1
        key = (source, None if node is None else node.id, None if node is None else node.nation)
        self._counts.setdefault(key, Counter())[reason] += 1
        if self._since is None:
            self._since = now

    def drain(self, *, now: datetime) -> list[AuditDraft]:
        """The aggregated events for the window that ends now; the counts start again."""
        counts, since = self._counts, self._since
        self._counts, self._since = {}, None
        drafts = []
        for (source, node, nation), reasons in counts.items():
            reason = reasons.most_common(1)[0][0]
            details = {
                "source": source,
                "failures": sum(reasons.values()),
                "reasons": dict(sorted(reasons.items())),
                "from": (since or now).isoformat(),
                "to": now.isoformat(),
            }
            drafts.append(
                AuditDraft(
                    action="authenticate",
                    node=node,
                    nation=nation,
                    decision="deny",
                    reason=reason,
                    details=details,
                )
            )
        return drafts

    def pending(self) -> bool:
        return bool(self._counts)
