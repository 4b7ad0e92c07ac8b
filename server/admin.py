"""Admin routes under /api/admin, each behind ``Authorization: Bearer <ADMIN_TOKEN>``.

With no ADMIN_TOKEN configured every admin route answers 403: nothing admin is reachable by
default.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, current_app, request

from server.api import coordinator, status_document
from server.config import SETTINGS
from server.errors import ApiError

bp = Blueprint("admin", __name__, url_prefix="/api/admin")


@bp.before_request
def require_token() -> None:
    """Refuse the request unless it carries the admin token.

    :raise ApiError: admin_disabled (403) without a configured token, unauthorized (401) otherwise.
    """
    token = current_app.config["ADMIN_TOKEN"]
    if not token:
        raise ApiError("admin_disabled", "admin routes are disabled: set ADMIN_TOKEN to enable them", 403)
    sent = request.headers.get("Authorization", "")
    scheme, _, value = sent.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        raise ApiError("unauthorized", "missing or wrong admin bearer token", 401,
                       {"WWW-Authenticate": 'Bearer realm="fedurl-admin"'})


@bp.get("/status")
def status():
    """The public status plus the effective settings (the token itself withheld)."""
    document = status_document()
    document["settings"] = {k: current_app.config[k] for k in SETTINGS if k != "ADMIN_TOKEN"}
    return document


@bp.post("/close")
def close():
    """Close the open round now with the updates it has."""
    return coordinator().close_now()


@bp.post("/rollback")
def rollback():
    """Publish an earlier version's weights as the next version: ``{"version": int}``."""
    body = request.get_json(silent=True)
    version = body.get("version") if isinstance(body, dict) else None
    if type(version) is not int:
        raise ApiError("bad_request", 'send JSON {"version": <int>} naming the version to roll back to')
    return coordinator().rollback(version)
