"""Secure aggregation's costs through the real app: server CPU of a secure round beside a plain round of
the same cohort, bytes per client per phase, and a browser's time for key agreement + masking.

**Server CPU.** ``server.app.create_app`` runs in this process behind a Flask test client; the CPU
time (``time.process_time``) of every request and of the coordinator's tick at a deadline is the
server's, everything between (quantizing, masking, key agreement, encoding uploads) the clients'.
Both modes run the same cohort the same way: n clients check in and are all drawn (SELECTION=cohort),
10 % of them drop, and the round closes at its deadline with the survivors. Secure: the 10 % drop
after sharing keys, the costly case (the server rebuilds their mask keys from shares and removes
the pairwise masks they shared with survivors). Plain: the 10 % never upload; the others send
float16 deltas (what browsers sent when its figures were recorded; they now send Q8, about
half the bytes). PUBLISH_GATE is off in both: it scores the same candidate either way.
The model is --bundle's parameter shapes (pretrained/: 690,688 weights) up to cohort --full-up-to,
and --reduced-params weights above it (say so in the table; cohort 1,000 at full size stores 1.4 GB
of masked inputs in the benchmark's SQLite).

**Browser.** One Chromium page on the app's origin imports ``/static/secagg.js`` (as
tests/web/test_secagg.py does) and plays one member of a cohort of 100 whose other 99 members are
Python, for --browser-rounds rounds on the full model: key generation + advertise, share keys (key
agreement with its neighbours, Shamir shares, encryption) and the masked input (key agreement,
AES-CTR masks, quantizing) of --bundle's size.

    .venv/bin/python bench/bench_secagg.py [--bundle pretrained] [--sizes 10,100,1000] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, print_table  # first: puts the repo on sys.path

from client.protocol import FederatedClient, SecureParticipant, encode_update, flatten
from privacy import quantize
from privacy.secagg import SecAggClient, SecAggServer, make_config
from server.app import create_app
from tests.server.conftest import write_tiny_bundle

DEADLINE_S = 60.0
DISTINCT = 8  # distinct random deltas, cycled over the cohort


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "pretrained"),
                        help="the model whose parameter shapes are masked (default: %(default)s)")
    parser.add_argument("--sizes", default="10,100,1000", help="cohort sizes, comma-separated")
    parser.add_argument("--full-up-to", type=int, default=100,
                        help="largest cohort run on the full model (default: %(default)s)")
    parser.add_argument("--reduced-params", type=int, default=100_000,
                        help="weights of the model of larger cohorts (default: %(default)s)")
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--browser-rounds", type=int, default=3, help="rounds the browser member plays")
    parser.add_argument("--no-browser", action="store_true", help="skip the chromium row")
    args = parser.parse_args(argv)
    if args.reduced_params < 1 or args.browser_rounds < 1:
        parser.error("--reduced-params and --browser-rounds must be at least 1")
    return args


def model_shapes(bundle: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of every parameter of the bundle, in manifest order."""
    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    return {p["name"]: tuple(p["shape"]) for p in manifest["parameters"]}


class Clock:
    """A settable clock for the coordinator: deadlines pass without sleeping."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class ServerTime:
    """CPU seconds spent inside the server's calls, in total and in the last one (the one that closes)."""

    def __init__(self):
        self.total = self.last = 0.0

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), its CPU time counted as the server's."""
        began = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.last = time.process_time() - began
            self.total += self.last

    def wrap(self, fed: FederatedClient) -> FederatedClient:
        """fed, with each of its requests timed as the server's."""
        request = fed.transport.request
        fed.transport.request = lambda *args: self.call(request, *args)  # type: ignore[method-assign]
        return fed


def random_deltas(shapes: dict[str, tuple[int, ...]]) -> list[dict[str, np.ndarray]]:
    """DISTINCT deltas of an SGD-like size (std 1e-3 per weight, L2 about 0.8 at 690k weights)."""
    rng = np.random.default_rng(0)
    return [{name: rng.normal(0, 1e-3, shape).astype(np.float32) for name, shape in shapes.items()}
            for _ in range(DISTINCT)]


def server_round(mode: str, n: int, shapes: dict, bits: int, work: Path) -> dict:
    """One round of cohort n in mode (secure or plain), 10 % dropping; CPU times, bytes, error."""
    bundle = write_tiny_bundle(work / f"bundle-{mode}-{n}", shapes)
    app = create_app({"BUNDLE_DIR": str(bundle), "DATA_DIR": str(work / f"data-{mode}-{n}"),
                      "TICK_INTERVAL_S": 0, "LOG_LEVEL": "ERROR", "IDENTITY": "", "SELECTION": "cohort",
                      "SELECTION_WINDOW_S": 0, "MAX_MEMBERS_PER_NETWORK": n, "OVER_SELECTION": 0.0,
                      "MIN_CLIENTS": n, "MIN_CLIENTS_FLOOR": 1, "ROUND_DEADLINE_S": DEADLINE_S,
                      "SECURE_PHASE_S": DEADLINE_S, "AGGREGATION": mode, "SECURE_BITS": bits,
                      "PUBLISH_GATE": "off", "INFLUENCE": "none", "MAX_NUM_EXAMPLES": 10_000,
                      "TICKETS_PER_CLIENT_PER_MIN": 1e9, "REQUESTS_PER_ADDR_PER_MIN": 1e9,
                      "MAX_TICKETS_PER_ADDR": 1_000_000})
    coordinator = app.extensions["fedurl.coordinator"]
    clock = coordinator.clock = Clock()
    server = ServerTime()
    deltas = random_deltas(shapes)
    order = [{"name": name, "shape": list(shape)} for name, shape in shapes.items()]
    flats = [flatten(delta, order) for delta in deltas]
    dropped = set(range(0, n, 10))
    began = time.process_time()
    feds = [server.wrap(FederatedClient(app.test_client())) for _ in range(n)]
    for fed in feds:
        fed.check_in()
    tickets = [fed.ticket() for fed in feds]
    sizes: dict[str, int] = {}
    if mode == "plain":
        for k, (fed, ticket) in enumerate(zip(feds, tickets, strict=True)):
            if k not in dropped:
                body = encode_update(deltas[k % DISTINCT], ticket, fed.client_id, 20, 3.0, 2.5, np.float16)
                sizes["update"] = len(body)
                fed.post_update(body)
    else:
        members = [SecureParticipant(fed, ticket, flats[k % DISTINCT], np.random.default_rng(k))
                   for k, (fed, ticket) in enumerate(zip(feds, tickets, strict=True))]
        for phase in SecureParticipant.PHASES:
            for k, member in enumerate(members):
                if phase in ("advertise", "share_keys") or k not in dropped:
                    member.step(phase)
            if phase == "masked_input":  # the dropped never send theirs: the phase ends at its deadline
                clock.now += DEADLINE_S + 1
                server.call(coordinator.tick)
        survivor = members[1]  # position 0 dropped
        sizes = {**{f"{k} up": v for k, v in survivor.sent.items()},
                 **{f"{k} down": v for k, v in survivor.fetched.items()}}
    if mode == "plain":
        clock.now += DEADLINE_S + 1
        server.call(coordinator.tick)
    whole = time.process_time() - began
    status = FederatedClient(app.test_client()).status()
    assert status["version"] == 2, f"{mode} round of {n} did not publish: {status['rounds'][-2]}"
    new, old = coordinator.store.weights(2), coordinator.store.weights(1)
    published = flatten({k: new[k].astype(np.float64) - old[k] for k in new}, order)
    survivors = [k for k in range(n) if k not in dropped]
    oracle = np.mean([quantize.clip(flats[k % DISTINCT], 1.0) for k in survivors], axis=0)
    return {"server_s": server.total, "close_s": server.last, "client_s": (whole - server.total) / n,
            "sizes": sizes, "error": float(np.abs(published - oracle).max())}


def by_phase(sizes: dict[str, int], direction: str) -> str:
    """'phase bytes, ...' of one direction (' up' or ' down')."""
    return ", ".join(f"{k.removesuffix(direction)} {v}" for k, v in sizes.items() if k.endswith(direction))


def cohort_rows(n: int, shapes: dict, bits: int, label: str) -> list[tuple[str, str]]:
    """The rows of one cohort size: both modes' server CPU, the ratio, bytes and errors."""
    with tempfile.TemporaryDirectory(prefix="fedurl-bench-secagg-") as work:
        secure = server_round("secure", n, shapes, bits, Path(work))
        plain = server_round("plain", n, shapes, bits, Path(work))
    config = make_config(round_id=1, cohort_size=n, num_params=sum(int(np.prod(s)) for s in shapes.values()),
                         bits=bits)
    sizes = secure["sizes"]
    keys = sizes["advertise up"] + sizes["share_keys up"] + sizes["unmask up"]
    return [
        (f"cohort {n} ({label}): degree, threshold, min survivors, scale",
         f"{config.degree}, {config.threshold}, {config.min_survivors}, {config.scale:.4g}"),
        (f"cohort {n}: server CPU, secure round (10 % dropped after share keys)",
         f"{secure['server_s']:.2f} s (closing call: unmask, decode, publish {secure['close_s']:.2f} s)"),
        (f"cohort {n}: server CPU, plain round (10 % never upload)",
         f"{plain['server_s']:.2f} s (closing call: aggregate, publish {plain['close_s']:.2f} s)"),
        (f"cohort {n}: secure / plain server CPU", f"{secure['server_s'] / plain['server_s']:.2f}x"),
        (f"cohort {n}: client CPU per member, Python (secure; plain)",
         f"{secure['client_s'] * 1000:.0f} ms; {plain['client_s'] * 1000:.0f} ms"),
        (f"cohort {n}: bytes up per member", f"{by_phase(sizes, ' up')}; keys+shares+unmask = "
         f"{100 * keys / sizes['masked_input up']:.2f} % of the masked input; plain float16 update "
         f"{plain['sizes']['update']}"),
        (f"cohort {n}: bytes down per member, by phase (config, roster, shares, unmask request)",
         by_phase(sizes, " down")),
        (f"cohort {n}: max error of the published mean (secure; plain)",
         f"{secure['error']:.2g} (bound {quantize.error_bound(config.scale):.2g}); {plain['error']:.2g}"),
    ]


BOOT = """async () => { window.sa = await import('/static/secagg.js');
  window.unhex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
  window.hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(''); }"""


def browser_round(page, round_id: int, params: int) -> tuple[float, float, float]:
    """One round of a cohort of 100 with the page as member 0: ms to create + advertise, share keys, mask."""
    n = 100
    config = make_config(round_id=round_id, cohort_size=n, num_params=params, bits=16, clip=1.0)
    server = SecAggServer(config)
    others = [SecAggClient(config, i) for i in range(1, n)]
    create = page.evaluate("""async (c) => { const t = performance.now();
      window.client = await sa.SecAggClient.create(unhex(c), 0);
      window.adv = hex(client.advertise()); return performance.now() - t; }""", config.encode().hex())
    server.receive_advertise(bytes.fromhex(page.evaluate("window.adv")))
    for c in others:
        server.receive_advertise(c.advertise())
    roster = server.roster()
    share = page.evaluate("""async (r) => { const t = performance.now();
      window.sh = hex(await client.shareKeys(unhex(r))); return performance.now() - t; }""", roster.hex())
    server.receive_shares(bytes.fromhex(page.evaluate("window.sh")))
    for c in others:
        server.receive_shares(c.share_keys(roster))
    server.close_shares()
    mask = page.evaluate("""async ([s, n]) => { const delta = new Float32Array(n).fill(1e-4);
      const t = performance.now(); await client.maskedInput(unhex(s), delta);
      return performance.now() - t; }""", [server.shares_for(0).hex(), params])
    return create, share, mask


def browser_rows(shapes: dict, rounds: int) -> list[tuple[str, str]]:
    """The page's key agreement + masking per round on the full model, served by the app's /static/."""
    from playwright.sync_api import sync_playwright

    from study.background import serving
    from tests.web.page_helpers import CHROMIUM_ARGS

    chromium = shutil.which("chromium")
    if chromium is None:
        return [("browser member (chromium)", "skipped: chromium not installed")]
    params = sum(int(np.prod(s)) for s in shapes.values())
    with tempfile.TemporaryDirectory(prefix="fedurl-bench-secagg-") as work:
        app = create_app({"BUNDLE_DIR": str(write_tiny_bundle(Path(work) / "bundle", shapes)),
                          "DATA_DIR": str(Path(work) / "data"), "TICK_INTERVAL_S": 0, "LOG_LEVEL": "ERROR"})
        with serving(app, "fedurl-bench-secagg") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.route("**/blank-bench-page", lambda route: route.fulfill(
                status=200, content_type="text/html", body="<!doctype html><title>bench</title>"))
            page.goto(url + "/blank-bench-page")
            page.evaluate(BOOT)
            times = np.array([browser_round(page, r + 1, params) for r in range(rounds)])
            browser.close()
    create, share, mask = np.median(times, axis=0)
    total = times.sum(axis=1)
    return [("browser member, cohort 100 (degree 22), chromium, /static/secagg.js",
             f"create + advertise {create:.0f} ms, share keys {share:.0f} ms, mask {params:,} weights "
             f"{mask:.0f} ms: {np.median(total):.0f} ms a round (median of {rounds}; "
             f"min {total.min():.0f}, max {total.max():.0f})")]


def main(argv=None) -> None:
    """Print the table."""
    args = parse_args(argv)
    full = model_shapes(args.bundle)
    reduced = {"weights": (args.reduced_params,)}
    rows: list[tuple[str, str]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        began = time.perf_counter()
        small = n > args.full_up_to
        shapes = reduced if small else full
        label = f"{sum(int(np.prod(s)) for s in shapes.values()):,} weights" + (", reduced" if small else "")
        rows += cohort_rows(n, shapes, args.bits, label)
        rows.append((f"cohort {n}: bench wall", f"{time.perf_counter() - began:.0f} s"))
    if not args.no_browser:
        rows += browser_rows(full, args.browser_rounds)
    print_table(rows)


if __name__ == "__main__":
    main()
