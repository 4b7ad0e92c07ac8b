"""Central differential privacy in plain mode (DP-FedAvg, McMahan et al., ICLR 2018) and its ledger.

``DifferentiallyPrivate`` wraps the round's strategy. With DP on (z > 0) it scales every delta
down to L2 <= C as it arrives, gives every delta the **same weight** (1), and adds Gaussian noise
of std ``2zC`` (``privacy.dp.sum_noise_std``) to the *sum* of the clipped deltas before dividing
by their count n. Why the sensitivity holds: the accountant's neighbours replace one client's
data by another's (REPLACE_ONE), so n is the same for both and the sum moves by at most
``||a - b|| <= 2C``. Example weights are not used: a client's num_examples is its own claim, and
a weight above 1 would multiply its influence, so the sensitivity would be ``2C x max weight``;
staleness factors are dropped for the same reason. Only the mean has that sensitivity, so DP
wraps ``fedavg`` only (``server.config.check_dp``).

INFLUENCE=bounded under DP: the fixed clip C and equal weights already bound what one client can
do (tighter than the cap at twice the median weight), and ``BoundedInfluence``'s bound follows
the round's median norm, which moves when one client changes (every other delta is then scaled
differently, so the sensitivity would not be 2C) and is published without noise. So with DP on
the wrapped strategy is the plain one and INFLUENCE has no effect; with DP off it applies as before.

**Secure mode** (``where="distributed"``): the clients clip to SECURE_CLIP, round conditionally and
add their shares of discrete Gaussian noise before masking (``privacy.secagg``); the server adds
nothing. Each round enters the ledger with the noise multiplier of the Gaussian whose RDP curve the
round's noise has (``privacy.dp.distributed_noise_multiplier``: Kairouz et al.'s zCDP bound for
min_survivors shares, the integer-domain sensitivity after rounding), the smallest over every
cohort size the round may draw (:func:`accounted_noise_multiplier`); docs/PRIVACY.md has the numbers.

The **ledger** of every aggregated round (also those the publish gate refused: their noisy sum
was computed and its refusal is seen) goes from round to round through ``carry``, the seam the
coordinator stores with the next round, so a restart or a rollback never forgets spent privacy.
Each entry is (z, m, N, rounds); a round without noise makes epsilon infinite. The next round is
refused (``admit``) once it would take epsilon above the budget. Abandoned rounds aggregate
nothing and cost nothing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from privacy import dp
from privacy.secagg import make_config, min_survivors_for
from server.influence import global_norm
from server.refusals import PrivacyBudgetSpent
from server.strategies import Aggregator, Arrays, Deltas, ScaledDeltas, Shapes

LEDGER = "privacy"  # the key of the ledger in ``carry`` and of the summary in ``report``


@dataclass(frozen=True)
class DpSettings:
    """What one round's noise and the accountant use."""

    noise_multiplier: float  # z; 0: no noise (no DP)
    clip: float  # C
    delta: float
    budget: float  # epsilon at delta that no round may take the ledger above
    cohort_size: int  # m: members drawn per round (an upper bound of the reports aggregated)
    population: int  # N >= m: a lower bound of the eligible check-ins the cohort is drawn from
    where: str = "central"  # who adds the noise: the server (plain mode) or the clients (secure mode)
    bits: int = 16  # secure mode: SECURE_BITS, which sets the scale and so the rounding's share of the norm
    min_cohort: int = 3  # secure mode: SECURE_MIN_COHORT, the smallest cohort a round may draw

    @property
    def on(self) -> bool:
        """Whether rounds are clipped and noised."""
        return self.noise_multiplier > 0


def settings_from(config, cohort_target: int | None) -> DpSettings:
    """DP settings from the server's; cohort_target None is open selection (no sampling: N = m).

    In secure mode the clients clip to SECURE_CLIP and add their shares of the noise before masking
    (``privacy.secagg.make_config``), so that is the C the summary names.
    """
    m = cohort_target if cohort_target is not None else config["MIN_CLIENTS"]
    floor = config["DP_MIN_POPULATION"] if cohort_target is not None else None
    secure = config["AGGREGATION"] == "secure"
    return DpSettings(config["DP_NOISE_MULTIPLIER"], config["SECURE_CLIP"] if secure else config["DP_CLIP"],
                      config["DP_DELTA"], config["DP_EPSILON_BUDGET"], m, max(m, floor or m),
                      "distributed" if secure else "central", config["SECURE_BITS"],
                      config["SECURE_MIN_COHORT"])


@functools.lru_cache(maxsize=16)
def accounted_noise_multiplier(settings: DpSettings, num_params: int) -> float:
    """The z a round at these settings enters the ledger with: central, z itself; distributed, the
    smallest Gaussian-equivalent z of the round configs (privacy.secagg.make_config, as
    server.secure.SecureRules makes them) of every cohort size from min_cohort to cohort_size, since
    a round draws at most cohort_size members and at least its goal.
    """
    if settings.where != "distributed" or not settings.on:
        return settings.noise_multiplier
    return min(dp.distributed_noise_multiplier(make_config(
        0, n, num_params, bits=settings.bits, clip=settings.clip, min_survivors=min_survivors_for(
            n, settings.min_cohort), noise_multiplier=settings.noise_multiplier, graph_seed=bytes(32)))
        for n in range(settings.min_cohort, settings.cohort_size + 1))


class Ledger:
    """Rounds aggregated so far, grouped by (z, m, N); z = 0 entries are rounds without noise."""

    def __init__(self, entries: list[list] | None = None):
        self.entries: dict[tuple[float, int, int], int] = {}
        for z, m, n, rounds in entries or []:
            self.add(float(z), int(m), int(n), int(rounds))

    @classmethod
    def from_carried(cls, carried: dict | None) -> Ledger:
        """The ledger in a round's carried state (empty at a federation's first round)."""
        return cls((carried or {}).get(LEDGER, {}).get("rounds"))

    def add(self, z: float, m: int, n: int, rounds: int = 1) -> Ledger:
        """Count rounds more at these settings (in place); return self."""
        key = (z, m, n)
        self.entries[key] = self.entries.get(key, 0) + rounds
        return self

    def plus(self, z: float, m: int, n: int) -> Ledger:
        """A copy with one more round of noise multiplier z, cohort m, population n."""
        return Ledger(self.to_json()).add(z, m, n)

    @property
    def rounds(self) -> int:
        """Rounds aggregated."""
        return sum(self.entries.values())

    @property
    def noiseless(self) -> int:
        """Rounds aggregated without noise."""
        return sum(count for (z, _, _), count in self.entries.items() if z <= 0)

    def epsilon(self, delta: float) -> float:
        """Epsilon at delta of every round so far (infinite once one had no noise)."""
        return dp.composed_epsilon([(count, z, m, n) for (z, m, n), count in self.entries.items()], delta)

    def to_json(self) -> list[list]:
        """[[z, m, N, rounds], ...] for the carried state."""
        return [[z, m, n, count] for (z, m, n), count in sorted(self.entries.items())]


def summary(ledger: Ledger, settings: DpSettings) -> dict:
    """What a manifest and /api/status say about privacy: epsilon so far and what it assumed.

    Epsilon is null when a round had no noise (infinite: JSON has no Infinity), and "epsilon_note"
    says why; an infinite budget (account, never stop) is null too.
    """
    eps = ledger.epsilon(settings.delta)
    doc = {"mode": settings.where if settings.on else "off", "epsilon": eps if math.isfinite(eps) else None,
           "delta": settings.delta, "noise_multiplier": settings.noise_multiplier, "clip": settings.clip,
           "cohort_size": settings.cohort_size, "population": settings.population,
           "budget": settings.budget if math.isfinite(settings.budget) else None,
           "rounds": ledger.rounds, "noiseless_rounds": ledger.noiseless, "ledger": ledger.to_json()}
    if not math.isfinite(eps):
        doc["epsilon_note"] = (f"infinite: {ledger.noiseless} round(s) were aggregated without noise, so "
                               "nothing bounds what they reveal")
    return doc


def version_epsilon(manifest: dict) -> dict:
    """A version's privacy as its manifest says: {"epsilon": float | None, "mode": ...}; a version
    published before accounting (the imported bundle, older servers) says "mode": None.
    """
    account = manifest.get("aggregation", {}).get(LEDGER) or {}
    return {"epsilon": account.get("epsilon"), "mode": account.get("mode")}


class DifferentiallyPrivate(Aggregator):
    """Any strategy's round, with each delta clipped to C, equal weights and noise on the sum (z > 0);
    with z = 0 the strategy as it is. Either way the round goes into the privacy ledger.
    """

    def __init__(self, inner: Aggregator, settings: DpSettings, rng: np.random.Generator | None = None):
        """:param rng: a seeded generator in tests; by default fresh OS entropy every round."""
        if settings.on and inner.name != "fedavg":
            raise ValueError(f"DP noise is sized for the mean (fedavg), not {inner.name}")
        self.inner, self.settings, self.rng = inner, settings, rng
        self.name = inner.name  # type: ignore[misc]  # the wrapped strategy is what runs
        self.keeps_deltas = inner.keeps_deltas  # type: ignore[misc]
        self.scales: list[float] = []
        self.base, self.closed = Ledger(), Ledger()
        self.event = (settings.noise_multiplier, settings.cohort_size, settings.population)  # (z, m, N)
        self.refusal: str | None = None
        self.summary: dict = {}

    @property
    def count(self) -> int:
        """Deltas this round accumulated."""
        return self.inner.count

    def start(self, shapes: Shapes, carried: dict | None = None) -> None:
        """Start the inner strategy; take the ledger so far and decide whether this round may train."""
        self.inner.start(shapes, carried)
        self.scales = []
        num_params = sum(math.prod(shape) for shape in shapes.values())
        self.event = (accounted_noise_multiplier(self.settings, num_params), self.settings.cohort_size,
                      self.settings.population)
        self.base = self.closed = Ledger.from_carried(carried)
        self.refusal = self._refusal()
        self.summary = summary(self.closed, self.settings)

    def _refusal(self) -> str | None:
        """Why this round takes no update (the budget), or None."""
        if not self.settings.on:
            return None
        now, after = self.base.epsilon(self.settings.delta), self.base.plus(*self.event).epsilon(
            self.settings.delta)
        if after <= self.settings.budget:
            return None
        return (f"training has stopped: the privacy budget (epsilon {self.settings.budget:g} at delta "
                f"{self.settings.delta:g}) is spent; epsilon is {now:.3g} after {self.base.rounds} rounds "
                f"and one more round would make it {after:.3g}. The model still serves suggestions")

    def admit(self) -> None:
        """:raise PrivacyBudgetSpent: once one more round would exceed the budget."""
        if self.refusal is not None:
            raise PrivacyBudgetSpent(self.refusal)

    def accumulate(self, delta: Arrays, weight: float) -> None:
        """DP on: the delta scaled to norm <= C, weight 1; off: as it came."""
        if not self.settings.on:
            self.inner.accumulate(delta, weight)
            return
        norm = global_norm(delta)
        scale = min(1.0, self.settings.clip / norm) if norm > 0 else 1.0
        self.scales.append(scale)
        self.inner.accumulate({name: array * np.float32(scale) for name, array in delta.items()}, 1.0)

    def finalize(self, deltas: Deltas) -> Arrays | None:
        """The inner mean of the clipped deltas plus N(0, (2zC)^2) / n; the round enters the ledger."""
        if not self.settings.on:
            result = self.inner.finalize(deltas)
        else:
            mean = self.inner.finalize(ScaledDeltas(deltas, self.scales))
            result = None if mean is None else self._noised(mean, len(self.scales))
        if result is not None:
            self.aggregated_elsewhere()
        return result

    def aggregated_elsewhere(self) -> None:
        """The round enters the ledger (again after a failed close: the same one round, never two)."""
        self.closed = self.base.plus(*self.event)
        self.summary = summary(self.closed, self.settings)

    def _noised(self, mean: Arrays, n: int) -> Arrays:
        """(n * mean + noise) / n: Gaussian noise of std 2zC on the sum, per coordinate."""
        rng = self.rng if self.rng is not None else np.random.default_rng()
        z, clip = self.settings.noise_multiplier, self.settings.clip
        return {name: dp.add_central_noise(n * np.asarray(value, np.float64), z, clip, rng) / n
                for name, value in mean.items()}

    def combine(self, deltas: Deltas, weights: list[float]) -> Arrays | None:
        """The inner strategy's batch formula (no clipping, no noise: the caller chose the deltas)."""
        return self.inner.combine(deltas, weights)

    def carry(self) -> dict:
        """The inner strategy's state and the ledger including this round once it was aggregated."""
        return {**self.inner.carry(), LEDGER: {"rounds": self.closed.to_json()}}

    def publishable(self, stats: dict) -> dict:
        """With DP on, only a round's participant count (the cohort's size, public anyway): its
        means of self-reported losses, examples and staleness are functions of each person's data
        that no noise covers, so publishing them would bypass the ε the manifest claims.
        """
        if not self.settings.on:
            return self.inner.publishable(stats)
        return {key: (value if key == "participants" else None) for key, value in stats.items()}

    def report(self) -> dict:
        """The inner report (DP off; with DP on per-round clip counts are not published: they are not
        noised) and the privacy summary of the ledger so far.
        """
        inner = {} if self.settings.on else self.inner.report()
        return {**inner, LEDGER: self.summary}
