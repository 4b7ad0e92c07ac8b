"""Per-key token buckets (per client id, per remote address), in memory, with an explicit clock.

In memory on purpose: limits protect this process's CPU and disk and need no durability; a
restart simply refills every bucket.
"""

from __future__ import annotations

import threading


class RateLimiter:
    """``per_minute`` requests per key on average, bursts of up to ``burst`` (default: per_minute)."""

    def __init__(self, per_minute: float, burst: float | None = None, max_keys: int = 100_000):
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(per_minute, 1.0))
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float) -> float:
        """Take one token for key; return 0.0 if allowed, else the seconds until one is available."""
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes no decision."""
        self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items()
                         if t + (now - at) * self.rate < self.burst}
