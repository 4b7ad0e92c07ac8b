"""fedurl-eval: how good are a bundle's suggestions, next to the frequency trie every browser has.

Metrics on held-out URLs (canonical form, see formats/urls.py):
- next-piece top-1 / top-3 accuracy and perplexity, teacher-forced over BOS + pieces + EOS;
- keystroke savings rate (KSR) at k=3: type the target left to right; before each keystroke, if a
  top-k suggestion ``c`` with ``target.startswith(c)`` and ``len(c) > len(typed)`` exists, accept the
  longest such one for one keystroke, else type the next character for one keystroke;
  KSR = 1 - keystrokes / len(target).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from formats.bundle import Bundle, BundleError, load_bundle
from formats.urls import read_corpus
from runtime.complete import Completer
from runtime.session import open_session, open_tokenizer
from runtime.trainer import encode_rows


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


def evaluate(bundle_dir, urls: list[str], train_urls: list[str] | None, ksr_limit: int) -> dict:
    """Model and trie rows of the report table."""
    bundle = load_bundle(bundle_dir)
    completer = Completer(bundle_dir)
    ksr_urls = urls[:ksr_limit]
    report: dict[str, Any] = {"urls": len(urls), "ksr_urls": len(ksr_urls), "model": next_token_metrics(
        bundle, completer.weights, urls)}
    report["model"]["ksr@3"] = keystroke_savings(ksr_urls, lambda p: completer.complete(p, 3), 3, True)
    if train_urls is not None:
        trie = FrequencyTrie(train_urls)
        report["trie"] = {"ksr@3": keystroke_savings(ksr_urls, lambda p: trie.complete(p, 3), 3),
                          "known_urls": len(trie.urls)}
    return report


def format_table(report: dict) -> str:
    """The report as an aligned text table."""
    lines = [f"{'':8} {'top-1':>7} {'top-3':>7} {'ppl':>8} {'KSR@3':>7}"]
    m = report["model"]
    lines.append(f"{'model':8} {m['top1']:7.3f} {m['top3']:7.3f} {m['perplexity']:8.2f} {m['ksr@3']:7.3f}")
    if "trie" in report:
        lines.append(f"{'trie':8} {'-':>7} {'-':>7} {'-':>8} {report['trie']['ksr@3']:7.3f}")
    lines.append(f"({report['urls']} URLs, {m['tokens']} pieces; KSR on the first {report['ksr_urls']})")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Entry point of fedurl-eval."""
    parser = argparse.ArgumentParser(
        prog="fedurl-eval", description="Score a bundle on held-out URLs: next-piece accuracy, "
        "perplexity and keystroke savings (KSR@3), next to a frequency trie of the training URLs.")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    parser.add_argument("--urls", type=Path, required=True, help="held-out URLs, one per line")
    parser.add_argument("--train", type=Path, help="training URLs for the trie baseline (omit: no baseline)")
    parser.add_argument("--ksr-limit", type=int, default=500, help="URLs to simulate typing on (slow part)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    for path in (args.urls, args.train):
        if path is not None and not path.is_file():
            parser.error(f"{path} not found")
    urls = read_corpus(args.urls)
    if not urls:
        parser.error(f"{args.urls} holds no usable URLs")
    try:
        report = evaluate(args.bundle, urls, read_corpus(args.train) if args.train else None, args.ksr_limit)
    except BundleError as exc:
        raise SystemExit(f"fedurl-eval: {exc}") from None
    print(json.dumps(report, indent=2) if args.json else format_table(report))


if __name__ == "__main__":
    main()
