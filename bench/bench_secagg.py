"""Secure aggregation's costs: server CPU to unmask, bytes per client per phase, browser time.

A 500k-parameter model by default. At each cohort size, 10 % of the cohort drops after sharing
keys (the costly case: the server rebuilds their mask keys and removes the pairwise masks they
shared with survivors). Clients are simulated in Python in the same process; only the server's
calls are timed (unmask_request, receive_unmask, finish, and the arrivals of masked inputs).
The browser row runs one JS client (web_client/secagg.js) in headless chromium in a cohort of
100 whose other members are Python, and times key generation, key sharing and masking.

    .venv/bin/python bench/bench_secagg.py [--params 500000] [--sizes 10,100,1000] [--no-browser]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import threading
import time

import numpy as np
from common import REPO, print_table  # first: puts the repo on sys.path

from privacy.secagg import SecAggClient, SecAggServer, make_config


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=500_000, help="model parameters (masked words)")
    parser.add_argument("--sizes", default="10,100,1000", help="cohort sizes, comma-separated")
    parser.add_argument("--bits", type=int, default=16)
    parser.add_argument("--no-browser", action="store_true", help="skip the chromium row")
    return parser.parse_args(argv)


def run_cohort(n: int, params: int, bits: int) -> dict:
    """One round at cohort n with 10 % dropping after SHARE_KEYS; timings and message sizes."""
    config = make_config(round_id=1, cohort_size=n, num_params=params, bits=bits, clip=1.0)
    server = SecAggServer(config)
    clients = [SecAggClient(config, i, np.random.default_rng(i)) for i in range(n)]
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 1e-3, params)
    sizes: dict[str, int] = {}
    server_s = 0.0

    def timed(fn, *args):
        nonlocal server_s
        began = time.perf_counter()
        out = fn(*args)
        server_s += time.perf_counter() - began
        return out

    for c in clients:
        message = c.advertise()
        sizes["advertise"] = len(message)
        timed(server.receive_advertise, message)
    roster = timed(server.roster)
    sizes["roster (down)"] = len(roster)
    for c in clients:
        message = c.share_keys(roster)
        sizes["shares"] = len(message)
        timed(server.receive_shares, message)
    timed(server.close_shares)
    dropped = set(range(0, n, 10))
    client_s = 0.0
    shares_sizes = []
    for c in clients:
        if c.index in dropped:
            continue
        routed = timed(server.shares_for, c.index)
        shares_sizes.append(len(routed))
        began = time.perf_counter()
        message = c.masked_input(routed, delta)
        client_s += time.perf_counter() - began
        sizes["masked input"] = len(message)
        timed(server.receive_masked_input, message)
    sizes["shares for (down)"] = int(np.median(shares_sizes))
    request = timed(server.unmask_request)
    sizes["unmask request (down)"] = len(request)
    for c in clients:
        if c.index not in dropped:
            message = c.unmask(request)
            sizes["unmask"] = len(message)
            timed(server.receive_unmask, message)
    finish_began = time.perf_counter()
    aggregate = server.finish()
    finish_s = time.perf_counter() - finish_began
    server_s += finish_s
    error = np.abs(aggregate.mean(config) - delta.clip(-1, 1)).max()  # all clients sent the same delta
    return {"config": config, "server_s": server_s, "finish_s": finish_s,
            "client_mask_s": client_s / (n - len(dropped)), "sizes": sizes, "error": error}


def plain_baseline(n: int, params: int) -> float:
    """Seconds for today's path to sum n float32 deltas (the plain mean), for comparison."""
    deltas = [np.random.default_rng(i).normal(0, 1e-3, params).astype(np.float32) for i in range(n)]
    began = time.perf_counter()
    total = np.zeros(params, dtype=np.float64)
    for d in deltas:
        total += d
    return time.perf_counter() - began


def browser_row(params: int) -> tuple[str, str]:
    """One JS client in chromium, cohort 100 (degree 22): key generation, shareKeys, maskedInput."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        return ("browser client (chromium)", "skipped: chromium not installed")
    import importlib.util
    spec = importlib.util.spec_from_file_location("page_helpers", REPO / "tests" / "web" / "page_helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/":
                body = b"<!doctype html><title>bench</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.path = self.path.replace("/static/", "/", 1)
            super().do_GET()

        def log_message(self, *args):
            pass

    n = 100
    config = make_config(round_id=5, cohort_size=n, num_params=params, bits=16, clip=1.0)
    server = SecAggServer(config)
    others = [SecAggClient(config, i) for i in range(1, n)]
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(REPO / "web_client")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=helpers.CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_port}/")
            page.evaluate("""async () => { window.sa = await import('/static/secagg.js');
              window.unhex = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
              window.hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(''); }""")
            create = page.evaluate("""async (c) => { const t = performance.now();
              window.client = await sa.SecAggClient.create(unhex(c), 0);
              window.adv = hex(client.advertise()); return performance.now() - t; }""", config.encode().hex())
            server.receive_advertise(bytes.fromhex(page.evaluate("window.adv")))
            for c in others:
                server.receive_advertise(c.advertise())
            roster = server.roster()
            share = page.evaluate("""async (r) => { const t = performance.now();
              window.sh = hex(await client.shareKeys(unhex(r))); return performance.now() - t; }""",
                                  roster.hex())
            server.receive_shares(bytes.fromhex(page.evaluate("window.sh")))
            for c in others:
                server.receive_shares(c.share_keys(roster))
            server.close_shares()
            mask = page.evaluate("""async ([s, n]) => { const delta = new Float32Array(n).fill(1e-4);
              const t = performance.now(); const out = await client.maskedInput(unhex(s), delta);
              return [performance.now() - t, out.length]; }""", [server.shares_for(0).hex(), params])
            browser.close()
    finally:
        httpd.shutdown()
    return ("browser client, cohort 100 (degree 22), chromium",
            f"keys {create:.0f} ms, share keys {share:.0f} ms, mask {params} params {mask[0]:.0f} ms "
            f"({mask[1]} bytes)")


def main(argv=None) -> None:
    """Print the table."""
    args = parse_args(argv)
    rows: list[tuple[str, str]] = []
    float_bytes = 4 * args.params
    for n in (int(s) for s in args.sizes.split(",")):
        began = time.perf_counter()
        result = run_cohort(n, args.params, args.bits)
        config, sizes = result["config"], result["sizes"]
        rows.append((f"cohort {n}: degree, threshold, min survivors, scale",
                     f"{config.degree}, {config.threshold}, {config.min_survivors}, {config.scale:.4g} "
                     f"(error bound {1 / config.scale:.2g})"))
        rows.append((f"cohort {n}: server CPU, whole round (10 % dropped)", f"{result['server_s']:.2f} s"))
        rows.append((f"cohort {n}: server CPU, unmask (finish)", f"{result['finish_s']:.2f} s"))
        plain_s = plain_baseline(n, args.params)
        rows.append((f"cohort {n}: plain float32 sum (today's floor)", f"{plain_s:.2f} s"))
        rows.append((f"cohort {n}: client CPU to mask (Python)", f"{result['client_mask_s'] * 1000:.0f} ms"))
        up = sizes["advertise"] + sizes["shares"] + sizes["unmask"]
        rows.append((f"cohort {n}: bytes up per client", ", ".join(
            f"{k} {v}" for k, v in sizes.items() if "down" not in k)
            + f"; keys+shares+unmask = {100 * up / sizes['masked input']:.2f} % of the masked input"))
        rows.append((f"cohort {n}: bytes down per client", ", ".join(
            f"{k.replace(' (down)', '')} {v}" for k, v in sizes.items() if "down" in k)))
        ratio = sizes["masked input"] / float_bytes
        rows.append((f"cohort {n}: masked input / float32 model", f"{ratio:.3f}"))
        rows.append((f"cohort {n}: max error of the mean", f"{result['error']:.2g} (bench wall "
                     f"{time.perf_counter() - began:.0f} s)"))
    if not args.no_browser:
        rows.append(browser_row(args.params))
    print_table(rows)


if __name__ == "__main__":
    main()
