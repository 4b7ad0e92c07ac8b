"""Admin routes under /api/admin, each behind ``Authorization: Bearer <ADMIN_TOKEN>``.

With no ADMIN_TOKEN configured every admin route answers 403: nothing admin is reachable by
default. Wrong tokens are throttled per remote address (ADMIN_FAILURES_PER_ADDR_PER_MIN): once an
address has used up its allowance every admin request from it is 429, the right token included,
so guessing gains nothing from speed.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import OrderedDict

from flask import Blueprint, current_app, request

from server import logs
from server.api import coordinator, status_document
from server.config import shown
from server.errors import ApiError
from server.validation import json_body

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
THROTTLE = "fedurl.admin_throttle"


class FailureThrottle:
    """Failed admin attempts per remote address: a token bucket of ``per_minute`` (burst and refill).

    Unlike a rate limit on all requests, only failures take tokens, and ``wait`` looks without
    taking one, so a locked-out address is refused before its token is even compared. In memory;
    at most max_keys addresses, the least recently failed forgotten first.
    """

    def __init__(self, per_minute: float, max_keys: int = 10_000):
        self.rate, self.burst, self.max_keys = per_minute / 60.0, max(per_minute, 1.0), max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # addr -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        """Tokens key has at now (caller holds the lock)."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def wait(self, key: str, now: float) -> float:
        """0.0 if key may try, else the seconds until it may try again."""
        with self._lock:
            tokens = self._tokens(key, now)
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")

    def failed(self, key: str, now: float) -> None:
        """Record one failure of key."""
        with self._lock:
            self._buckets[key] = (max(0.0, self._tokens(key, now) - 1.0), now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)


@bp.record_once
def _make_throttle(state) -> None:
    """One throttle per app, made when the blueprint is registered."""
    state.app.extensions[THROTTLE] = FailureThrottle(state.app.config["ADMIN_FAILURES_PER_ADDR_PER_MIN"])


def clock() -> float:
    """Monotonic seconds (a function, so tests can move time)."""
    return time.monotonic()


@bp.before_request
def require_token() -> None:
    """Refuse the request unless it carries the admin token and its address is not locked out.

    :raise ApiError: admin_disabled (403) without a configured token, rate_limited (429) after too
        many failures from this address, unauthorized (401) for a missing or wrong token.
    """
    token = current_app.config["ADMIN_TOKEN"]
    if not token:
        raise ApiError("admin_disabled", "admin routes are disabled: set ADMIN_TOKEN to enable them", 403)
    throttle: FailureThrottle = current_app.extensions[THROTTLE]
    addr, now = request.remote_addr or "-", clock()
    wait = throttle.wait(addr, now)
    if wait > 0:
        raise ApiError("rate_limited", f"too many wrong admin tokens from here; retry in {wait:.0f} s",
                       429, {"Retry-After": str(max(1, round(wait)))})
    sent = request.headers.get("Authorization", "")
    scheme, _, value = sent.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        throttle.failed(addr, now)
        logs.event("admin_unauthorized", level=logging.WARNING, addr=addr, path=request.path)
        raise ApiError("unauthorized", "missing or wrong admin bearer token", 401,
                       {"WWW-Authenticate": 'Bearer realm="fedurl-admin"'})


@bp.get("/status")
def status():
    """The public status plus the effective settings (the token withheld, credentials in URLs redacted)."""
    document = status_document()
    document["settings"] = shown(current_app.config)
    return document


@bp.post("/close")
def close():
    """Close the open round now with the updates it has."""
    return coordinator().close_now()


@bp.post("/rollback")
def rollback():
    """Publish an earlier version's weights as the next version: ``{"version": int}``."""
    body = json_body(request.get_data(cache=False)) if request.is_json else None
    version = body.get("version") if isinstance(body, dict) else None
    if type(version) is not int:
        raise ApiError("bad_request", 'send JSON {"version": <int>} naming the version to roll back to')
    return coordinator().rollback(version)
