"""The discrete Gaussian N_Z(0, sigma^2), sampled as Canonne, Kamath and Steinke (NeurIPS 2020) do.

Algorithm 3 of their paper: with t = floor(sigma) + 1, propose Y from the discrete Laplace
P(y) ~ exp(-|y|/t) (their Algorithm 2: U uniform in {0..t-1} kept with probability exp(-U/t),
V geometric from Bernoulli(exp(-1)) trials, X = U + t*V, a fair sign, (-, 0) refused), and keep
Y with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)). Vectorised over numpy arrays (a
million coordinates take under a second); ``web_client/secagg.js`` (``discreteGaussian``) is the
same algorithm, one coordinate at a time.

**Why hand-written.** OpenDP samples the discrete Gaussian exactly (Rust, rational arithmetic),
but one call per coordinate through its Python binding is far too slow for a million coordinates,
and the browser needs the same algorithm in JS anyway; the two twins here are tested against the
exact PMF with the same chi-square test (tests/privacy/test_ddg.py, tests/web/test_secagg.py).

**Floating point.** exp() is computed in float64, as are sigma^2/t and the exponent; everything
else is exact. Each Bernoulli(p) is exact *for the float p* (:func:`bernoulli`: compare 53-bit
uniform integers with the binary expansion of p, drawing more digits on a tie), so the only error
is p = fl(exp(-fl(gamma))) against exp(-gamma): a relative error below 2^-52 (exp) plus
2^-53 (5 gamma + 2 sqrt(2 gamma)) (the exponent's roundings), at most 1.2e-13 for gamma <= 200,
which holds for every |y| <= 20 sigma. The sampled PMF is therefore within a factor
exp(+-2.5e-13) of the exact one on |y| <= 20 sigma, and both put less than 1e-86 beyond.
docs/PRIVACY.md ("Floating point") turns this into what it adds to epsilon: at most 4.5e-6 a
round at the defaults, which the ledger does not add.

**Randomness.** :class:`CryptoRandom`: an AES-256-CTR keystream under a key from ``os.urandom``
(the construction of the mask PRG, ``privacy.primitives``). Noise must be unpredictable to the
server, which sees the noisy sum: numpy's PCG64 is a statistical generator whose state can be
recovered from enough output, and ``secrets`` gives bytes one call at a time, too slow for tens of
megabytes per update. AES-CTR under a fresh key is a CSPRNG at memory speed.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

TWO53 = float(2**53)
EXP_MINUS_1 = math.exp(-1.0)


class CryptoRandom:
    """Uniform integers from AES-256-CTR under a 32-byte key (fresh from os.urandom unless given)."""

    def __init__(self, key: bytes | None = None):
        """:param key: a fixed key only in tests, to replay a stream."""
        key = os.urandom(32) if key is None else key
        if len(key) != 32:
            raise ValueError("an AES-256 key is 32 bytes")
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def words(self, count: int) -> np.ndarray:
        """The next count uniform uint64 words."""
        return np.frombuffer(self._stream.update(bytes(8 * count)), dtype="<u8")

    def draw53(self, count: int) -> np.ndarray:
        """The next count uniform integers in [0, 2^53), as exact float64."""
        return (self.words(count) >> np.uint64(11)).astype(np.float64)

    def below(self, bound: int, count: int) -> np.ndarray:
        """Uniform integers in [0, bound) (count of them, int64), by rejection: no modulo bias."""
        if not 1 <= bound < 2**62:
            raise ValueError("bound out of range")
        last = np.uint64(2**64 - 2**64 % bound - 1)  # the largest word kept
        out = np.empty(count, dtype=np.int64)
        todo = np.arange(count)
        while todo.size:
            w = self.words(todo.size)
            ok = w <= last
            out[todo[ok]] = (w[ok] % np.uint64(bound)).astype(np.int64)
            todo = todo[~ok]
        return out

    def coins(self, count: int) -> np.ndarray:
        """The next count fair booleans."""
        return (self.words(count) & np.uint64(1)).astype(bool)


def _bernoulli_tie(rest: float, source: CryptoRandom) -> bool:
    """Bernoulli(rest) for the digits after a tie, 53 bits at a time (rest in [0, 1), exact)."""
    while rest > 0:
        scaled = rest * TWO53
        digit = math.floor(scaled)
        k = float(source.draw53(1)[0])
        if k != digit:
            return k < digit
        rest = scaled - digit
    return False


def bernoulli(p: np.ndarray, source: CryptoRandom) -> np.ndarray:
    """One Bernoulli(p_i) per float p_i in [0, 1], exactly: U < p digit by digit (53 bits each).

    The first digit decides unless it equals p's (probability 2^-53); then the next ones do.
    """
    scaled = np.asarray(p, dtype=np.float64) * TWO53
    digit = np.floor(scaled)
    k = source.draw53(scaled.size)
    out = k < digit
    for i in np.flatnonzero(k == digit):
        out[i] = _bernoulli_tie(float(scaled[i] - digit[i]), source)
    return out


def discrete_laplace(t: int, count: int, source: CryptoRandom) -> np.ndarray:
    """Draws (count of them) with P(y) proportional to exp(-|y|/t) (CKS Algorithm 2 with s = 1)."""
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        u = source.below(t, todo.size)
        keep = bernoulli(np.exp(-u / t), source)
        v = np.zeros(todo.size, dtype=np.int64)  # successes of Bernoulli(exp(-1)) before a failure
        going = np.flatnonzero(keep)
        while going.size:
            more = bernoulli(np.full(going.size, EXP_MINUS_1), source)
            v[going[more]] += 1
            going = going[more]
        x = u + t * v
        negative = source.coins(todo.size)
        keep &= ~(negative & (x == 0))  # -0 and +0 are one value: refuse one of them
        out[todo[keep]] = np.where(negative, -x, x)[keep]
        todo = todo[~keep]
    return out


def discrete_gaussian(sigma: float, count: int, source: CryptoRandom | None = None) -> np.ndarray:
    """Independent draws (count of them) from N_Z(0, sigma^2), int64 (CKS Algorithm 3)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
    source = source if source is not None else CryptoRandom()
    sigma2 = sigma * sigma
    t = math.floor(sigma) + 1
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        y = discrete_laplace(t, todo.size, source)
        gap = np.abs(y) - sigma2 / t
        gamma = gap * gap / (2 * sigma2)
        keep = bernoulli(np.exp(-gamma), source)
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out
