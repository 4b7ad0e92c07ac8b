"""The client protocol (docs/PROTOCOL.md): model, files, tickets, updates, status."""

from __future__ import annotations

import re
import time

from flask import Blueprint, current_app, jsonify, request

from server import logs
from server.errors import ApiError
from server.rounds import Coordinator
from server.status import status_document
from server.validation import check_client_id, check_delta, decode_payload, json_body, parse_metadata
from server.web import send_encoded

bp = Blueprint("api", __name__, url_prefix="/api")

SHA256 = re.compile(r"[0-9a-f]{64}")
ONE_YEAR_S = 31_536_000
COUNTED = {"api.tickets", "api.updates"}  # refusals here are counted by code in /api/status


def coordinator() -> Coordinator:
    """The app's round coordinator."""
    return current_app.extensions["fedurl.coordinator"]


def rate_limit(kind: str, key: str) -> None:
    """Take a token from the kind ("client" or "addr") bucket of key.

    :raise ApiError: rate_limited (429, with Retry-After) when the bucket is empty.
    """
    wait = current_app.extensions["fedurl.limits"][kind].acquire(key, time.monotonic())
    if wait > 0:
        raise ApiError("rate_limited", f"too many requests from this {'client' if kind == 'client' else 'address'};"
                                       f" retry in {wait:.0f} s", 429, {"Retry-After": str(max(1, round(wait)))})


@bp.after_request
def count_refusals(response):
    """Count (and log) refused ticket and update requests by error code."""
    if request.endpoint in COUNTED and response.status_code >= 400 and response.is_json:
        code = response.get_json()["error"]
        coordinator().count_rejection(code)
        logs.event("request_refused", path=request.path, status=response.status_code, code=code,
                   addr=request.remote_addr)
    return response


@bp.get("/model")
def model():
    """Name the current global model; cacheable by ETag until the version or round changes."""
    document = coordinator().model_info()
    response = jsonify(document)
    response.set_etag(f"v{document['version']}-r{document['round']}")
    response.cache_control.no_cache = True
    return response.make_conditional(request)


@bp.get("/files/<sha256>")
def files(sha256: str):
    """Serve a bundle file by content hash: immutable, so a browser fetches each graph once."""
    found = coordinator().find_file(sha256) if SHA256.fullmatch(sha256) else None
    if found is None:
        raise ApiError("not_found", f"no file with sha256 {sha256[:64]}", 404)
    path, name = found
    mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
    response = send_encoded(path, mimetype=mimetype, etag=sha256, max_age=ONE_YEAR_S)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response


@bp.post("/tickets")
def tickets():
    """Issue a single-use round ticket for the current version."""
    rate_limit("addr", request.remote_addr or "-")
    if not request.is_json:
        raise ApiError("bad_content_type", "send the ticket request as application/json", 415)
    body = json_body(request.get_data(cache=False))  # never raises: deep nesting, huge numbers are None
    if not isinstance(body, dict):
        raise ApiError("malformed_json", 'body must be a JSON object like {"client_id": "..."}')
    client_id = check_client_id(body.get("client_id"))
    rate_limit("client", client_id)
    return coordinator().issue_ticket(client_id), 201


@bp.post("/updates")
def updates():
    """Accept one client's weight delta (safetensors), 202 once it is stored."""
    rate_limit("addr", request.remote_addr or "-")
    if request.mimetype != "application/octet-stream":
        raise ApiError("bad_content_type", "send the update as application/octet-stream safetensors", 415)
    body = request.get_data(cache=False)
    tensors, metadata = decode_payload(body)
    meta = parse_metadata(metadata, current_app.config["MAX_NUM_EXAMPLES"])
    delta, norm = check_delta(tensors, coordinator().manifest["parameters"], current_app.config["MAX_UPDATE_NORM"])
    return coordinator().submit(meta, delta, norm, body), 202


@bp.get("/status")
def status():
    """Rounds, participants, accepted and refused counts, losses, version history."""
    return status_document(coordinator().engine, coordinator().live())
