"""privacy/ddg.py: the sampler's PMF and variance against the exact discrete Gaussian, the old
rounded Gaussian caught by the same test, and exact Bernoulli draws on a tie.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from privacy import ddg, quantize
from privacy.secagg import make_config, noise_share
from tests.privacy.ddg_support import chi_square_pvalue, variance

COUNT = 200_000


@pytest.mark.parametrize("sigma", [0.6, 1.5, 7.3, 590.0])
def test_samples_follow_the_discrete_gaussian(sigma):
    samples = ddg.discrete_gaussian(sigma, COUNT)
    assert chi_square_pvalue(samples, sigma) > 1e-4
    exact = variance(sigma)
    # the sample variance's standard error is about exact * sqrt(2 / COUNT) = 0.3 %
    assert samples.var() == pytest.approx(exact, rel=0.02)
    assert abs(samples.mean()) < 6 * np.sqrt(exact / COUNT)


@pytest.mark.parametrize("sigma", [0.8, 1.5])
def test_a_clients_noise_share_is_discrete_gaussian_and_the_old_rounded_one_is_not(sigma):
    """At sigma about 1 a rounded continuous Gaussian puts visibly less mass on 0 (and has variance
    sigma^2 + 1/12): the test that the client's share passes fails on the code it replaced."""
    config = dataclasses.replace(make_config(round_id=1, cohort_size=5, num_params=COUNT, bits=32),
                                 noise_std=sigma)
    share = noise_share(config)
    assert share is not None and chi_square_pvalue(share, sigma) > 1e-4
    rounded = np.rint(np.random.default_rng(3).normal(0.0, sigma, COUNT)).astype(np.int64)  # the old share
    assert chi_square_pvalue(rounded, sigma) < 1e-10
    # and the share is what the client adds: encoding a zero delta leaves exactly the noise
    encoded = quantize.encode(np.zeros(COUNT), 32, config.clip, config.scale, np.random.default_rng(0), share)
    assert np.array_equal(np.where(encoded >= 2**31, encoded.astype(np.int64) - 2**32, encoded), share)


def test_no_noise_share_without_dp():
    assert noise_share(make_config(round_id=1, cohort_size=5, num_params=10)) is None
    with pytest.raises(ValueError, match="sigma"):
        ddg.discrete_gaussian(0.0, 10)


class Scripted(ddg.CryptoRandom):
    """A source whose 53-bit draws are given."""

    def __init__(self, draws):
        super().__init__(bytes(32))
        self.draws = list(draws)

    def draw53(self, count):
        taken, self.draws = self.draws[:count], self.draws[count:]
        return np.array(taken, dtype=np.float64)


def test_bernoulli_decides_a_tie_on_the_next_digits():
    p = 0.3
    digit = np.floor(p * 2.0**53)  # p = (digit + rest) / 2^53
    rest = p * 2.0**53 - digit
    next_digit = np.floor(rest * 2.0**53)
    assert list(ddg.bernoulli(np.array([p, p]), Scripted([digit - 1, digit + 1]))) == [True, False]
    assert list(ddg.bernoulli(np.array([p]), Scripted([digit, next_digit - 1]))) == [True]
    assert list(ddg.bernoulli(np.array([p]), Scripted([digit, next_digit + 1]))) == [False]
    assert list(ddg.bernoulli(np.array([1.0, 0.0]), Scripted([2.0**53 - 1, 0]))) == [True, False]


def test_crypto_random_is_uniform_and_replays_only_under_its_key():
    draws = ddg.CryptoRandom().below(7, 70_000)
    counts = np.bincount(draws, minlength=7)
    assert draws.min() == 0 and draws.max() == 6 and counts.min() > 9_500
    assert np.array_equal(ddg.CryptoRandom(bytes(32)).words(4), ddg.CryptoRandom(bytes(32)).words(4))
    assert not np.array_equal(ddg.CryptoRandom().words(4), ddg.CryptoRandom().words(4))
