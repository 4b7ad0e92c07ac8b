"""Turn one URL corpus into simulated users: a held-out test split, non-IID clients, and each
client's history cut into earlier URLs (it trains on) and later ones (its personal test).

Non-IID by host. Real browsing histories are dominated by a few sites per person, so the split
is the label-skew Dirichlet partition (Yurochkin et al., "Bayesian Nonparametric Federated
Learning of Neural Networks", ICML 2019; Hsu et al. 2019) with the URL's host as the label: for
every host h draw proportions q_h ~ Dir(alpha * 1_N) over the N clients and send each of h's
URLs to client k with probability q_h[k]. Small alpha (0.1) puts nearly all of a host's URLs on
one client; alpha -> infinity approaches a uniform IID split.

Skew is the mean total-variation distance between a client's host distribution and the global
one: TV = 1/2 sum_h |p_k(h) - p(h)|, the share of the client's history that would have to change
host to look like everyone's. It is not 0 for an IID split (n URLs cannot cover every host), so
``iid_reference`` gives the same number for a uniformly random split of the same client sizes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

_HOST_END = re.compile(r"[/?#]")
SPLIT_ATTEMPTS = 100


def host_of(url: str) -> str:
    """The host of a canonical URL (formats/urls.py form: no scheme)."""
    return _HOST_END.split(url, maxsplit=1)[0]


@dataclass
class Client:
    """One simulated user: URLs it trains on (earlier) and URLs it visits afterwards (later)."""

    history: list[str]
    later: list[str]


@dataclass
class Split:
    """The whole partition of a corpus, with its measured skew."""

    test: list[str]
    clients: list[Client]
    skew: float       # mean TV distance of client host distributions to the global one
    iid_skew: float   # the same for a uniform random split of the same sizes (the floor)

    @property
    def train(self) -> list[str]:
        """Union of every client's history: what centralized training and the trie get."""
        return [url for client in self.clients for url in client.history]


def dirichlet_split(urls: list[str], n_clients: int, alpha: float, rng: np.random.Generator,
                    min_urls: int = 2) -> list[list[str]]:
    """Partition urls into n_clients lists, host by host, with Dir(alpha) proportions.

    Redraws until every client holds at least min_urls (as FedMA's partitioner does).
    :raise ValueError: if no draw in SPLIT_ATTEMPTS gives every client min_urls.
    """
    assert n_clients >= 1 and alpha > 0, "need at least one client and a positive alpha"
    by_host: dict[str, list[str]] = {}
    for url in urls:
        by_host.setdefault(host_of(url), []).append(url)
    for _ in range(SPLIT_ATTEMPTS):
        parts: list[list[str]] = [[] for _ in range(n_clients)]
        for host_urls in by_host.values():
            owners = rng.choice(n_clients, size=len(host_urls), p=rng.dirichlet([alpha] * n_clients))
            for url, owner in zip(host_urls, owners, strict=True):
                parts[owner].append(url)
        if min(len(part) for part in parts) >= min_urls:
            return [[part[i] for i in rng.permutation(len(part))] for part in parts]
    raise ValueError(f"{len(urls)} URLs on {len(by_host)} hosts: no Dirichlet(alpha={alpha}) split gave "
                     f"each of {n_clients} clients {min_urls} URLs; use fewer clients or a larger alpha")


def host_skew(parts: list[list[str]]) -> float:
    """Mean over clients of TV(client host distribution, global host distribution)."""
    overall = Counter(host_of(url) for part in parts for url in part)
    total = sum(overall.values())
    distances = []
    for part in parts:
        own = Counter(host_of(url) for url in part)
        # hosts the client never visits contribute p(h) each
        missing = sum(count for host, count in overall.items() if host not in own) / total
        present = sum(abs(count / len(part) - overall[host] / total) for host, count in own.items())
        distances.append(0.5 * (present + missing))
    return float(np.mean(distances))


def iid_reference(parts: list[list[str]], rng: np.random.Generator) -> list[list[str]]:
    """A uniformly random partition of the same URLs into lists of the same sizes."""
    pool = [url for part in parts for url in part]
    order = rng.permutation(len(pool))
    bounds = np.cumsum([0] + [len(part) for part in parts])
    return [[pool[i] for i in order[lo:hi]] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def split_corpus(urls: list[str], n_clients: int, alpha: float, test_fraction: float,
                 later_fraction: float, seed: int) -> Split:
    """Hold out a uniform test split, Dirichlet-split the rest, cut each history earlier/later.

    "Later" is the last later_fraction of a client's (shuffled) URLs, so a client's later URLs
    follow its own host mix: the personalization test of a user who keeps browsing.
    """
    assert 0 < test_fraction < 1 and 0 <= later_fraction < 1, "fractions must lie in [0, 1)"
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(urls))
    n_test = max(1, round(test_fraction * len(urls)))
    test = [urls[i] for i in order[:n_test]]
    parts = dirichlet_split([urls[i] for i in order[n_test:]], n_clients, alpha, rng)
    clients = []
    for part in parts:
        n_later = int(later_fraction * len(part))
        clients.append(Client(part[:len(part) - n_later], part[len(part) - n_later:]))
    return Split(test, clients, host_skew(parts), host_skew(iid_reference(parts, rng)))
