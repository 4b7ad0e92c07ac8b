"""From a float delta to integers mod 2^b and back, such that a cohort's sum never wraps.

Each client clips its whole delta (all parameters, flattened in manifest order) to L2 norm <= C,
multiplies by a public scale s, and rounds each coordinate stochastically to an integer q
(floor(x*s + u), u uniform in [0, 1): |q - x*s| < 1). It then adds modulo 2^b.
Clients carry equal weight: example counts are not applied (a count is self-reported, [T2]).

**Bounded sensitivity: conditional stochastic rounding** (Kairouz, Liu, Steinke, ICML 2021, §4).
Rounding can lengthen a vector: ||q|| can reach C*s + sqrt(d), so the integer-domain
sensitivity the accountant needs would not be C*s. The rounding is therefore repeated until
||q||_2 <= :func:`norm_bound` = sqrt((C*s)^2 + d/4 + sqrt(2 ln(1/beta)) * (C*s + sqrt(d)/2))
with beta = exp(-1/2), so sqrt(2 ln(1/beta)) = 1 and the bound needs only +, *, / and sqrt:
web_client/secagg.js (``normBound``) computes the same double. (The worst-case C*s + sqrt(d),
which TFF also takes the minimum with, is never smaller at this beta for d >= 1.) One try fails
with probability at most beta (their Lemma); after :data:`ROUNDING_TRIES` failures (probability
< 1e-13) the vector is rounded toward zero, which never lengthens it. The check compares the
float64 sum of squares with bound^2 * (1 - 2^-30): the sum's relative error is below d * 2^-53,
under that margin for d < 2^23 (:func:`norm_bound` refuses more), so every input sent has
||q||_2 <= norm_bound exactly. The conditioning biases the rounding very slightly (it favours
shorter vectors); the sensitivity bound is what DP needs.

**No wrap-around.** After clipping |x_i| <= C, so |q_i| <= C*s + 1, and the sum over n clients
is at most n*(C*s + 1) in magnitude. With integer noise whose sum has standard deviation
sigma = w * norm_bound (DP; w from privacy.secagg.make_config), we keep a margin of ``TAIL`` =
10 sigma (a Gaussian exceeds it with probability < 1e-23 per coordinate). :func:`scale_for` picks
the largest s with

    n*(C*s + 1) + TAIL * w * norm_bound(C, s, d) <= 2^(b-1) - 1,

so the sum, read back as a signed b-bit integer, is exact.

**Quantization error** of the decoded mean of m survivors, per coordinate, against the plain
mean of the clipped deltas: below 1/s always (each client is off by < 1/s before averaging),
and with standard deviation at most 1/(2*s*sqrt(m)) (each of variance <= 1/4 in integer units).
"""

from __future__ import annotations

import math

import numpy as np

TAIL = 10.0  # noise margin in standard deviations
ROUNDING_TRIES = 64  # conditional rounding: tries before rounding toward zero
NORM_SLACK = 1 - 2.0**-30  # bound^2 times this absorbs the float64 sum of squares' error
MAX_DIMS = 2**23  # ... for vectors up to this long


def scale_for(bits: int, clip: float, cohort_size: int, noise_width: float = 0.0, dims: int = 0) -> float:
    """The largest scale s at which the sum of cohort_size clipped inputs of dims coordinates fits in
    b bits, with room for noise whose sum has standard deviation noise_width * norm_bound(clip, s, dims).
    """
    if not 2 <= bits <= 32:
        raise ValueError("bits must be in 2..32")
    if clip <= 0 or cohort_size < 1 or noise_width < 0 or dims < 0:
        raise ValueError("need clip > 0, cohort_size >= 1, noise_width >= 0, dims >= 0")
    top = (1 << (bits - 1)) - 1
    # with norm_bound = clip * s (it is never less) the condition is linear in s
    scale = (top - cohort_size) / (clip * (cohort_size + TAIL * noise_width))
    if scale <= 0:
        raise ValueError(f"{bits} bits cannot hold the sum of {cohort_size} inputs")
    if noise_width == 0 or dims == 0:
        return scale
    low, high = 0.0, scale  # the largest s that fits lies in between: bisect (the condition is monotone)
    for _ in range(100):
        middle = (low + high) / 2
        fits = cohort_size * (clip * middle + 1) + TAIL * noise_width * norm_bound(clip, middle, dims) <= top
        low, high = (middle, high) if fits else (low, middle)
    if low == 0:
        raise ValueError(f"{bits} bits cannot hold the sum of {cohort_size} noisy inputs of {dims} values")
    return low


def norm_bound(clip: float, scale: float, dims: int) -> float:
    """The L2 norm that a clipped, scaled, conditionally rounded input never exceeds (integer units)."""
    if not 0 <= dims <= MAX_DIMS:
        raise ValueError(f"at most {MAX_DIMS} values per input")
    cs = clip * scale
    return math.sqrt(cs * cs + dims / 4 + cs + math.sqrt(dims) / 2)


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


def conditional_round(values: np.ndarray, bound: float, rng: np.random.Generator,
                      tries: int = ROUNDING_TRIES) -> np.ndarray:
    """Stochastic rounding, repeated until the rounded vector's L2 norm is within bound (int64);
    toward zero after tries failures.

    :raise ValueError: when even rounding toward zero exceeds bound (values longer than bound).
    """
    limit = bound * bound * NORM_SLACK
    for _ in range(tries):
        q = stochastic_round(values, rng)
        if float(np.dot(q.astype(np.float64), q.astype(np.float64))) <= limit:
            return q
    q = np.trunc(values).astype(np.int64)
    if float(np.dot(q.astype(np.float64), q.astype(np.float64))) > limit:
        raise ValueError(f"values of L2 norm {np.linalg.norm(values):.6g} cannot round within {bound:.6g}")
    return q


def encode(delta: np.ndarray, bits: int, bound: float, scale: float,
           rng: np.random.Generator, noise: np.ndarray | None = None) -> np.ndarray:
    """A client's input in Z_{2^b} (uint64): clip to bound, scale, round conditionally (L2 norm at most
    norm_bound), add noise, reduce.
    """
    scaled = clip(delta, bound).ravel() * scale
    q = conditional_round(scaled, norm_bound(bound, scale, scaled.size), rng)
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
