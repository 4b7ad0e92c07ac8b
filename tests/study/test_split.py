"""The non-IID split: a partition, skewed by host, and more skewed than a random split of the same sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from study.split import dirichlet_split, host_of, host_skew, iid_reference, split_corpus


def synthetic_urls(hosts: int = 20, per_host: int = 30) -> list[str]:
    """hosts x per_host URLs: the host structure of a browsing history, without any data files."""
    return [f"site{h}.example/page/{i}" for h in range(hosts) for i in range(per_host)]


def test_host_of_takes_the_host_of_canonical_urls():
    """Hosts end at the first '/', '?' or '#'."""
    urls = ("a.com", "a.com/x/y", "b.org?q=1", "c.net#f")
    assert [host_of(u) for u in urls] == ["a.com", "a.com", "b.org", "c.net"]


def test_dirichlet_split_is_a_partition_with_a_minimum_size():
    """Every URL lands on exactly one client and each client gets at least min_urls."""
    # Prepare
    urls = synthetic_urls()
    # Execute
    parts = dirichlet_split(urls, 10, 0.1, np.random.default_rng(0), min_urls=5)
    # Assert
    assert sorted(u for part in parts for u in part) == sorted(urls)
    assert min(len(part) for part in parts) >= 5


def test_small_alpha_skews_client_host_distributions():
    """alpha 0.1: clients' host mixes are far from the global one, far more than an IID split's."""
    # Prepare
    urls, rng = synthetic_urls(), np.random.default_rng(1)
    # Execute
    skewed = dirichlet_split(urls, 10, 0.1, rng)
    iid = iid_reference(skewed, rng)
    # Assert: TV distance to the global mix, mean over clients
    assert host_skew(skewed) > 0.6
    assert host_skew(iid) < 0.35
    top_share = [Counter(map(host_of, part)).most_common(1)[0][1] / len(part) for part in skewed]
    assert np.median(top_share) > 0.3, "a typical client should live on one host"


def test_large_alpha_approaches_iid():
    """alpha 1000 gives the skew of a random split, within sampling noise."""
    urls, rng = synthetic_urls(), np.random.default_rng(2)
    parts = dirichlet_split(urls, 10, 1000.0, rng)
    assert host_skew(parts) == pytest.approx(host_skew(iid_reference(parts, rng)), abs=0.08)


def test_impossible_split_is_an_error():
    """More clients than a single-host corpus can feed fails with a message, not a hang."""
    with pytest.raises(ValueError, match="no Dirichlet"):
        dirichlet_split(["a.com/1", "a.com/2", "a.com/3"], 3, 0.01, np.random.default_rng(0), min_urls=2)


def test_split_corpus_holds_out_test_and_later_urls():
    """Test, histories and later URLs are disjoint and together the whole corpus."""
    urls = synthetic_urls()
    split = split_corpus(urls, 6, 0.3, test_fraction=0.1, later_fraction=0.25, seed=0)
    later = [u for client in split.clients for u in client.later]
    assert len(split.test) == 60
    assert sorted(split.test + split.train + later) == sorted(urls)
    assert all(len(c.later) == int(0.25 * (len(c.history) + len(c.later))) for c in split.clients)


def test_real_histories_are_skewed(kasztp_urls):
    """On real DMOZ URLs (many one-URL hosts) the skew still clearly exceeds the IID floor."""
    split = split_corpus(kasztp_urls[::4], 50, 0.1, test_fraction=0.1, later_fraction=0.2, seed=0)
    assert split.skew > split.iid_skew + 0.05, (split.skew, split.iid_skew)
