"""Flood controls kept in memory, with an explicit clock: token buckets (per client id, per remote
address), outstanding tickets per address, and the refusal counters.

In memory on purpose: limits protect this process's CPU and disk and need no durability; a
restart simply refills every bucket. A refused request writes nothing to disk.
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


class OutstandingTickets:
    """Tickets issued per key (remote address) that are neither used nor expired, capped per key.

    A slot is reserved before the ticket is written, so a refused request writes nothing; it is
    freed when the ticket's update is accepted, or when the ticket expires.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._slots: dict[str, dict[int, float]] = {}  # key -> slot -> expires_at
        self._owners: dict[str, tuple[str, int]] = {}  # ticket digest -> (key, slot)
        self._next = 0
        self._lock = threading.Lock()

    def reserve(self, key: str, now: float, expires_at: float) -> tuple[int | None, float]:
        """(slot, 0.0) if key may take one more ticket, else (None, seconds until one expires)."""
        with self._lock:
            slots = {s: at for s, at in self._slots.get(key, {}).items() if at > now}
            if len(slots) >= self.limit:
                self._slots[key] = slots
                return None, min(slots.values()) - now
            self._next += 1
            slots[self._next] = expires_at
            self._slots[key] = slots
            return self._next, 0.0

    def bind(self, key: str, slot: int, ticket_digest: str) -> None:
        """Name the ticket issued in a reserved slot, so that using it frees the slot."""
        with self._lock:
            self._owners[ticket_digest] = (key, slot)

    def release(self, key: str, slot: int) -> None:
        """Free a slot (its ticket was never issued)."""
        with self._lock:
            self._slots.get(key, {}).pop(slot, None)

    def used(self, ticket_digest: str) -> None:
        """The ticket's update was accepted: free its slot."""
        with self._lock:
            owner = self._owners.pop(ticket_digest, None)
            if owner is not None:
                self._slots.get(owner[0], {}).pop(owner[1], None)

    def prune(self, now: float) -> None:
        """Forget expired slots and keys left without any."""
        with self._lock:
            self._slots = {k: live for k, slots in self._slots.items()
                           if (live := {s: at for s, at in slots.items() if at > now})}
            taken = {(k, s) for k, slots in self._slots.items() for s in slots}
            self._owners = {d: owner for d, owner in self._owners.items() if owner in taken}


class RefusalCounts:
    """Refused requests per (round, code), counted in memory and written by the ticker in one commit.

    A flood of refusals then costs no disk write each; /api/status adds what is still pending.
    A crash loses at most one tick of counts.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def add(self, round_id: int, code: str) -> None:
        """Count one refusal."""
        with self._lock:
            self._pending[(round_id, code)] = self._pending.get((round_id, code), 0) + 1

    def pending(self) -> dict[tuple[int, str], int]:
        """A copy of the counts not yet written."""
        with self._lock:
            return dict(self._pending)

    def take(self) -> dict[tuple[int, str], int]:
        """Remove and return the pending counts (``put_back`` them if writing fails)."""
        with self._lock:
            taken, self._pending = self._pending, {}
            return taken

    def put_back(self, counts: dict[tuple[int, str], int]) -> None:
        """Return counts that could not be written."""
        with self._lock:
            for key, count in counts.items():
                self._pending[key] = self._pending.get(key, 0) + count
