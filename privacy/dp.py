"""Differential privacy for DP-FedAvg (McMahan et al., ICLR 2018): noise sizes and the accountant.

**Neighbouring relation and sensitivity.** Cohorts have a fixed size m drawn without replacement
from a population of N clients, so the accounting uses REPLACE_ONE (one client's data replaced by
another's), the relation under which dp-accounting's sampled-without-replacement RDP bound holds.
Each client's delta is clipped to L2 <= C, so replacing one client moves the *sum* by at most 2C:
the sensitivity is 2C and noise multiplier z means a Gaussian of standard deviation ``2*z*C`` on
the sum (:func:`sum_noise_std`).

**Accounting.** :func:`epsilon` composes r rounds of
``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z))`` in an ``RdpAccountant`` with
``NeighboringRelation.REPLACE_ONE`` (dp-accounting's PLD accountant refuses that event). N is
the population the cohorts are drawn from: the coordinator must use a *lower* bound of the
eligible check-ins it samples from (a smaller N gives a larger, safe, epsilon).

**Where the noise comes from.** Two modes:

- distributed (preferred): each client adds integer noise of std ``noise_std`` (in quantized
  units) before masking (:func:`client_noise_std`), sized so that ``min_survivors`` clients
  already sum to the target; no single party sees it removed. Each client draws its share from
  the discrete Gaussian N_Z(0, noise_std^2) (privacy.ddg, exact up to float64 exp()): the
  distributed discrete Gaussian of Kairouz, Liu and Steinke (ICML 2021).
- central (fallback): :func:`add_central_noise` right after unmasking, on the server.
"""

from __future__ import annotations

import math

import numpy as np


def sum_noise_std(noise_multiplier: float, clip: float) -> float:
    """Std of the Gaussian noise on the sum of clipped deltas: z times the sensitivity 2C."""
    return 2.0 * noise_multiplier * clip


def client_noise_std(noise_multiplier: float, norm_bound: float, min_survivors: int) -> float:
    """Per-client discrete Gaussian std (integer units) such that min_survivors shares sum to z times
    the integer-domain sensitivity 2 * norm_bound (privacy.quantize.norm_bound: C*s, plus rounding).
    """
    if min_survivors < 1:
        raise ValueError("min_survivors must be positive")
    return 2.0 * noise_multiplier * norm_bound / math.sqrt(min_survivors)


def add_central_noise(total: np.ndarray, noise_multiplier: float, clip: float,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """The float sum of clipped deltas plus N(0, (2zC)^2) per coordinate (central DP)."""
    rng = rng if rng is not None else np.random.default_rng()
    return np.asarray(total, dtype=np.float64) + rng.normal(
        0.0, sum_noise_std(noise_multiplier, clip), np.shape(total))


def epsilon(rounds: int, noise_multiplier: float, cohort_size: int, population: int, delta: float) -> float:
    """Epsilon after rounds rounds of fixed-size cohorts (m of N, without replacement) at delta."""
    return composed_epsilon([(rounds, noise_multiplier, cohort_size, population)], delta)


def composed_epsilon(parts: list[tuple[int, float, int, int]], delta: float) -> float:
    """Epsilon at delta of rounds run under different settings, composed in one RDP accountant.

    :param parts: (rounds, noise multiplier z, cohort size m, population N) for each setting a
        federation ran with (an operator may change z or the cohort size between restarts).
    """
    import dp_accounting
    from dp_accounting import rdp

    if not 0 < delta < 1 or any(rounds < 0 or not 1 <= m <= n for rounds, _, m, n in parts):
        raise ValueError("need rounds >= 0, 1 <= cohort_size <= population, 0 < delta < 1")
    parts = [part for part in parts if part[0] > 0]
    if not parts:
        return 0.0
    if any(z <= 0 for _, z, _, _ in parts):
        return math.inf
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for rounds, z, m, n in parts:
        event = dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(z))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))
