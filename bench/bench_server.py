"""Aggregation server ingest and close: N uploads of real-size deltas into one round, per setup.

For each setup (database and worker count; default: SQLite with 1 worker, PostgreSQL with 1, 2
and 4) it starts that many ``fedurl-serve`` (waitress) processes on one fresh data dir and
database, sends N updates from parallel sender threads over loopback HTTP, spread round robin
over the workers as nginx's upstream does, then closes the round with the admin API and times
that. MIN_CLIENTS is N + 1, so ingest and close are measured apart. PostgreSQL is a throwaway
cluster from the machine's binaries (tests/postgres.py) with fsync on, as in production; its
CPU counts as server CPU. Prints one table, a column per setup.

With ``--front`` each setup is the production start instead: ``fedurl-deploy`` (nginx in front
of N workers) and the uploads go through nginx; the CPU of its whole process tree (workers and
nginx) counts as server CPU. ``--code label=DIR,...`` runs every setup once per checkout (e.g. the
code before a change, ``git archive REV | tar -x -C DIR``), interleaved, for a before/after in one
run. Each column says the load average (/proc/loadavg) at its start and end.

    .venv/bin/python bench/bench_server.py --bundle pretrained [--updates 2000 --senders 8]
    .venv/bin/python bench/bench_server.py --bundle pretrained --front --updates 600 \
        --setups sqlite:1,postgresql:2 --code before=/tmp/fedurl-before,after=.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from common import REPO, bundle_parser, postgres_cluster  # first: puts the repo on sys.path

from client.protocol import FederatedClient, encode_update
from formats import tensors as tensor_codec
from formats.bundle import load_bundle
from formats.update import SCALE_SUFFIX, UpdateMeta, quantise_delta, to_float16

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef-32+"


def parse_args(argv=None):
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--updates", type=int, default=2000,
                        help="uploads in the round (default: %(default)s)")
    parser.add_argument("--senders", type=int, default=8,
                        help="parallel sender threads (default: %(default)s)")
    parser.add_argument("--distinct", type=int, default=16,
                        help="distinct random deltas cycled (default: %(default)s)")
    parser.add_argument("--setups", default="sqlite:1,postgresql:1,postgresql:2,postgresql:4",
                        help="database:workers, comma-separated (default: %(default)s)")
    parser.add_argument("--body", choices=("f32", "f16", "q8"), default="q8",
                        help="delta encoding of the uploads (default: %(default)s, as browsers send them)")
    parser.add_argument("--front", action="store_true",
                        help="start each setup with fedurl-deploy and send through its nginx")
    parser.add_argument("--code", default=f"this={REPO}",
                        help="label=DIR,...: checkouts whose server runs, each with every setup "
                             "(default: %(default)s)")
    return parser.parse_args(argv)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time a process has used so far (and its reaped children's, if asked)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int, only: str | None = None) -> float:
    """CPU of a process and every live descendant (fedurl-deploy: its workers, nginx and nginx's
    workers), with the children each has reaped; only: just the processes of that name (``comm``).
    """
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue  # ended meanwhile
    tree, grew = {root}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grew = bool(found)
    total = 0.0
    for pid in tree:
        try:
            if only is None or Path(f"/proc/{pid}/comm").read_text().strip() == only:
                total += cpu_seconds(pid, children=True)
        except (OSError, ValueError):
            continue
    return total


def load_average() -> str:
    """The 1-minute load average now."""
    return Path("/proc/loadavg").read_text().split()[0]


def postgres_cpu(postmaster: int) -> float:
    """CPU of the PostgreSQL server: its main process, its live backends and the ended ones."""
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                total += cpu_seconds(int(entry.name))
        except (OSError, ValueError):
            continue  # a backend that ended meanwhile
    return total


def start_server(code: Path, bundle: str, data_dir: str, db_url: str | None, updates: int,
                 front_workers: int = 0) -> tuple[subprocess.Popen, str, list[int]]:
    """fedurl-serve on a free port (or, with front_workers, fedurl-deploy with that many workers)
    from the checkout code; returns the process, its base URL and its app processes' pids (log
    drained in a thread).
    """
    env = {**os.environ, "PYTHONPATH": str(code), "FEDURL_MIN_CLIENTS": str(updates + 1),
           "FEDURL_TICK_INTERVAL_S": "0", "FEDURL_REQUESTS_PER_ADDR_PER_MIN": "1000000",
           "FEDURL_MAX_TICKETS_PER_ADDR": "1000000", "FEDURL_LOG_LEVEL": "INFO", "FEDURL_SELECTION": "open",
           "FEDURL_IDENTITY": "", "FEDURL_PUBLISH_GATE": "off", "FEDURL_ADMIN_TOKEN": ADMIN_TOKEN,
           "FEDURL_GZIP_CACHE_BYTES": "0", "FEDURL_AGGREGATION": "plain",
           "FEDURL_FRONT_REQUESTS_PER_ADDR_PER_S": "100000", "FEDURL_FRONT_BURST": "100000"}
    where = ["--bundle", bundle, "--data-dir", data_dir, "--port", "0", *(["--db", db_url] if db_url else [])]
    command = [sys.executable, "-m", "server.cli", *where]
    if front_workers:
        command = [sys.executable, "-m", "deploy.front", *where, "--workers", str(front_workers)]
    process = subprocess.Popen(command, cwd=code, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True)
    found: list[str] = []
    pids = [process.pid]
    ready = threading.Event()

    def drain():
        """Read the log until the process ends (a full pipe would stall it); note the URL and pids."""
        for line in process.stderr:
            if not ready.is_set() and '"worker_listening"' in line:
                pids.append(json.loads(line)["pid"])
            elif not ready.is_set() and '"listening"' in line:
                found.append(json.loads(line)["url"])
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(180):
        process.kill()
        raise SystemExit("server did not start")
    return process, found[0], pids


def encoded(delta: dict[str, np.ndarray], ticket: dict, client_id: str) -> bytes:
    """An update body of an already cast (F32, F16) or quantised (Q8 tensors and scales) delta."""
    if any(name.endswith(SCALE_SUFFIX) for name in delta):  # as encode_update(..., Q8) frames it
        meta = UpdateMeta(ticket["ticket"], client_id, int(ticket["version"]), 20, 3.0, 2.5)
        return tensor_codec.encode(delta, meta.to_strings())
    return encode_update(delta, ticket, client_id, 20, 3.0, 2.5, next(iter(delta.values())).dtype)


def run_setup(args, deltas: list[dict], code: Path, database: str, workers: int, cluster) -> dict[str, str]:
    """One setup: start, ingest, close, stop; its column of the table."""
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="fedurl-bench-") as data_dir:
        db_url = cluster.database()[1] if database == "postgresql" else None
        processes, pids = [], []
        try:
            if args.front:  # the production start: nginx in front of every worker
                process, url, pids = start_server(code, args.bundle, data_dir, db_url, args.updates, workers)
                processes.append((process, url))
            for _ in range(0 if args.front else workers):  # one after the other: the first imports the bundle
                process, url, started = start_server(code, args.bundle, data_dir, db_url, args.updates)
                processes.append((process, url))
                pids += started
            urls = [url for _, url in processes]
            clients = [FederatedClient(urls[i % len(urls)]) for i in range(args.updates)]
            tickets = [c.ticket() for c in clients]
            idle = [memory_kib(pid) for pid in pids]
            postmaster = cluster.postmaster_pid() if db_url else None

            def server_cpu() -> float:
                """CPU seconds of the workers (with the front: its process tree) and PostgreSQL so far."""
                database_cpu = postgres_cpu(postmaster) if postmaster else 0.0
                if args.front:
                    return tree_cpu(processes[0][0].pid) + database_cpu
                return sum(cpu_seconds(pid) for pid in pids) + database_cpu

            def parts_cpu() -> tuple[float, float]:
                """CPU seconds of nginx (0 without the front) and of PostgreSQL so far."""
                return (tree_cpu(processes[0][0].pid, "nginx") if args.front else 0.0,
                        postgres_cpu(postmaster) if postmaster else 0.0)

            cpu_before, parts_before = server_cpu(), parts_cpu()
            latencies = [0.0] * args.updates

            def send(i: int) -> None:
                """Upload update i and time it."""
                body = encoded(deltas[i % args.distinct], tickets[i], clients[i].client_id)
                began = time.perf_counter()
                clients[i].post_update(body)
                latencies[i] = time.perf_counter() - began

            began, sender_began = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(args.senders) as pool:
                list(pool.map(send, range(args.updates)))
            seconds, sender_cpu = time.perf_counter() - began, time.process_time() - sender_began
            ingest_cpu = server_cpu() - cpu_before
            nginx_cpu, database_cpu = (after - before for after, before in zip(parts_cpu(), parts_before,
                                                                                strict=True))
            peaks = [memory_kib(pid)["VmHWM"] for pid in pids]
            began = time.perf_counter()
            admin = FederatedClient(urls[0], timeout=3600)  # the close holds the answer until it is done
            closed = admin._call("POST", "/api/admin/close", headers={
                "Authorization": f"Bearer {ADMIN_TOKEN}"})
            close_s = time.perf_counter() - began
            status = clients[0].status()
        finally:
            for process, _ in processes:
                process.terminate()
                process.wait(60)
    assert closed[0] == 200 and status["version"] == 2, status["round"]
    assert status["rounds"][-2]["participants"] == args.updates, status["rounds"][-2:]
    ms = np.array(latencies) * 1000
    return {"ingest rate": f"{args.updates / seconds:.1f} updates/s ({seconds:.1f} s)",
            "server CPU per update": f"{1000 * ingest_cpu / args.updates:.1f} ms",
            "  of which nginx / PostgreSQL": f"{1000 * nginx_cpu / args.updates:.1f} / "
                                             f"{1000 * database_cpu / args.updates:.1f} ms",
            "senders' CPU per update (same cores)": f"{1000 * sender_cpu / args.updates:.1f} ms",
            "upload latency p50 / p95": f"{np.percentile(ms, 50):.0f} / {np.percentile(ms, 95):.0f} ms",
            "RSS before, per worker": f"{max(m['VmRSS'] for m in idle) / 1024:.0f} MiB",
            "peak RSS (VmHWM), per worker / all": f"{max(peaks) / 1024:.0f} / {sum(peaks) / 1024:.0f} MiB",
            f"close at {args.updates} updates (admin)": f"{close_s:.2f} s",
            "load average at start / end": f"{load_before} / {load_average()}"}


def run(args) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Run every setup; return the column names and (metric, values) rows."""
    manifest = load_bundle(args.bundle, verify=False).manifest
    rng = np.random.default_rng(0)
    deltas = [{p["name"]: rng.normal(scale=1e-4, size=p["shape"]).astype(np.float32)
               for p in manifest["parameters"]} for _ in range(args.distinct)]
    # cast or quantise once here: the senders share the server's two cores, so only the codec's
    # framing is timed
    if args.body == "f16":
        deltas = [{n: to_float16(a) for n, a in d.items()} for d in deltas]
    if args.body == "q8":
        deltas = [quantise_delta(d, rng) for d in deltas]
    setups = [(db, int(n)) for db, n in (item.split(":") for item in args.setups.split(","))]
    codes = [(label, Path(folder).resolve()) for label, folder in
             (item.split("=", 1) for item in args.code.split(","))]
    runs = [(label, code, db, n) for db, n in setups for label, code in codes]
    with postgres_cluster() if any(db == "postgresql" for db, _ in setups) else nullcontext() as cluster:
        columns = [run_setup(args, deltas, code, db, n, cluster) for _, code, db, n in runs]
    elements = sum(int(np.prod(p["shape"])) for p in manifest["parameters"])
    front = " (front)" if args.front else ""
    names = [f"{label + ': ' if len(codes) > 1 else ''}{db} x{n}{front}" for label, _, db, n in runs]
    setups = [(db, n) for _, _, db, n in runs]
    body = args.body
    rows = [("model parameters", [f"{elements:,}"] * len(setups)),
            ("updates, senders, body", [f"{args.updates}, {args.senders}, {body}"] * len(setups))]
    return names, rows + [(key, [column[key] for column in columns]) for key in columns[0]]


def main(argv=None) -> None:
    """Print the result table."""
    names, rows = run(parse_args(argv))
    width = max(len(k) for k, _ in rows)
    cells = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    print(" | ".join(["metric".ljust(width), *(n.ljust(c) for n, c in zip(names, cells, strict=True))]))
    print("-|-".join(["-" * width, *("-" * c for c in cells)]))
    for key, values in rows:
        print(" | ".join([key.ljust(width), *(v.ljust(c) for v, c in zip(values, cells, strict=True))]))


if __name__ == "__main__":
    main()
