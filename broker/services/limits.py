"""Per-key rate limits kept in this process's memory: the one token bucket the broker uses
(per-node publishes and recalls, failed authentications per source address)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


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
