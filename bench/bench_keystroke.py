"""Keystroke -> suggestions for checkouts served in turn: a before/after of the page in one run.

Each checkout in --code (label=DIR,...; e.g. the code before a change, `git archive REV | tar -x
-C DIR`) runs its own server (bench_server.start_server) with --bundle, and one Debian chromium
opens a fresh page on each in turn, --rounds times, typing --keys keys of the same URLs (those
bench_browser.py types, from this checkout's ../shared) at a human pace. Two figures a checkout:

- page: the page's own "keystroke-to-suggestions" measure (web_client/main.js), what a person
  waits: from the input event of the oldest key not yet answered to the suggestions in the DOM;
- compute: the completer's work alone, in the page's thread, without the page's messages and
  rendering: the checkout's FusedCompleter built as worker.js builds it (its own modules), asked
  for every prefix of the same URLs in order, back to back; where a checkout's modules do not fit
  this script, "n/a".

A checkout without web_client/node_modules (a `git archive`) gets a link to this checkout's, so
that its server can serve onnxruntime-web. Rounds past the 200 URLs start over from the first.

    .venv/bin/python bench/bench_keystroke.py --bundle pretrained --code before=/tmp/before,after=.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_browser import fresh_page, latencies, typed_texts, typing_urls
from bench_server import start_server
from common import REPO, bundle_parser, print_table

sys.path.insert(0, str(REPO / "tests" / "web"))
from page_helpers import CHROMIUM_ARGS  # noqa: E402  (shared with the browser tests)

URLS_A_ROUND = 40  # each round types the next URLs, as many as its keys need
# The checkout's completer as worker.js builds it, timed over every prefix of each URL in order.
COMPUTE = """async (urls) => {
  const ort = await import("/ort/ort.wasm.min.mjs");
  const { ORT_WASM_PATH } = await import("/static/constants.js");
  Object.assign(ort.env.wasm, { wasmPaths: ORT_WASM_PATH, numThreads: 1 });
  const { openInfer } = await import("/static/infer_session.js");
  const { decode } = await import("/static/safetensors.js");
  const { Completer, minProbability } = await import("/static/completer.js");
  const { Tokenizer } = await import("/static/tokenizer.js");
  const { CountTrie, FusedCompleter } = await import("/static/ngram.js");
  const model = await (await fetch("/api/model")).json();
  const file = async (name) => new Uint8Array(await (await fetch(model.files[name])).arrayBuffer());
  const values = {};
  for (const [name, tensor] of decode(await file("weights.safetensors")).tensors) values[name] = tensor.data;
  const infer = await openInfer(ort, await file("infer.onnx"), model.manifest, values);
  const ids = model.manifest.tokenizer;
  const tokenizer = new Tokenizer(JSON.parse(new TextDecoder().decode(await file(ids.vocab))));
  let completer = new Completer({ tokenizer, step: infer.step, config: model.manifest.config,
    state: model.manifest.graphs.infer.state, blockedIds: [ids.pad_id, ids.unk_id, ids.bos_id],
    threshold: minProbability(model.manifest) });
  if (model.files["counts.bin"]) {
    completer = new FusedCompleter(completer, new CountTrie(await file("counts.bin")));
  }
  await completer.completeScored("", 1);
  const ms = [];
  for (const url of urls) {
    for (let end = 1; end <= url.length; end++) {
      const began = performance.now();
      await completer.completeScored(url.slice(0, end), 5);
      ms.push(performance.now() - began);
    }
  }
  await infer.release();
  return ms;
}"""


def parse_args(argv=None):
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--code", default=f"this={REPO}",
                        help="label=DIR,...: checkouts whose page is typed into, in turn "
                             "(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="pages a checkout, in turn (default: %(default)s)")
    parser.add_argument("--keys", type=int, default=300, help="keys typed a page (default: %(default)s)")
    parser.add_argument("--key-delay-ms", type=float, default=80,
                        help="pause between keys (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.keys < 1:
        parser.error("--rounds and --keys must be at least 1")
    return args


def checkouts(spec: str) -> list[tuple[str, Path]]:
    """(label, folder) pairs of --code; a folder without node_modules gets a link to this checkout's."""
    ours = REPO / "web_client" / "node_modules"
    if not ours.is_dir():
        raise SystemExit(f"{ours} is missing: run make install first")
    pairs: list[tuple[str, Path]] = []
    for item in spec.split(","):
        label, equals, folder = item.partition("=")
        code = Path(folder).resolve()
        if not equals or not label or not folder or not (code / "server" / "cli.py").is_file():
            raise SystemExit(f"--code {item!r}: expected label=DIR with DIR a fedurl checkout")
        if label in (known for known, _ in pairs):
            raise SystemExit(f"--code: the label {label!r} is given twice")
        modules = code / "web_client" / "node_modules"
        if not modules.exists():
            if modules.is_symlink():  # a link that leads nowhere
                raise SystemExit(f"{modules} is a broken link: remove it or point it at {ours}")
            modules.symlink_to(ours, target_is_directory=True)
        pairs.append((label, code))
    return pairs


def summary(values: list[float]) -> str:
    """p50, p90, p95, p99 and mean of ms values."""
    if not values:
        return "n/a"
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return (f"p50 {p50:.2f} ms, p90 {p90:.2f}, p95 {p95:.2f}, p99 {p99:.2f}, mean {np.mean(values):.2f} "
            f"({len(values)} keys)")


def run(args) -> list[tuple[str, str]]:
    """Every checkout's page and compute figures, the checkouts in turn each round."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    codes = checkouts(args.code)
    urls = typing_urls(200)
    page_ms: dict[str, list[float]] = {label: [] for label, _ in codes}
    compute_ms: dict[str, list[float]] = {label: [] for label, _ in codes}
    servers, data = [], tempfile.mkdtemp(prefix="bench-keystroke-")
    try:
        bundle = str(Path(args.bundle).resolve())  # the same for every checkout, whatever its cwd
        for index, (_, code) in enumerate(codes):
            servers.append(start_server(code, bundle, str(Path(data) / str(index)), None, 10**6)[:2])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            for round_index in range(args.rounds):
                start = round_index * URLS_A_ROUND % len(urls)
                typed = urls[start:] + urls[:start]
                for (label, _), (_, base_url) in zip(codes, servers, strict=True):
                    with fresh_page(browser, base_url) as page:
                        page_ms[label] += latencies(page, typed, args.keys, args.key_delay_ms)[1]
                        try:
                            compute_ms[label] += page.evaluate(COMPUTE, typed_texts(typed, args.keys))
                        except PlaywrightError as error:
                            print(f"{label}: compute n/a ({str(error).splitlines()[0]})", file=sys.stderr)
                print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
            browser.close()
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    rows = [(f"{label}: keystroke -> suggestions, page", summary(page_ms[label])) for label, _ in codes]
    return rows + [(f"{label}: completer compute a key", summary(compute_ms[label])) for label, _ in codes]


def main(argv=None) -> None:
    """Print the result table."""
    print_table(run(parse_args(argv)))


if __name__ == "__main__":
    main()
