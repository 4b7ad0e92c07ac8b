"""The SecAgg+ neighbour graph (Bell et al., CCS 2020), derived from a public round seed.

Every party computes the same graph from (round seed, round id, cohort size, degree):

1. key = HKDF(round_seed, label "graph", round id); a stream of little-endian uint32 words from
   the mask PRG (AES-256-CTR) under that key;
2. a Fisher-Yates shuffle of 0..n-1 (for i = n-1 down to 1: draw words until one is below
   2^32 - (2^32 mod (i+1)), j = word mod (i+1), swap positions i and j) — unbiased;
3. a Harary graph on that ring: each client is joined to the k/2 clients on either side of it
   (k even). With k >= n - 1 the graph is complete (classic SecAgg, Bonawitz et al. 2017).

The twin is ``neighbourGraph`` in web_client/secagg.js; tests compare both on the same seeds.
"""

from __future__ import annotations

import math

import numpy as np

from .primitives import hkdf, prg_words


def default_degree(cohort_size: int) -> int:
    """The degree k = 3*ceil(log2 n), rounded up to even, at most n - 1 (complete graph for small cohorts)."""
    if cohort_size < 2:
        raise ValueError("a cohort needs two clients at least")
    k = 3 * math.ceil(math.log2(cohort_size))
    k += k % 2
    return min(cohort_size - 1, k)


def default_threshold(degree: int) -> int:
    """Shamir threshold among a client's k neighbours: ceil(2k/3), above k/2 and at least 2.

    Above k/2, so the server never holds t shares of both a survivor's self-mask seed and its
    mask key (each honest neighbour reveals only one of the two); 2/3 lets a third of a client's
    neighbours drop out.
    """
    return max(2, degree // 2 + 1, -(-2 * degree // 3))


def permutation(round_seed: bytes, round_id: int, n: int) -> list[int]:
    """The seeded Fisher-Yates shuffle of range(n) described above."""
    key = hkdf(round_seed, "graph", round_id)
    words: np.ndarray = prg_words(key, 2 * n + 16, 4)
    used = 0
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        span = i + 1
        limit = (1 << 32) - ((1 << 32) % span)
        while True:
            if used == len(words):  # the CTR stream extends: a longer one has this as prefix
                words = prg_words(key, 2 * len(words), 4)
            word = int(words[used])
            used += 1
            if word < limit:
                break
        j = word % span
        order[i], order[j] = order[j], order[i]
    return order


def neighbours(round_seed: bytes, round_id: int, n: int, degree: int) -> list[list[int]]:
    """For each client 0..n-1, its sorted neighbours in the Harary graph over the permutation."""
    if degree >= n - 1:
        return [[v for v in range(n) if v != u] for u in range(n)]
    if degree < 2 or degree % 2:
        raise ValueError("a sparse graph's degree must be even and at least 2")
    ring = permutation(round_seed, round_id, n)
    position = {client: p for p, client in enumerate(ring)}
    half = degree // 2
    return [sorted(ring[(position[u] + d) % n] for d in range(-half, half + 1) if d)
            for u in range(n)]


def neighbours_of(round_seed: bytes, round_id: int, n: int, degree: int, client: int) -> list[int]:
    """One client's sorted neighbours: neighbours(...)[client] without building the whole graph."""
    if degree >= n - 1:
        return [v for v in range(n) if v != client]
    if degree < 2 or degree % 2:
        raise ValueError("a sparse graph's degree must be even and at least 2")
    ring = permutation(round_seed, round_id, n)
    at = ring.index(client)
    return sorted(ring[(at + d) % n] for d in range(-(degree // 2), degree // 2 + 1) if d)

