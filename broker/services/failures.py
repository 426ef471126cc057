"""Failed authentications per source address: a limit ahead of authentication, and counts that
become one audit event per source and window; likewise refusals for a missing role, counted per
node and act (see services.auth)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from broker.domain.records import AuditDraft, NodeRecord
from broker.services.limits import TokenBucket

# Where a window's failures from sources past ``max_sources`` are counted together.
OTHER_SOURCES = "other"


@dataclass
class _Refusals:
    count: int
    since: datetime


@dataclass
class AuthFailures:
    """Failed authentications per source address: a token bucket each (``rate`` failures a
    second, ``burst`` saved up) that refuses a source once empty, and counts that ``drain``
    turns into one audit event per source (and node, when the token named one).

    Memory is bounded by ``max_sources`` whatever the number of failing sources (with IPv6 a
    client has as many as it likes): past it the bucket of the source that failed longest ago
    is forgotten, and a window's counts for further sources go to one ``OTHER_SOURCES`` entry.
    A forgotten source starts again with a full burst, as if it had not failed for a while.

    Also the refusals of authenticated nodes for a missing role, counted per node and act:
    ``drain`` turns them into one event per node and act with the count."""

    rate: float
    burst: float
    max_sources: int = 20_000
    _buckets: TokenBucket = field(init=False)
    _counts: dict[tuple[str, str | None, str | None], Counter[str]] = field(default_factory=dict)
    _since: datetime | None = None
    # (node, nation, act, role): only authenticated nodes get here, so this stays as small as
    # the node table times the acts.
    _refusals: dict[tuple[str, str, str, str], _Refusals] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._buckets = TokenBucket(rate=self.rate, burst=self.burst, max_keys=self.max_sources)

    def allowed(self, source: str) -> bool:
        """False when ``source`` has used up its failures: refuse it without any write."""
        return self._buckets.allowed(source)

    @property
    def sources(self) -> int:
        """Sources the limiter holds a bucket for (at most ``max_sources``)."""
        return len(self._buckets)

    def note(self, source: str, reason: str, node: NodeRecord | None, *, now: datetime) -> None:
        self._buckets.spend(source)
        key = (source, None if node is None else node.id, None if node is None else node.nation)
        if key not in self._counts and len(self._counts) >= self.max_sources:
            key = (OTHER_SOURCES, None, None)
        self._counts.setdefault(key, Counter())[reason] += 1
        if self._since is None:
            self._since = now

    def refused(self, node: NodeRecord, *, act: str, role: str, now: datetime) -> bool:
        """Count a refusal of ``act`` to ``node`` for want of ``role``; True when it is the first
        of its node and act since the last ``drain`` (the caller writes that one at once)."""
        key = (node.id, node.nation, act, role)
        seen = self._refusals.get(key)
        if seen is None:
            self._refusals[key] = _Refusals(count=1, since=now)
            return True
        seen.count += 1
        return False

    def drain(self, *, now: datetime) -> list[AuditDraft]:
        """The aggregated events for the window that ends now; the counts start again."""
        drafts = self._drain_failures(now=now)
        refusals, self._refusals = self._refusals, {}
        for (node, nation, act, role), seen in refusals.items():
            if seen.count == 1:  # its one event was written when it happened
                continue
            details = {
                "role": role,
                "refusals": seen.count,  # all of the window's, the one written at once included
                "from": seen.since.isoformat(),
                "to": now.isoformat(),
            }
            drafts.append(
                AuditDraft(
                    action=act,
                    actor=node,
                    node=node,
                    nation=nation,
                    decision="deny",
                    reason="missing_role",
                    details=details,
                )
            )
        return drafts

    def _drain_failures(self, *, now: datetime) -> list[AuditDraft]:
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
        return bool(self._counts) or any(seen.count > 1 for seen in self._refusals.values())
