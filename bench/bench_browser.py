"""The browser client in Debian's chromium: keystroke latency, training speed, bytes on the wire.

Keystroke latency is the page's own "keystroke-to-suggestions" measure (web_client/main.js):
from the input event of the oldest keystroke not yet answered to the moment the suggestions for
the current text are in the DOM. Keys are typed at a human pace (--key-delay-ms), once with the
page idle and then while a training worker with 1 and with 2 threads (the page's train_threads)
trains, with a training run timed alone for each. Training throughput runs the
batch of bench/bench_training.py (same URLs, weights, lr) through the page's worker and through
onnxruntime in Python. Transfer counts every request of the page and its workers (headers and
bodies) on a first visit, on a reload, and over one federated round (train, upload, new version).

The matmul part times one MatMul (both operands inputs, as the training graph's weights are) of
each shape the step multiplies, in the page and in onnxruntime Python: the kernels' own ratio.
The profile part runs train_step.onnx in the page with onnxruntime-web's own profiler
(`enableProfiling`) and prints each operator type's share of the kernel time (not a default part).

    .venv/bin/python bench/bench_browser.py --bundle bundles/default [--keystrokes 500] \
        [--parts transfer latency train profile matmul encode counts pow]

The encode part times the page's encodeUpdate of one full-size delta as F32, F16 and Q8.
The pow part measures the page's proof-of-work hash rate (web_client/pow.js) and the seconds an
honest browser pays at the server's default difficulty (goal: under 2 s).
The counts part types the same keys (idle) into the page serving the bundle with its counts.bin
and a copy without it (the network alone), twice each, alternating: what the count component costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from bench_training import LR, fixed_batch
from common import REPO, bundle_parser, median, print_table, time_runs  # first: puts the repo on sys.path

from formats.bundle import load_bundle
from formats.urls import DEFAULT_CORPUS, load_urls, read_corpus
from model.counts import remove_counts
from runtime.trainer import LocalTrainer

sys.path.insert(0, str(REPO / "tests" / "web"))
from page_helpers import CHROMIUM_ARGS, open_page  # noqa: E402  (shared with the browser tests)

STEP_RUNS = 10
# Steps not timed: the first builds kernels, and V8 runs wasm on its baseline compiler (Liftoff)
# until the optimising tier (TurboFan) has compiled the hot functions in the background.
WARMUP_RUNS = 10
PARTS = ("transfer", "latency", "train", "profile", "matmul", "encode", "counts", "pow")
IDLE_PAGE = "/?train_after_urls=0&poll_ms=60000"  # the page as typed into: nothing trains on its own
COUNTS_ROUNDS = 2  # counts part: each bundle served this many times, alternating
# (M, K, N) of the training step's matrix products: the time loop's hidden projection and its
# backward (B rows), the input projection and the head over all B*T positions.
MATMUL_SHAPES = ((16, 256, 768), (16, 768, 256), (768, 256, 16), (256, 768, 16), (1024, 128, 768),
                 (1024, 256, 1024))
THREADS = (1, 2)  # onnxruntime threads compared, in the page's worker and in Python
TRAIN_THREADS = (1, 2)  # the page's train_threads compared while typing
TRAINING_EPOCHS = 100  # a training run long enough to type through
# A training run in a fresh worker with the page's ?threads=, as client.js starts its training worker.
TRAIN_RUN = """async ([threads, urls, epochs, lr]) => {
  const { WorkerClient } = await import("/static/protocol.js");
  const model = await (await fetch("/api/model")).json();
  const worker = new WorkerClient(new Worker(`/static/worker.js?threads=${threads}`, { type: "module" }));
  const started = performance.now();
  globalThis.benchRun = worker.request("train", { model, urls, epochs, lr }, { onProgress: () => {} })
    .then(({ seconds, steps }) => {
      worker.worker.terminate();
      return { seconds, steps, wall: (performance.now() - started) / 1000, ended: performance.now() };
    });
}"""
# One worker per thread count (worker.js ?threads=N), kept on globalThis between calls: started
# and warmed up in turn, then each timed alone so that chromium's CPU time is that worker's.
TRAIN_START = """async ([fields, threads, warmup]) => {
  const { WorkerClient } = await import("/static/protocol.js");
  const model = await (await fetch("/api/model")).json();
  const batch = { tokens: Int32Array.from(fields.tokens), targets: Int32Array.from(fields.targets),
                  mask: Float32Array.from(fields.mask), lr: fields.lr };
  const workers = threads.map((n) =>
    new WorkerClient(new Worker(`/static/worker.js?threads=${n}`, { type: "module" })));
  globalThis.benchTrain = { workers, request: { ...batch, model } };
  for (let i = 0; i < warmup; i++) {
    for (const worker of workers) await worker.request("trainStep", globalThis.benchTrain.request);
  }
}"""
TRAIN_STEPS = """async ([w, runs]) => {
  const { workers, request } = globalThis.benchTrain;
  const out = { seconds: [], threads: 0, isolated: false };
  for (let i = 0; i < runs; i++) {
    const reply = await workers[w].request("trainStep", request);
    Object.assign(out, { threads: reply.threads, isolated: reply.isolated });
    out.seconds.push(reply.seconds);
  }
  return out;
}"""
TRAIN_STOP = "() => globalThis.benchTrain.workers.forEach((worker) => worker.worker.terminate())"


# The page's main thread (no worker): onnxruntime-web prints the profile there, one event a line.
PROFILE_STEPS = """async ([fields, steps, threads]) => {
  const ort = await import("/ort/ort.wasm.min.mjs");
  const { ORT_WASM_PATH } = await import("/static/constants.js");
  const { fetchVerified } = await import("/static/model_store.js");
  const { decode } = await import("/static/safetensors.js");
  Object.assign(ort.env.wasm, { wasmPaths: ORT_WASM_PATH, numThreads: threads });
  const model = await (await fetch("/api/model")).json();
  const io = model.manifest.graphs.train_step, dims = [io.batch_size, io.seq_len];
  const { tensors } = decode((await fetchVerified(model, "weights.safetensors")).bytes);
  const feeds = Object.fromEntries(model.manifest.parameters.map(({ name, shape }) =>
    [name, new ort.Tensor("float32", tensors.get(name).data, shape)]));
  Object.assign(feeds, {
    [io.data_inputs.tokens]: new ort.Tensor("int64", BigInt64Array.from(fields.tokens, BigInt), dims),
    [io.data_inputs.targets]: new ort.Tensor("int64", BigInt64Array.from(fields.targets, BigInt), dims),
    [io.data_inputs.mask]: new ort.Tensor("float32", Float32Array.from(fields.mask), dims),
    [io.data_inputs.lr]: new ort.Tensor("float32", Float32Array.of(fields.lr), []) });
  const session = await ort.InferenceSession.create((await fetchVerified(model, io.file)).bytes,
    { executionProviders: ["wasm"], enableProfiling: true });
  for (let i = 0; i < steps; i++) await session.run(feeds);
  await session.endProfiling();
  await session.release();
}"""


# One MatMul graph per shape, each timed over `runs` calls after `warmup`, 1 thread, in the page.
MATMUL_RUNS = """async ([graphs, runs, warmup]) => {
  const ort = await import("/ort/ort.wasm.min.mjs");
  const { ORT_WASM_PATH } = await import("/static/constants.js");
  Object.assign(ort.env.wasm, { wasmPaths: ORT_WASM_PATH, numThreads: 1 });
  const out = [];
  for (const { bytes, m, k, n } of graphs) {
    const options = { executionProviders: ["wasm"] };
    const session = await ort.InferenceSession.create(Uint8Array.from(bytes), options);
    const feeds = { a: new ort.Tensor("float32", new Float32Array(m * k).fill(0.5), [m, k]),
                    b: new ort.Tensor("float32", new Float32Array(k * n).fill(0.25), [k, n]) };
    for (let i = 0; i < warmup; i++) await session.run(feeds);
    const began = performance.now();
    for (let i = 0; i < runs; i++) await session.run(feeds);
    out.push((performance.now() - began) / runs);
    await session.release();
  }
  return out;
}"""


# encodeUpdate of one random delta of the model's shapes per encoding, timed over `runs` calls after
# `warmup`, on the page's main thread (where client.js uploads): ms per call, each run alone.
ENCODE_RUNS = """async ([shapes, encodings, runs, warmup]) => {
  const { encodeUpdate } = await import("/static/update.js");
  const delta = shapes.map(([name, shape], i) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let j = 0; j < data.length; j++) data[j] = 1e-4 * Math.sin(1 + 7 * i + j);  // a 1e-4-scale delta
    return { name, shape, data };
  });
  const meta = { ticket: "t".repeat(32), clientId: "c".repeat(22), baseVersion: 1, numExamples: 20,
                 lossBefore: 3, lossAfter: 2.5 };
  const out = {};
  for (const encoding of encodings) {
    for (let i = 0; i < warmup; i++) encodeUpdate(delta, meta, encoding);
    out[encoding] = [];
    for (let i = 0; i < runs; i++) {
      const began = performance.now();
      const bytes = encodeUpdate(delta, meta, encoding).length;
      out[encoding].push([performance.now() - began, bytes]);
    }
  }
  return out;
}"""


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--keystrokes", type=int, default=500,
                        help="keys typed per latency run (default: %(default)s)")
    parser.add_argument("--key-delay-ms", type=float, default=80,
                        help="pause between keys (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS[:3]),
                        help="what to measure (default: %(default)s)")
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


def typed_texts(urls: list[str], keystrokes: int) -> list[str]:
    """What type_keystrokes types: whole URLs until `keystrokes` keys, the last one cut there."""
    texts, typed = [], 0
    for url in urls:
        if typed >= keystrokes:
            break
        texts.append(url[:keystrokes - typed])
        typed += len(texts[-1])
    return texts


def type_keystrokes(page, urls: list[str], keystrokes: int, delay_ms: float) -> int:
    """Type URLs key by key until `keystrokes` keys were typed; wait for each URL's suggestions."""
    texts = typed_texts(urls, keystrokes)
    for text in texts:
        page.fill("#url", "")
        page.keyboard.type(text, delay=delay_ms)
        # the typed text, not the input's value: inline completion may have appended a selected tail
        page.wait_for_function("t => document.getElementById('suggestions').dataset.for === t", arg=text)
    return sum(map(len, texts))


@contextmanager
def fresh_page(browser, base_url: str):
    """The page of base_url in a new browser context, loaded, nothing training or polling; closed after."""
    context = browser.new_context(base_url=base_url)
    try:
        yield open_page(context.new_page(), IDLE_PAGE)
    finally:
        context.close()


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
    page.wait_for_function("document.body.dataset.trainReady === 'true'")  # training graph cached too
    first = total_bytes(requests)
    mark = len(requests)
    page.reload()
    page.wait_for_function("document.body.dataset.trainReady === 'true'")
    reload = total_bytes(requests, mark)
    for url in urls[:8]:
        visit(page, url)
    mark = len(requests)
    page.get_by_role("button", name="Train now").click()
    page.wait_for_function("document.body.dataset.version === '2'", timeout=300_000)
    round_ = total_bytes(requests, mark)
    context.close()
    return [("transfer: first visit (model + training graph)", describe(*first)),
            ("transfer: reload", describe(*reload)),
            ("transfer: one round (upload + new version + polls)", describe(*round_))]


def chromium_cpu_seconds() -> float:
    """User + system CPU seconds so far of every chromium process this bench started (from /proc).

    Includes the page and the worker's message passing (the 2.7 MB of weights each way), which the
    worker's own step timing leaves out.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        if "chrom" in name:
            cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sum(seconds for pid, seconds in cpu.items() if ours(pid))


def training_rows(page, bundle_dir: str) -> list[tuple[str, str]]:
    """One train_step on the same batch in the page's worker and in onnxruntime Python, per thread
    count; the worker reports the threads onnxruntime-web really runs (1 without isolation)."""
    bundle = load_bundle(bundle_dir)
    trainers = {n: LocalTrainer(bundle, threads=n) for n in THREADS}
    weights, batch = bundle.load_weights(), fixed_batch(trainers[1])
    fields = {"tokens": batch[0].ravel().tolist(), "targets": batch[1].ravel().tolist(),
              "mask": batch[2].ravel().tolist(), "lr": LR}
    page.evaluate(TRAIN_START, [fields, list(THREADS), WARMUP_RUNS])
    browser, browser_cpu, python_ms, python_cpu = [], {}, {}, {}
    for w, n in enumerate(THREADS):
        began = chromium_cpu_seconds()
        browser.append(page.evaluate(TRAIN_STEPS, [w, STEP_RUNS]))
        browser_cpu[n] = (chromium_cpu_seconds() - began) * 1000 / STEP_RUNS
        began = time.process_time()
        python_ms[n] = time_runs(lambda n=n: trainers[n].step(weights, *batch, LR), STEP_RUNS, 1)
        python_cpu[n] = (time.process_time() - began) * 1000 / (STEP_RUNS + 1)  # time_runs warms up once
    page.evaluate(TRAIN_STOP)
    counted, positions = int(batch[2].sum()), batch[2].size

    def rate(ms: list[float], cpu: float) -> str:
        step = median(ms)
        # CPU time too: on a shared machine it moves less with other people's load than wall time
        return (f"{step:.0f} ms/step (min {min(ms):.0f}; CPU {cpu:.0f} ms/step) = "
                f"{counted / step * 1000:,.0f} tokens/s ({positions / step * 1000:,.0f} positions/s)")

    rows = [("train batch", f"{batch[0].shape[0]} x {batch[0].shape[1]}, {counted} counted tokens")]
    for n, result in zip(THREADS, browser, strict=True):
        browser_ms = [s * 1000 for s in result["seconds"]]
        ratio = median(browser_ms) / median(python_ms[n])
        rows += [(f"train step, browser (onnxruntime-web wasm, {n} thread{'s' * (n > 1)} asked)",
                  f"{rate(browser_ms, browser_cpu[n])}; runs {result['threads']}, "
                  f"crossOriginIsolated {result['isolated']}"),
                 (f"train step, Python (onnxruntime, {n} thread{'s' * (n > 1)})",
                  f"{rate(python_ms[n], python_cpu[n])}; browser / Python {ratio:.2f}x "
                  f"(CPU {browser_cpu[n] / python_cpu[n]:.2f}x)")]
    return rows


def profile_rows(page, bundle_dir: str, threads: int = 1) -> list[tuple[str, str]]:
    """Kernel time per operator type over STEP_RUNS steps after WARMUP_RUNS, from the profiler's events."""
    trainer = LocalTrainer(load_bundle(bundle_dir), threads=threads)
    tokens, targets, mask = fixed_batch(trainer)
    fields = {"tokens": tokens.ravel().tolist(), "targets": targets.ravel().tolist(),
              "mask": mask.ravel().tolist(), "lr": LR}
    lines: list[str] = []
    page.on("console", lambda message: lines.append(message.text))
    page.evaluate(PROFILE_STEPS, [fields, WARMUP_RUNS + STEP_RUNS, threads])
    events = [json.loads(line.rstrip(",")) for text in lines for line in text.splitlines()
              if line.startswith('{"cat"')]
    runs = sorted((e for e in events if e["name"] == "model_run"), key=lambda e: e["ts"])
    timed_from = runs[WARMUP_RUNS]["ts"]
    kernels = [e for e in events if e["cat"] == "Node" and e["name"].endswith("_kernel_time")
               and e["ts"] >= timed_from]
    per_op: dict[str, list[float]] = {}
    for event in kernels:
        per_op.setdefault(event["args"]["op_name"], []).append(event["dur"] / 1000)
    total = sum(sum(times) for times in per_op.values())
    run_ms = median([e["dur"] / 1000 for e in runs[WARMUP_RUNS:]])
    rows = [(f"profile ({threads} thread{'s' * (threads > 1)}): one step",
             f"{run_ms:.0f} ms run, {total / STEP_RUNS:.0f} ms in kernels, "
             f"{len(kernels) // STEP_RUNS} kernel calls")]
    for op, times in sorted(per_op.items(), key=lambda kv: -sum(kv[1]))[:10]:
        rows.append((f"profile: {op}", f"{100 * sum(times) / total:.1f} % of kernel time, "
                     f"{len(times) // STEP_RUNS} a step, {sum(times) / STEP_RUNS:.1f} ms a step"))
    return rows


def matmul_graph(m: int, k: int, n: int) -> bytes:
    """A one-node ONNX graph: y = a @ b, a (m, k) and b (k, n) both inputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9  # what onnxruntime-web and Python both read
    onnx.checker.check_model(model)
    return model.SerializeToString()


def matmul_rows(page) -> list[tuple[str, str]]:
    """One MatMul per MATMUL_SHAPES entry: ms a call in the page and in Python (1 thread each)."""
    import onnxruntime as ort

    calls = 200
    graphs = [{"bytes": list(matmul_graph(*shape)), "m": shape[0], "k": shape[1], "n": shape[2]}
              for shape in MATMUL_SHAPES]
    browser = page.evaluate(MATMUL_RUNS, [graphs, calls, 50])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    rows = []
    for (m, k, n), page_ms in zip(MATMUL_SHAPES, browser, strict=True):
        session = ort.InferenceSession(matmul_graph(m, k, n), options, providers=["CPUExecutionProvider"])
        feeds = {"a": np.full((m, k), 0.5, np.float32), "b": np.full((k, n), 0.25, np.float32)}
        python_ms = median(time_runs(lambda s=session, f=feeds: s.run(None, f), 5, calls // 5, warmup=50))
        gflops = 2 * m * k * n / 1e6
        rows.append((f"matmul {m}x{k} @ {k}x{n}, 1 thread",
                     f"browser {page_ms:.3f} ms ({gflops / page_ms:.1f} GFLOP/s), Python {python_ms:.3f} ms "
                     f"({gflops / python_ms:.1f} GFLOP/s); browser / Python {page_ms / python_ms:.2f}x"))
    return rows


def encode_rows(page, bundle_dir: str) -> list[tuple[str, str]]:
    """The page's encodeUpdate of a full-size delta: ms per body for F32, F16 and Q8."""
    shapes = [[p["name"], p["shape"]] for p in load_bundle(bundle_dir).manifest["parameters"]]
    timings = page.evaluate(ENCODE_RUNS, [shapes, ["F32", "F16", "Q8"], STEP_RUNS, WARMUP_RUNS])
    return [(f"encodeUpdate, {encoding} ({runs[0][1]:,} B)",
             f"median {median([ms for ms, _ in runs]):.1f} ms (min {min(ms for ms, _ in runs):.1f}, "
             f"max {max(ms for ms, _ in runs):.1f}; {len(runs)} runs)") for encoding, runs in timings.items()]


def latency_rows(page, urls, args) -> list[tuple[str, str]]:
    """Keystroke latency idle; then, with 1 and with 2 training threads (what the page's
    train_threads asks of its training worker), a training run of 20 URLs in such a worker alone,
    and a second one typed through."""
    idle, _ = latencies(page, urls, args.keystrokes, args.key_delay_ms)
    rows = [(f"keystroke -> suggestions, idle (key every {args.key_delay_ms:.0f} ms)", idle)]
    visits = urls[-20:]
    for threads in TRAIN_THREADS:
        named = f"{threads} training thread{'s' * (threads > 1)}"
        page.evaluate(TRAIN_RUN, [threads, visits, TRAINING_EPOCHS, LR])
        alone = page.evaluate("globalThis.benchRun")
        page.evaluate(TRAIN_RUN, [threads, visits, TRAINING_EPOCHS, LR])  # runs on while typing
        busy, _ = latencies(page, urls[::-1], args.keystrokes // 2, args.key_delay_ms)
        typed_until = page.evaluate("performance.now()")
        typed = page.evaluate("globalThis.benchRun")
        rows += [(f"training run, 20 URLs x {TRAINING_EPOCHS} epochs, {named}",
                  f"{alone['seconds']:.1f} s of SGD ({alone['steps']} steps), {alone['wall']:.1f} s with "
                  "the worker's start and the losses before and after, nobody typing"),
                 (f"keystroke -> suggestions, while training ({named})",
                  busy + ("" if typed["ended"] > typed_until else " (training ended first)"))]
    return rows


def counts_rows(browser, urls, args) -> list[tuple[str, str]]:
    """Idle keystroke latency with the bundle's counts.bin and without it, served in turn."""
    with tempfile.TemporaryDirectory(prefix="bench-no-counts-") as scratch:
        network_only = Path(scratch) / "bundle"
        shutil.copytree(args.bundle, network_only)
        if "counts" not in load_bundle(network_only).manifest:
            return [("counts part", f"{args.bundle} ships no counts.bin: nothing to compare")]
        remove_counts(network_only)
        values: dict[str, list[float]] = {"with counts.bin": [], "network alone": []}
        for _ in range(COUNTS_ROUNDS):
            for label, bundle in (("with counts.bin", args.bundle), ("network alone", str(network_only))):
                with serve(bundle) as base_url, fresh_page(browser, base_url) as page:
                    values[label] += latencies(page, urls, args.keystrokes, args.key_delay_ms)[1]
    return [(f"keystroke -> suggestions, idle, {label}",
             f"p50 {np.percentile(v, 50):.1f} ms, p95 {np.percentile(v, 95):.1f} ms ({len(v)} renders, "
             f"{COUNTS_ROUNDS} runs)") for label, v in values.items()]


POW_RATE = """async ([puzzle, difficulty]) => {
  const { solvePuzzle } = await import("/static/pow.js");
  await solvePuzzle("warm-up", 12);
  let tried = 0, ms = 0;
  for (let i = 0; i < 4; i++) {
    const t0 = performance.now();
    tried += (await solvePuzzle(`${puzzle}-${i}`, difficulty)).tried;
    ms += performance.now() - t0;
  }
  return { tried, ms };
}"""


def pow_rows(page) -> list[tuple[str, str]]:
    """Hashes a second of the page's puzzle solver, and what the default difficulty costs."""
    from server.config import SETTINGS

    got = page.evaluate(POW_RATE, ["rate", 16])
    rate = got["tried"] / (got["ms"] / 1000)
    difficulty = SETTINGS["POW_DIFFICULTY"].default
    return [(f"proof of work, difficulty {difficulty} (goal: under 2 s)",
             f"{rate:,.0f} hashes/s, {2 ** difficulty / rate:.2f} s expected")]


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Everything, on one server and one chromium."""
    from playwright.sync_api import sync_playwright

    urls = typing_urls(200)
    with serve(args.bundle) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        rows = transfer_rows(browser, base_url, urls) if "transfer" in args.parts else []
        context = browser.new_context(base_url=base_url)
        page = open_page(context.new_page(), IDLE_PAGE)
        rows += latency_rows(page, urls, args) if "latency" in args.parts else []
        rows += training_rows(page, args.bundle) if "train" in args.parts else []
        rows += profile_rows(page, args.bundle) if "profile" in args.parts else []
        rows += matmul_rows(page) if "matmul" in args.parts else []
        rows += encode_rows(page, args.bundle) if "encode" in args.parts else []
        rows += counts_rows(browser, urls, args) if "counts" in args.parts else []
        rows += pow_rows(page) if "pow" in args.parts else []
        browser.close()
    return rows


def main(argv=None) -> None:
    """Print the result table."""
    print_table(run(parse_args(argv)))


if __name__ == "__main__":
    main()
