"""In-memory rate limits per credential: counts and times only, never who or what.

A sliding-window log: at most `burst` events in any window of `burst / rate` seconds. With
the defaults (60 per second, burst 60) the 61st message inside any one second is refused
(R6), which a token bucket would let through once it had refilled a little. Memory per key
is the events inside its window, so at most `burst` timestamps; keys whose window has gone
quiet are dropped once the table grows past `max_keys`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable

from imsg_relay.errors import RelayError


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.limit = max(1, int(burst))
        self.window = self.limit / rate
        self._clock = clock
        self._max_keys = max_keys
        self._events: dict[Hashable, deque[float]] = {}

    def retry_after(self, key: Hashable) -> float:
        """Count one event for `key`: 0.0 when allowed, else the seconds until it would be."""
        now = self._clock()
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self._max_keys:
                self._prune(now)
            events = self._events[key] = deque()
        horizon = now - self.window
        while events and events[0] <= horizon:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window - now
        events.append(now)
        return 0.0

    def check(self, key: Hashable) -> None:
        """Raise 429 with Retry-After when `key` is over its limit."""
        wait = self.retry_after(key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RelayError(
                "rate_limited",
                "too many requests for this credential, slow down",
                headers={"Retry-After": str(seconds)},
                retry_after=seconds,
            )

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        quiet = [k for k, events in self._events.items() if not events or events[-1] <= horizon]
        for k in quiet:
            del self._events[k]
        if len(self._events) >= self._max_keys:
            # Still full of active keys: forget the least recently active half.
            by_age = sorted(self._events, key=lambda k: self._events[k][-1])
            for k in by_age[: len(by_age) // 2]:
                del self._events[k]
