"""fedurl-eval: how good are a bundle's suggestions, next to a character 8-gram and a frequency trie.

Metrics on held-out URLs (canonical form, see formats/urls.py):
- next-piece top-1 / top-3 accuracy and perplexity, teacher-forced over BOS + pieces + EOS;
- keystroke savings rate (KSR) at k=3: type the target left to right; before each keystroke, if a
  top-k suggestion ``c`` with ``target.startswith(c)`` and ``len(c) > len(typed)`` exists, accept the
  longest such one for one keystroke, else type the next character for one keystroke;
  KSR = 1 - keystrokes / len(target).

``--calibrate`` sets the completers' threshold tau (runtime/complete.py step 5) instead: KSR@3,
suggestions shown per keystroke and the share of them that are a prefix of the target (and longer
than what was typed), for each tau of a grid; the calibrated tau is the largest whose KSR@3 is at
least (1 - ``--max-ksr-loss``) times tau 0's. ``--exclude`` keeps the held-out URLs honest (no
host of the model's training corpora), ``--write`` stores tau in the bundle's manifest. Both type the
first ``--ksr-limit`` URLs of the file, or with ``--sample SEED`` a seeded random draw of
``--ksr-limit`` URLs from all of it.

Baselines, both built from ``--train``: ``8-gram``, the classic character LM yardstick
(``runtime/ngram.py``: order 8, stupid backoff 0.4, beam 6, suggestions ending at the same
boundaries as the model's), and ``trie``, the autofill every browser has (known URLs only).
``model`` is what the page suggests: the network, mixed with the bundle's count component where it
has one (counts.bin, ``runtime.ngram.open_completer``); the ``network`` row then scores the network
alone. Give a bundle another count component with ``python -m model.counts``.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import heapq
import json
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from formats import durable
from formats.bundle import MANIFEST, Bundle, BundleError, load_bundle
from formats.urls import corpus_spec, read_corpora, read_corpus
from runtime.complete import Completer
from runtime.ngram import CharNgramLM, FusedCompleter, PersonalCompleter, open_completer
from runtime.session import open_session, open_tokenizer
from runtime.trainer import encode_rows
from study.split import host_of

TAUS = (0.0, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1)
MAX_KSR_LOSS = 0.05


def typed_sample(urls: list[str], limit: int, seed: int | None) -> list[str]:
    """The URLs to simulate typing on: the first ``limit``, or with a seed a seeded random draw of
    ``limit`` (a list in host order, as the ISCX benign list is, gives its first few hosts only:
    its first 300 unseen URLs are 54 of its 287 unseen hosts, all before "f").
    """
    if seed is None:
        return urls[:limit]
    return random.Random(seed).sample(urls, min(limit, len(urls)))


def keystrokes(target: str, suggest: Callable[[str], list[str]], k: int = 3) -> int:
    """Keystrokes to enter target with suggestions (the KSR rule in the module docstring)."""
    typed, count = "", 0
    while typed != target:
        accepted = [c for c in suggest(typed)[:k] if target.startswith(c) and len(c) > len(typed)]
        typed = max(accepted, key=len) if accepted else target[:len(typed) + 1]
        count += 1
    return count


def keystroke_savings(targets: list[str], suggest: Callable[[str], list[str]], k: int = 3,
                      progress: bool = False) -> float:
    """KSR over all targets: 1 - total keystrokes / total characters."""
    total_keys = total_chars = 0
    for target in tqdm(targets, desc="KSR", unit="url", disable=None if progress else True,
                       file=sys.stderr):
        total_keys += keystrokes(target, suggest, k)
        total_chars += len(target)
    return 1.0 - total_keys / max(total_chars, 1)


class FrequencyTrie:
    """The baseline: prefix match over known URLs, most frequent first (ties alphabetical)."""

    def __init__(self, urls: list[str]):
        counts = Counter(urls)
        self.urls = sorted(counts)
        self.counts = [counts[u] for u in self.urls]

    def complete(self, prefix: str, k: int = 5) -> list[str]:
        """Up to k known URLs that start with prefix (a sorted range: they are contiguous)."""
        low = bisect.bisect_left(self.urls, prefix)
        high = bisect.bisect_left(self.urls, prefix + "\U0010ffff")
        best = heapq.nsmallest(k, range(low, high), key=lambda i: (-self.counts[i], self.urls[i]))
        return [self.urls[i] for i in best]


def next_token_metrics(bundle: Bundle, weights: dict, urls: list[str], batch: int = 256) -> dict:
    """Teacher-forced top-1/top-3 accuracy and perplexity of the model with infer.onnx."""
    tokenizer, session = open_tokenizer(bundle), open_session(bundle, "infer")
    config, io, spec = bundle.manifest["config"], bundle.manifest["graphs"]["infer"], bundle.state
    width = max((len(tokenizer.encode(u)) + 1 for u in urls), default=1)
    rows = encode_rows(tokenizer, urls, width, config)
    hits1 = hits3 = 0
    nll = count = 0.0
    for start in range(0, len(rows), batch):
        tokens, targets, mask = (a[start:start + batch] for a in (rows.tokens, rows.targets, rows.mask))
        state = spec.initial(len(tokens))
        for t in range(int(np.flatnonzero(mask.any(axis=0)).max()) + 1):
            log_probs, state = session.run([io["log_probs_output"], spec.output], {
                io["tokens_input"]: tokens[:, t], spec.input: state, **weights})
            live = mask[:, t] > 0
            target = targets[live, t]
            top3 = np.argsort(-log_probs[live], axis=1, kind="stable")[:, :3]
            hits1 += int((top3[:, 0] == target).sum())
            hits3 += int((top3 == target[:, None]).any(axis=1).sum())
            nll -= float(log_probs[live, target].sum())
            count += float(live.sum())
    count = max(count, 1.0)
    return {"top1": hits1 / count, "top3": hits3 / count, "perplexity": float(np.exp(nll / count)),
            "tokens": int(count)}


def evaluate(bundle_dir, urls: list[str], train_urls: list[str] | None, ksr_limit: int,
             sample: int | None = None) -> dict:
    """Model (network, where the bundle has counts), 8-gram and trie rows of the report table."""
    bundle = load_bundle(bundle_dir)
    completer = open_completer(bundle_dir)
    network = completer.completer if isinstance(completer, FusedCompleter) else completer
    ksr_urls = typed_sample(urls, ksr_limit, sample)
    report: dict[str, Any] = {"urls": len(urls), "ksr_urls": len(ksr_urls), "ksr_sample": sample,
                              "model": next_token_metrics(bundle, network.weights, urls)}
    report["model"]["ksr@3"] = keystroke_savings(ksr_urls, lambda p: completer.complete(p, 3), 3, True)
    if isinstance(completer, FusedCompleter):
        report["network"] = {"ksr@3": keystroke_savings(ksr_urls, lambda p: network.complete(p, 3), 3, True)}
        report["model"]["counts"] = {"entries": completer.counts.entries(),
                                     **bundle.manifest.get("counts", {})}
    if train_urls is not None:
        ngram = CharNgramLM(train_urls, every_length=True)  # goal 1's yardstick, as the issue defines it
        report["8-gram"] = {"ksr@3": keystroke_savings(ksr_urls, lambda p: ngram.complete(p, 3), 3, True),
                            "order": ngram.order, "alpha": ngram.alpha, "beam": ngram.beam_width,
                            "entries": ngram.entries()}
        trie = FrequencyTrie(train_urls)
        report["trie"] = {"ksr@3": keystroke_savings(ksr_urls, lambda p: trie.complete(p, 3), 3),
                          "known_urls": len(trie.urls)}
    return report


def threshold_sweep(completer: Completer | FusedCompleter, targets: list[str], taus,
                    k: int = 3) -> list[dict]:
    """KSR@k, suggestions shown per keystroke and the share of them that are a prefix of the target,
    per tau (a FusedCompleter applies it to both sides: the network's suggestions by their
    probability, the counts' by their score S; the words the URL already holds pass any tau below
    0.25, runtime/ngram.py with_repeats). Each tau searches anew with that threshold, as
    the page would: the search drops live beams below tau (runtime/complete.py step 3), so one
    tau-0 list filtered afterwards is not always what a completer with that tau shows.
    """
    rows = []
    saved = completer.threshold
    try:
        for tau in taus:
            completer.threshold = tau
            cache: dict[str, list[str]] = {}
            counts = {"keys": 0, "shown": 0, "prefix": 0}

            def suggest(typed: str, target: str, cache: dict = cache, counts: dict = counts) -> list[str]:
                if typed not in cache:
                    cache[typed] = [text for text, _ in completer.complete_scored(typed, k)]
                texts = cache[typed]
                counts["shown"] += len(texts)
                counts["prefix"] += sum(target.startswith(t) and len(t) > len(typed) for t in texts)
                return texts

            for target in tqdm(targets, desc=f"tau {tau}", unit="url", disable=None, file=sys.stderr):
                counts["keys"] += keystrokes(target, functools.partial(suggest, target=target), k)
            chars = max(sum(map(len, targets)), 1)
            rows.append({"tau": tau, "ksr@3": 1.0 - counts["keys"] / chars,
                         "shown_per_key": counts["shown"] / max(counts["keys"], 1),
                         "prefix_share": counts["prefix"] / max(counts["shown"], 1)})
    finally:
        completer.threshold = saved
    return rows


def pick_threshold(rows: list[dict], max_ksr_loss: float) -> float:
    """The largest tau whose KSR@3 is at least (1 - max_ksr_loss) times that of tau 0 (rows[0])."""
    floor = (1.0 - max_ksr_loss) * rows[0]["ksr@3"]
    return max(row["tau"] for row in rows if row["ksr@3"] >= floor)


def write_threshold(bundle_dir: Path, tau: float) -> None:
    """Store tau as the bundle manifest's completion.min_probability (the manifest is not hashed)."""
    path = Path(bundle_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["completion"] = {**manifest.get("completion", {}), "min_probability": tau}
    durable.write_json(path, manifest)


def format_sweep(rows: list[dict], chosen: float, urls: int, sample: int | None = None) -> str:
    """The threshold sweep as a text table, the calibrated tau marked."""
    lines = [f"{'tau':>6} {'KSR@3':>7} {'shown/key':>10} {'prefix share':>13}"]
    for row in rows:
        mark = "  <- calibrated" if row["tau"] == chosen else ""
        lines.append(f"{row['tau']:6g} {row['ksr@3']:7.3f} {row['shown_per_key']:10.3f} "
                     f"{row['prefix_share']:13.3f}{mark}")
    lines.append(f"({urls} URLs)" if sample is None else f"({urls} URLs drawn with seed {sample})")
    return "\n".join(lines)


def personalization(completer: Completer | FusedCompleter, urls: list[str], hosts: int, history: int = 8,
                    later: int = 15, seed: int = 0) -> dict:
    """KSR@3 for a user who visited ``history`` URLs of a host, typing ``later`` other URLs of it:
    the model alone, and mixed with the personal n-gram of those visits (what the page shows).
    Hosts are drawn (seeded) among those of ``urls`` with enough URLs.
    """
    by_host: dict[str, list[str]] = {}
    for url in urls:
        by_host.setdefault(host_of(url), []).append(url)
    rng = random.Random(seed)
    eligible = sorted(h for h, found in by_host.items() if len(found) >= history + later)
    rows = {}
    for host in rng.sample(eligible, min(hosts, len(eligible))):
        found = rng.sample(by_host[host], history + later)
        mixed = PersonalCompleter(completer, found[:history])
        targets = found[history:]
        rows[host] = {"model": keystroke_savings(targets, lambda p: completer.complete(p, 3), 3),
                      "personal": keystroke_savings(targets, functools.partial(mixed.complete, k=3), 3)}
    mean = {key: sum(r[key] for r in rows.values()) / max(len(rows), 1) for key in ("model", "personal")}
    return {"hosts": rows, "mean": mean, "history": history, "later": later}


def format_table(report: dict) -> str:
    """The report as an aligned text table."""
    lines = [f"{'':14} {'top-1':>7} {'top-3':>7} {'ppl':>8} {'KSR@3':>7}"]
    m = report["model"]
    lines.append(f"{'model':14} {m['top1']:7.3f} {m['top3']:7.3f} {m['perplexity']:8.2f} {m['ksr@3']:7.3f}")
    for name in ("network", "8-gram", "trie"):
        if name in report:
            lines.append(f"{name:14} {'-':>7} {'-':>7} {'-':>8} {report[name]['ksr@3']:7.3f}")
    drawn = "the first" if report["ksr_sample"] is None else f"a draw (seed {report['ksr_sample']}) of"
    lines.append(f"({report['urls']} URLs, {m['tokens']} pieces; KSR on {drawn} {report['ksr_urls']})")
    if "counts" in m:
        floor = m["counts"].get("min_count", 1)
        pruned = f", counts below {floor} pruned" if floor > 1 else ""
        yardstick = f"; the 8-gram holds {report['8-gram']['entries']:,}" if "8-gram" in report else ""
        lines.append(f"(model: the network mixed with the bundle's {m['counts']['entries']:,} counts"
                     f"{pruned}{yardstick})")
    if "personal" in report:
        p = report["personal"]
        lines.append(f"personal n-gram, {len(p['hosts'])} hosts x ({p['history']} visited, "
                     f"{p['later']} typed): KSR@3 model {p['mean']['model']:.3f}, "
                     f"model + personal n-gram {p['mean']['personal']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Entry point of fedurl-eval."""
    parser = argparse.ArgumentParser(
        prog="fedurl-eval", description="Score a bundle on held-out URLs: next-piece accuracy, "
        "perplexity and keystroke savings (KSR@3), next to a character 8-gram and a frequency trie "
        "of the training URLs.")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    parser.add_argument("--urls", type=Path, required=True, help="held-out URLs, one per line")
    parser.add_argument("--train", type=corpus_spec, action="append", default=[], metavar="CORPUS[:[M-]N]",
                        help="training URLs for the 8-gram and trie baselines, read as fedurl-export "
                        "--corpus reads them (give the model's own corpora for a fair yardstick); "
                        "repeatable; omit: no baselines")
    parser.add_argument("--ksr-limit", type=int, default=500, help="URLs to simulate typing on (slow part)")
    parser.add_argument("--personal-hosts", type=int, default=0,
                        help="also measure the personal n-gram on this many hosts of --urls "
                        "(8 URLs visited, 15 others typed)")
    parser.add_argument("--sample", type=int, metavar="SEED",
                        help="type a random draw of --ksr-limit URLs (seeded) instead of the first ones: "
                        "a list sorted by host would give only its first few hosts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--exclude", type=corpus_spec, action="append", default=[], metavar="CORPUS[:[M-]N]",
                        help="drop --urls whose host is a host of this corpus (as fedurl-export --corpus "
                        "reads it: the model's training data); repeatable")
    parser.add_argument("--calibrate", action="store_true",
                        help="sweep the suggestion threshold tau on the first --ksr-limit URLs instead")
    parser.add_argument("--tau", type=float, nargs="+", default=list(TAUS), help="taus to sweep (0 is added)")
    parser.add_argument("--max-ksr-loss", type=float, default=MAX_KSR_LOSS,
                        help="the KSR@3 share (of tau 0's) the calibrated tau may cost")
    parser.add_argument("--write", action="store_true",
                        help="with --calibrate: store the calibrated tau in the bundle's manifest")
    args = parser.parse_args(argv)
    for path in (args.urls, *(path for path, _ in args.train + args.exclude)):
        if not path.is_file():
            parser.error(f"{path} not found")
    if not all(0 <= tau <= 1 for tau in args.tau) or not 0 <= args.max_ksr_loss <= 1:
        parser.error("every --tau and --max-ksr-loss must be in [0, 1]")
    if args.write and not args.calibrate:
        parser.error("--write needs --calibrate")
    urls = read_corpus(args.urls)
    if args.exclude:
        seen = {host_of(url) for url in read_corpora(args.exclude)}
        urls = [url for url in urls if host_of(url) not in seen]
    if not urls:
        parser.error(f"{args.urls} holds no usable URLs")
    if args.calibrate:
        calibrate(args, typed_sample(urls, args.ksr_limit, args.sample))
        return
    try:
        report = evaluate(args.bundle, urls, read_corpora(args.train) if args.train else None, args.ksr_limit,
                          args.sample)
        if args.personal_hosts:
            report["personal"] = personalization(open_completer(args.bundle), urls, args.personal_hosts)
    except BundleError as exc:
        raise SystemExit(f"fedurl-eval: {exc}") from None
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def calibrate(args: argparse.Namespace, urls: list[str]) -> None:
    """--calibrate: the sweep table (or JSON), and with --write the chosen tau into the bundle."""
    try:
        completer = open_completer(args.bundle, threshold=0.0)  # the page's lists, the network's tau
    except BundleError as exc:
        raise SystemExit(f"fedurl-eval: {exc}") from None
    rows = threshold_sweep(completer, urls, sorted({0.0, *args.tau}))
    chosen = pick_threshold(rows, args.max_ksr_loss)
    if args.write:
        write_threshold(args.bundle, chosen)
    print(json.dumps({"rows": rows, "calibrated": chosen, "urls": len(urls), "sample": args.sample}, indent=2)
          if args.json else format_sweep(rows, chosen, len(urls), args.sample))


if __name__ == "__main__":
    main()
