"""In-memory token buckets, one per (kind, credential). Counts only, never who or what.

Memory stays bounded: once the table passes `max_keys`, buckets that have refilled are
dropped (a full bucket carries no information), then the oldest half if that was not enough.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Hashable

from imsg_relay.errors import RelayError


class RateLimiter:
    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, time of last update)
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def retry_after(self, key: Hashable, cost: float = 1.0) -> float:
        """Take `cost` tokens; 0.0 when allowed, else the seconds until it would be."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > self._max_keys:
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate

    def check(self, key: Hashable, cost: float = 1.0) -> None:
        """Raise 429 with Retry-After when `key` has no tokens left."""
        wait = self.retry_after(key, cost)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RelayError("rate_limited", "too many requests for this credential, slow down",
                             headers={"Retry-After": str(seconds)}, retry_after=seconds)

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) > self._max_keys // 2:
            by_age = sorted(self._buckets.items(), key=lambda item: item[1][1])
            for k, _ in by_age[: len(by_age) // 2]:
                del self._buckets[k]
