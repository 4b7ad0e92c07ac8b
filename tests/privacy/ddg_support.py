"""The exact PMF of the discrete Gaussian and the chi-square test that tests/privacy and tests/web share."""

from __future__ import annotations

import numpy as np
from scipy import stats


def pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """P(y) of N_Z(0, sigma^2) at each y of support (normalised over +-(60 sigma + 10): all of it)."""
    everything = np.arange(-int(60 * sigma) - 10, int(60 * sigma) + 11)
    total = np.exp(-(everything.astype(np.float64) ** 2) / (2 * sigma**2)).sum()
    return np.exp(-(np.asarray(support, dtype=np.float64) ** 2) / (2 * sigma**2)) / total


def variance(sigma: float) -> float:
    """The variance of N_Z(0, sigma^2) (below sigma^2 for small sigma)."""
    y = np.arange(-int(60 * sigma) - 10, int(60 * sigma) + 11)
    return float((pmf(sigma, y) * y.astype(np.float64) ** 2).sum())


def chi_square_pvalue(samples: np.ndarray, sigma: float) -> float:
    """Chi-square p-value of integer samples against N_Z(0, sigma^2): one bin per value expected at
    least 20 times, the two outermost bins also holding their tails.
    """
    samples = np.asarray(samples, dtype=np.int64)
    y = np.arange(-int(20 * sigma) - 5, int(20 * sigma) + 6)
    inner = y[pmf(sigma, y) * samples.size >= 20]
    low, high = inner[0], inner[-1]
    observed = np.bincount(np.clip(samples, low, high) - low, minlength=inner.size)
    expected = pmf(sigma, inner)
    expected[[0, -1]] += (1.0 - expected.sum()) / 2  # the tails, symmetric
    return float(stats.chisquare(observed, expected * samples.size).pvalue)
