"""Federated aggregation as pure functions and small optimizer classes: no I/O, no Flask, no logs.

Everything here maps arrays to arrays. The server (``server/rounds.py``) decodes updates, calls
these, and stores the result; the tests check them against hand-computed numbers and against the
naive batch formula.

- FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017 -- the example-weighted mean of client deltas.
- Server optimizers: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2
  (FedAvg with server learning rate, FedAvgM, FedAdam), treating the mean delta as a pseudo-gradient
  of the opposite sign. FedAvgM as in Hsu et al., "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", 2019.
- Staleness weighting: Xie et al., "Asynchronous Federated Optimization", 2019, polynomial
  s(t) = (1 + t)^-a.
- Coordinate-wise median and trimmed mean: Yin et al., "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018, Definitions 1 and 2.

Two seams: a ``ServerOptimizer`` (below) turns the round's mean delta into the next weights, and
an ``Aggregator`` (``server.strategies``) turns the round's deltas into that mean delta.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

Arrays = dict[str, np.ndarray]


class WeightedSum:
    """Streaming FedAvg: fold one delta at a time into a float64 running sum.

    Memory is one float64 copy of the model whatever the number of clients; ``mean()`` equals
    ``sum_k w_k * delta_k / sum_k w_k`` over everything added.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.sums = {name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, delta: Arrays, weight: float) -> None:
        """Add ``weight * delta`` in place; delta must hold exactly the accumulator's names."""
        assert weight > 0 and math.isfinite(weight), f"weight must be positive and finite, got {weight}"
        assert delta.keys() == self.sums.keys(), "delta names differ from the accumulator's"
        for name, total in self.sums.items():
            # float64 sum: a thousand float32 deltas summed in float32 would lose low bits
            total += weight * delta[name].astype(np.float64, copy=False)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Arrays:
        """The weighted mean delta (float64); an empty sum has no mean."""
        assert self.count > 0, "mean of an empty WeightedSum"
        return {name: total / self.total_weight for name, total in self.sums.items()}


def staleness_weight(staleness: int, exponent: float) -> float:
    """Down-weighting factor (1 + staleness)^-exponent for a delta computed on an older model."""
    assert staleness >= 0, f"staleness must be >= 0, got {staleness}"
    return (1.0 + staleness) ** -exponent


def apply_delta(weights: Arrays, step: Arrays, lr: float) -> Arrays:
    """X + lr * step, cast back to each weight's dtype."""
    return {name: (w + lr * step[name]).astype(w.dtype) for name, w in weights.items()}


def momentum_update(velocity: Arrays, delta: Arrays, momentum: float) -> Arrays:
    """Heavy-ball velocity v' = momentum * v + delta (FedAvgM, Hsu et al. 2019)."""
    return {name: momentum * velocity[name] + delta[name] for name in delta}


def adam_moments(m: Arrays, v: Arrays, delta: Arrays, beta1: float, beta2: float) -> tuple[Arrays, Arrays]:
    """Reddi et al. 2021, Alg. 2: m' = b1 m + (1-b1) d;  v' = b2 v + (1-b2) d^2."""
    new_m = {n: beta1 * m[n] + (1 - beta1) * delta[n] for n in delta}
    new_v = {n: beta2 * v[n] + (1 - beta2) * np.square(delta[n]) for n in delta}
    return new_m, new_v


def adam_direction(m: Arrays, v: Arrays, tau: float) -> Arrays:
    """Reddi et al. 2021, Alg. 2 FedAdam step direction m / (sqrt(v) + tau)."""
    return {n: m[n] / (np.sqrt(v[n]) + tau) for n in m}


def trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    """Yin et al. 2018, Def. 2: per coordinate, drop the floor(beta n) largest and smallest of the
    n values and average the rest. ``stack`` is (n, *shape); the result has ``shape`` (float64).
    """
    count = stack.shape[0]
    cut = int(beta * count)
    assert 0.0 <= beta < 0.5 and count > 2 * cut, f"cannot trim {cut} of {count} values from each end"
    ordered = np.sort(stack.astype(np.float64), axis=0)
    return ordered[cut:count - cut].mean(axis=0)


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Yin et al. 2018, Def. 1: the median of each coordinate over the n deltas in ``stack``."""
    assert stack.shape[0] > 0, "median of no deltas"
    return np.median(stack.astype(np.float64), axis=0)


def unsafe_weights(weights: Arrays, max_abs: float) -> str | None:
    """Why weights must not be published (a NaN, an infinity, or |w| above max_abs), or None."""
    for name, array in weights.items():
        if not np.isfinite(array).all():
            return f"{name} holds NaN or infinite values"
        largest = float(np.abs(array).max(initial=0.0))
        if largest > max_abs:
            return f"{name} reaches |w| = {largest:.3g}, above the limit {max_abs:g}"
    return None


class ServerOptimizer(ABC):
    """The server-optimizer contract: next weights from the current ones and a pseudo-gradient.

    ``step`` takes the round's aggregated delta (the negative pseudo-gradient of Reddi et al.) and
    may keep float32 arrays in ``state`` named ``<slot>/<parameter>`` for each name in ``slots``;
    the server saves them beside each version and restores them after a restart or a rollback.
    A new optimizer is one subclass and one entry in ``OPTIMIZERS``.
    """

    name: ClassVar[str]
    default_lr: ClassVar[float] = 1.0
    hyperparameters: ClassVar[tuple[str, ...]] = ()  # constructor keywords taken from settings
    slots: ClassVar[tuple[str, ...]] = ()  # names of the state arrays, "<slot>/<parameter>"

    def __init__(self, lr: float | None = None):
        self.lr = self.default_lr if lr is None else lr
        self.state: Arrays = {}

    @abstractmethod
    def step(self, weights: Arrays, mean_delta: Arrays) -> Arrays:
        """Next global weights from the current ones and the aggregated delta."""

    def _slot(self, slot: str, like: Arrays, fill: float = 0.0) -> Arrays:
        """The named state slot, created as ``fill`` on first use."""
        return {n: self.state.get(f"{slot}/{n}", np.full(a.shape, fill, dtype=np.float32))
                for n, a in like.items()}

    def _store(self, slot: str, arrays: Arrays) -> None:
        """Replace a state slot, kept as float32 (as Adam's moments usually are) so that the
        saved safetensors copy restores bit for bit.
        """
        self.state.update({f"{slot}/{n}": a.astype(np.float32) for n, a in arrays.items()})


class FedAvg(ServerOptimizer):
    """Plain FedAvg as a server optimizer: x' = x + lr * mean_delta (lr 1 is McMahan et al. exactly).

    The base of the adaptive optimizers (as FedOpt in Reddi et al.).
    """

    name = "fedavg"

    def step(self, weights: Arrays, mean_delta: Arrays) -> Arrays:
        """Next global weights from the current ones and the aggregated delta."""
        return apply_delta(weights, mean_delta, self.lr)


class FedAvgM(FedAvg):
    """FedAvg with server momentum: v' = beta v + mean_delta; x' = x + lr v'."""

    name = "fedavgm"
    hyperparameters = ("momentum",)
    slots = ("velocity",)

    def __init__(self, lr: float | None = None, momentum: float = 0.9):
        super().__init__(lr)
        self.momentum = momentum

    def step(self, weights: Arrays, mean_delta: Arrays) -> Arrays:
        """Update the velocity, then move along it."""
        velocity = momentum_update(self._slot("velocity", mean_delta), mean_delta, self.momentum)
        self._store("velocity", velocity)
        return apply_delta(weights, velocity, self.lr)


class FedAdam(FedAvg):
    """Server Adam without bias correction (Reddi et al. 2021, Alg. 2); v starts at tau^2."""

    name = "fedadam"
    default_lr = 0.01
    hyperparameters = ("beta1", "beta2", "tau")
    slots = ("m", "v")

    def __init__(self, lr: float | None = None, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3):
        super().__init__(lr)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def step(self, weights: Arrays, mean_delta: Arrays) -> Arrays:
        """Update both moments, then step by lr * m / (sqrt(v) + tau)."""
        m, v = adam_moments(self._slot("m", mean_delta), self._slot("v", mean_delta, self.tau ** 2),
                            mean_delta, self.beta1, self.beta2)
        self._store("m", m)
        self._store("v", v)
        return apply_delta(weights, adam_direction(m, v, self.tau), self.lr)


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam)}


def make_optimizer(name: str, lr: float | None = None, **settings: float | None) -> ServerOptimizer:
    """Build a server optimizer by name, passing it only the settings it takes (None = its default)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown server optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    chosen = {k: settings[k] for k in cls.hyperparameters if settings.get(k) is not None}
    return cls(lr=lr, **chosen)  # each subclass names its own keywords
