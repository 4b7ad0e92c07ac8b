"""Shared by the bench scripts: repeat-and-median timing and the plain table every script prints.

Benchmarks are not tests: nothing here asserts a speed. Each script prints ``metric | value`` rows
(the layout of bench/bench_server.py) so bench/run_all.py can show them side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as `python bench/x.py` from anywhere


def bundle_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the script's docstring, with the --bundle every bench takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "default"),
                        help="model bundle (default: %(default)s)")
    return parser


@contextmanager
def postgres_cluster() -> Iterator:
    """A throwaway PostgreSQL cluster from the machine's binaries (tests/postgres.py), with fsync on
    as in production; stopped and deleted afterwards.
    """
    from tests.postgres import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL binaries not found (make postgresql)")
    cluster = Cluster(bindir, durable=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def time_runs(fn, runs: int, calls: int, warmup: int = 1) -> list[float]:
    """Milliseconds per call of fn, one number per run of `calls` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    per_call = []
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - began) * 1000 / calls)
    return per_call


def median(values: list[float]) -> float:
    """The median (the statistic every table reports)."""
    return statistics.median(values)


def spread(values: list[float], unit: str = "ms") -> str:
    """'median unit (min-max over n runs)'."""
    return f"{median(values):.1f} {unit} (min {min(values):.1f}, max {max(values):.1f}; {len(values)} runs)"


def print_table(rows: list[tuple[str, str]]) -> None:
    """Print (metric, value) rows as an aligned two-column table."""
    width = max(len(key) for key, _ in rows)
    print(f"{'metric'.ljust(width)} | value\n{'-' * width}-|------")
    for key, value in rows:
        print(f"{key.ljust(width)} | {value}")
