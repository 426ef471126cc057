"""Per-key rate limits kept in this process's memory: the one token bucket the broker uses
(per-node publishes and recalls, failed authentications per source address), and the marks
that spare the publish limit shared by broker processes its count when it cannot be reached."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass
class TokenBucket:
    """``rate`` tokens a second per key, at most ``burst`` saved up.

    Memory is bounded by ``max_keys`` whatever the number of keys (with IPv6 a client has as many
    source addresses as it likes): past it the key used longest ago is forgotten, and a key whose
    bucket has filled up again is dropped. A forgotten key starts again with a full burst, as if
    it had not been used for a while."""

    rate: float
    burst: float
    max_keys: int = 100_000
    # Least recently used first: every use moves its key to the end.
    _state: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._state)

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._state.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def allowed(self, key: str) -> bool:
        """Whether ``key`` has a token left, without taking one."""
        if key not in self._state:
            return True
        now = time.monotonic()
        tokens = self._tokens(key, now)
        if tokens >= self.burst:
            del self._state[key]  # full again: nothing to remember
        else:
            self._state[key] = (tokens, now)
        return tokens >= 1

    def take(self, key: str) -> bool:
        """Take a token for ``key``; False (and nothing taken) when it has none left."""
        now = time.monotonic()
        tokens = self._tokens(key, now)
        ok = tokens >= 1
        self._store(key, tokens - 1 if ok else tokens, now)
        return ok

    def spend(self, key: str) -> None:
        """Take a token for ``key`` whether or not it has one (a failure that already happened)."""
        now = time.monotonic()
        self._store(key, self._tokens(key, now) - 1, now)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._state[key] = (tokens, now)
        self._state.move_to_end(key)
        if len(self._state) > self.max_keys:
            self._state.popitem(last=False)


@dataclass
class ReportMarks:
    """Points (``created``, sequence) of the report log this process has seen in the head row,
    for bounding how many reports were stored after a moment without counting them.

    The head's ``report_created`` is at least the ``created`` of every report up to its
    ``report_seq`` (a publish stamps strictly after it, an import raises it to the imported
    report's time when that is later). So when a mark (T, S) has T <= ``since``, every report
    created after ``since`` has a sequence above S, and there are at most ``seq - S`` of them
    for a head now at ``seq``. Marks are kept ``spacing`` apart, each window holding a few, and
    at most ``MAX_MARKS``: losing the oldest only loosens a bound (then the count is made)."""

    MAX_MARKS = 32
    spacing: timedelta
    _marks: deque[tuple[datetime, int]] = field(default_factory=lambda: deque(maxlen=ReportMarks.MAX_MARKS))

    def note(self, created: datetime | None, seq: int) -> None:
        """Remember the head's (``created``, ``seq``), if it is ``spacing`` past the last mark."""
        if created is None:
            return
        if self._marks and seq < self._marks[-1][1]:
            self._marks.clear()  # not the log the marks were taken from: forget them
        if not self._marks or created - self._marks[-1][0] >= self.spacing:
            self._marks.append((created, seq))

    def bound(self, since: datetime, seq: int) -> int | None:
        """At most how many reports were created after ``since`` when the head is at ``seq``;
        None when no mark is that old."""
        while len(self._marks) > 1 and self._marks[1][0] <= since:
            self._marks.popleft()  # a newer mark is old enough: it bounds more tightly
        if not self._marks or self._marks[0][0] > since or seq < self._marks[0][1]:
            return None
        return seq - self._marks[0][1]
