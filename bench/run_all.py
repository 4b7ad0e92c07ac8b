"""`make bench`: every benchmark, one after another in one invocation, each printing its table.

    .venv/bin/python bench/run_all.py --bundle bundles/default [--runs 5] [--skip export,browser]

1. bench_browser.py (browser engineer): keystroke -> top-5 suggestions in headless Chromium, and
   one train_step.onnx step in onnxruntime-web; bench_keystroke.py: the page's keystroke and the
   completer's compute alone a key (its --code compares checkouts in one run);
2. bench_training.py: the same step in onnxruntime Python and torch eager;
3. bench_update_size.py: bytes per update vs the float32 model;
4. bench_server.py (server engineer): ingest rate, server CPU per update, peak RSS and close time
   with SQLite x1 and PostgreSQL x1, x2, x4 workers, once at each --server-updates size; then
   bench_close.py: the close alone and peak memory at 1,000 and 10,000 stored updates;
5. bench_secagg.py: secure aggregation (server CPU of a secure round beside a plain one at cohorts
   10, 100, 1,000, bytes per phase, a browser's key agreement + masking; the shipped pretrained/
   model's size, whatever --bundle is); bench_attacks.py: attackers at 10 % and 30 % (10 rounds
   each, several minutes);
6. bench_export.py: wall time of the default export.
Then one table of training-step times side by side. Scripts run sequentially, never concurrently,
so they do not time each other. Output is Markdown, ready for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, bundle_parser

BENCH = Path(__file__).resolve().parent
STEPS = ("browser", "keystroke", "training", "update_size", "server", "secagg", "attacks", "export")


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs behind every median (default: %(default)s)")
    parser.add_argument("--server-updates", default="2000", help="updates per round, comma-separated "
                        "(default: %(default)s)")
    parser.add_argument("--skip", default="",
                        help=f"comma-separated benchmarks to leave out, of {','.join(STEPS)}")
    args = parser.parse_args(argv)
    args.skip = {name for name in args.skip.split(",") if name}
    if args.skip - set(STEPS):
        parser.error(f"unknown --skip {sorted(args.skip - set(STEPS))}; choose from {','.join(STEPS)}")
    args.server_updates = [int(n) for n in args.server_updates.split(",")]
    return args


def run_script(name: str, *flags: str) -> tuple[str, dict[str, str]]:
    """Run bench/<name> in a fresh interpreter; return its stdout and its `metric | value` rows."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCH / name), *flags], cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return f"{name} failed (exit {done.returncode}):\n" + "\n".join(tail), {}
    print(f"{name} {' '.join(flags)}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    rows = dict(line.split(" | ", 1) for line in done.stdout.splitlines() if " | " in line)
    return done.stdout.rstrip(), {key.strip(): value.strip() for key, value in rows.items()}


def section(title: str, command: str, text: str) -> None:
    """Print one benchmark's table as a Markdown section."""
    print(f"\n## {title}\n\n`{command}`\n\n```\n{text}\n```")


def first_ms(rows: dict[str, str], *words: str) -> float | None:
    """The first 'N ms' in the first row whose name holds every word (case-insensitive)."""
    for key, value in rows.items():
        if all(word in key.lower() for word in words):
            found = re.search(r"([0-9.]+)\s*ms", value)
            if found:
                return float(found.group(1))
    return None


def server_runs(args: argparse.Namespace) -> None:
    """bench_server.py at each size (four setups per run: a column each)."""
    for updates in args.server_updates:
        text = run_script("bench_server.py", "--bundle", args.bundle, "--updates", str(updates))[0]
        section(f"Server, {updates:,} updates in one round",
                f"bench/bench_server.py --updates {updates}", text)


def step_table(browser_rows: dict[str, str], training_rows: dict[str, str]) -> None:
    """Training-step times side by side. Each ratio divides by the onnxruntime Python time that
    the same script measured in the same minutes (the machine is shared, so load drifts)."""
    browser = [first_ms(browser_rows, "train step", where) for where in ("browser", "python")]
    pairs = [("onnxruntime-web in Chromium (bench_browser.py)", *browser),
             ("torch eager (bench_training.py)", first_ms(training_rows, "torch"),
              first_ms(training_rows, "onnxruntime"))]
    lines = ["| runtime | one training step (median) | onnxruntime Python, same run | ratio |",
             "|---|---|---|---|"]
    for name, ms, python_ms in pairs:
        shown = [f"{value:.1f} ms" if value else "n/a" for value in (ms, python_ms)]
        ratio = f"{ms / python_ms:.2f}" if ms and python_ms else "n/a"
        lines.append(f"| {name} | {shown[0]} | {shown[1]} | {ratio} |")
    print("\n## One training step, side by side\n\n" + "\n".join(lines))


def main(argv=None) -> None:
    """Run everything not skipped and print the Markdown report."""
    args = parse_args(argv)
    runs = ("--runs", str(args.runs))
    print(f"# fedurl benchmarks, {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n"
          f"`{' '.join([Path(sys.executable).name, 'bench/run_all.py', *(argv or sys.argv[1:])])}` on "
          f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; load average at start {os.getloadavg()[0]:.2f}")
    browser_rows: dict[str, str] = {}
    training_rows: dict[str, str] = {}
    if "browser" not in args.skip:
        present = (BENCH / "bench_browser.py").is_file()
        text, browser_rows = (run_script("bench_browser.py", "--bundle", args.bundle) if present
                              else ("bench/bench_browser.py is not there yet", {}))
        section("Browser: keystroke -> top-5, training step (headless Chromium)", "bench/bench_browser.py",
                text)
    if "keystroke" not in args.skip:
        section("Keystroke -> suggestions: the page, and the completer's compute alone",
                "bench/bench_keystroke.py", run_script("bench_keystroke.py", "--bundle", args.bundle)[0])
    if "training" not in args.skip:
        text, training_rows = run_script("bench_training.py", "--bundle", args.bundle, *runs)
        section("One training step: onnxruntime Python vs torch eager", "bench/bench_training.py", text)
    if "update_size" not in args.skip:
        section("Bytes per update", "bench/bench_update_size.py",
                run_script("bench_update_size.py", "--bundle", args.bundle)[0])
    if "server" not in args.skip:
        server_runs(args)
        section("Round close by round size: time and peak memory", "bench/bench_close.py",
                run_script("bench_close.py", "--bundle", args.bundle)[0])
    if "secagg" not in args.skip:
        section("Secure aggregation: server CPU secure vs plain, bytes per phase, browser masking",
                "bench/bench_secagg.py", run_script("bench_secagg.py")[0])
    if "attacks" not in args.skip:
        section("Attackers: 10 % and 30 %, 10 rounds, beside a clean run (docs/SECURITY.md)",
                "bench/bench_attacks.py", run_script("bench_attacks.py", "--bundle", args.bundle)[0])
    if "export" not in args.skip:
        section("Export of the default model", "bench/bench_export.py",
                run_script("bench_export.py", *runs)[0])
    if training_rows or browser_rows:
        step_table(browser_rows, training_rows)


if __name__ == "__main__":
    main()
