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
from typing import TYPE_CHECKING

import numpy as np

from . import quantize

if TYPE_CHECKING:
    from .messages import RoundConfig


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


def ddg_epsilon(sigma: float, survivors: int, sensitivity: float, dims: int) -> float:
    """The zCDP epsilon of the sum of survivors' shares of N_Z(0, sigma^2) in dims coordinates, for a sum
    whose L2 sensitivity is sensitivity (Kairouz, Liu, Steinke, ICML 2021, Theorem 1): the sum is
    (epsilon^2 / 2)-concentrated DP with

        epsilon = min(sqrt(S^2 / (n sigma^2) + tau d / 2), S / (sqrt(n) sigma) + tau sqrt(d)),
        tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)).

    tau measures how far a sum of discrete Gaussians is from one discrete Gaussian; it is below
    1e-150 once sigma > 6 (0 in float64 past 8.7), so at realistic sigma epsilon = S / (sqrt(n) sigma),
    the Gaussian's.
    """
    if sigma <= 0 or survivors < 1 or sensitivity <= 0 or dims < 1:
        raise ValueError("need sigma > 0, survivors >= 1, sensitivity > 0, dims >= 1")
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, survivors))
    return min(math.sqrt(sensitivity**2 / (survivors * sigma**2) + tau * dims / 2),
               sensitivity / (math.sqrt(survivors) * sigma) + tau * math.sqrt(dims))


def distributed_noise_multiplier(config: RoundConfig) -> float:
    """The noise multiplier z of the Gaussian mechanism whose RDP curve a secure round's noise has
    (0: no noise). (epsilon^2/2)-zCDP is RDP alpha * epsilon^2 / 2 at every order alpha, the curve of
    the Gaussian with z = 1 / epsilon; the accountant composes and amplifies it as that Gaussian.

    What it assumes: at least min_survivors honest shares of N_Z(0, noise_std^2) are in the sum, and
    the sum's sensitivity under REPLACE_ONE is 2 * quantize.norm_bound (each input's L2 norm after
    conditional rounding, in integer units).
    """
    if config.noise_std <= 0:
        return 0.0
    sensitivity = 2 * quantize.norm_bound(config.clip, config.scale, config.num_params)
    return 1.0 / ddg_epsilon(config.noise_std, config.min_survivors, sensitivity, config.num_params)


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
