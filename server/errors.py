"""Client errors as JSON: ``{"error": "<stable_code>", "message": "<human sentence>"}`` with a 4xx.

Views raise ``ApiError``; the coordinator raises domain refusals (``server.refusals``), which
``STATUS`` maps to their HTTP status here, so no domain code knows HTTP. werkzeug's own HTTP
errors (404, 405, 413) under /api/ are turned into the same shape so a client never has to parse
HTML. A broken database connection (``db.DatabaseUnavailable``) is a 503 the client retries.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from server import db, refusals

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 500: "internal_error"}


# HTTP status of each domain refusal (docs/PROTOCOL.md, Errors)
STATUS: dict[type[refusals.Refused], int] = {
    refusals.UnknownBaseVersion: 400,
    refusals.TicketInvalid: 403, refusals.TicketMismatch: 403, refusals.TicketExpired: 403,
    refusals.NoSuchVersion: 404,
    refusals.StaleVersion: 409, refusals.TicketReused: 409, refusals.TicketSpent: 409,
    refusals.VersionMismatch: 409,
    refusals.DuplicateClient: 409, refusals.EmptyRound: 409, refusals.NotEarlier: 409,
    refusals.VersionDamaged: 409, refusals.UnsafeWeights: 409,
    refusals.NotSelected: 403, refusals.NotEnrolled: 403, refusals.RoundClosed: 409,
    refusals.PrivacyBudgetSpent: 403,
    refusals.SecureOnly: 409, refusals.NotSecure: 409, refusals.WrongSender: 403, refusals.WrongPhase: 409,
    refusals.BadSecureMessage: 400,
    refusals.NetworkFull: 429,  # not the update's fault: the same upload succeeds once the buffer stepped
}


class ApiError(Exception):
    """A refused request: a stable machine code, a sentence for people, and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
        self.headers = headers or {}


def error_response(code: str, message: str, status: int, headers: dict | None = None):
    """The JSON error response."""
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _handle_api_error(error: ApiError):
    """Render an ApiError."""
    return error_response(error.code, error.message, error.status, error.headers)


def _handle_refusal(refusal: refusals.Refused):
    """Render a domain refusal with the status its class maps to (400 if unmapped)."""
    return error_response(refusal.code, refusal.message, STATUS.get(type(refusal), 400))


def _handle_http_error(error: HTTPException):
    """JSON for werkzeug's errors under /api/, its default HTML elsewhere."""
    if not request.path.startswith("/api/"):
        return error
    message = error.description or error.name
    if error.code == 413:
        message = f"request body is larger than the {request.max_content_length} byte limit"
    status = error.code or 400
    return error_response(HTTP_CODES.get(status, "bad_request"), message, status)


def _handle_database_unavailable(error: db.DatabaseUnavailable):
    """A server-side fault the next try fixes: 503 with a short Retry-After."""
    return error_response(error.code, str(error), 503, {"Retry-After": "1"})


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(refusals.Refused, _handle_refusal)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(db.DatabaseUnavailable, _handle_database_unavailable)
