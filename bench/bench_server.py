"""Aggregation server throughput and memory: N uploads of real-size deltas into one round.

Starts ``fedurl-serve`` (waitress) on a temp data dir with MIN_CLIENTS = N, so the N-th upload
closes the round (aggregation and the new version are included), sends N updates from parallel
sender threads over loopback HTTP, and prints a table: updates/s, latency, server RSS before
and at its peak (VmHWM), plus the bad-input case count of tests/server/test_bad_input.py.

    .venv/bin/python bench/bench_server.py --bundle bundles/default [--updates 1000 --senders 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import REPO, bundle_parser  # first: puts the repo on sys.path

from client.protocol import FederatedClient, encode_update
from formats.bundle import load_bundle


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--updates", type=int, default=1000,
                        help="uploads in the round (default: %(default)s)")
    parser.add_argument("--senders", type=int, default=8,
                        help="parallel sender threads (default: %(default)s)")
    parser.add_argument("--distinct", type=int, default=16,
                        help="distinct random deltas cycled (default: %(default)s)")
    return parser.parse_args(argv)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(bundle: str, data_dir: str, updates: int) -> tuple[subprocess.Popen, str]:
    """fedurl-serve on a free port; returns the process and its base URL (log drained in a thread)."""
    env = {**os.environ, "FEDURL_MIN_CLIENTS": str(updates), "FEDURL_TICK_INTERVAL_S": "0",
           "FEDURL_REQUESTS_PER_ADDR_PER_MIN": "1000000", "FEDURL_LOG_LEVEL": "INFO",
           "FEDURL_AGGREGATION": "plain"}
    command = [sys.executable, "-m", "server.cli", "--bundle", bundle, "--data-dir", data_dir, "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    found: list[str] = []
    ready = threading.Event()

    def drain():
        for line in process.stderr:
            if not ready.is_set() and '"listening"' in line:
                found.append(json.loads(line)["url"])
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120):
        process.kill()
        raise SystemExit("server did not start")
    return process, found[0]


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Run the benchmark; return (metric, value) rows."""
    manifest = load_bundle(args.bundle, verify=False).manifest
    rng = np.random.default_rng(0)
    deltas = [{p["name"]: rng.normal(scale=1e-4, size=p["shape"]).astype(np.float32)
               for p in manifest["parameters"]} for _ in range(args.distinct)]
    elements = sum(int(np.prod(p["shape"])) for p in manifest["parameters"])
    with tempfile.TemporaryDirectory(prefix="fedurl-bench-") as data_dir:
        process, url = start_server(args.bundle, data_dir, args.updates)
        try:
            clients = [FederatedClient(url) for _ in range(args.updates)]
            tickets = [c.ticket() for c in clients]
            idle, cpu_before = memory_kib(process.pid), cpu_seconds(process.pid)
            latencies = [0.0] * args.updates

            def send(i: int) -> None:
                delta = deltas[i % args.distinct]
                body = encode_update(delta, tickets[i], clients[i].client_id, 20, 3.0, 2.5)
                began = time.perf_counter()
                clients[i].post_update(body)
                latencies[i] = time.perf_counter() - began

            began = time.perf_counter()
            with ThreadPoolExecutor(args.senders) as pool:
                list(pool.map(send, range(args.updates)))
            seconds = time.perf_counter() - began
            peak, server_cpu = memory_kib(process.pid), cpu_seconds(process.pid) - cpu_before
            status = clients[0].status()
        finally:
            process.terminate()
            process.wait(30)
    assert status["version"] == 2 and status["rounds"][0]["participants"] == args.updates, status["round"]
    ms = np.array(latencies[:-1]) * 1000  # the last upload also closes the round: reported apart
    from tests.server.test_bad_input import CASES  # the suite's own list: counted, not typed in
    return [("model parameters", f"{elements:,} ({4 * elements / 2**20:.2f} MiB as float32)"),
            ("updates in the round", f"{args.updates} from {args.senders} sender threads"),
            ("ingest rate", f"{args.updates / seconds:.1f} updates/s "
                            f"({seconds:.1f} s, aggregation included)"),
            ("server CPU per update", f"{1000 * server_cpu / args.updates:.1f} ms "
                                      f"(user + system, all threads)"),
            ("upload latency p50 / p95", f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 95):.1f} ms"),
            ("last upload (closes the round)", f"{latencies[-1] * 1000:.0f} ms"),
            ("server RSS before uploads", f"{idle['VmRSS'] / 1024:.1f} MiB"),
            (f"server peak RSS (VmHWM) at {args.updates} updates", f"{peak['VmHWM'] / 1024:.1f} MiB"),
            ("bad-input test cases", str(len(CASES)))]


def main(argv=None) -> None:
    """Print the result table."""
    rows = run(parse_args(argv))
    width = max(len(k) for k, _ in rows)
    print(f"{'metric'.ljust(width)} | value\n{'-' * width}-|------")
    for key, value in rows:
        print(f"{key.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
