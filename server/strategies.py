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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import numpy as np

from server.aggregate import Arrays, WeightedSum, coordinate_median, trimmed_mean

Shapes = dict[str, tuple[int, ...]]


class Deltas(Protocol):
    """The round's accepted deltas, read back one parameter at a time, in arrival order."""

    def column(self, name: str) -> np.ndarray:
        """Every delta's tensor ``name`` stacked: shape (updates, *parameter shape), float32."""
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
    def start(self, shapes: Shapes) -> None:
        """Forget the previous round; deltas of this one have these parameter names and shapes."""

    @abstractmethod
    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Take one validated float32 delta with its positive weight (examples x staleness factor)."""

    @abstractmethod
    def finalize(self, deltas: Deltas) -> Arrays | None:
        """The round's aggregated delta (float64), or None if no delta was accumulated.

        :param deltas: every accumulated delta again; streaming strategies ignore it.
        """


class FedAvgMean(Aggregator):
    """FedAvg (McMahan et al. 2017): the weighted mean, streamed into one float64 running sum.

    Memory is one float64 copy of the model whatever the number of clients.
    """

    name = "fedavg"

    def __init__(self) -> None:
        self.sum = WeightedSum({})

    @property
    def count(self) -> int:
        """Deltas added to the running sum."""
        return self.sum.count

    def start(self, shapes: Shapes) -> None:
        """A zero running sum shaped like the model."""
        self.sum = WeightedSum(shapes)

    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Fold weight * delta into the sum."""
        self.sum.add(delta, weight)

    def finalize(self, deltas: Deltas) -> Arrays | None:
        """sum_k w_k delta_k / sum_k w_k."""
        return self.sum.mean() if self.sum.count else None


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

    def start(self, shapes: Shapes) -> None:
        """Remember the parameter shapes; count from zero."""
        self.shapes, self._count = dict(shapes), 0

    def accumulate(self, delta: Arrays, weight: float) -> None:
        """Count the delta; its bytes stay where they are stored (the spool)."""
        assert delta.keys() == self.shapes.keys(), "delta names differ from the round's"
        self._count += 1

    def finalize(self, deltas: Deltas) -> Arrays | None:
        """Reduce each parameter's stacked deltas coordinate by coordinate."""
        if self._count == 0:
            return None
        result = {}
        for name, shape in self.shapes.items():
            stack = deltas.column(name)
            assert stack.shape == (self._count, *shape), f"{name}: {stack.shape} is not {self._count} deltas"
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


class StackedDeltas:
    """``Deltas`` held in memory: for tests and small simulations."""

    def __init__(self, deltas: list[Arrays]):
        self.deltas = deltas

    def column(self, name: str) -> np.ndarray:
        """Stack one parameter of every delta."""
        return np.stack([delta[name].astype(np.float32) for delta in self.deltas])


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvgMean, TrimmedMean, CoordinateMedian)}


def make_aggregator(name: str, **settings: float | None) -> Aggregator:
    """Build a strategy by name, passing it only the settings it takes (None = its default)."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}")
    cls = AGGREGATORS[name]
    chosen = {k: settings[k] for k in cls.hyperparameters if settings.get(k) is not None}
    return cls(**chosen)  # each subclass names its own keywords
