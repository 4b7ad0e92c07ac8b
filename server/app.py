"""Application factory: ``flask --app server.app run`` or ``fedurl-serve`` (server/cli.py).

Settings come from server/config.py's defaults, then ``instance/config.py``, then ``FEDURL_*``
environment variables, then the ``test_config`` dict. See server/README.md.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import replace
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from server import config as settings
from server import db, dp, errors, logs
from server.aggregate import make_optimizer
from server.cohorts import CohortRules
from server.identity import enrollment_from
from server.ratelimit import OutstandingTickets, RateLimiter, RefusalCounts
from server.rounds import Coordinator, RoundRules
from server.secure import SecureAggregation, SecureRules
from server.strategies import make_aggregator
from server.versions import VersionStore

HEADER_SLACK = 64 * 1024  # safetensors header with 6 metadata fields and every parameter name

# Cross-origin isolation (SharedArrayBuffer, so multi-threaded WASM) on every response.
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                     "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


def create_app(test_config: dict | None = None) -> Flask:
    """Build the server: load settings, open the database, resume the open round, add routes."""
    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.config.from_mapping(settings.defaults())
    app.config.from_pyfile("config.py", silent=True)
    app.config.update(settings.from_environ())
    if test_config is not None:
        unknown = sorted(set(test_config) - set(app.config))
        if unknown:
            raise ValueError(f"unknown settings {unknown}")
        app.config.update(test_config)
    app.config["DATA_DIR"] = app.config["DATA_DIR"] or app.instance_path
    app.config["DATABASE_URL"] = (app.config["DATABASE_URL"]
                                  or f"sqlite:///{Path(app.config['DATA_DIR']).resolve() / 'fedurl.sqlite3'}")
    settings.check(app.config)
    app.config["MAX_STALENESS"] = settings.max_staleness(app.config)  # admin status shows what applies
    logs.configure(app.config["LOG_LEVEL"])

    db.init_app(app)
    coordinator = _start_coordinator(app)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPDATE_BYTES"] or _update_bytes(coordinator.manifest)
    app.extensions["fedurl.limits"] = {
        "client": RateLimiter(app.config["TICKETS_PER_CLIENT_PER_MIN"]),
        "addr": RateLimiter(app.config["REQUESTS_PER_ADDR_PER_MIN"])}
    app.extensions["fedurl.tickets"] = OutstandingTickets(app.config["MAX_TICKETS_PER_ADDR"])
    app.extensions["fedurl.refusals"] = RefusalCounts()
    app.extensions["fedurl.enrollment"] = enrollment_from(
        settings.identity_proofs(app.config), app.config["POW_DIFFICULTY"], app.config["POW_TTL_S"],
        app.config["ENROLL_HMAC_KEY"], app.config["ENROLL_ED25519_PUBLIC_KEY"])

    if app.config["PROXY_HOPS"] > 0:  # behind nginx (fedurl-deploy): limits see the client, not the proxy
        hops = app.config["PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    errors.init_app(app)
    app.after_request(_isolate)
    from server import admin, api, web
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(web.bp)
    if app.config["TICK_INTERVAL_S"] > 0:
        _start_ticker(app, app.config["TICK_INTERVAL_S"])
    return app


def _start_coordinator(app: Flask) -> Coordinator:
    """Build the coordinator from settings and resume (or start) the federation."""
    cfg = app.config
    rules = RoundRules(min_clients=cfg["MIN_CLIENTS"], floor=cfg["MIN_CLIENTS_FLOOR"],
                       deadline_s=cfg["ROUND_DEADLINE_S"], ticket_ttl_s=cfg["TICKET_TTL_S"],
                       max_staleness=cfg["MAX_STALENESS"], staleness_exponent=cfg["STALENESS_EXPONENT"],
                       max_update_norm=cfg["MAX_UPDATE_NORM"], max_weight_abs=cfg["MAX_WEIGHT_ABS"],
                       buffered=cfg["SCHEDULE"] == "buffered", per_network=cfg["MAX_MEMBERS_PER_NETWORK"],
                       cohort=None if cfg["SELECTION"] == "open" else CohortRules(
                           goal=cfg["MIN_CLIENTS"], over_selection=cfg["OVER_SELECTION"],
                           window_s=cfg["SELECTION_WINDOW_S"], per_network=cfg["MAX_MEMBERS_PER_NETWORK"],
                           poll_s=cfg["CHECKIN_POLL_S"]))
    privacy = dp.settings_from(cfg, rules.cohort.target if rules.cohort else None)
    if rules.cohort is not None and privacy.on:  # the accountant's N is then a lower bound by construction
        rules = replace(rules, cohort=replace(rules.cohort, min_eligible=privacy.population))
    bounded = None if cfg["INFLUENCE"] == "none" or privacy.on else {  # DP's clip bounds influence
        "cap_factor": cfg["WEIGHT_CAP_FACTOR"], "clip_initial": cfg["CLIP_INITIAL_NORM"],
        "clip_quantile": cfg["CLIP_QUANTILE"], "clip_learning_rate": cfg["CLIP_LEARNING_RATE"],
        "clip_ceiling": cfg["MAX_UPDATE_NORM"]}

    def new_optimizer():
        """A fresh server optimizer as configured."""
        return make_optimizer(cfg["SERVER_OPTIMIZER"], lr=cfg["SERVER_LR"], momentum=cfg["SERVER_MOMENTUM"],
                              beta1=cfg["ADAM_BETA1"], beta2=cfg["ADAM_BETA2"], tau=cfg["ADAM_TAU"])

    secure = None
    if cfg["AGGREGATION"] == "secure":  # per-update defences cannot see a masked input: none apply
        bounded = None
        secure = SecureAggregation(SecureRules(
            clip=cfg["SECURE_CLIP"], bits=cfg["SECURE_BITS"], min_cohort=cfg["SECURE_MIN_COHORT"],
            phase_s=cfg["SECURE_PHASE_S"], noise_multiplier=cfg["DP_NOISE_MULTIPLIER"]))

    def new_aggregator():
        """A fresh aggregation strategy as configured, inside the DP wrapper (noise, or the ledger only)."""
        return dp.DifferentiallyPrivate(make_aggregator(cfg["AGGREGATOR"], bounded,
                                                        trim_fraction=cfg["TRIM_FRACTION"]), privacy)

    new_optimizer()  # fail at start-up, not at the first round's end, on a misspelt optimizer
    store = VersionStore(Path(cfg["DATA_DIR"]))
    coordinator = Coordinator(db.get_engine(app), store, rules, new_optimizer, new_aggregator,
                              secure=secure)
    app.extensions["fedurl.gate"] = "off"
    coordinator.start(cfg["BUNDLE_DIR"], lambda manifest: _gate(app, store, manifest))
    app.extensions["fedurl.coordinator"] = coordinator
    return coordinator


def _gate(app: Flask, store: VersionStore, manifest: dict):
    """The publish gate for a federation whose current manifest is this, or None.

    Its state for /api/status goes in ``fedurl.gate``: "on", "off" (PUBLISH_GATE), or
    "unavailable" when the bundle carries no validation set (bundles exported before [T2]; the
    tests' placeholder bundle): then every safe result is published, and start-up warns.
    """
    if app.config["PUBLISH_GATE"] == "off":
        return None
    from server.gate import ValidationGate, validation_urls  # onnxruntime: only when a gate runs

    urls = validation_urls(Path(app.config["DATA_DIR"]), manifest, app.config["BUNDLE_DIR"])
    if not urls:
        app.extensions["fedurl.gate"] = "unavailable"
        logs.event("gate_unavailable", level=logging.WARNING,
                   reason="the bundle has no validation set (re-export it with fedurl-export)")
        return None
    app.extensions["fedurl.gate"] = "on"
    return ValidationGate(store, urls, app.config["GATE_TOLERANCE"])


def _update_bytes(manifest: dict) -> int:
    """Body limit for an update: every parameter as float32, plus the header."""
    elements = sum(math.prod(p["shape"]) for p in manifest["parameters"])
    return 4 * elements + HEADER_SLACK


def _isolate(response):
    """Add the cross-origin isolation headers."""
    response.headers.update(ISOLATION_HEADERS)
    return response


def housekeeping(app: Flask) -> None:
    """What the ticker does: close a round past its deadline, write the refusal counts in one
    commit, prune expired tickets (database and per-address slots).
    """
    coordinator = app.extensions["fedurl.coordinator"]
    coordinator.tick()  # draws a due cohort, closes or abandons a round past its deadline
    refusals = app.extensions["fedurl.refusals"]
    counts = refusals.take()
    try:
        if counts:
            with db.transaction(db.get_engine(app)) as conn:
                for (round_id, code), count in counts.items():
                    db.add_rejections(conn, round_id, code, count)
    except Exception:
        refusals.put_back(counts)
        raise
    coordinator.prune_tickets()
    app.extensions["fedurl.tickets"].prune(coordinator.clock())


def _start_ticker(app: Flask, interval: float) -> None:
    """Run ``housekeeping`` every interval seconds, even when no request arrives."""
    def run():
        """Tick forever (a daemon thread: it ends with the process)."""
        down = False
        while True:
            threading.Event().wait(interval)
            down = tick(app, down)

    threading.Thread(target=run, name="fedurl-deadlines", daemon=True).start()


def tick(app: Flask, down: bool) -> bool:
    """One ``housekeeping`` run of the ticker; whether the database is unavailable after it.

    An unavailable database is logged once when it starts (``tick_failed``, one line) and once when
    a tick succeeds again (``tick_recovered``): a traceback every tick for as long as the database
    is down only buried the logs. Any other failure logs its traceback every time.
    """
    try:
        housekeeping(app)
    except db.DatabaseUnavailable as exc:
        if not down:
            logs.event("tick_failed", level=logging.ERROR, error=str(exc))
        return True
    except Exception:  # a bug or a full disk: log, and try again next tick
        logs.event("tick_failed", level=logging.ERROR, exc_info=True)
        return down
    if down:
        logs.event("tick_recovered", level=logging.WARNING)
    return False
