"""Where one worker's CPU goes per upload and at the close: cProfile of the app in one process.

Uploads go through Flask's test client (no sockets, no HTTP parsing: bench_server.py measures
those), in one thread, into a fresh data dir and database (SQLite, or with ``--db postgresql`` a
throwaway PostgreSQL cluster, fsync on), then the round is closed by the admin API.
Prints the ms per update of the functions that matter (cumulative, with their callees), then the
close's wall time and its top functions. The setup is bench_server.py's (open selection, plain
aggregation, bounded influence, Q8 bodies as the page sends). With ``--body-file`` each body is first written
to a file in a body folder the app trusts (``FRONT_BODY_DIR``) and only its name is sent, as
fedurl-deploy's nginx does (the file writes are not profiled: nginx does them).

    .venv/bin/python bench/profile_ingest.py --bundle pretrained [--updates 300] [--body-file] \
        [--db postgresql]
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from collections import Counter
from contextlib import nullcontext

import numpy as np
import sqlalchemy as sa
from common import bundle_parser, postgres_cluster  # first: puts the repo on sys.path

from client.protocol import FederatedClient, encode_update
from formats.bundle import load_bundle
from formats.update import Q8
from server.api import BODY_FILE_HEADER
from server.app import create_app
from server.cli import front_body_dir

ADMIN_TOKEN = "profile-admin-token-0123456789abcdef-32+"

# (label, pstats function-name substring): cumulative time of each, per update
STAGES = [
    ("whole request (Flask, no HTTP parsing)", "flask/app.py", "wsgi_app"),
    ("decode_upload (safetensors)", "validation.py", "decode_upload"),
    ("check_delta (to float32, finite, norm)", "validation.py", "check_delta"),
    ("Coordinator.vet_ticket (before the body)", "rounds.py", "vet_ticket"),
    ("Coordinator.submit", "rounds.py", "submit"),
    ("  sha256 of the body", "~", "_hashlib.openssl_sha256"),
    ("  spool stage (write, fsync)", "spool.py", "stage"),
    ("  spool stage_file (link, fsync)", "spool.py", "stage_file"),
    ("  spool place (rename, fsync dir)", "spool.py", "place"),
    ("    os.fsync", "~", "posix.fsync"),
    ("  _sync (read the round)", "rounds.py", "_sync"),
    ("  _claim_ticket", "rounds.py", "_claim_ticket"),
    ("  transaction commit", "base.py", "commit"),
    ("SQL statements (execute)", "base.py", "execute"),
]


def parse_args(argv=None):
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--updates", type=int, default=300, help="uploads profiled (default: %(default)s)")
    parser.add_argument("--body-file", action="store_true",
                        help="send each body as a file name in FRONT_BODY_DIR, as nginx does")
    parser.add_argument("--top", type=int, default=12,
                        help="functions listed by their own time (default: %(default)s)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the database (default: %(default)s)")
    return parser.parse_args(argv)


def stage_ms(stats: pstats.Stats, where: str, name: str, updates: int) -> float:
    """Cumulative ms per update of the functions called name in a file matching where (builtins:
    where "~" and a name inside the function's description).
    """
    total = sum(cumulative for (path, _line, func), (_cc, _nc, _tt, cumulative, _callers)
                in stats.stats.items()  # type: ignore[attr-defined]
                if (func == name and where in path) or (where == path == "~" and name in func))
    return 1000 * total / updates


def main(argv=None) -> None:
    """Profile the uploads, then the close; print ms per update and the close's top functions."""
    args = parse_args(argv)
    manifest = load_bundle(args.bundle, verify=False).manifest
    rng = np.random.default_rng(0)
    deltas = [{p["name"]: rng.normal(scale=1e-4, size=p["shape"]).astype(np.float32)
               for p in manifest["parameters"]} for _ in range(8)]
    with postgres_cluster() if args.db == "postgresql" else nullcontext() as cluster:
        profile_uploads(args, deltas, cluster.database()[1] if cluster else None, rng)


def profile_uploads(args, deltas: list[dict], db_url: str | None, rng: np.random.Generator) -> None:
    """Profile args.updates uploads into a fresh data dir (db_url: PostgreSQL; None: SQLite in it);
    rng: the Q8 rounding's randomness.
    """
    with tempfile.TemporaryDirectory(prefix="fedurl-profile-") as data_dir:
        body_dir = front_body_dir(data_dir)
        body_dir.mkdir(parents=True)
        database = {"DATABASE_URL": db_url} if db_url else {}
        app = create_app({**database, "BUNDLE_DIR": args.bundle, "DATA_DIR": data_dir,
                          "MIN_CLIENTS": args.updates + 1,
                          "FRONT_BODY_DIR": str(body_dir) if args.body_file else "",
                          "TICK_INTERVAL_S": 0, "REQUESTS_PER_ADDR_PER_MIN": 10 ** 6,
                          "MAX_TICKETS_PER_ADDR": 10 ** 6, "SELECTION": "open", "IDENTITY": "",
                          "PUBLISH_GATE": "off", "ADMIN_TOKEN": ADMIN_TOKEN, "AGGREGATION": "plain",
                          "LOG_LEVEL": "WARNING"})
        http = app.test_client()
        clients = [FederatedClient(http) for _ in range(args.updates)]
        bodies = [encode_update(deltas[i % len(deltas)], c.ticket(), c.client_id, 20, 3.0, 2.5, Q8, rng)
                  for i, c in enumerate(clients)]
        names = []
        for n, body in enumerate(bodies if args.body_file else []):
            names.append(body_dir / f"{n:010d}")
            names[-1].write_bytes(body)
        statements = []
        sa.event.listen(app.extensions["fedurl.engine"], "before_cursor_execute",
                        lambda _conn, _cursor, statement, *_: statements.append(statement))
        profile = cProfile.Profile()
        began_cpu, began = time.process_time(), time.perf_counter()
        profile.enable()
        for n, (client, body) in enumerate(zip(clients, bodies, strict=True)):
            if args.body_file:
                answer = http.post("/api/updates", headers={"Content-Type": "application/octet-stream",
                                                            BODY_FILE_HEADER: str(names[n])})
                assert answer.status_code == 202, answer.data
            else:
                client.post_update(body)
        profile.disable()
        cpu, wall = time.process_time() - began_cpu, time.perf_counter() - began
        stats = pstats.Stats(profile)
        print(f"{args.updates} uploads: {1000 * cpu / args.updates:.2f} ms CPU, "
              f"{1000 * wall / args.updates:.2f} ms wall per update (profiler on), "
              f"{len(statements) / args.updates:.1f} SQL statements per update:")
        for statement, count in Counter(" ".join(s.split())[:90] for s in statements).most_common():
            print(f"  {count / args.updates:5.2f} x {statement}")
        for label, where, name in STAGES:
            print(f"  {label:40s} {stage_ms(stats, where, name, args.updates):7.2f} ms")
        stats.sort_stats("tottime").print_stats(args.top)
        close = cProfile.Profile()
        began = time.perf_counter()
        close.enable()
        status, _ = http.post("/api/admin/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                              ).status_code, None
        close.disable()
        print(f"close at {args.updates} updates: {time.perf_counter() - began:.2f} s (status {status})")
        pstats.Stats(close).sort_stats("cumulative").print_stats(18)


if __name__ == "__main__":
    main()
