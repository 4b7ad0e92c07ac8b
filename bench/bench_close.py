"""Round close time and peak memory by round size: N stored Q8 updates, then one admin close.

Each size gets a fresh SQLite data dir in a fresh process (so its peak RSS is its own); updates
enter through ``Coordinator.submit`` (what the upload handler calls after decoding and checking:
sha256, staged body, fsyncs, ticket, row), not HTTP, so large rounds fill in minutes. Then
``close_now`` replays every body (checksum, decode, checks) into the default strategy (FedAvg
with bounded influence) and publishes. Prints, per size: fill rate, close seconds, RSS before the
close and the process's peak RSS (VmHWM): flat means the close does not grow with the round.

    .venv/bin/python bench/bench_close.py --bundle pretrained [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_server import memory_kib  # imports common first, which puts the repo on sys.path
from common import REPO, bundle_parser

from formats.bundle import load_bundle
from formats.update import Q8, UpdateMeta, encode_update
from server.app import create_app

ADMIN_TOKEN = "bench-close-token-0123456789abcdef-32+"


def parse_args(argv=None):
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--sizes", default="1000,10000",
                        help="round sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, in this process: its JSON
    return parser.parse_args(argv)


def measure(bundle: str, updates: int) -> dict:
    """Fill one round with updates stored updates, close it; the figures as a dict."""
    manifest = load_bundle(bundle, verify=False).manifest
    rng = np.random.default_rng(0)
    deltas = [{p["name"]: rng.normal(scale=1e-4, size=p["shape"]).astype(np.float32)
               for p in manifest["parameters"]} for _ in range(16)]
    with tempfile.TemporaryDirectory(prefix="fedurl-close-") as data_dir:
        app = create_app({"BUNDLE_DIR": bundle, "DATA_DIR": data_dir, "MIN_CLIENTS": updates + 1,
                          "TICK_INTERVAL_S": 0, "SELECTION": "open", "IDENTITY": "", "PUBLISH_GATE": "off",
                          "ADMIN_TOKEN": ADMIN_TOKEN, "AGGREGATION": "plain", "LOG_LEVEL": "WARNING"})
        coordinator = app.extensions["fedurl.coordinator"]
        began = time.perf_counter()
        for i in range(updates):
            client_id = f"bench-client-{i:08d}"
            ticket = coordinator.issue_ticket(client_id)
            meta = UpdateMeta(ticket["ticket"], client_id, ticket["version"], 20, 3.0, 2.5)
            body = encode_update(deltas[i % len(deltas)], meta, Q8, rng)
            coordinator.submit(meta, 0.08, body)
        fill_s = time.perf_counter() - began
        before = memory_kib(os.getpid())["VmRSS"]
        began = time.perf_counter()
        closed = coordinator.close_now()
        close_s = time.perf_counter() - began
        peak = memory_kib(os.getpid())["VmHWM"]
    assert closed["ended_round"] == 1 and closed["version"] == 2, closed
    return {"updates": updates, "fill": f"{updates / fill_s:.0f} updates/s", "close": f"{close_s:.2f} s",
            "RSS before close": f"{before / 1024:.0f} MiB", "peak RSS": f"{peak / 1024:.0f} MiB"}


def main(argv=None) -> None:
    """Each size in its own process; print the table."""
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.bundle, args.one)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        command = [sys.executable, __file__, "--bundle", args.bundle, "--one", str(size)]
        out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    cells = [max(len(str(r[k])) for k in keys) for r in rows]
    for key in keys:
        values = (str(row[key]).ljust(cell) for row, cell in zip(rows, cells, strict=True))
        print(" | ".join([key.ljust(width), *values]))


if __name__ == "__main__":
    main()
