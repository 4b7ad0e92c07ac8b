"""Attackers in fedurl-simulate ([T2]): 10 % of the users attack whenever sampled; with the
server's defaults the held-out loss stays within 5 % of the attacker-free run with the same seed,
and the backdoor host never reaches the top 3 for its prefixes. (Full runs: bench/bench_attacks.py.)
"""

from __future__ import annotations

import csv

import pytest

from formats.urls import DEFAULT_CORPUS
from study.attacks import choose_attackers
from study.simulate import parse_args, run
from tests.conftest import SHARED_URLS


@pytest.fixture(scope="module")
def corpus():
    """Real DMOZ URLs when ../shared/data is there, else the top-sites domains."""
    kasztp = SHARED_URLS / "kasztp.txt"
    return kasztp if kasztp.is_file() else DEFAULT_CORPUS


def simulate(bundle_dir, corpus, out, *flags: str) -> list[dict]:
    """A small run (20 users, rounds of 10) without the slow evaluations; metrics.csv rows."""
    run(parse_args(["--corpus", str(corpus), "--bundle", str(bundle_dir), "--out", str(out),
                    "--clients", "20", "--clients-per-round", "10", "--rounds", "3", "--limit", "1200",
                    "--eval-urls", "100", "--ksr-urls", "0", "--personal-clients", "0", "--no-centralized",
                    "--no-trie", "--seed", "0", *flags]))
    with open(out / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def clean(bundle_dir, corpus, tmp_path_factory):
    """The attacker-free run."""
    return simulate(bundle_dir, corpus, tmp_path_factory.mktemp("clean"))


@pytest.mark.parametrize("attack", ["anti_gradient", "backdoor"])
def test_ten_percent_attackers_stay_within_five_percent_of_the_clean_run(bundle_dir, corpus, clean,
                                                                          tmp_path, attack):
    """Anti-gradient at the norm limit, or a boosted backdoor claiming the most examples."""
    # Execute
    rows = simulate(bundle_dir, corpus, tmp_path, "--attackers", "0.1", "--attack", attack)
    # Assert: attackers took part, the loss held, the backdoor never surfaced
    assert sum(int(r["attackers"]) for r in rows[1:]) >= 1
    attacked, baseline = float(rows[-1]["fed_loss"]), float(clean[-1]["fed_loss"])
    assert attacked <= 1.05 * baseline, f"held-out loss {attacked:.4f} vs clean {baseline:.4f}"
    if attack == "backdoor":
        assert all(int(r["backdoor_top3"]) == 0 for r in rows), [r["backdoor_top3"] for r in rows]


def test_attackers_are_a_fixed_share_chosen_by_the_seed():
    """round(share x users) of them, the same for the same seed."""
    assert len(choose_attackers(40, 0.1, 0)) == 4
    assert choose_attackers(40, 0.3, 1) == choose_attackers(40, 0.3, 1)
