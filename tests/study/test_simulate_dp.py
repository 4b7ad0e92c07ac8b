"""fedurl-simulate with differential privacy: the epsilon it reports is the accountant's, and the noise is
really in the published model (study/dp_sim.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from privacy import dp
from study.simulate import parse_args
from tests.conftest import REPO
from tests.study.test_simulate import simulate

DELTA = 1e-6
CORPUS = REPO / "pretrained" / "validation.txt"  # 200 public URLs: enough for 6 users, runs everywhere


@pytest.mark.parametrize("mode, flags", [
    ("central", []),
    ("distributed", ["--secure"]),
])
def test_dp_round_reports_the_accountants_epsilon_and_publishes_the_noise(bundle_dir, tmp_path,
                                                                           mode, flags):
    """One round of a cohort of 3 drawn from 6 users at z = 0.5, clip 1: summary.json's epsilon is
    privacy.dp.epsilon at (1 round, z, m 3, N 6) and the server's ledger says the same with N = m; the
    published weights moved from the initial ones by the noise's std 2zC / m = 1/3 per weight, where
    the clipped mean alone moves them by at most 1 in L2 (about 0.0014 per weight)."""
    z = 0.5
    result = simulate(bundle_dir, CORPUS, tmp_path, "--clients", "6", "--rounds", "1", "--cohort-size", "3",
                      "--limit", "120", "--noise-multiplier", str(z), "--clip", "1", "--gate", "off",
                      "--personal-clients", "0", "--ksr-urls", "0", "--no-centralized", "--no-trie", *flags)
    privacy = result["privacy"]
    assert privacy["mode"] == mode and privacy["rounds"] == 1 and privacy["published_rounds"] == 1
    assert privacy["epsilon"] == dp.epsilon(1, z, 3, 6, DELTA)
    assert privacy["server_epsilon"] == pytest.approx(dp.epsilon(1, z, 3, 3, DELTA))
    assert privacy["epsilon"] < privacy["server_epsilon"]  # sampling 3 of 6 amplifies
    moved = np.concatenate([(result["weights"]["federated"][name] - start).ravel()
                            for name, start in result["weights"]["initial"].items()])
    assert float(moved.std()) == pytest.approx(2 * z * 1.0 / 3, rel=0.05)
    assert abs(float(moved.mean())) < 0.01


def test_noiseless_run_reports_infinite_epsilon(bundle_dir, tmp_path):
    """Without DP flags the server runs DP off: epsilon is null (infinite) and every round publishes."""
    result = simulate(bundle_dir, CORPUS, tmp_path, "--clients", "6", "--rounds", "1", "--cohort-size", "3",
                      "--limit", "120", "--gate", "off", "--personal-clients", "0", "--ksr-urls", "0",
                      "--no-centralized", "--no-trie")
    assert result["privacy"]["mode"] == "off"
    assert result["privacy"]["epsilon"] is None and result["privacy"]["server_epsilon"] is None
    assert result["privacy"]["published_rounds"] == 1


def test_epsilon_target_solves_for_the_smallest_noise_multiplier(bundle_dir, tmp_path):
    """--epsilon 3 over 10 rounds of 10 drawn from 100: the z chosen reaches 3, and 0.2 % less does not."""
    args = parse_args(["--corpus", str(CORPUS), "--bundle", str(bundle_dir), "--out", str(tmp_path),
                       "--clients", "100", "--cohort-size", "10", "--rounds", "10", "--epsilon", "3"])
    z = args.noise_multiplier
    assert dp.epsilon(10, z, 10, 100, DELTA) <= 3 < dp.epsilon(10, z * 0.998, 10, 100, DELTA)


@pytest.mark.parametrize("flags, message", [
    (["--noise-multiplier", "-1"], "--noise-multiplier must be"),
    (["--noise-multiplier", "nan"], "--noise-multiplier must be"),
    (["--epsilon", "0"], "--epsilon must be"),
    (["--epsilon", "inf"], "--epsilon must be"),
    (["--delta", "1"], "--delta must be"),
    (["--noise-multiplier", "1", "--clip", "0"], "--clip must be"),
    (["--noise-multiplier", "1", "--epsilon", "3"], "not allowed with argument"),
])
def test_bad_dp_options_are_errors(bundle_dir, tmp_path, capsys, flags, message):
    """Noise, targets and deltas the accountant cannot honour stop with a usage error before any work."""
    with pytest.raises(SystemExit):
        parse_args(["--corpus", str(CORPUS), "--bundle", str(bundle_dir), "--out", str(tmp_path),
                    "--clients", "8", "--clients-per-round", "4", *flags])
    assert message in capsys.readouterr().err
