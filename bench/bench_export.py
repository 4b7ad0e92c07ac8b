"""Wall time of `fedurl-export` with its defaults (the default model on the default corpus).

Each run is a fresh process writing a fresh bundle into a temp dir, so Python and torch start-up,
tokenizer training, pretraining, ONNX export and hashing are all counted, as a user sees them.

    .venv/bin/python bench/bench_export.py [--runs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, print_table, spread  # first: puts the repo on sys.path

from formats.bundle import load_bundle


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="exports; the median is reported (default: %(default)s)")
    return parser.parse_args(argv)


def export_once(out: Path) -> tuple[float, dict]:
    """Wall seconds of one default export into out, and the manifest it wrote."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "model.export", "--out", str(out)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began, load_bundle(out).manifest


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Export args.runs times; return (metric, value) rows."""
    with tempfile.TemporaryDirectory(prefix="fedurl-bench-export-") as work:
        results = [export_once(Path(work) / f"bundle{i}") for i in range(args.runs)]
    seconds = [wall for wall, _ in results]
    inside = [manifest["training"]["seconds"] for _, manifest in results]
    manifest = results[0][1]
    training = manifest["training"]
    return [("export wall time", spread(seconds, "s")),
            ("of which tokenizer + pretraining + ONNX (manifest)", spread(inside, "s")),
            ("default model", f"{training['parameters']:,} parameters, {training['steps']} steps x batch "
                              f"{training['batch_size']} on {training['urls']} URLs ({training['corpus']})"),
            ("bundle size", f"{sum(f['bytes'] for f in manifest['files'].values()) / 1e6:.2f} MB")]


def main(argv=None) -> None:
    """Print the result table."""
    print_table(run(parse_args(argv)))


if __name__ == "__main__":
    main()
