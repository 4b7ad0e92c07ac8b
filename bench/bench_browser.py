"""The browser client in Debian's chromium: keystroke latency, training speed, bytes on the wire.

Keystroke latency is the page's own "keystroke-to-suggestions" measure (web_client/main.js):
from the input event of the oldest keystroke not yet answered to the moment the suggestions for
the current text are in the DOM. Keys are typed at a human pace (--key-delay-ms), once with the
page idle and once while local training runs in the other worker. Training throughput runs the
batch of bench/bench_training.py (same URLs, weights, lr) through the page's worker and through
onnxruntime in Python. Transfer counts every request of the page and its workers (headers and
bodies) on a first visit, on a reload, and over one federated round (train, upload, new version).

    .venv/bin/python bench/bench_browser.py --bundle bundles/default [--keystrokes 500] \
        [--parts transfer latency train]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager

import numpy as np
from bench_training import LR, fixed_batch
from common import REPO, bundle_parser, median, print_table, time_runs  # first: puts the repo on sys.path

from formats.bundle import load_bundle
from formats.urls import DEFAULT_CORPUS, load_urls, read_corpus
from runtime.trainer import LocalTrainer

sys.path.insert(0, str(REPO / "tests" / "web"))
from page_helpers import CHROMIUM_ARGS, open_page  # noqa: E402  (shared with the browser tests)

STEP_RUNS = 10
# Steps not timed: the first builds kernels, and V8 runs wasm on its baseline compiler (Liftoff)
# until the optimising tier (TurboFan) has compiled the hot functions in the background.
WARMUP_RUNS = 10
PARTS = ("transfer", "latency", "train")
THREADS = (1, 2)  # onnxruntime threads compared, in the page's worker and in Python
# One worker per thread count (worker.js ?threads=N), stepped in turn so both see the same load.
TRAIN_STEPS = """async ([fields, runs, threads, warmup]) => {
  const { WorkerClient } = await import("/static/protocol.js");
  const workers = threads.map((n) =>
    new WorkerClient(new Worker(`/static/worker.js?threads=${n}`, { type: "module" })));
  const model = await (await fetch("/api/model")).json();
  const batch = { tokens: Int32Array.from(fields.tokens), targets: Int32Array.from(fields.targets),
                  mask: Float32Array.from(fields.mask), lr: fields.lr };
  const out = threads.map(() => ({ seconds: [], threads: 0, isolated: false }));
  for (let i = 0; i < warmup + runs; i++) {
    for (const [w, worker] of workers.entries()) {
      const reply = await worker.request("trainStep", { ...batch, model });
      if (i >= warmup) out[w].seconds.push(reply.seconds);
      Object.assign(out[w], { threads: reply.threads, isolated: reply.isolated });
    }
  }
  workers.forEach((worker) => worker.worker.terminate());
  return out;
}"""


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--keystrokes", type=int, default=500,
                        help="keys typed per latency run (default: %(default)s)")
    parser.add_argument("--key-delay-ms", type=float, default=80,
                        help="pause between keys (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure (default: all of %(choices)s)")
    return parser.parse_args(argv)


@contextmanager
def serve(bundle_dir: str):
    """The real server on 127.0.0.1 (port 0); rounds close at the first update."""
    from server.app import create_app
    from study.background import serving

    data = tempfile.mkdtemp(prefix="bench-browser-")
    app = create_app({"BUNDLE_DIR": bundle_dir, "DATA_DIR": data, "MIN_CLIENTS": 1, "MIN_CLIENTS_FLOOR": 1,
                      "TICK_INTERVAL_S": 0, "LOG_LEVEL": "WARNING", "AGGREGATION": "plain"})
    try:
        with serving(app, name="bench-browser-server") as url:
            yield url
    finally:
        shutil.rmtree(data, ignore_errors=True)


def typing_urls(count: int) -> list[str]:
    """Realistic URLs to type: DMOZ links from the shared data if present, else top-sites domains."""
    shared = REPO.parent / "shared" / "data" / "urls" / "kasztp.txt"
    urls = read_corpus(shared) if shared.is_file() else load_urls(DEFAULT_CORPUS, None)
    return [url[:40] for url in random.Random(0).sample(urls, count)]


def type_keystrokes(page, urls: list[str], keystrokes: int, delay_ms: float) -> int:
    """Type URLs key by key until `keystrokes` keys were typed; wait for each URL's suggestions."""
    typed = 0
    for url in urls:
        page.fill("#url", "")
        text = url[:keystrokes - typed]
        page.keyboard.type(text, delay=delay_ms)
        typed += len(text)
        # the typed text, not the input's value: inline completion may have appended a selected tail
        page.wait_for_function("t => document.getElementById('suggestions').dataset.for === t", arg=text)
        if typed >= keystrokes:
            return typed
    return typed


def latencies(page, urls, keystrokes: int, delay_ms: float) -> tuple[str, list[float]]:
    """Type and read the page's keystroke-to-suggestions measures (ms)."""
    page.evaluate("performance.clearMeasures()")
    page.get_by_role("combobox").click()
    typed = type_keystrokes(page, urls, keystrokes, delay_ms)
    values = page.evaluate("performance.getEntriesByName('keystroke-to-suggestions').map(e => e.duration)")
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms ({typed} keys, {len(values)} renders)", values


def record_bytes(context) -> list:
    """Collect every finished request of the context (page and workers)."""
    finished = []
    context.on("requestfinished", lambda request: finished.append(request))
    return finished


def total_bytes(requests, start: int = 0) -> tuple[float, dict]:
    """MB on the wire (headers and bodies, both ways) of requests[start:], and MB per kind."""
    kinds: dict[str, float] = {}
    for request in requests[start:]:
        sizes = request.sizes()
        size = sum(sizes.values()) / 1e6
        path = request.url.split("//", 1)[1].split("/", 1)[1].split("?")[0]
        kind = ("ort" if path.startswith("ort/") else path.split("/")[1] if path.startswith("api/")
                else "page code")
        kinds[kind] = kinds.get(kind, 0) + size
    return sum(kinds.values()), kinds


def describe(total: float, kinds: dict) -> str:
    """'3.10 MB (ort 1.2, files 1.9, ...)'."""
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{total:.2f} MB ({parts})"


def visit(page, url: str) -> None:
    """Record one visit through the URL bar."""
    page.fill("#url", url)
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")


def transfer_rows(browser, base_url: str, urls: list[str]) -> list[tuple[str, str]]:
    """Bytes for a first visit, a reload, and one round (train, upload, download version 2)."""
    context = browser.new_context(base_url=base_url)
    requests = record_bytes(context)
    page = open_page(context.new_page(), "/?train_after_urls=0&poll_ms=1000")
    page.wait_for_function("!document.getElementById('train-now').disabled")  # training graph cached too
    first = total_bytes(requests)
    mark = len(requests)
    page.reload()
    page.wait_for_function("!document.getElementById('train-now').disabled")
    reload = total_bytes(requests, mark)
    for url in urls[:8]:
        visit(page, url)
    mark = len(requests)
    page.get_by_role("button", name="Train now").click()
    page.wait_for_function("document.getElementById('model-version').textContent.startsWith('v2')",
                           timeout=300_000)
    round_ = total_bytes(requests, mark)
    context.close()
    return [("transfer: first visit (model + training graph)", describe(*first)),
            ("transfer: reload", describe(*reload)),
            ("transfer: one round (upload + new version + polls)", describe(*round_))]


def training_rows(page, bundle_dir: str) -> list[tuple[str, str]]:
    """One train_step on the same batch in the page's worker and in onnxruntime Python, per thread
    count; the worker reports the threads onnxruntime-web really runs (1 without isolation)."""
    bundle = load_bundle(bundle_dir)
    trainers = {n: LocalTrainer(bundle, threads=n) for n in THREADS}
    weights, batch = bundle.load_weights(), fixed_batch(trainers[1])
    fields = {"tokens": batch[0].ravel().tolist(), "targets": batch[1].ravel().tolist(),
              "mask": batch[2].ravel().tolist(), "lr": LR}
    browser = page.evaluate(TRAIN_STEPS, [fields, STEP_RUNS, list(THREADS), WARMUP_RUNS])
    python_ms = {n: time_runs(lambda n=n: trainers[n].step(weights, *batch, LR), STEP_RUNS, 1)
                 for n in THREADS}
    counted, positions = int(batch[2].sum()), batch[2].size

    def rate(ms: list[float]) -> str:
        step = median(ms)
        return (f"{step:.0f} ms/step = {counted / step * 1000:,.0f} tokens/s "
                f"({positions / step * 1000:,.0f} positions/s)")

    rows = [("train batch", f"{batch[0].shape[0]} x {batch[0].shape[1]}, {counted} counted tokens")]
    for n, result in zip(THREADS, browser, strict=True):
        browser_ms = [s * 1000 for s in result["seconds"]]
        ratio = median(browser_ms) / median(python_ms[n])
        rows += [(f"train step, browser (onnxruntime-web wasm, {n} thread{'s' * (n > 1)} asked)",
                  f"{rate(browser_ms)}; runs {result['threads']}, crossOriginIsolated {result['isolated']}"),
                 (f"train step, Python (onnxruntime, {n} thread{'s' * (n > 1)})",
                  f"{rate(python_ms[n])}; browser / Python {ratio:.2f}x")]
    return rows


def latency_rows(page, urls, args) -> list[tuple[str, str]]:
    """Keystroke latency idle, then while the training worker trains."""
    idle, _ = latencies(page, urls, args.keystrokes, args.key_delay_ms)
    for url in urls[-20:]:
        visit(page, url)
    page.get_by_role("button", name="Train now").click()
    page.wait_for_function("document.body.dataset.training === 'true'")
    busy, _ = latencies(page, urls[::-1], args.keystrokes // 2, args.key_delay_ms)
    still = page.evaluate("document.body.dataset.training === 'true'")
    page.wait_for_function("document.body.dataset.training === 'false'", timeout=600_000)
    return [(f"keystroke -> suggestions, idle (key every {args.key_delay_ms:.0f} ms)", idle),
            ("keystroke -> suggestions, while training", busy + ("" if still else " (training ended first)"))]


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Everything, on one server and one chromium."""
    from playwright.sync_api import sync_playwright

    urls = typing_urls(200)
    with serve(args.bundle) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        rows = transfer_rows(browser, base_url, urls) if "transfer" in args.parts else []
        context = browser.new_context(base_url=base_url)
        page = open_page(context.new_page(), "/?train_after_urls=0&poll_ms=60000&epochs=150")
        rows += latency_rows(page, urls, args) if "latency" in args.parts else []
        rows += training_rows(page, args.bundle) if "train" in args.parts else []
        browser.close()
    return rows


def main(argv=None) -> None:
    """Print the result table."""
    print_table(run(parse_args(argv)))


if __name__ == "__main__":
    main()
