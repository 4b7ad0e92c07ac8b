"""fedurl-simulate: federated training of the URL LM by simulated users, through the real server.

    fedurl-simulate --clients 100 --rounds 20 --corpus urls.txt --out runs/sim [--alpha 0.1 ...]

1. The corpus is split (study/split.py): a uniform held-out test split, then N non-IID clients by a
   Dirichlet(alpha) split over hosts, each client's URLs cut into earlier (history) and later ones.
2. The real server (``server.app.create_app``) serves --bundle as version 1 over HTTP on a free
   loopback port. Each round K sampled clients do what the browser does (docs/PROTOCOL.md), with
   ``client.protocol.FederatedClient``: fetch the model, get a ticket, download the weights, run
   ``train_step.onnx`` in onnxruntime on their history (``runtime.trainer.LocalTrainer``, the graph
   the server serves), upload ``new - global``. The K-th upload closes the round.
3. References in the same command: **centralized** SGD with the same graph, lr and batch on the
   union of the histories, taking exactly as many steps per round as all clients together took;
   the **frequency trie** of that union; **personalization**: KSR@3 of a client on its later URLs
   with the final global model vs after fine-tuning it on its own history.

4. Attackers (``--attackers F --attack anti_gradient|backdoor``, study/attacks.py): a fixed share
   of the users is malicious and, when sampled, sends the strongest update the server allows.
   metrics.csv then has ``attackers`` (in the round), ``published`` (0 if the publish gate
   refused the round) and, for the backdoor, ``backdoor_top3`` (prefixes whose top 3 suggestions
   hold the attacker's host).

The server runs open selection without enrollment (every simulated user shares 127.0.0.1 and the
simulation draws each round's users itself, uniformly with the seed, as the server's cohort
draw would), and its defaults for bounded influence and the publish gate (``--influence``,
``--gate``).

5. Secure aggregation (``--secure``, [T1]): the sampled users check in, the server draws all of
   them as the cohort (``--cohort-size`` = ``--clients-per-round``), and each runs the secure
   round's phases in lockstep with ``client.protocol.SecureParticipant`` (clip ``--clip``,
   ``--bits`` a word); the server only ever sees masked inputs. ``upload_bytes`` then counts
   the bytes each member sent in all four phases.

6. Differential privacy (``--noise-multiplier z`` or ``--epsilon e``, ``--clip``, ``--delta``;
   study/dp_sim.py): the server's DP-FedAvg (central noise in plain mode, the members' distributed
   noise with --secure); summary.json's ``privacy`` has the accountant's epsilon for the run.

``--data-dir`` keeps the server's state (database, versions) there for inspection.

Writes to --out: metrics.csv (one row per round, 0 = the initial model), personalization.csv,
summary.json, accuracy/loss/clients/upload PNGs, and the split (train.txt, test.txt).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from client.protocol import FederatedClient, SecureParticipant, encode_update, flatten
from formats.bundle import load_bundle
from formats.update import Q8
from formats.urls import REPO, load_urls
from runtime.complete import Completer
from runtime.trainer import LocalTrainer, batches
from server.app import create_app
from study import dp_sim
from study.attacks import ATTACKS, attack_update, backdoor_hits, choose_attackers
from study.background import serving
from study.evaluate import FrequencyTrie, keystroke_savings, next_token_metrics
from study.report import print_summary, write_outputs
from study.split import Split, split_corpus

DEFAULT_BUNDLE = REPO / "bundles" / "default"
KSR_K = 3
UPLOAD_DTYPES = {"float32": np.float32, "float16": np.float16, "q8": Q8}  # --upload-dtype: the codec's dtype


def local_seed(seed: int, round_index: int, client: int) -> int:
    """The shuffling seed of one client's local training in one round (centralized uses round 1,
    client 0's, so a one-client, one-round federation sees exactly the centralized batches).
    """
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


def server_settings(bundle: Path, data_dir: str, args: argparse.Namespace, split: Split) -> dict:
    """Server settings for a simulation: the round closes at the K-th update, and the per-client
    and per-address rate limits are lifted (every simulated user shares 127.0.0.1 and rounds take
    seconds). The norm and example limits are raised to what an honest client here can send: each
    clipped SGD step moves the weights by at most lr * clip_norm.
    """
    largest = max(len(client.history) for client in split.clients)
    manifest = load_bundle(bundle, verify=False).manifest
    steps = args.local_epochs * math.ceil(largest / manifest["graphs"]["train_step"]["batch_size"])
    return {"BUNDLE_DIR": str(bundle), "DATA_DIR": data_dir, "MIN_CLIENTS": args.clients_per_round,
            "MIN_CLIENTS_FLOOR": 1, "ROUND_DEADLINE_S": 1e6, "TICK_INTERVAL_S": 0, "LOG_LEVEL": "ERROR",
            "SERVER_OPTIMIZER": args.server_optimizer, "SERVER_LR": args.server_lr,
            "TICKETS_PER_CLIENT_PER_MIN": 1e9, "REQUESTS_PER_ADDR_PER_MIN": 1e9,
            "SELECTION": "open", "AGGREGATION": "plain", "IDENTITY": "", "INFLUENCE": args.influence,
            "PUBLISH_GATE": args.gate,
            "MAX_NUM_EXAMPLES": max(10_000, largest),
            "MAX_UPDATE_NORM": max(50.0, 1.01 * args.client_lr * manifest["config"]["clip_norm"] * steps),
            **(secure_settings(args) if args.secure else {}), **dp_sim.server_settings(args)}


def secure_settings(args: argparse.Namespace) -> dict:
    """Secure mode: the users the simulation sampled check in, and the server draws them all."""
    return {"AGGREGATION": "secure", "SELECTION": "cohort", "SELECTION_WINDOW_S": 0, "OVER_SELECTION": 0.0,
            "MAX_MEMBERS_PER_NETWORK": args.clients, "SECURE_CLIP": args.clip, "SECURE_BITS": args.bits}


@dataclass
class RoundStats:
    """What one round cost and reported: the columns of metrics.csv besides the evaluations."""

    clients: int = 0
    examples: int = 0
    steps: int = 0
    upload_bytes: int = 0
    losses: list[tuple[int, float, float]] = field(default_factory=list)  # (URLs, before, after)

    def add(self, result, epochs: int, body_bytes: int) -> None:
        """Count one client's accepted update; examples counts URL passes (URLs x epochs)."""
        self.clients += 1
        self.examples += result.num_examples * epochs
        self.steps += result.steps
        self.upload_bytes += body_bytes
        self.losses.append((result.num_examples, result.loss_before, result.loss_after))

    def mean_losses(self) -> dict:
        """Example-weighted mean of the clients' reported local losses (blank before round 1)."""
        urls = sum(n for n, _, _ in self.losses)
        if not urls:
            return {"client_loss_before": "", "client_loss_after": ""}
        return {f"client_loss_{when}": sum(n * loss[i] for n, *loss in self.losses) / urls
                for i, when in enumerate(("before", "after"))}


def client_round(fed: FederatedClient, trainer: LocalTrainer, history: list[str], version: int,
                 args: argparse.Namespace, seed: int, stats: RoundStats, limits: dict | None = None) -> dict:
    """One browser-like round: model, ticket, weights, local SGD, upload of new - global.

    :param limits: the server's MAX_UPDATE_NORM and MAX_NUM_EXAMPLES when this user attacks.
    """
    model = fed.fetch_model()
    ticket = fed.ticket()
    assert model["version"] == ticket["version"] == version, f"expected version {version}, got {ticket}"
    start = fed.global_weights()
    if limits is not None:
        delta, result, claimed = attack_update(args.attack, trainer, start, history, args.local_epochs,
                                               args.client_lr, seed, limits["MAX_UPDATE_NORM"],
                                               limits["MAX_NUM_EXAMPLES"])
    else:
        result = trainer.train(start, history, epochs=args.local_epochs, lr=args.client_lr, seed=seed)
        delta = {name: result.weights[name] - start[name] for name in start}
        claimed = result.num_examples
    body = encode_update(delta, ticket, fed.client_id, claimed, result.loss_before, result.loss_after,
                         UPLOAD_DTYPES[args.upload_dtype], np.random.default_rng([seed, 1]))
    answer = fed.post_update(body)
    stats.add(result, args.local_epochs, len(body))
    return answer


def secure_cohort_round(feds: list[FederatedClient], trainer: LocalTrainer, histories: list[list[str]],
                        version: int, args: argparse.Namespace, seeds: list[int], stats: RoundStats) -> None:
    """One secure round ([T1]): the users check in (the last check-in draws them all), each trains as
    in ``client_round``, then all run the four phases in lockstep; the last unmask closes the round.
    """
    for fed in feds:
        fed.check_in()
    members = []
    for fed, history, seed in zip(feds, histories, seeds, strict=True):
        model = fed.fetch_model()
        ticket = fed.ticket()
        assert model["version"] == ticket["version"] == version, f"expected version {version}, got {ticket}"
        start = fed.global_weights()
        result = trainer.train(start, history, epochs=args.local_epochs, lr=args.client_lr, seed=seed)
        delta = {name: result.weights[name] - start[name] for name in start}
        flat = flatten(delta, model["manifest"]["parameters"])
        members.append((SecureParticipant(fed, ticket, flat), result))
    for phase in SecureParticipant.PHASES:
        for member, _ in members:
            member.step(phase)
    for member, result in members:
        stats.add(result, args.local_epochs, sum(member.sent.values()))


class Centralized:
    """The reference: LocalTrainer's SGD step on shuffled epochs of the union of the histories."""

    def __init__(self, trainer: LocalTrainer, weights: dict, urls: list[str], lr: float, seed: int):
        self.trainer, self.weights, self.lr = trainer, weights, lr
        self.stream = self._batches(trainer.rows(urls), np.random.default_rng(seed))

    def _batches(self, rows, rng):
        """Endless epochs, each in a fresh permutation (as LocalTrainer.train shuffles)."""
        while True:
            yield from batches(rows, self.trainer.batch_size, rng.permutation(len(rows)))

    def advance(self, steps: int) -> int:
        """Take steps SGD steps; return the examples (URLs) they saw. The federation sees a few
        fewer in as many steps: each client's last batch is partly padding.
        """
        examples = 0
        for _ in range(steps):
            tokens, targets, mask = next(self.stream)
            _, self.weights = self.trainer.step(self.weights, tokens, targets, mask, self.lr)
            examples += int(mask.any(axis=1).sum())
        return examples


def held_out_metrics(bundle, weights: dict, urls: list[str]) -> dict:
    """Held-out next-piece metrics; loss is the mean NLL per piece (log perplexity)."""
    metrics = next_token_metrics(bundle, weights, urls)
    return {"loss": math.log(metrics["perplexity"]), "top1": metrics["top1"], "top3": metrics["top3"]}


def federate(url: str, trainer: LocalTrainer, split: Split, args: argparse.Namespace, bundle,
             limits: dict | None = None) -> dict:
    """Run every round against the server at url; return per-round rows and the final weights.

    :param limits: the server's settings, which attackers push to (MAX_UPDATE_NORM, ...).
    """
    observer = FederatedClient(url)
    observer.fetch_model()
    weights = initial_weights = observer.global_weights()
    users = [FederatedClient(url) for _ in split.clients]
    central = (Centralized(trainer, weights, split.train, args.client_lr, local_seed(args.seed, 1, 0))
               if args.centralized else None)
    eval_urls = split.test[:args.eval_urls]
    initial = held_out_metrics(bundle, weights, eval_urls)
    evil = choose_attackers(len(users), args.attackers, args.seed) if args.attackers else set()
    probe = Completer(bundle.directory, weights=weights) if evil and args.attack == "backdoor" else None
    attack_columns = {"attackers": 0, "published": 1} if evil else {}
    if probe is not None:
        attack_columns["backdoor_top3"] = backdoor_hits(probe, weights)
    rows = [_row(0, RoundStats(), initial, {"examples": 0, **initial} if central else None) | attack_columns]
    rng = np.random.default_rng([args.seed, 1])
    version = observer.fetch_model()["version"]
    progress = tqdm(range(1, args.rounds + 1), desc="rounds", unit="round", file=sys.stderr, disable=None)
    for round_index in progress:
        stats = RoundStats()
        chosen = sorted(int(k) for k in rng.choice(len(users), size=args.clients_per_round, replace=False))
        if args.secure:
            histories = [split.clients[k].history for k in chosen]
            secure_cohort_round([users[k] for k in chosen], trainer, histories, version, args,
                                [local_seed(args.seed, round_index, k) for k in chosen], stats)
        for k in ([] if args.secure else chosen):
            client_round(users[k], trainer, split.clients[k].history, version, args,
                         local_seed(args.seed, round_index, k), stats, limits if k in evil else None)
        latest = observer.fetch_model()["version"]
        published, version = latest > version, latest  # not published: the gate refused the round
        weights = observer.global_weights()
        central_metrics = ({"examples": central.advance(stats.steps),
                            **held_out_metrics(bundle, central.weights, eval_urls)} if central else None)
        row = _row(round_index, stats, held_out_metrics(bundle, weights, eval_urls), central_metrics)
        if evil:
            row |= {"attackers": sum(k in evil for k in chosen), "published": int(published)}
        if probe is not None:
            row["backdoor_top3"] = backdoor_hits(probe, weights)
        rows.append(row)
        progress.set_postfix(loss=f"{rows[-1]['fed_loss']:.3f}", top1=f"{rows[-1]['fed_top1']:.3f}")
    return {"rows": rows, "initial": initial_weights, "federated": weights,
            "centralized": central.weights if central else None}


def _row(round_index: int, stats: RoundStats, fed: dict, central: dict | None) -> dict:
    """One line of metrics.csv."""
    row = {"round": round_index, "clients": stats.clients, "examples": stats.examples, "steps": stats.steps,
           "upload_bytes": stats.upload_bytes, **stats.mean_losses(),
           **{f"fed_{key}": value for key, value in fed.items()}}
    row.update({f"central_{key}": value for key, value in (central or {}).items()})
    return row


def ksr(completer: Completer, weights: dict, urls: list[str]) -> float:
    """KSR@3 of the model with these weights (study/evaluate.py's typing rule)."""
    completer.set_weights(weights)
    return keystroke_savings(urls, lambda typed: completer.complete(typed, KSR_K), KSR_K)


def held_out_table(run: dict, split: Split, completer: Completer, bundle, args) -> dict:
    """Initial / federated / centralized / trie on the held-out split: next-piece metrics and KSR."""
    eval_urls, ksr_urls = split.test[:args.eval_urls], split.test[:args.ksr_urls]
    table = {}
    for name in ("initial", "federated", "centralized"):
        if run[name] is not None:
            table[name] = held_out_metrics(bundle, run[name], eval_urls)
            table[name]["ksr@3"] = ksr(completer, run[name], ksr_urls) if ksr_urls else None
    if args.trie and ksr_urls:
        trie = FrequencyTrie(split.train)
        table["trie"] = {"ksr@3": keystroke_savings(ksr_urls, lambda t: trie.complete(t, KSR_K), KSR_K)}
    return table


def personalization(run: dict, split: Split, trainer: LocalTrainer, completer: Completer, bundle,
                    args) -> list[dict]:
    """Per sampled client: KSR@3 and loss on its later URLs, global model vs fine-tuned on its history
    (local SGD as in a round: --local-epochs at --client-lr); KSR on at most --ksr-urls of them.
    """
    eligible = [k for k, client in enumerate(split.clients) if client.later]
    chosen = np.random.default_rng([args.seed, 2]).permutation(eligible)[:args.personal_clients]
    results = []
    for k in tqdm(sorted(chosen), desc="personalization", unit="client", file=sys.stderr,
                  disable=None):
        client = split.clients[k]
        typed = client.later[:args.ksr_urls]
        own_trie = FrequencyTrie(client.history)
        tuned = trainer.train(run["federated"], client.history, epochs=args.local_epochs, lr=args.client_lr,
                              seed=local_seed(args.seed, 0, int(k))).weights
        results.append({
            "client": int(k), "history": len(client.history), "later": len(client.later),
            "ksr_global": ksr(completer, run["federated"], typed),
            "ksr_personal": ksr(completer, tuned, typed),
            "ksr_own_trie": keystroke_savings(typed, partial(own_trie.complete, k=KSR_K), KSR_K),
            "loss_global": held_out_metrics(bundle, run["federated"], client.later)["loss"],
            "loss_personal": held_out_metrics(bundle, tuned, client.later)["loss"]})
    return results


def run(args: argparse.Namespace) -> dict:
    """The whole simulation; writes --out and returns the summary plus the final weights."""
    try:
        urls = load_urls(args.corpus, None)
    except FileNotFoundError as error:
        raise SystemExit(f"fedurl-simulate: {error}") from None
    if args.limit is not None and args.limit < len(urls):
        keep = np.sort(np.random.default_rng([args.seed, 0]).choice(len(urls), args.limit, replace=False))
        urls = [urls[i] for i in keep]
    try:
        split = split_corpus(urls, args.clients, args.alpha, args.test_fraction, args.later_fraction,
                             args.seed)
    except ValueError as exc:
        raise SystemExit(f"fedurl-simulate: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="fedurl-sim-") as work:
        data_dir = str(args.data_dir) if args.data_dir else str(Path(work) / "server")
        settings = server_settings(args.bundle, data_dir, args, split)
        with serving(create_app(settings), "fedurl-simulate-server") as url:
            bundle = load_bundle(FederatedClient(url).save_bundle(Path(work) / "bundle"))
            trainer = LocalTrainer(bundle, threads=args.threads)
            result = federate(url, trainer, split, args, bundle, settings)
            privacy = dp_sim.report(args, FederatedClient(url).status())
        completer = Completer(bundle.directory, weights=result["federated"], threads=args.threads)
        table = held_out_table(result, split, completer, bundle, args)
        wanted = args.personal_clients and args.ksr_urls
        personal = personalization(result, split, trainer, completer, bundle, args) if wanted else []
    model_bytes = 4 * sum(math.prod(p["shape"]) for p in bundle.manifest["parameters"])
    summary = write_outputs(args, split, result["rows"], table, personal, model_bytes, {"privacy": privacy})
    print_summary(summary)
    print(dp_sim.describe(privacy))
    return {**summary, "weights": {k: result[k] for k in ("initial", "federated", "centralized")}}


def build_parser() -> argparse.ArgumentParser:
    """Every option and its default, in one place."""
    parser = argparse.ArgumentParser(prog="fedurl-simulate", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--corpus", type=Path, required=True, help="URLs, one per line (or top-sites JSON)")
    add("--out", type=Path, required=True, help="directory for metrics.csv, plots and summary.json")
    add("--bundle", type=Path, default=DEFAULT_BUNDLE, help="initial model (default: bundles/default)")
    add("--clients", type=int, default=100, help="simulated users N (default: %(default)s)")
    add("--rounds", type=int, default=20, help="federated rounds R (default: %(default)s)")
    add("--clients-per-round", "--cohort-size", type=int, default=10,
        help="users sampled per round K, the cohort with --secure (default: %(default)s)")
    add("--alpha", type=float, default=0.1,
        help="Dirichlet concentration over hosts; small = skewed (default: %(default)s)")
    add("--local-epochs", type=int, default=1, help="local SGD epochs per round E (default: %(default)s)")
    add("--client-lr", type=float, default=0.5, help="local (and centralized) SGD lr (default: %(default)s)")
    add("--server-optimizer", default="fedavg", help="fedavg, fedavgm or fedadam (default: %(default)s)")
    add("--server-lr", type=float, default=None, help="server lr (default: the server's, 1.0 for fedavg)")
    add("--seed", type=int, default=0,
        help="seed of the split, the sampling and the shuffles (default: %(default)s)")
    add("--limit", type=int, default=None, help="use a random subset of this many corpus URLs")
    add("--test-fraction", type=float, default=0.1,
        help="held-out share of the corpus (default: %(default)s)")
    add("--later-fraction", type=float, default=0.2,
        help="share of each client's URLs kept as 'later' (default: %(default)s)")
    add("--eval-urls", type=int, default=1000, help="held-out URLs scored each round (default: %(default)s)")
    add("--ksr-urls", type=int, default=200, help="URLs typed for KSR@3, held-out and per personalization "
        "client; 0 skips KSR (default: %(default)s)")
    add("--personal-clients", type=int, default=10,
        help="clients in the personalization measure; 0 skips it (default: %(default)s)")
    add("--centralized", action=argparse.BooleanOptionalAction, default=True,
        help="run the centralized reference")
    add("--trie", action=argparse.BooleanOptionalAction, default=True,
        help="score the frequency-trie baseline")
    add("--upload-dtype", choices=tuple(UPLOAD_DTYPES), default="q8",
        help="encoding of uploaded deltas; the page sends q8, int8 with a float32 scale per 64 values "
             "(default: %(default)s)")
    add("--threads", type=int, default=1, help="onnxruntime threads (default: %(default)s)")
    add("--attackers", type=float, default=0.0,
        help="share of the users that attack when sampled (study/attacks.py; default: %(default)s)")
    add("--attack", choices=ATTACKS, default="anti_gradient",
        help="anti_gradient (-g at the server's norm limit) or backdoor (a phishing host for 'payp', "
             "the largest claim allowed) (default: %(default)s)")
    add("--influence", choices=("bounded", "none"), default="bounded",
        help="the server's INFLUENCE: clipping and capped weights, or trust (default: %(default)s)")
    add("--gate", choices=("validation", "off"), default="validation",
        help="the server's PUBLISH_GATE (default: %(default)s)")
    add("--secure", action="store_true",
        help="secure aggregation: cohorts send masked inputs (the server's AGGREGATION=secure)")
    add("--clip", type=float, default=1.0,
        help="L2 clip of each delta: SECURE_CLIP with --secure, DP_CLIP with DP (default: %(default)s)")
    add("--bits", type=int, default=16,
        help="--secure: bits of a masked word, SECURE_BITS (default: %(default)s)")
    add("--data-dir", type=Path, default=None,
        help="keep the server's state (database, versions) here instead of a temporary directory")
    dp_sim.add_arguments(parser)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line; unknown or impossible options are errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("clients", "rounds", "clients_per_round", "local_epochs", "eval_urls", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("ksr_urls", "personal_clients", "limit"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} cannot be negative")
    if not 0 <= args.attackers < 1:
        parser.error("--attackers is a share from 0 to below 1")
    if args.clients_per_round > args.clients:
        parser.error("--clients-per-round cannot exceed --clients")
    secure_ok = args.clients_per_round >= 3 and args.clip > 0 and 2 <= args.bits <= 32 and not args.attackers
    if args.secure and not secure_ok:
        parser.error("--secure needs --clients-per-round >= 3, --clip > 0, 2 <= --bits <= 32, no --attackers")
    fractions = 0 < args.test_fraction < 1 and 0 <= args.later_fraction < 1
    if not (args.alpha > 0 and args.client_lr > 0 and fractions):
        parser.error("need --alpha > 0, --client-lr > 0, 0 < --test-fraction < 1, 0 <= --later-fraction < 1")
    if not (args.bundle / "manifest.json").is_file():
        parser.error(f"{args.bundle} is not a bundle (make one with `fedurl-export --out {args.bundle}`)")
    dp_sim.check(args, parser)
    return args


def main(argv=None) -> None:
    """Entry point of fedurl-simulate."""
    run(parse_args(argv))


if __name__ == "__main__":
    main()
