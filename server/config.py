"""Every server setting in one table: default, type and meaning; environment overrides, type-checked.

Order (``server.app.create_app``): these defaults, then ``config.py`` in the instance folder, then
``FEDURL_<KEY>`` environment variables, then the dict passed to ``create_app`` (tests, the CLI).
Unknown keys are errors rather than silently ignored. server/README.md documents each key.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
ENV_PREFIX = "FEDURL_"
MIN_ADMIN_TOKEN_BYTES = 32  # secrets.token_urlsafe(32) gives 43 bytes, 256 random bits
SECRET_KEYS = ("ADMIN_TOKEN", "ENROLL_HMAC_KEY")  # never shown, not even redacted
SECRET_QUERY = re.compile(r"pass|secret|token|key", re.IGNORECASE)  # URL query parameters shown as ***
REDACTED = "***"
# MAX_STALENESS when unset. Synchronous rounds wait for their cohort, so a delta is at most a round
# late. A FedBuff buffer of K steps while slow devices still train: with C devices training and
# log-normal speeds (sigma 1), a delta is about C/K steps late on average and p99 is about 5 C/K
# (study/fedbuff.py, docs/RESULTS.md: 9 at C = 2K, 24 at C = 5K). 20 refuses 0.4 % of the deltas
# at C = 2K and 1.4 % at C = 5K, the slowest devices' only; each kept one weighs at least
# (1 + 20) ** -0.5, a fifth. A deployment with more devices per buffer raises K or this.
DEFAULT_STALENESS = {"sync": 1, "buffered": 20}


@dataclass(frozen=True)
class Setting:
    """One configuration key: its default, the type its value must have, and what it does."""

    default: object
    type: type
    doc: str
    optional: bool = False  # None allowed


SETTINGS: dict[str, Setting] = {
    "BUNDLE_DIR": Setting(None, str, "bundle imported as the first global version on first start", True),
    "DATA_DIR": Setting(None, str, "versions and the SQLite file live here (default: the instance folder)",
                        True),
    "DATABASE_URL": Setting(None, str, "SQLAlchemy URL (default: sqlite:///DATA_DIR/fedurl.sqlite3)", True),
    "WEB_CLIENT_DIR": Setting(str(REPO / "web_client"), str, "the demo page served at / and /static/"),
    "GZIP_CACHE_BYTES": Setting(64 * 2**20, int, "memory for gzip bodies of page, ORT and model files "
                                                  "(0: never compress)"),
    "ADMIN_TOKEN": Setting(None, str, "bearer token for /api/admin/... (at least 32 bytes); unset or empty "
                                      "disables admin (403)", True),
    "ADMIN_FAILURES_PER_ADDR_PER_MIN": Setting(5.0, float, "wrong admin tokens allowed per remote address "
                                                           "(burst and per minute); past that, 429"),
    "MIN_CLIENTS": Setting(10, int, "a round closes as soon as this many updates arrived"),
    "MIN_CLIENTS_FLOOR": Setting(2, int, "after the deadline, a round closes once it has this many "
                                         "(no effect above MIN_CLIENTS)"),
    "ROUND_DEADLINE_S": Setting(600.0, float, "seconds after a round opens at which the floor applies"),
    "TICKET_TTL_S": Setting(900.0, float, "seconds a round ticket stays valid"),
    "SCHEDULE": Setting("sync", str, "sync: rounds (a cohort, the goal count or the deadline); buffered: "
                                     "FedBuff, any client trains when it can and every MIN_CLIENTS "
                                     "accepted updates make one server step (needs SELECTION=open, "
                                     "AGGREGATION=plain)"),
    "MAX_STALENESS": Setting(None, int, "accept deltas this many versions behind (0: current only; "
                                        "default: 1 with SCHEDULE=sync, 20 with buffered)", True),
    "STALENESS_EXPONENT": Setting(0.5, float, "stale delta weight is (1 + staleness) ** -exponent"),
    "AGGREGATOR": Setting("fedavg", str, "how a round's deltas are combined: fedavg (weighted mean), "
                                         "trimmed_mean or median (coordinate-wise, Yin et al. 2018)"),
    "TRIM_FRACTION": Setting(0.1, float, "trimmed_mean: share of the values cut from each end of "
                                         "every coordinate"),
    "SERVER_OPTIMIZER": Setting("fedavg", str, "fedavg, fedavgm or fedadam"),
    "SERVER_LR": Setting(None, float, "server learning rate (default: 1.0, fedadam 0.01)", True),
    "SERVER_MOMENTUM": Setting(0.9, float, "fedavgm momentum"),
    "ADAM_BETA1": Setting(0.9, float, "fedadam first-moment decay"),
    "ADAM_BETA2": Setting(0.99, float, "fedadam second-moment decay"),
    "ADAM_TAU": Setting(1e-3, float, "fedadam adaptivity (epsilon)"),
    "MAX_UPDATE_NORM": Setting(50.0, float, "largest accepted L2 norm of a whole delta"),
    "MAX_NUM_EXAMPLES": Setting(10_000, int, "largest accepted num_examples of one update"),
    "MAX_UPDATE_BYTES": Setting(None, int, "request body limit (default: float32 model size + 64 KiB)", True),
    "TICKETS_PER_CLIENT_PER_MIN": Setting(6.0, float, "ticket rate limit per client id"),
    "REQUESTS_PER_ADDR_PER_MIN": Setting(600.0, float, "ticket + update rate limit per remote address"),
    "MAX_TICKETS_PER_ADDR": Setting(64, int, "unused, unexpired tickets one remote address may hold"),
    # [T2] who takes part: server-chosen cohorts, identities that cost something (docs/SECURITY.md).
    # Tests, the demo and simulations run many clients from one address: they raise
    # MAX_MEMBERS_PER_NETWORK, lower SELECTION_WINDOW_S and POW_DIFFICULTY (or set IDENTITY "").
    "SELECTION": Setting("cohort", str, "cohort: the server draws each round's cohort among check-ins, "
                                        "only members get tickets; open: any client may take a ticket "
                                        "(and so choose its round)"),
    "OVER_SELECTION": Setting(0.3, float, "cohort: draw MIN_CLIENTS * (1 + this) members (dropouts)"),
    "SELECTION_WINDOW_S": Setting(30.0, float, "cohort: check-ins gather at least this long after a round "
                                               "opens before the cohort is drawn"),
    "MAX_MEMBERS_PER_NETWORK": Setting(1, int, "cohort: members per IPv4 /24 or IPv6 /56 at most, however "
                                               "many client ids it checked in; buffered: a buffer's "
                                               "updates per network at most"),
    "CHECKIN_POLL_S": Setting(5.0, float, "cohort: how often a waiting client is told to check in again"),
    "IDENTITY": Setting("pow", str, "proofs a client id must give to enroll, comma-separated: pow (a "
                                    "hashcash puzzle), token (an operator-signed enrollment token); "
                                    "empty: none"),
    "POW_DIFFICULTY": Setting(18, int, "pow: leading zero bits of SHA-256 (each bit doubles the work; "
                                       "18 is about 1 s in Chromium, 0.5 s in CPython)"),
    "POW_TTL_S": Setting(600.0, float, "pow: seconds a puzzle may be solved in"),
    "ENROLL_HMAC_KEY": Setting(None, str, "token: the operator's HMAC-SHA256 key (at least 32 bytes)", True),
    "ENROLL_ED25519_PUBLIC_KEY": Setting(None, str, "token: the operator's Ed25519 public key (64 hex "
                                                    "characters); the server holds no signing secret", True),
    "INFLUENCE": Setting("bounded", str, "bounded: clip each delta to an adaptive bound and cap each "
                                         "weight near the round's median; none: trust both"),
    "WEIGHT_CAP_FACTOR": Setting(2.0, float, "bounded: a weight is at most this times the round's median"),
    "CLIP_INITIAL_NORM": Setting(5.0, float, "bounded: the first round's clip bound (L2)"),
    "CLIP_QUANTILE": Setting(0.5, float, "bounded: the bound follows this quantile of the update norms"),
    "CLIP_LEARNING_RATE": Setting(0.2, float, "bounded: bound *= exp(-lr * (share at or below - quantile))"),
    # [T1] differential privacy (docs/PRIVACY.md): DP-FedAvg's clipping and Gaussian noise, the
    # accountant's epsilon in every manifest and /api/status, training stops at the budget.
    "DP_NOISE_MULTIPLIER": Setting(0.0, float, "z: the noise on a round's sum of clipped deltas has std "
                                               "z * 2 * DP_CLIP in plain mode, z times the rounded "
                                               "sensitivity in secure mode (0, the default: no DP; every "
                                               "version's epsilon is then infinite and the budget is not "
                                               "enforced; "
                                               "docs/PRIVACY.md says why and when to turn it on)"),
    "DP_CLIP": Setting(1.0, float, "C: each client's delta is scaled down to L2 norm at most this before it "
                                   "is summed (DP on: replaces INFLUENCE's adaptive clip and weight cap)"),
    "DP_DELTA": Setting(1e-6, float, "the delta at which epsilon is reported and the budget is checked"),
    "DP_EPSILON_BUDGET": Setting(10.0, float, "no round opens for training once one more round would "
                                              "take epsilon above this (refusal privacy_budget_spent)"),
    "DP_MIN_POPULATION": Setting(None, int, "the accountant's N, a lower bound of the eligible check-ins a "
                                            "cohort is drawn from: a cohort is drawn only once this many "
                                            "eligible clients checked in (cohort selection, DP on); unset: "
                                            "N = the cohort size, no amplification by sampling (safe, "
                                            "larger epsilon)", True),
    # [T1] secure aggregation of a drawn cohort (server/secure.py, docs/PROTOCOL.md "Secure rounds")
    "AGGREGATION": Setting("secure", str, "secure: members send masked inputs and the server learns only "
                                          "the cohort's sum (needs SELECTION=cohort, MIN_CLIENTS >= 3); "
                                          "plain: each member uploads its update (per-update defences "
                                          "apply)"),
    "SECURE_CLIP": Setting(1.0, float, "secure: each client clips its whole delta to this L2 norm"),
    "SECURE_BITS": Setting(16, int, "secure: bits of each masked word (16: half the float32 upload)"),
    "SECURE_MIN_COHORT": Setting(3, int, "secure: the fewest inputs ever aggregated (at least 3); a round "
                                         "needs max(this, ceil(2n/3)) of its n members at every phase"),
    "SECURE_PHASE_S": Setting(60.0, float, "secure: seconds each phase waits for members that have not sent"),
    "PUBLISH_GATE": Setting("validation", str, "validation: score each candidate on the bundle's public "
                                               "validation set and refuse one worse than its parent by "
                                               "more than GATE_TOLERANCE; off: publish every safe result"),
    "GATE_TOLERANCE": Setting(0.10, float, "relative rise of the validation loss over the parent's that is "
                                           "still published"),
    "MAX_WEIGHT_ABS": Setting(1e4, float, "a round whose new weights are not finite or exceed this "
                                          "absolute value is not published"),
    "TICK_INTERVAL_S": Setting(5.0, float, "how often a background thread checks deadlines (0: off)"),
    "LOG_LEVEL": Setting("INFO", str, "level of the JSON-lines log on stderr"),
    # fedurl-serve (waitress) only; Flask's development server ignores these.
    "CONNECTION_LIMIT": Setting(100, int, "open connections fedurl-serve accepts; "
                                          "more wait in the listen backlog"),
    "IDLE_TIMEOUT_S": Setting(20.0, float, "fedurl-serve closes a connection that has sent nothing of a "
                                           "next request for this long (keep-alive, or since connecting)"),
    "HEADER_TIMEOUT_S": Setting(10.0, float, "fedurl-serve answers 408 and closes when a request's headers "
                                             "are not complete this long after its first byte"),
    "BODY_TIMEOUT_S": Setting(60.0, float, "fedurl-serve answers 408 and closes when a request's body is "
                                           "not complete this long after its headers"),
    # A reverse proxy in front (fedurl-deploy sets PROXY_HOPS=1; its nginx reads the FRONT_ keys).
    "PROXY_HOPS": Setting(0, int, "trusted proxies in front of the app: the client address is the one "
                                  "they put in X-Forwarded-For (0: the connection's peer; never set it "
                                  "when clients can reach the app directly)"),
    "FRONT_BODY_DIR": Setting("", str, "the folder where the trusted front (nginx) writes request bodies: "
                                       "POST /api/updates then takes its body from the file the front "
                                       "names in X-Fedurl-Body-File, which must lie directly in it "
                                       "(fedurl-deploy sets it; empty: that header is refused, 400)"),
    "FRONT_CONNECTIONS_PER_ADDR": Setting(32, int, "fedurl-deploy: requests one client address may have "
                                                   "in progress at once in nginx; more are 429"),
    "FRONT_REQUESTS_PER_ADDR_PER_S": Setting(20.0, float, "fedurl-deploy: requests per second one client "
                                                          "address may make through nginx, sustained"),
    "FRONT_BURST": Setting(200, int, "fedurl-deploy: requests above that rate one address may make at once "
                                     "(a first visit loads about 40 files)"),
}


def defaults() -> dict:
    """The default value of every key."""
    return {key: setting.default for key, setting in SETTINGS.items()}


def from_environ(environ=os.environ) -> dict:
    """Values of ``FEDURL_<KEY>`` variables, parsed by each key's type.

    :raise ValueError: for an unknown ``FEDURL_`` variable or a value of the wrong type.
    """
    values = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):]
        if key not in SETTINGS:
            raise ValueError(f"unknown setting {name}; known: {', '.join(ENV_PREFIX + k for k in SETTINGS)}")
        try:
            values[key] = SETTINGS[key].type(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a valid {SETTINGS[key].type.__name__}") from None
    return values


def check(config) -> None:
    """Raise ValueError unless every key has a value of its type (ints are fine for floats)."""
    for key, setting in SETTINGS.items():
        value = config.get(key)
        if value is None and setting.optional:
            continue
        allowed = (int, float) if setting.type is float else setting.type
        if not isinstance(value, allowed) or isinstance(value, bool):
            raise ValueError(f"setting {key} must be a {setting.type.__name__}, got {value!r}")
    if config["MIN_CLIENTS"] < 1 or config["MIN_CLIENTS_FLOOR"] < 1:
        raise ValueError("MIN_CLIENTS and MIN_CLIENTS_FLOOR must be at least 1")
    token = config.get("ADMIN_TOKEN")
    if token and len(token.encode()) < MIN_ADMIN_TOKEN_BYTES:
        raise ValueError(f"ADMIN_TOKEN is {len(token.encode())} bytes; it must be at least "
                         f"{MIN_ADMIN_TOKEN_BYTES} (make one with: python -c \"import secrets; "
                         "print(secrets.token_urlsafe(32))\"), or leave it unset to disable admin")
    for key in ("CONNECTION_LIMIT", "IDLE_TIMEOUT_S", "HEADER_TIMEOUT_S", "BODY_TIMEOUT_S"):
        if config[key] <= 0:
            raise ValueError(f"{key} must be positive")
    for key in ("FRONT_CONNECTIONS_PER_ADDR", "FRONT_REQUESTS_PER_ADDR_PER_S", "FRONT_BURST"):
        if config[key] <= 0:
            raise ValueError(f"{key} must be positive")
    if config["PROXY_HOPS"] < 0:
        raise ValueError("PROXY_HOPS must be 0 or more")
    if config["MAX_TICKETS_PER_ADDR"] < 1:
        raise ValueError("MAX_TICKETS_PER_ADDR must be at least 1")
    choices = {"SELECTION": ("cohort", "open"), "INFLUENCE": ("bounded", "none"),
               "PUBLISH_GATE": ("validation", "off")}
    for key, allowed_values in choices.items():
        if config[key] not in allowed_values:
            raise ValueError(f"{key} must be one of {', '.join(allowed_values)}, got {config[key]!r}")
    unknown = set(identity_proofs(config)) - {"pow", "token"}
    if unknown:
        raise ValueError(f"IDENTITY names unknown proofs {sorted(unknown)}; use pow, token")
    if "token" in identity_proofs(config) and not (config["ENROLL_HMAC_KEY"]
                                                   or config["ENROLL_ED25519_PUBLIC_KEY"]):
        raise ValueError("IDENTITY includes token: set ENROLL_HMAC_KEY or ENROLL_ED25519_PUBLIC_KEY")
    if config["MAX_MEMBERS_PER_NETWORK"] < 1 or config["OVER_SELECTION"] < 0:
        raise ValueError("MAX_MEMBERS_PER_NETWORK must be at least 1 and OVER_SELECTION not negative")
    if not (0 <= config["POW_DIFFICULTY"] <= 32):
        raise ValueError("POW_DIFFICULTY is a number of bits from 0 to 32")
    check_dp(config)
    if config["AGGREGATION"] not in ("plain", "secure"):
        raise ValueError(f"AGGREGATION must be one of plain, secure, got {config['AGGREGATION']!r}")
    check_secure(config)
    check_schedule(config)
    if config["WEIGHT_CAP_FACTOR"] < 1 or not 0 < config["CLIP_QUANTILE"] < 1:
        raise ValueError("WEIGHT_CAP_FACTOR must be at least 1 and CLIP_QUANTILE within (0, 1)")


def check_dp(config) -> None:
    """Raise ValueError for DP settings the accountant or the noise cannot honour."""
    z, clip, delta, budget = (config[key] for key in ("DP_NOISE_MULTIPLIER", "DP_CLIP", "DP_DELTA",
                                                      "DP_EPSILON_BUDGET"))
    if not (math.isfinite(z) and z >= 0):
        raise ValueError(f"DP_NOISE_MULTIPLIER must be 0 (no DP) or a positive finite number, got {z!r}")
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"DP_CLIP must be a positive finite L2 norm, got {clip!r}")
    if not 0 < delta < 1:
        raise ValueError(f"DP_DELTA must be within (0, 1) (e.g. 1e-6, below 1 / the number of users), "
                         f"got {delta!r}")
    if not budget > 0:  # NaN fails too; an infinite budget is allowed: account, never stop
        raise ValueError(f"DP_EPSILON_BUDGET must be positive, got {budget!r}")
    population = config.get("DP_MIN_POPULATION")
    if population is not None and population < 1:
        raise ValueError(f"DP_MIN_POPULATION must be at least 1 (or unset), got {population!r}")
    if z > 0 and config["AGGREGATOR"] != "fedavg":
        raise ValueError(f"DP noise is sized for the mean of clipped deltas (AGGREGATOR=fedavg); "
                         f"{config['AGGREGATOR']} can move by more when one client changes, so its "
                         "epsilon would be wrong. Use fedavg, or DP_NOISE_MULTIPLIER=0 (no DP)")


def check_secure(config) -> None:
    """Refuse secure settings under which a round could aggregate fewer than 3 inputs, or never run."""
    if config["SECURE_MIN_COHORT"] < 3:
        raise ValueError("SECURE_MIN_COHORT must be at least 3: the sum of one or two updates is no secret")
    if not 2 <= config["SECURE_BITS"] <= 32 or config["SECURE_CLIP"] <= 0 or config["SECURE_PHASE_S"] <= 0:
        raise ValueError("SECURE_BITS must be in 2..32, SECURE_CLIP and SECURE_PHASE_S positive")
    if config["AGGREGATION"] != "secure":
        return
    if config["SELECTION"] != "cohort":
        raise ValueError("AGGREGATION=secure needs SELECTION=cohort: the server must choose the cohort")
    if config["MIN_CLIENTS"] < config["SECURE_MIN_COHORT"]:
        raise ValueError(f"AGGREGATION=secure: MIN_CLIENTS ({config['MIN_CLIENTS']}) is below "
                         f"SECURE_MIN_COHORT ({config['SECURE_MIN_COHORT']})")


def check_schedule(config) -> None:
    """Refuse a buffered schedule with settings that only make sense for rounds."""
    if config["SCHEDULE"] not in DEFAULT_STALENESS:
        raise ValueError(f"SCHEDULE must be one of sync, buffered, got {config['SCHEDULE']!r}")
    if config["MAX_STALENESS"] is not None and config["MAX_STALENESS"] < 0:
        raise ValueError(f"MAX_STALENESS must be 0 or more, got {config['MAX_STALENESS']!r}")
    if config["SCHEDULE"] != "buffered":
        return
    if config["AGGREGATION"] == "secure":
        raise ValueError("SCHEDULE=buffered is not implemented with AGGREGATION=secure: a secure buffer "
                         "would have to be a cohort that runs the masking phases together, which a buffer "
                         "filled by whoever finishes first is not. Use AGGREGATION=plain, or SCHEDULE=sync")
    if config["SELECTION"] != "open":
        raise ValueError("SCHEDULE=buffered draws no cohort (any client trains when it can and the first "
                         "MIN_CLIENTS updates to arrive make a step): set SELECTION=open")


def max_staleness(config) -> int:
    """MAX_STALENESS, or its default for the schedule when unset."""
    value = config["MAX_STALENESS"]
    return DEFAULT_STALENESS[config["SCHEDULE"]] if value is None else value


def identity_proofs(config) -> list[str]:
    """The proofs IDENTITY asks of an enrolling client id."""
    return [name.strip() for name in config["IDENTITY"].split(",") if name.strip()]


def shown(config) -> dict:
    """The settings as an admin may see them: secrets left out, credentials in URLs replaced by ***.

    Any string setting that parses as a URL with a password (``postgresql://user:pw@host/db``) or a
    query parameter named like a password, secret, token or key has that value redacted.
    """
    return {key: redact_url(config[key]) if isinstance(config[key], str) else config[key]
            for key in SETTINGS if key not in SECRET_KEYS}


def redact_url(value: str) -> str:
    """Value with a URL's password and secret-looking query values as ***; other strings as they are."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:  # e.g. an invalid port: not a URL we can show safely
        return REDACTED if "@" in value else value
    if not parts.scheme or not parts.netloc and not parts.query:
        return value
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if SECRET_QUERY.search(k) else v) for k, v in pairs], safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
