"""Bounded influence: what one update can do to the mean, whatever its sender claims.

Pure functions and one small stateful class; no I/O. Two levers ([T2], docs/SECURITY.md):

- Example counts are self-reported, so a weight never exceeds ``cap_factor`` times the median
  count of the cohort: one client claiming 10,000 examples among claims of ~100 weighs like 200.
- Each delta is clipped (not refused) to an L2 bound that follows the honest norms: adaptive
  clipping (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
  Clipping", NeurIPS 2021), the bound moving geometrically toward a target quantile of the norms,
  ``C <- C * exp(-eta * (fraction_at_or_below_C - quantile))``.
"""

from __future__ import annotations

import math

import numpy as np

Arrays = dict[str, np.ndarray]


def global_norm(delta: Arrays) -> float:
    """L2 norm of a whole delta (every tensor flattened together), in float64.

    One float64 copy per tensor dotted with itself: converting each operand apart cost 15x more
    (18 ms against 1.3 ms for the 690k-parameter model), paid per update at every close.
    """
    flats = (a.ravel().astype(np.float64) for a in delta.values())
    return math.sqrt(sum(float(np.dot(flat, flat)) for flat in flats))


def clip_to_norm(delta: Arrays, bound: float) -> tuple[Arrays, float]:
    """Scale delta down to L2 norm ``bound`` if it is longer; return (delta, its original norm)."""
    assert bound > 0, f"clip bound must be positive, got {bound}"
    norm = global_norm(delta)
    if norm <= bound:
        return delta, norm
    scale = bound / norm
    return {name: (array * scale).astype(array.dtype) for name, array in delta.items()}, norm


def capped_weights(counts: list[float], cap_factor: float) -> list[float]:
    """Example weights with each count capped at ``cap_factor`` times the cohort's median count."""
    assert cap_factor >= 1, "a cap below the median would cut honest clients"
    if not counts:
        return []
    cap = cap_factor * float(np.median(counts))
    return [min(float(count), cap) for count in counts]


class AdaptiveClip:
    """The clip bound of one round and its geometric update toward a quantile of update norms.

    In plain mode the server sees each norm; in secure mode each client would report the bit
    ``norm <= bound`` (with noise) instead, which is the same update with a private estimate.
    """

    def __init__(self, bound: float, quantile: float = 0.5, learning_rate: float = 0.2,
                 floor: float = 1e-6, ceiling: float = 1e6):
        assert bound > 0 and 0 < quantile < 1 and learning_rate > 0
        self.bound, self.quantile, self.learning_rate = bound, quantile, learning_rate
        self.floor, self.ceiling = floor, ceiling

    def update(self, norms: list[float]) -> float:
        """Move the bound after a round whose updates had these (unclipped) norms; return it."""
        if norms:
            below = sum(norm <= self.bound for norm in norms) / len(norms)
            self.bound *= math.exp(-self.learning_rate * (below - self.quantile))
            self.bound = min(self.ceiling, max(self.floor, self.bound))
        return self.bound
