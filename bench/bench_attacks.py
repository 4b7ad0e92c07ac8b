"""Attackers against the federation ([T2]): held-out loss and the backdoor, beside a clean run.

fedurl-simulate with the same seed and split, once without attackers and once per scenario: 10 %
and 30 % of the users attack whenever sampled, with an anti-gradient at the server's norm limit
or a backdoor (a phishing host for 'payp', the largest example claim allowed); the server's
defaults (bounded influence, publish gate), and for comparison the server trusting every claim
and norm (``--influence none --gate off``, the behaviour before [T2]).

    .venv/bin/python bench/bench_attacks.py --bundle bundles/default --corpus ../shared/data/urls/kasztp.txt
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from common import REPO, print_table  # first: puts the repo on sys.path

from formats.urls import DEFAULT_CORPUS
from study.simulate import parse_args as simulate_args
from study.simulate import run as simulate

KASZTP = REPO.parent / "shared" / "data" / "urls" / "kasztp.txt"  # real URLs with paths, where present
SCENARIOS = [("clean", 0.0, "anti_gradient", "bounded"),
             ("10 % anti-gradient", 0.1, "anti_gradient", "bounded"),
             ("10 % backdoor", 0.1, "backdoor", "bounded"),
             ("30 % anti-gradient", 0.3, "anti_gradient", "bounded"),
             ("30 % backdoor", 0.3, "backdoor", "bounded"),
             ("10 % anti-gradient, no defences", 0.1, "anti_gradient", "none"),
             ("10 % backdoor, no defences", 0.1, "backdoor", "none")]


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "default"), help="bundle")
    parser.add_argument("--corpus", default=str(KASZTP if KASZTP.is_file() else DEFAULT_CORPUS),
                        help="URL corpus (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per run (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=40, help="simulated users (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=4000, help="corpus URLs used (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: %(default)s)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario numbers (0 = clean, always run), for a subset")
    return parser.parse_args(argv)


def scenario(args, attackers: float, attack: str, influence: str, out: Path) -> dict:
    """One simulation; its metrics rows."""
    flags = ["--corpus", args.corpus, "--bundle", args.bundle, "--out", str(out),
             "--clients", str(args.clients), "--clients-per-round", "10", "--rounds", str(args.rounds),
             "--limit", str(args.limit), "--eval-urls", "300", "--ksr-urls", "0", "--personal-clients", "0",
             "--no-centralized", "--no-trie", "--seed", str(args.seed), "--attackers", str(attackers),
             "--attack", attack,
             "--influence", influence, "--gate", "validation" if influence == "bounded" else "off"]
    summary = simulate(simulate_args(flags))
    with open(out / "metrics.csv") as handle:
        return {"rows": list(csv.DictReader(handle)), "summary": summary}


def main(argv=None) -> None:
    """Run the scenarios and print one row each."""
    args = parse_args(argv)
    chosen = {int(i) for i in args.only.split(",") if i} or set(range(len(SCENARIOS)))
    rows, clean_loss = [], None
    with tempfile.TemporaryDirectory(prefix="fedurl-attacks-") as work:
        for index, (name, share, attack, influence) in enumerate(SCENARIOS):
            if index not in chosen and index != 0:
                continue
            got = scenario(args, share, attack, influence, Path(work) / str(index))["rows"]
            loss = float(got[-1]["fed_loss"])
            clean_loss = loss if index == 0 else clean_loss
            versus = f" ({100 * (loss / clean_loss - 1):+.1f} % vs clean)" if clean_loss and index else ""
            hits = [int(r["backdoor_top3"]) for r in got if r.get("backdoor_top3", "") != ""]
            refused = sum(r.get("published") == "0" for r in got[1:])
            attackers = sum(int(r.get("attackers") or 0) for r in got[1:])
            rows.append((name, f"held-out loss {float(got[0]['fed_loss']):.4f} -> {loss:.4f}{versus}; "
                               f"{attackers} attacker updates; {refused} rounds refused by the gate"
                               + (f"; backdoor in top 3 for {max(hits)} of 4 prefixes at worst "
                                  f"(per round {hits})" if hits else "")))
    print_table(rows)


if __name__ == "__main__":
    main()
