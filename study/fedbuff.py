"""study/fedbuff.py: synchronous FedAvg against FedBuff at equal client work, with stragglers.

    python -m study.fedbuff --corpus urls.txt --out runs/fedbuff [--updates 200 --cohort 10 --buffer 5]

Both schedules run the real server in-process (``SCHEDULE=sync`` with rounds of ``--cohort``,
``SCHEDULE=buffered`` with buffers of ``--buffer``) with the same simulated users as
``fedurl-simulate`` (study/split.py, ``runtime.trainer.LocalTrainer``, ``client.protocol``), and
both train exactly ``--updates`` client updates, ``--cohort`` users training at any moment.

Time is **simulated** (nothing sleeps): user i's device is ``speed_i ~ LogNormal(0, --sigma)``
times slower than the median, and one local training of it lasts ``steps_i * --step-s * speed_i``
seconds. Synchronous: each round draws ``--cohort`` users, who start on the current version, and
the round ends when the slowest has uploaded. Buffered: ``--cohort`` users train at once; whenever
one finishes it uploads (the server steps at every ``--buffer``-th arrival) and a random idle user
starts on the version current at that moment, so slow users' deltas arrive stale and are weighed
``(1 + s)^-0.5`` by the server. The held-out loss is measured after every server step, against
simulated time and against the updates applied.

Writes to --out: metrics.csv (one row per server step of each schedule), staleness.csv (the
staleness of each buffered update), summary.json, fedbuff.png (loss against time and updates).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.protocol import FederatedClient, encode_update
from formats.bundle import Bundle, load_bundle
from formats.urls import REPO, load_urls
from runtime.trainer import LocalTrainer
from server.app import create_app
from study.background import serving
from study.report import write_csv
from study.simulate import held_out_metrics, local_seed, server_settings
from study.split import Split, split_corpus

SCHEDULES = ("sync", "buffered")


# -- the simulated clock (pure) --------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """A user starts training (on the version current then) or finishes and uploads."""

    time: float
    kind: str  # "start" | "arrive"
    client: int


def slowness(n_clients: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Each device's factor over the median device: log-normal, median 1."""
    return rng.lognormal(0.0, sigma, n_clients)


def sync_rounds(n_clients: int, cohort: int, updates: int, duration: Callable[[int], float],
                rng: np.random.Generator) -> Iterator[tuple[float, float, list[int]]]:
    """Synchronous rounds: (start, end, cohort); a round ends when its slowest member finishes."""
    now = 0.0
    for _ in range(updates // cohort):
        members = sorted(int(k) for k in rng.choice(n_clients, size=cohort, replace=False))
        end = now + max(duration(k) for k in members)
        yield now, end, members
        now = end


def buffered_events(n_clients: int, concurrency: int, updates: int, duration: Callable[[int], float],
                    rng: np.random.Generator) -> Iterator[Event]:
    """FedBuff's clients in time order: concurrency users train at once; each arrival frees a slot
    that a random idle user takes at that instant, until updates trainings have started.
    """
    busy: set[int] = set()
    queue: list[tuple[float, int, int]] = []  # (finish time, tie-break, client)
    started = 0

    def start(now: float) -> Event:
        nonlocal started
        idle = [k for k in range(n_clients) if k not in busy]
        client = int(idle[rng.integers(len(idle))])
        busy.add(client)
        heapq.heappush(queue, (now + duration(client), started, client))
        started += 1
        return Event(now, "start", client)

    for _ in range(min(concurrency, updates)):
        yield start(0.0)
    while queue:
        now, _, client = heapq.heappop(queue)
        busy.discard(client)
        yield Event(now, "arrive", client)
        if started < updates:
            yield start(now)


def step_times(arrivals: list[float], buffer: int) -> list[float]:
    """When a FedBuff server steps: at every buffer-th arrival."""
    return [arrivals[i] for i in range(buffer - 1, len(arrivals), buffer)]


def staleness_of(events: Iterator[Event], buffer: int) -> list[int]:
    """Each arrival's staleness, in arrival order: the server steps it missed since its user started
    (the server steps at every buffer-th arrival, after folding it).
    """
    arrived, base, staleness = 0, {}, []
    for event in events:
        if event.kind == "start":
            base[event.client] = arrived // buffer
        else:
            staleness.append(arrived // buffer - base.pop(event.client))
            arrived += 1
    return staleness


def staleness_table(args: argparse.Namespace, duration: Callable[[int], float]) -> list[dict]:
    """Staleness percentiles when concurrency is 1, 2, 5, 10 buffers (the clock only, no training):
    what MAX_STALENESS must admit (its default for SCHEDULE=buffered is 20).
    """
    table = []
    for ratio in (1, 2, 5, 10):
        concurrency = min(ratio * args.buffer, args.clients)
        rng = np.random.default_rng(args.seed)
        events = buffered_events(args.clients, concurrency, 10_000, duration, rng)
        stale = np.asarray(staleness_of(events, args.buffer))
        table.append({"concurrency": concurrency, "mean": round(float(stale.mean()), 2),
                      **{f"p{q}": float(np.percentile(stale, q)) for q in (50, 90, 99)},
                      "max": int(stale.max()), "above_20": round(float((stale > 20).mean()), 4)})
    return table


# -- the runs through the real server --------------------------------------------------------------

@dataclass
class Context:
    """What both schedules share: the users' data, the trainer, the evaluation set."""

    args: argparse.Namespace
    split: Split
    trainer: LocalTrainer
    bundle: Bundle
    eval_urls: list[str]
    speed: np.ndarray

    def steps(self, client: int) -> int:
        """Local SGD steps of one training of this user (its history in batches, times epochs)."""
        batch = self.trainer.batch_size
        return self.args.local_epochs * math.ceil(len(self.split.clients[client].history) / batch)

    def duration(self, client: int) -> float:
        """Simulated seconds of one local training of this user."""
        return self.steps(client) * self.args.step_s * float(self.speed[client])


def train(ctx: Context, fed: FederatedClient, client: int, seed: int) -> tuple[bytes, int]:
    """Fetch the current model, take a ticket, train locally; the upload body and its version."""
    model = fed.fetch_model()
    ticket = fed.ticket()
    start = fed.global_weights()
    result = ctx.trainer.train(start, ctx.split.clients[client].history, epochs=ctx.args.local_epochs,
                               lr=ctx.args.client_lr, seed=seed)
    delta = {name: result.weights[name] - start[name] for name in start}
    body = encode_update(delta, ticket, fed.client_id, result.num_examples, result.loss_before,
                         result.loss_after)
    return body, model["version"]


def measure(ctx: Context, observer: FederatedClient, schedule: str, now: float, applied: int) -> dict:
    """One metrics row: the held-out loss of the current version at simulated time now."""
    version = observer.fetch_model()["version"]  # global_weights() downloads the model fetched last
    metrics = held_out_metrics(ctx.bundle, observer.global_weights(), ctx.eval_urls)
    return {"schedule": schedule, "version": version, "time_s": round(now, 3),
            "updates_applied": applied, "loss": metrics["loss"], "top1": metrics["top1"]}


def run_sync(ctx: Context, url: str, rng: np.random.Generator) -> list[dict]:
    """Synchronous FedAvg: rounds of --cohort, each as long as its slowest member."""
    observer = FederatedClient(url)
    users = [FederatedClient(url) for _ in ctx.split.clients]
    rows = [measure(ctx, observer, "sync", 0.0, 0)]
    for index, (_, end, members) in enumerate(sync_rounds(len(users), ctx.args.cohort, ctx.args.updates,
                                                          ctx.duration, rng), start=1):
        bodies = [train(ctx, users[k], k, local_seed(ctx.args.seed, index, k))[0] for k in members]
        for k in sorted(range(len(members)), key=lambda i: ctx.duration(members[i])):  # arrival order
            users[members[k]].post_update(bodies[k])
        rows.append(measure(ctx, observer, "sync", end, index * ctx.args.cohort))
    return rows


def run_buffered(ctx: Context, url: str, rng: np.random.Generator) -> tuple[list[dict], list[int]]:
    """FedBuff: --cohort users train at once, the server steps every --buffer arrivals.

    :return: the metrics rows and each update's staleness (versions between its base and arrival).
    """
    observer = FederatedClient(url)
    users = [FederatedClient(url) for _ in ctx.split.clients]
    rows, staleness = [measure(ctx, observer, "buffered", 0.0, 0)], []
    pending: dict[int, tuple[bytes, int]] = {}
    version, arrived, started = rows[0]["version"], 0, 0
    for event in buffered_events(len(users), ctx.args.cohort, ctx.args.updates, ctx.duration, rng):
        if event.kind == "start":
            started += 1
            pending[event.client] = train(ctx, users[event.client], event.client,
                                          local_seed(ctx.args.seed, started, event.client))
            continue
        body, base = pending.pop(event.client)
        answer = users[event.client].post_update(body)
        arrived += 1
        staleness.append(version - base)
        if answer["version"] != version:
            version = answer["version"]
            rows.append(measure(ctx, observer, "buffered", event.time, arrived))
    return rows, staleness


def schedule_settings(schedule: str, args: argparse.Namespace) -> dict:
    """The server's settings that differ between the two schedules."""
    if schedule == "sync":
        return {"SCHEDULE": "sync", "MIN_CLIENTS": args.cohort}
    # no refusal for staleness here: the run measures how stale a straggler's delta gets; every
    # simulated user uploads from 127.0.0.1, so one network may fill a whole buffer
    return {"SCHEDULE": "buffered", "MIN_CLIENTS": args.buffer, "MAX_STALENESS": 10 * args.updates,
            "MAX_MEMBERS_PER_NETWORK": args.buffer}


def run(args: argparse.Namespace) -> dict:
    """Both schedules on the same users; writes --out and returns the summary."""
    urls = load_urls(args.corpus, None)
    if args.limit is not None and args.limit < len(urls):
        keep = np.sort(np.random.default_rng([args.seed, 0]).choice(len(urls), args.limit, replace=False))
        urls = [urls[i] for i in keep]
    split = split_corpus(urls, args.clients, args.alpha, args.test_fraction, 0.0, args.seed)
    speed = slowness(args.clients, args.sigma, np.random.default_rng([args.seed, 2]))
    rows: list[dict] = []
    staleness: list[int] = []
    with tempfile.TemporaryDirectory(prefix="fedurl-fedbuff-") as work:
        for schedule in SCHEDULES:
            settings = {**server_settings(args.bundle, str(Path(work) / schedule), args, split),
                        **schedule_settings(schedule, args), "TICKET_TTL_S": 1e6}
            with serving(create_app(settings), f"fedurl-fedbuff-{schedule}") as url:
                bundle = load_bundle(FederatedClient(url).save_bundle(Path(work) / f"bundle-{schedule}"))
                ctx = Context(args, split, LocalTrainer(bundle, threads=args.threads), bundle,
                              split.test[:args.eval_urls], speed)
                rng = np.random.default_rng([args.seed, 3])  # the same draws for both schedules
                table = staleness_table(args, ctx.duration)
                if schedule == "sync":
                    rows += run_sync(ctx, url, rng)
                else:
                    buffered, staleness = run_buffered(ctx, url, rng)
                    rows += buffered
                print(f"{schedule}: {rows[-1]['loss']:.3f} after {rows[-1]['time_s']:.0f} simulated s",
                      file=sys.stderr)
    return write(args, rows, staleness, table)


def time_to(rows: list[dict], schedule: str, loss: float) -> float | None:
    """Simulated seconds until a schedule's held-out loss first reaches loss (None: never)."""
    return next((r["time_s"] for r in rows if r["schedule"] == schedule and r["loss"] <= loss), None)


def write(args: argparse.Namespace, rows: list[dict], staleness: list[int], table: list[dict]) -> dict:
    """metrics.csv, staleness.csv, summary.json and the plot."""
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "metrics.csv", rows)
    write_csv(args.out / "staleness.csv", [{"staleness": s} for s in staleness])
    last = {s: [r for r in rows if r["schedule"] == s][-1] for s in SCHEDULES}
    sync = [r for r in rows if r["schedule"] == "sync"]
    targets = [sync[round(q * (len(sync) - 1))] for q in (0.25, 0.5, 0.75, 1.0)]  # sync's loss along its run
    stale = np.asarray(staleness or [0])
    summary = {
        "updates": args.updates, "cohort": args.cohort, "buffer": args.buffer, "sigma": args.sigma,
        "final": {s: {k: last[s][k] for k in ("loss", "top1", "time_s", "version")} for s in SCHEDULES},
        "time_to_loss_s": [{"loss": t["loss"], "sync_updates": t["updates_applied"],
                            **{s: time_to(rows, s, t["loss"]) for s in SCHEDULES}} for t in targets],
        "staleness": {"mean": float(stale.mean()), "p50": float(np.percentile(stale, 50)),
                      "p90": float(np.percentile(stale, 90)), "p99": float(np.percentile(stale, 99)),
                      "max": int(stale.max()), "share_above_20": float((stale > 20).mean())},
        "staleness_by_concurrency": table,
        "command": " ".join(sys.argv)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, args.out / "fedbuff.png")
    print(json.dumps(summary, indent=2))
    return summary


def plot(rows: list[dict], path: Path) -> None:
    """Held-out loss against simulated time (left) and against updates applied (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for schedule, label in (("sync", "synchronous FedAvg"), ("buffered", "FedBuff")):
        mine = [r for r in rows if r["schedule"] == schedule]
        for axis, x in zip(axes, ("time_s", "updates_applied"), strict=True):
            axis.plot([r[x] for r in mine], [r["loss"] for r in mine], marker=".", label=label)
    axes[0].set(xlabel="simulated wall-clock (s)", ylabel="held-out loss (NLL per piece)")
    axes[1].set(xlabel="client updates applied")
    axes[0].legend()
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    """Every option and its default."""
    parser = argparse.ArgumentParser(prog="python -m study.fedbuff", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--corpus", type=Path, required=True, help="URLs, one per line (or top-sites JSON)")
    add("--out", type=Path, required=True, help="directory for metrics.csv, summary.json, fedbuff.png")
    add("--bundle", type=Path, default=REPO / "pretrained", help="initial model (default: pretrained/)")
    add("--clients", type=int, default=100, help="simulated users (default: %(default)s)")
    add("--updates", type=int, default=200, help="client updates each schedule trains (default: %(default)s)")
    add("--cohort", type=int, default=10,
        help="users training at once: a sync round's cohort, FedBuff's concurrency (default: %(default)s)")
    add("--buffer", type=int, default=5, help="FedBuff's K: updates per server step (default: %(default)s)")
    add("--sigma", type=float, default=1.0,
        help="log-normal sigma of the devices' slowness; 0: all alike (default: %(default)s)")
    add("--step-s", type=float, default=0.5,
        help="simulated seconds of one local SGD step on the median device (default: %(default)s)")
    add("--alpha", type=float, default=0.1, help="Dirichlet concentration over hosts (default: %(default)s)")
    add("--local-epochs", type=int, default=1, help="local epochs per training (default: %(default)s)")
    add("--client-lr", type=float, default=0.5, help="local SGD lr (default: %(default)s)")
    add("--server-optimizer", default="fedavg", help="fedavg, fedavgm or fedadam (default: %(default)s)")
    add("--server-lr", type=float, default=None, help="server lr (default: the server's)")
    add("--influence", choices=("bounded", "none"), default="bounded",
        help="the server's INFLUENCE (default: %(default)s)")
    add("--gate", choices=("validation", "off"), default="off",
        help="the server's PUBLISH_GATE; off by default: it costs the same per step in both schedules "
             "and is not what is compared (default: %(default)s)")
    add("--seed", type=int, default=0,
        help="seed of the split, speeds, draws, shuffles (default: %(default)s)")
    add("--limit", type=int, default=None, help="use a random subset of this many corpus URLs")
    add("--test-fraction", type=float, default=0.1, help="held-out share (default: %(default)s)")
    add("--eval-urls", type=int, default=300, help="held-out URLs scored per step (default: %(default)s)")
    add("--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("clients", "updates", "cohort", "buffer", "local_epochs", "eval_urls", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cohort > args.clients:
        parser.error("--cohort cannot exceed --clients")
    if args.updates % args.cohort or args.updates % args.buffer:
        parser.error("--updates must be a multiple of --cohort and of --buffer (equal client work)")
    if not (args.sigma >= 0 and args.step_s > 0 and args.alpha > 0 and args.client_lr > 0
            and 0 < args.test_fraction < 1):
        parser.error("need --sigma >= 0, --step-s > 0, --alpha > 0, --client-lr > 0, 0 < --test-fraction < 1")
    # what simulate's server_settings reads: no secure rounds, no DP noise
    args.clients_per_round, args.secure, args.noise_multiplier = args.cohort, False, 0.0
    return args


def main(argv=None) -> None:
    """Entry point."""
    run(parse_args(argv))


if __name__ == "__main__":
    main()
