"""The client protocol (docs/PROTOCOL.md): model, files, tickets, updates, status.

This blueprint builds every HTTP document (the /api/model file URLs, the /api/status JSON, ISO
times); the coordinator hands it plain values and raises ``server.refusals``, which
``server.errors`` turns into JSON errors.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from formats.update import MAX_VERSION
from server import db, logs
from server.dp import LEDGER, version_epsilon
from server.errors import ApiError
from server.identity import IdentityError, network_of
from server.refusals import NotEnrolled, Refused
from server.rounds import Coordinator
from server.secure import SecureAggregation
from server.validation import check_client_id, check_delta, decode_upload, json_body, upload_meta
from server.versions import iso
from server.web import send_encoded

bp = Blueprint("api", __name__, url_prefix="/api")

SHA256 = re.compile(r"[0-9a-f]{64}")
ONE_YEAR_S = 31_536_000
# refusals here are counted by code in /api/status
COUNTED = {"api.tickets", "api.updates", "api.enrollments", "api.checkins", "api.secure_send"}
IDENTITY_STATUS = {"puzzle_busy": 429}  # every other IdentityError code is a 403
BODY_FILE_HEADER = "X-Fedurl-Body-File"  # the trusted front's file of an upload body (FRONT_BODY_DIR)
BODY_FILE_NAME = re.compile(r"[0-9]{1,20}")  # nginx names its temp files with digits only
HISTORY = 200  # rounds and versions listed in a status document
NO_UPDATES = {"participants": 0, "examples": 0, "loss_before": None, "loss_after": None,
              "mean_staleness": 0.0}


def coordinator() -> Coordinator:
    """The app's round coordinator."""
    return current_app.extensions["fedurl.coordinator"]


def rate_limit(kind: str, key: str) -> None:
    """Take a token from the kind ("client" or "addr") bucket of key.

    :raise ApiError: rate_limited (429, with Retry-After) when the bucket is empty.
    """
    wait = current_app.extensions["fedurl.limits"][kind].acquire(key, time.monotonic())
    if wait > 0:
        who = "client" if kind == "client" else "address"
        raise ApiError("rate_limited", f"too many requests from this {who}; retry in {wait:.0f} s", 429,
                       {"Retry-After": str(max(1, round(wait)))})


@bp.after_request
def count_refusals(response):
    """Count (in memory: a refusal writes nothing) and log refused ticket and update requests."""
    if request.endpoint in COUNTED and response.status_code >= 400 and response.is_json:
        code = response.get_json()["error"]
        try:
            round_id = coordinator().current()[1]
        except db.DatabaseUnavailable:  # the round as last read: the answer must stay what it is (a 503)
            round_id = coordinator().round.id
        current_app.extensions["fedurl.refusals"].add(round_id, code)
        logs.event("request_refused", path=request.path, status=response.status_code, code=code,
                   addr=request.remote_addr)
    return response


@bp.get("/model")
def model():
    """Name the current global model; cacheable by ETag until the version or round changes."""
    version, round_id, manifest = coordinator().current()
    files = {name: f"/api/files/{entry['sha256']}" for name, entry in manifest["files"].items()}
    response = jsonify(version=version, round=round_id, manifest=manifest, files=files, training=training(),
                       aggregation=current_app.config["AGGREGATION"])
    response.set_etag(f"v{version}-r{round_id}")
    response.cache_control.no_cache = True
    return response.make_conditional(request)


def training() -> dict:
    """Whether the open round takes updates: {"open": true} or why not (e.g. privacy_budget_spent).

    Decided when the round opens, so the /api/model ETag (version, round) covers it.
    """
    try:
        coordinator().admit()
    except Refused as refused:
        return {"open": False, "code": refused.code, "message": refused.message}
    return {"open": True}


def privacy_of_versions(versions: list[int]) -> dict[int, dict]:
    """Each version's epsilon from its manifest, read once per version (manifests never change)."""
    known = current_app.extensions.setdefault("fedurl.version_privacy", {})
    for version in versions:
        if version not in known:
            try:
                known[version] = version_epsilon(coordinator().store.manifest(version))
            except (OSError, ValueError):  # moved aside or damaged: say nothing, try again next time
                return {v: known[v] for v in versions if v in known}
    return {v: known[v] for v in versions}


@bp.get("/files/<sha256>")
def files(sha256: str):
    """Serve a bundle file by content hash: immutable, so a browser fetches each graph once.

    The bytes are checked against the hash first (once per file change): a damaged copy is a
    404, never cached forever under a hash it does not have.
    """
    found = None
    if SHA256.fullmatch(sha256):
        with db.transaction(db.get_engine()) as conn:
            found = db.find_file(conn, sha256)
    if found is None:
        raise ApiError("not_found", f"no file with sha256 {sha256[:64]}", 404)
    path, name = found
    if not coordinator().store.intact(path, sha256):
        logs.event("file_damaged", level=logging.ERROR, path=path, sha256=sha256)
        raise ApiError("not_found", f"the stored copy of {name} ({sha256}) is damaged", 404)
    mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
    response = send_encoded(Path(current_app.config["DATA_DIR"]) / path, mimetype=mimetype, etag=sha256,
                            max_age=ONE_YEAR_S)
    response.cache_control.public = True
    response.cache_control.immutable = True
    return response


def client_request() -> tuple[dict, str]:
    """The JSON object body of a client request and its checked client id (addr rate limit first).

    :raise ApiError: rate_limited, bad_content_type, malformed_json, bad_client_id.
    """
    rate_limit("addr", request.remote_addr or "-")
    if not request.is_json:
        raise ApiError("bad_content_type", "send the request as application/json", 415)
    body = json_body(request.get_data(cache=False))  # never raises: deep nesting, huge numbers are None
    if not isinstance(body, dict):
        raise ApiError("malformed_json", 'body must be a JSON object like {"client_id": "..."}')
    return body, check_client_id(body.get("client_id"))


def require_enrolled(client_id: str) -> None:
    """:raise NotEnrolled: when IDENTITY asks for proofs and client_id never gave them."""
    if current_app.extensions["fedurl.enrollment"].required:
        with db.transaction(db.get_engine()) as conn:
            if not db.is_enrolled(conn, client_id):
                raise NotEnrolled(f"client {client_id} has not enrolled: GET /api/puzzle, then POST "
                                  "/api/enrollments")


def remote_network() -> str:
    """The /24 or /56 of the remote address (behind a proxy, the proxy's)."""
    try:
        return network_of(request.remote_addr or "")
    except ValueError:
        return "unknown"


@bp.get("/puzzle")
def puzzle():
    """A fresh proof-of-work puzzle (stateless, signed) and which proofs enrollment needs."""
    rate_limit("addr", request.remote_addr or "-")
    enrollment = current_app.extensions["fedurl.enrollment"]
    answer: dict = {"requires": enrollment.proofs}
    if enrollment.puzzles is not None:
        issued = enrollment.puzzles.issue(coordinator().clock())
        answer.update(puzzle=issued.puzzle, difficulty=issued.difficulty, expires_at=iso(issued.expires))
    response = jsonify(answer)
    response.cache_control.no_store = True
    return response


@bp.post("/enrollments")
def enrollments():
    """Enroll a client id with the proofs IDENTITY asks for (once; again is a no-op 200)."""
    body, client_id = client_request()
    enrollment, now = current_app.extensions["fedurl.enrollment"], coordinator().clock()
    with db.transaction(db.get_engine()) as conn:
        if db.is_enrolled(conn, client_id):
            return {"client_id": client_id, "enrolled": True}, 200
    try:
        proof = enrollment.verify(body, client_id, now)
    except IdentityError as exc:
        raise ApiError(exc.code, str(exc), IDENTITY_STATUS.get(exc.code, 403)) from None
    with db.transaction(db.get_engine()) as conn:
        db.enroll(conn, client_id, proof, remote_network(), now)
    logs.event("client_enrolled", client=client_id, proof=proof, network=remote_network())
    return {"client_id": client_id, "enrolled": True}, 201


@bp.post("/checkins")
def checkins():
    """Ask to take part in a round: waiting, selected (then take a ticket) or not_selected."""
    _, client_id = client_request()
    require_enrolled(client_id)
    answer = coordinator().check_in(client_id, remote_network())
    deadline = answer["deadline"]
    return {**answer, "deadline": iso(deadline) if deadline is not None else None,
            "retry_after_s": round(answer["retry_after_s"], 3)}, 200


@bp.post("/tickets")
def tickets():
    """Issue a single-use round ticket for the current version, or for an update's older base
    version within MAX_STALENESS (cohorts: to members only).
    """
    body, client_id = client_request()
    base_version = body.get("base_version")
    if base_version is not None and (type(base_version) is not int or not 0 <= base_version <= MAX_VERSION):
        raise ApiError("bad_metadata", "base_version must be an integer version number (or left out: the "
                                       "current version)")
    rate_limit("client", client_id)
    require_enrolled(client_id)
    outstanding, addr = current_app.extensions["fedurl.tickets"], request.remote_addr or "-"
    slot = reserve_ticket_slot(outstanding, addr)
    try:
        ticket = coordinator().issue_ticket(client_id, base_version)
    except BaseException:
        outstanding.release(addr, slot)
        raise
    outstanding.bind(addr, slot, db.ticket_digest(ticket["ticket"]))
    return {**ticket, "expires_at": iso(ticket["expires_at"])}, 201


def reserve_ticket_slot(outstanding, addr: str) -> int:
    """Reserve one of the address's MAX_TICKETS_PER_ADDR unused-ticket slots.

    :raise ApiError: rate_limited (429, with Retry-After) while all are taken.
    """
    now = coordinator().clock()
    slot, wait = outstanding.reserve(addr, now, now + coordinator().rules.ticket_ttl_s)
    if slot is None:
        raise ApiError("rate_limited", f"this address holds {outstanding.limit} unused tickets; use one or "
                                       f"retry in {wait:.0f} s", 429,
                       {"Retry-After": str(max(1, round(wait)))})
    return slot


@bp.post("/updates")
def updates():
    """Accept one client's weight delta (safetensors), 202 once it is stored."""
    rate_limit("addr", request.remote_addr or "-")
    if request.mimetype != "application/octet-stream":
        raise ApiError("bad_content_type", "send the update as application/octet-stream safetensors", 415)
    max_examples = current_app.config["MAX_NUM_EXAMPLES"]
    with upload_body() as (body, source):
        # the ticket first (header only, one read): a made-up, used or expired one costs no decode or write
        network = remote_network()
        coordinator().vet_ticket(upload_meta(body, max_examples), network)
        update = decode_upload(body, max_examples)
        tensors, meta = update.tensors, update.meta
        norm = check_delta(tensors, coordinator().parameters(), current_app.config["MAX_UPDATE_NORM"])[1]
        accepted = coordinator().submit(meta, norm, body, source, network)
    current_app.extensions["fedurl.tickets"].used(db.ticket_digest(meta.ticket))
    return accepted, 202


@contextmanager
def upload_body() -> Iterator[tuple[bytes | mmap.mmap, int | None]]:
    """An upload's body and the file it is in: the request's bytes and None, or, behind the
    trusted front (``FRONT_BODY_DIR``), an mmap of the file its BODY_FILE_HEADER names and an open
    descriptor of that file (the app then never reads the body from its socket, and the spool
    links that very file, whatever its name points to by then).

    :raise ApiError: bad_body_file (400) for the header when no front is trusted, or a name that is
        not a plain file directly in FRONT_BODY_DIR; payload_too_large past MAX_CONTENT_LENGTH.
    """
    named, folder = request.headers.get(BODY_FILE_HEADER), current_app.config["FRONT_BODY_DIR"]
    if named is None or (folder and not named):  # "" from the front: nginx wrote no file (no body)
        yield request.get_data(cache=False), None
        return
    if not folder:
        raise ApiError("bad_body_file", f"this server takes no {BODY_FILE_HEADER}: send the update as "
                                        "the request body")
    path = body_file(named, Path(folder))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO would block
    except OSError:
        raise ApiError("bad_body_file", f"{BODY_FILE_HEADER} names no readable file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:  # a hard link to another file
            raise ApiError("bad_body_file", f"{BODY_FILE_HEADER} names no plain file of its own")
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        if info.st_size > limit:  # nginx's client_max_body_size refuses it first; a second check
            raise ApiError("payload_too_large", f"request body is larger than the server limit ({limit} "
                                                "bytes)", 413)
        if info.st_size == 0:
            yield b"", fd
            return
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped, fd
    finally:
        os.close(fd)


def body_file(named: str, folder: Path) -> Path:
    """The path a trusted front named, if it lies directly in folder: absolute, no ``..``, no
    symbolic link on the way, a digits-only name as nginx writes them.

    :raise ApiError: bad_body_file (400) otherwise.
    """
    path = Path(named)
    if not (path.is_absolute() and ".." not in path.parts and BODY_FILE_NAME.fullmatch(path.name)
            and path.parent == folder.resolve() and path.resolve() == path):
        raise ApiError("bad_body_file", f"{BODY_FILE_HEADER} must name a file of the front's body folder")
    return path


# -- [T1] secure rounds (server/secure.py; docs/PROTOCOL.md "Secure rounds") -------------------------

SECURE_SENDS = ("advertise", "shares", "masked", "unmask")  # POST /api/secure/<kind>: privacy.messages bytes
SECURE_FETCHES = ("config", "roster", "shares", "unmask")  # GET /api/secure/<what>


def secure_request(name: str, known: tuple[str, ...]) -> tuple[SecureAggregation, str]:
    """The secure mode and the bearer round ticket of a member's request for name (addr rate limit
    first).

    :raise ApiError: not_found (name not in known), rate_limited, not_secure (plain mode),
        ticket_invalid (no bearer ticket).
    """
    if name not in known:
        raise ApiError("not_found", f"no /api/secure/{name[:32]}; one of {', '.join(known)}", 404)
    rate_limit("addr", request.remote_addr or "-")
    secure = coordinator().secure
    if secure is None:
        raise ApiError("not_secure", "this server aggregates in plain mode (AGGREGATION=plain)", 409)
    scheme, _, ticket = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not 0 < len(ticket.strip()) <= 128:
        raise ApiError("ticket_invalid", "send the round ticket (POST /api/tickets) as Authorization: "
                                         "Bearer <ticket>", 403)
    return secure, ticket.strip()


@bp.get("/secure")
def secure_state():
    """Where the member's secure round stands: round, phase, index, cohort_size, deadline."""
    secure, ticket = secure_request("", ("",))
    state = secure.state(coordinator(), ticket)
    return {**state, "deadline": iso(state["deadline"])}


@bp.get("/secure/<what>")
def secure_fetch(what: str):
    """A server message for the member (CONFIG, ROSTER, its SHARES_FOR, UNMASK_REQUEST) as bytes."""
    secure, ticket = secure_request(what, SECURE_FETCHES)
    response = current_app.response_class(secure.fetch(coordinator(), ticket, what),
                                          mimetype="application/octet-stream")
    response.cache_control.no_store = True
    return response


@bp.post("/secure/<kind>")
def secure_send(kind: str):
    """Accept one member's message of the current phase (ADVERTISE, SHARES, MASKED_INPUT, UNMASK)."""
    secure, ticket = secure_request(kind, SECURE_SENDS)
    if request.mimetype != "application/octet-stream":
        raise ApiError("bad_content_type", "send the message as application/octet-stream", 415)
    answer = secure.submit(coordinator(), ticket, kind, request.get_data(cache=False))
    current_app.extensions["fedurl.tickets"].used(db.ticket_digest(ticket))  # in use: frees its address slot
    return answer, 202


@bp.get("/status")
def status():
    """Rounds, participants, accepted and refused counts, losses, version history."""
    return status_document()


def status_document() -> dict:
    """The /api/status JSON: live round, totals, rejections by code, round and version history.

    Refusal counts are the stored ones plus those the ticker has not written yet.
    """
    progress = coordinator().progress()
    with db.transaction(db.get_engine()) as conn:
        rounds = db.recent_rounds(conn, HISTORY)
        ids = [row["id"] for row in rounds]
        stats, rejected = db.round_stats(conn, ids), db.rejections_by_round(conn, ids)
        sizes = db.cohort_sizes(conn, ids)
        versions = db.recent_versions(conn, HISTORY)
        accepted, by_code = db.accepted_count(conn), db.rejections_by_code(conn)
        quarantined = db.quarantined_count(conn)
    for (round_id, code), count in current_app.extensions["fedurl.refusals"].pending().items():
        by_code[code] = by_code.get(code, 0) + count
        per_round = rejected.setdefault(round_id, {})
        per_round[code] = per_round.get(code, 0) + count
    strategy = coordinator().aggregator
    for row in rounds:
        published = strategy.publishable(stats.get(row["id"], NO_UPDATES))
        row.update(published, rejected=rejected.get(row["id"], {}),
                   **sizes.get(row["id"], {"checkins": 0, "cohort": 0}))
        row.pop("carried", None)
        row["selected_at"] = iso(row["selected_at"]) if row["selected_at"] is not None else None
        row["opened_at"], row["deadline"] = iso(row["opened_at"]), iso(row["deadline"])
        row["closed_at"] = iso(row["closed_at"]) if row["closed_at"] is not None else None
    current, rules, secure = progress.round, progress.rules, coordinator().secure
    influence = dict(progress.report)
    privacy = influence.pop(LEDGER, None)
    by_version = privacy_of_versions([v["version"] for v in versions])
    return {"version": progress.version, "optimizer": progress.optimizer, "aggregator": progress.aggregator,
            "round": {"id": current.id, "base_version": current.base_version, "updates": progress.updates,
                      "opened_at": iso(current.opened_at), "deadline": iso(current.deadline),
                      "min_clients": rules.min_clients, "min_clients_floor": rules.floor,
                      "phase": current.phase,
                      "selection": "open" if rules.cohort is None else "cohort",
                      "cohort_target": rules.cohort.target if rules.cohort else None,
                      "secure": secure.progress() if secure is not None else None},
            "aggregation": current_app.config["AGGREGATION"],
            "influence": influence, "gate": current_app.extensions["fedurl.gate"],
            "privacy": privacy, "training": training(),
            "accepted": accepted, "rejected": dict(sorted(by_code.items())), "quarantined": quarantined,
            "rounds": rounds,
            "versions": [{"version": v["version"], "parent": v["parent"], "kind": v["kind"],
                          "round": v["round_id"], "created": iso(v["created"]),
                          **by_version.get(v["version"], {"epsilon": None, "mode": None})} for v in versions]}
