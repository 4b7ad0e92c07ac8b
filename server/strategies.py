"""Aggregation strategies: how one round's accepted deltas become the round's mean delta.

The seam of Flower's ``Strategy.aggregate_fit``, cut in three so a round can stream: ``start``
a round, ``accumulate`` each accepted delta (arrays + weight) as it arrives, ``finalize`` into
one delta (or None). The coordinator (``server.rounds``) calls only these three and never knows
which strategy runs; the server optimizer (``server.aggregate.ServerOptimizer``) then turns the
delta into weights. No I/O here: a strategy that needs every delta again (``keeps_deltas``)
reads them back through the ``Deltas`` it gets at ``finalize``, which the server backs by the
spool on disk, one parameter at a time.

A new strategy (DP noise, a secure-aggregation sum, FedBuff...) is one subclass and one entry in
``AGGREGATORS``, checked against its naive batch formula in tests/server/test_strategies.py.
A wrapper (``BoundedInfluence``: clipping and capped weights around any strategy) holds another
and hands it, at ``finalize``, the clipped deltas and weights through ``combine``. State that
lives from one round to the next (the adaptive clip bound) goes out through ``carry`` and comes
back through ``start``; the coordinator stores it with the next round, so a restart keeps it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar, Protocol

import numpy as np

from server.aggregate import Arrays, WeightedSum, coordinate_median, trimmed_mean
from server.influence import AdaptiveClip, capped_weights, global_norm

Shapes = dict[str, tuple[int, ...]]


class Deltas(Protocol):
    """The round's accepted deltas, read back in arrival order: one parameter of every delta at a
    time (``column``, for coordinate-wise statistics) or one whole delta at a time (``each``, for
    sums: each stored body is read once, and memory stays one delta whatever the round's size).
    """

    def column(self, name: str) -> np.ndarray:
        """Every delta's tensor ``name`` stacked: shape (updates, *parameter shape), float32."""
        ...

    def each(self) -> Iterator[Arrays]:
        """Every delta, float32, one at a time."""
        ...


class Aggregator(ABC):
    """One round's aggregation: start, accumulate each accepted delta, finalize."""

    name: ClassVar[str]
    keeps_deltas: ClassVar[bool] = False  # True: finalize reads every delta back from `deltas`
    hyperparameters: ClassVar[tuple[str, ...]] = ()  # constructor keywords taken from settings

    @property
    @abstractmethod
    def count(self) -> int:
        """How many deltas this round accumulated."""

    @abstractmethod
    def start(self, shapes: Shapes, carried: dict | None = None) -> None:
        """Forget the previous round; deltas of this one have these parameter names and shapes.

        :param carried: what ``carry`` returned at the end of the previous round (None at first).
        """

    @abstractmethod
    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Take one validated float32 delta with its positive weight (examples x staleness factor)."""

    @abstractmethod
    def finalize(self, deltas: Deltas) -> Arrays | None:
        """The round's aggregated delta (float64), or None if no delta was accumulated.

        :param deltas: every accumulated delta again; streaming strategies ignore it.
        """

    @abstractmethod
    def combine(self, deltas: Deltas, weights: list[float]) -> Arrays | None:
        """The batch formula over deltas (read by column) and weights, whatever was accumulated:
        what a wrapper calls with deltas it changed, and the naive twin tests compare against.
        """

    def carry(self) -> dict:
        """JSON-safe state for the next round's ``start`` (nothing by default)."""
        return {}

    def admit(self) -> None:  # noqa: B027  # optional hook: most strategies admit every round
        """Raise a ``server.refusals.Refused`` if this round may take no update (a spent privacy
        budget, ``server.dp``); every round may by default.
        """

    def aggregated_elsewhere(self) -> None:  # noqa: B027  # optional hook, like admit
        """Count a round whose mean was computed outside accumulate/finalize (a secure cohort's
        unmasked sum, ``server.secure``), for a strategy that keeps books across rounds.
        """

    def report(self) -> dict:
        """JSON-safe figures of the last finalized round for the manifest and /api/status."""
        return {}

    def publishable(self, stats: dict) -> dict:
        """A round's figures from the clients' own reports (``db.round_stats``: mean losses,
        examples, staleness) as they may be published; all of them by default (``server.dp``
        withholds them).
        """
        return stats


class FedAvgMean(Aggregator):
    """FedAvg (McMahan et al. 2017): the weighted mean, streamed into one float64 running sum.

    Memory is one float64 copy of the model whatever the number of clients.
    """

    name = "fedavg"

    def __init__(self) -> None:
        self.sum = WeightedSum({})
        self.shapes: Shapes = {}

    @property
    def count(self) -> int:
        """Deltas added to the running sum."""
        return self.sum.count

    def start(self, shapes: Shapes, carried: dict | None = None) -> None:
        """A zero running sum shaped like the model."""
        self.sum, self.shapes = WeightedSum(shapes), dict(shapes)

    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Fold weight * delta into the sum."""
        self.sum.add(delta, weight)

    def finalize(self, deltas: Deltas) -> Arrays | None:
        """sum_k w_k delta_k / sum_k w_k."""
        return self.sum.mean() if self.sum.count else None

    def combine(self, deltas: Deltas, weights: list[float]) -> Arrays | None:
        """sum_k w_k delta_k / sum_k w_k in float64, streamed: one delta in memory at a time."""
        if not weights:
            return None
        total = WeightedSum(self.shapes)
        for delta, weight in zip(deltas.each(), weights, strict=True):
            total.add(delta, weight)
        return total.mean()


class Coordinatewise(Aggregator):
    """Base of the robust statistics of Yin et al. 2018, which need every delta at once.

    Weights are ignored (Yin et al. treat every worker alike; a client claiming many examples
    must not outweigh the others). Nothing is kept in memory while the round runs; ``finalize``
    reads one parameter of every delta at a time, so its peak memory is
    ``updates x largest parameter x 8 bytes`` (float64 sort), not updates x model.
    """

    keeps_deltas = True

    def __init__(self) -> None:
        self.shapes: Shapes = {}
        self._count = 0

    @property
    def count(self) -> int:
        """Deltas counted this round."""
        return self._count

    def start(self, shapes: Shapes, carried: dict | None = None) -> None:
        """Remember the parameter shapes; count from zero."""
        self.shapes, self._count = dict(shapes), 0

    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Count the delta; its bytes stay where they are stored (the spool)."""
        assert delta.keys() == self.shapes.keys(), "delta names differ from the round's"
        self._count += 1

    def finalize(self, deltas: Deltas) -> Arrays | None:
        """Reduce each parameter's stacked deltas coordinate by coordinate."""
        return self.combine(deltas, [1.0] * self._count)

    def combine(self, deltas: Deltas, weights: list[float]) -> Arrays | None:
        """Reduce each parameter's stacked deltas coordinate by coordinate; weights are ignored."""
        if not weights:
            return None
        result = {}
        for name, shape in self.shapes.items():
            stack = deltas.column(name)
            assert stack.shape == (len(weights), *shape), f"{name}: {stack.shape}, {len(weights)} deltas"
            result[name] = self.reduce(stack)
        return result

    @abstractmethod
    def reduce(self, stack: np.ndarray) -> np.ndarray:
        """One parameter's (updates, *shape) stack to its aggregate (shape)."""


class TrimmedMean(Coordinatewise):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Def. 2)."""

    name = "trimmed_mean"
    hyperparameters = ("trim_fraction",)

    def __init__(self, trim_fraction: float = 0.1):
        super().__init__()
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be at least 0 and below 0.5, got {trim_fraction}")
        self.trim_fraction = trim_fraction

    def reduce(self, stack: np.ndarray) -> np.ndarray:
        """Drop floor(beta n) values from each end of every coordinate, average the rest."""
        return trimmed_mean(stack, self.trim_fraction)


class CoordinateMedian(Coordinatewise):
    """Coordinate-wise median (Yin et al. 2018, Def. 1)."""

    name = "median"

    def reduce(self, stack: np.ndarray) -> np.ndarray:
        """The median of every coordinate."""
        return coordinate_median(stack)


class ScaledDeltas:
    """Deltas each multiplied by its own factor (clipping), read as the wrapped ones are."""

    def __init__(self, deltas: Deltas, scales: list[float]):
        self.deltas, self.scales = deltas, np.asarray(scales, dtype=np.float32)

    def column(self, name: str) -> np.ndarray:
        """The stacked column, row k times scales[k]."""
        stack = self.deltas.column(name)
        return stack * self.scales.reshape((-1,) + (1,) * (stack.ndim - 1))

    def each(self) -> Iterator[Arrays]:
        """Delta k times scales[k], one at a time."""
        for delta, scale in zip(self.deltas.each(), self.scales, strict=True):
            yield {name: array * scale for name, array in delta.items()}


class BoundedInfluence(Aggregator):
    """Any strategy, with each delta clipped to an adaptive bound and each weight capped.

    What one client can do to the round's result, whatever it claims ([T2], docs/SECURITY.md):
    its delta is scaled down (not refused) to the round's clip bound, which follows a quantile of
    the norms (``AdaptiveClip``, Andrew et al. 2021); its weight is at most ``cap_factor`` times
    the round's median weight (``capped_weights``). In plain mode the server sees every norm, so
    the bound is also at most the round's median norm: the first rounds do not depend on the
    initial guess, and fewer than half the clients cannot raise it. A secure cohort ([T1]) sees
    no norm and has only the adaptive bound (each client clips itself). The medians are known
    only once the round is complete, so every delta is read back from the spool at ``finalize``
    (``keeps_deltas``); memory at the close is updates x largest parameter, not updates x model.
    """

    keeps_deltas = True

    def __init__(self, inner: Aggregator, cap_factor: float = 2.0, clip_initial: float = 5.0,
                 clip_quantile: float = 0.5, clip_learning_rate: float = 0.2,
                 clip_ceiling: float = 1e6):
        self.inner, self.cap_factor = inner, cap_factor
        self.name = inner.name  # type: ignore[misc]  # the wrapped strategy is what runs
        self.clip = AdaptiveClip(clip_initial, clip_quantile, clip_learning_rate, ceiling=clip_ceiling)
        self.weights: list[float] = []
        self.norms: list[float] = []
        self.last: dict = {}

    @property
    def count(self) -> int:
        """Deltas counted this round."""
        return len(self.weights)

    def start(self, shapes: Shapes, carried: dict | None = None) -> None:
        """Start the inner strategy; take the clip bound the previous round left."""
        self.inner.start(shapes)
        self.weights, self.norms = [], []
        bound = (carried or {}).get("clip_bound")
        if isinstance(bound, (int, float)) and bound > 0:
            self.clip.bound = min(float(bound), self.clip.ceiling)

    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Remember the weight and the unclipped norm; the bytes stay in the spool."""
        self.weights.append(weight)
        self.norms.append(global_norm(delta))

    def finalize(self, deltas: Deltas) -> Arrays | None:
        """The inner strategy over clipped deltas and capped weights; then move the bound."""
        if not self.weights:
            return None
        bound = min(self.clip.bound, float(np.median(self.norms)) or self.clip.bound)
        scales = [min(1.0, bound / norm) if norm > 0 else 1.0 for norm in self.norms]
        weights = capped_weights(self.weights, self.cap_factor)
        result = self.inner.combine(ScaledDeltas(deltas, scales), weights)
        self.last = {"clip_bound": round(bound, 6), "clipped": sum(s < 1.0 for s in scales),
                     "weight_cap": round(self.cap_factor * float(np.median(self.weights)), 6),
                     "capped": sum(c < w for c, w in zip(weights, self.weights, strict=True))}
        self.clip.update(self.norms)
        return result

    def combine(self, deltas: Deltas, weights: list[float]) -> Arrays | None:
        """The inner strategy's batch formula (no clipping: the caller chose the deltas)."""
        return self.inner.combine(deltas, weights)

    def carry(self) -> dict:
        """The next round's clip bound."""
        return {"clip_bound": self.clip.bound}

    def report(self) -> dict:
        """The last round's bound, how many deltas it clipped, the weight cap and how many it cut."""
        return dict(self.last)


class StackedDeltas:
    """``Deltas`` held in memory: for tests and small simulations."""

    def __init__(self, deltas: list[Arrays]):
        self.deltas = deltas

    def column(self, name: str) -> np.ndarray:
        """Stack one parameter of every delta."""
        return np.stack([delta[name].astype(np.float32) for delta in self.deltas])

    def each(self) -> Iterator[Arrays]:
        """Every delta as float32."""
        for delta in self.deltas:
            yield {name: array.astype(np.float32) for name, array in delta.items()}


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvgMean, TrimmedMean, CoordinateMedian)}


def make_aggregator(name: str, bounded: dict | None = None, **settings: float | None) -> Aggregator:
    """Build a strategy by name, passing it only the settings it takes (None = its default).

    :param bounded: ``BoundedInfluence`` keywords to wrap the strategy in (None: unwrapped).
    """
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    cls = AGGREGATORS[name]
    chosen = {k: settings[k] for k in cls.hyperparameters if settings.get(k) is not None}
    strategy = cls(**chosen)  # each subclass names its own keywords
    return strategy if bounded is None else BoundedInfluence(strategy, **bounded)
