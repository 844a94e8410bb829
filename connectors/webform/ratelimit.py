"""A per-key token bucket (key = client IP, or API token): a burst of `per_minute`, refilled evenly.

In-process state: with several `paidan serve` processes each enforces its own share, which is
enough to stop a script hammering the form (FAILURE_MODES 28) without a shared store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last update)

    def hit(self, key: str) -> int:
        """Take one token for `key`: 0 when allowed, else the whole seconds to wait (Retry-After)."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > self.max_keys:
                self._forget_idle(now)
            return 0
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.rate))

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no information), bounding memory."""
        full_after = self.capacity / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        while len(self._buckets) > self.max_keys:  # still too many active clients: drop the oldest
            self._buckets.pop(next(iter(self._buckets)))
