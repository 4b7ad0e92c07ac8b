"""From a float delta to integers mod 2^b and back, such that a cohort's sum never wraps.

Each client clips its whole delta (all parameters, flattened in manifest order) to L2 norm <= C,
multiplies by a public scale s, and rounds each coordinate stochastically to an integer q
(floor(x*s + u), u uniform in [0, 1): unbiased, |q - x*s| < 1). It then adds modulo 2^b.
Clients carry equal weight: example counts are not applied (a count is self-reported, [T2]).

**No wrap-around.** After clipping |x_i| <= C, so |q_i| <= C*s + 1, and the sum over n clients
is at most n*(C*s + 1) in magnitude. With optional integer noise whose sum has standard
deviation sigma = w*C*s (DP; w from privacy.dp), we keep a margin of ``TAIL`` = 10 sigma (a
Gaussian exceeds it with probability < 1e-23 per coordinate). :func:`scale_for` picks the
largest s with

    n*(C*s + 1) + TAIL * w*C*s <= 2^(b-1) - 1,

so the sum, read back as a signed b-bit integer, is exact.

**Quantization error** of the decoded mean of m survivors, per coordinate, against the plain
mean of the clipped deltas: below 1/s always (each client is off by < 1/s before averaging),
and with standard deviation at most 1/(2*s*sqrt(m)) (independent, unbiased, each of variance
<= 1/4 in integer units).
"""

from __future__ import annotations

import numpy as np

TAIL = 10.0  # noise margin in standard deviations


def scale_for(bits: int, clip: float, cohort_size: int, noise_width: float = 0.0) -> float:
    """The largest scale s at which the sum of cohort_size clipped inputs fits in b bits, with
    room for noise whose sum has standard deviation noise_width * clip * s.
    """
    if not 2 <= bits <= 32:
        raise ValueError("bits must be in 2..32")
    if clip <= 0 or cohort_size < 1 or noise_width < 0:
        raise ValueError("need clip > 0, cohort_size >= 1, noise_width >= 0")
    room = (1 << (bits - 1)) - 1 - cohort_size
    scale = room / (clip * (cohort_size + TAIL * noise_width))
    if scale <= 0:
        raise ValueError(f"{bits} bits cannot hold the sum of {cohort_size} inputs")
    return scale


def width_for(bits: int) -> int:
    """Bytes per word on the wire: 2 up to 16 bits, else 4."""
    return 2 if bits <= 16 else 4


def clip(delta: np.ndarray, bound: float) -> np.ndarray:
    """The delta (float64) scaled down to L2 norm <= bound; unchanged when already inside."""
    delta = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(delta))
    return delta * (bound / norm) if norm > bound else delta


def stochastic_round(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """floor(v + u), u ~ U[0, 1): unbiased integer rounding, int64."""
    return np.floor(values + rng.random(values.shape)).astype(np.int64)


def encode(delta: np.ndarray, bits: int, bound: float, scale: float,
           rng: np.random.Generator, noise: np.ndarray | None = None) -> np.ndarray:
    """A client's input in Z_{2^b} (uint64): clip, scale, round stochastically, add noise, reduce."""
    q = stochastic_round(clip(delta, bound).ravel() * scale, rng)
    if noise is not None:
        q = q + noise.astype(np.int64)
    return (q & ((1 << bits) - 1)).astype(np.uint64)


def decode_sum(total: np.ndarray, bits: int, scale: float, count: int) -> np.ndarray:
    """The float64 mean of count inputs from their sum mod 2^b (read as signed b-bit integers)."""
    if count < 1:
        raise ValueError("nothing to average")
    total = np.asarray(total, dtype=np.int64) & ((1 << bits) - 1)
    signed = np.where(total >= 1 << (bits - 1), total - (1 << bits), total)
    return signed.astype(np.float64) / scale / count


def error_bound(scale: float) -> float:
    """Worst-case per-coordinate error of a decoded mean against the plain clipped mean."""
    return 1.0 / scale
