"""The primitives, Shamir, quantization, graph and message layout of privacy/ on their own."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from secagg_support import RFC7748

from privacy import graph, quantize, shamir
from privacy.messages import MessageError, RoundConfig, Type, open_message
from privacy.primitives import KeyPair, agree, decrypt, encrypt, hkdf, info_for, prg_bytes, prg_words

WEB = Path(__file__).resolve().parents[2] / "web_client"



def test_x25519_keys_follow_rfc7748():
    for who in ("alice", "bob"):
        assert KeyPair.from_private(bytes.fromhex(RFC7748[f"{who}_sk"])).public.hex() == RFC7748[f"{who}_pk"]
    shared = bytes.fromhex(RFC7748["shared"])
    a = agree(bytes.fromhex(RFC7748["alice_sk"]), bytes.fromhex(RFC7748["bob_pk"]), "mask", 5)
    b = agree(bytes.fromhex(RFC7748["bob_sk"]), bytes.fromhex(RFC7748["alice_pk"]), "mask", 5)
    assert a == b == hkdf(shared, "mask", 5)


def test_hkdf_separates_labels_and_rounds():
    secret = bytes(range(32))
    seeds = {hkdf(secret, label, r) for label in ("mask", "enc", "graph") for r in (0, 1, 2**40)}
    assert len(seeds) == 9
    assert info_for("mask", 12) == b"fedurl-secagg-v1:mask:12"
    with pytest.raises(ValueError):
        info_for("a:b", 1)


def test_low_order_peer_key_is_refused():
    with pytest.raises(ValueError):
        agree(bytes(range(32)), bytes(32), "mask", 1)  # the all-zero point: shared secret 0


def test_prg_is_aes256_ctr_from_counter_zero():
    # FIPS-197-style known answer: AES-256 of the zero block under the zero key.
    assert prg_bytes(bytes(32), 16).hex() == "dc95c078a2408989ad48a21492842087"
    seed = bytes(range(32))
    long = prg_bytes(seed, 1000)
    assert prg_bytes(seed, 10) == long[:10]  # a longer stream extends a shorter one
    words = prg_words(seed, 3, 4)
    assert words.dtype == np.uint32 and int(words[0]) == int.from_bytes(long[:4], "little")
    assert int(prg_words(seed, 2, 2)[1]) == int.from_bytes(long[2:4], "little")


def test_aes_gcm_round_trip_and_tamper():
    key, aad = bytes(range(32)), b"context"
    blob = encrypt(key, b"secret share", aad)
    assert decrypt(key, blob, aad) == b"secret share"
    with pytest.raises(InvalidTag):
        decrypt(key, blob, b"other context")
    flipped = bytearray(blob)
    flipped[15] ^= 1
    with pytest.raises(InvalidTag):
        decrypt(key, bytes(flipped), aad)


def test_shamir_any_threshold_subset_recovers_and_fewer_do_not():
    secret = bytes(range(1, 33))
    shares = shamir.split(secret, 9, 6)
    assert all(len(s) == 33 for s in shares) and len({s[-1] for s in shares}) == 9
    rng = np.random.default_rng(0)
    for _ in range(20):
        subset = [shares[i] for i in rng.choice(9, size=rng.integers(6, 10), replace=False)]
        assert shamir.combine(subset) == secret
    assert shamir.combine(shares[:5]) != secret
    with pytest.raises(ValueError):
        shamir.combine([shares[0], shares[0]])
    with pytest.raises(ValueError):
        shamir.split(secret, 256, 3)


def _js_table(source: str, name: str) -> list[int]:
    body = re.search(rf"const {name} = new Uint8Array\(\[(.*?)\]\)", source, re.S)
    assert body, name
    return [int(x, 16) for x in re.findall(r"0x[0-9a-f]{2}", body.group(1))]


def test_gf256_tables_equal_the_npm_library():
    source = (WEB / "vendor" / "shamir-secret-sharing" / "index.js").read_text()
    log, exp = _js_table(source, "LOG_TABLE"), _js_table(source, "EXP_TABLE")
    assert exp[:255] == shamir.EXP[:255].tolist()
    assert [v % 255 for v in log[1:]] == [v % 255 for v in shamir.LOG[1:].tolist()]


def test_vendored_library_is_the_npm_package_but_one_import():
    package = WEB / "node_modules" / "shamir-secret-sharing"
    if not package.is_dir():
        pytest.skip("web_client/node_modules not installed (npm ci)")
    assert '"version": "0.0.4"' in (package / "package.json").read_text()
    original = (package / "esm" / "index.js").read_text().splitlines()
    vendored = (WEB / "vendor" / "shamir-secret-sharing" / "index.js").read_text().splitlines()
    assert original[0] == "import { getRandomBytes } from 'shamir-secret-sharing/csprng';"
    assert vendored[0] == "import { getRandomBytes } from './csprng.js';"
    assert original[1:] == vendored[1:]
    assert (package / "esm" / "csprng.js").read_text() == (
        WEB / "vendor" / "shamir-secret-sharing" / "csprng.js").read_text()


@pytest.mark.parametrize("bits,n", [(16, 10), (16, 100), (20, 1000), (32, 1000), (8, 3)])
def test_worst_case_sum_does_not_wrap(bits, n):
    clip, d = 1.0, 4
    scale = quantize.scale_for(bits, clip, n)
    rng = np.random.default_rng(1)
    for sign in (1.0, -1.0):
        delta = np.array([sign * clip, 0, 0, 0])  # every client at the bound, same coordinate
        total = sum(quantize.encode(delta, bits, clip, scale, rng) for _ in range(n)) & ((1 << bits) - 1)
        mean = quantize.decode_sum(total, bits, scale, n)
        assert abs(mean[0] - sign * clip) < quantize.error_bound(scale)
        assert mean.shape == (d,)


def test_a_larger_scale_would_wrap():
    """The bound is tight enough to matter: 1.2x the scale and n extreme inputs wrap around."""
    bits, n, clip = 12, 50, 1.0
    scale = quantize.scale_for(bits, clip, n) * 1.2
    rng = np.random.default_rng(2)
    total = sum(quantize.encode(np.array([clip]), bits, clip, scale, rng) for _ in range(n))
    assert quantize.decode_sum(total, bits, scale, n)[0] < 0  # wrapped to the negative side


def test_quantization_error_is_within_the_stated_bound():
    bits, n, clip, d = 16, 10, 1.0, 20_000
    scale = quantize.scale_for(bits, clip, n)
    rng = np.random.default_rng(3)
    deltas = [rng.normal(0, 1.0 / np.sqrt(d), d) * rng.uniform(0.2, 3) for _ in range(n)]
    total = sum(quantize.encode(x, bits, clip, scale, rng) for x in deltas)
    plain = np.mean([quantize.clip(x, clip) for x in deltas], axis=0)
    error = quantize.decode_sum(total, bits, scale, n) - plain
    assert np.abs(error).max() < quantize.error_bound(scale)
    assert error.std() <= 1 / (2 * scale * np.sqrt(n)) * 1.05  # unbiased rounding averages out
    assert abs(error.mean()) < 5 * error.std() / np.sqrt(d)


def halfway_delta(d: int = 100, scale: float = 1000.0) -> tuple[np.ndarray, float, float]:
    """A delta whose scaled coordinates all end in .5, the clip that keeps it whole, and the scale:
    plain stochastic rounding lengthens it beyond the norm bound in about one run in six."""
    delta = (np.arange(d) % 7 + 40.5) / scale
    return delta, float(np.linalg.norm(delta)) * (1 + 1e-12), scale


def test_conditional_rounding_never_exceeds_the_norm_bound():
    delta, clip, scale = halfway_delta()
    bound = quantize.norm_bound(clip, scale, delta.size)
    rng = np.random.default_rng(1)
    plain = [np.linalg.norm(quantize.stochastic_round(delta * scale, rng)) for _ in range(300)]
    assert sum(norm > bound for norm in plain) > 10  # what the accountant's sensitivity could not see
    for _ in range(300):
        q = quantize.encode(delta, 32, clip, scale, rng).astype(np.int64)
        q = np.where(q >= 2**31, q - 2**32, q)
        assert np.linalg.norm(q) <= bound
        assert np.abs(q - delta * scale).max() < 1  # still a rounding: the error bound holds


def test_conditional_rounding_falls_back_toward_zero_and_refuses_long_input():
    values = np.array([3.5, -2.25, 0.75])
    assert quantize.conditional_round(values, 5.0, np.random.default_rng(0), tries=0).tolist() == [3, -2, 0]
    with pytest.raises(ValueError, match="cannot round"):
        quantize.conditional_round(values * 10, 5.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at most"):
        quantize.norm_bound(1.0, 1.0, 2**23 + 1)


def test_norm_bound_is_kairouz_et_al_with_beta_exp_minus_half():
    clip, scale, d = 0.5, 300.0, 10_000
    c, beta = clip * scale, np.exp(-0.5)
    kairouz = np.sqrt(c**2 + d / 4 + np.sqrt(2 * np.log(1 / beta)) * (c + np.sqrt(d) / 2))
    assert quantize.norm_bound(clip, scale, d) == pytest.approx(kairouz, rel=1e-12)
    for c, d in [(0.0, 1), (0.01, 4), (1.0, 1), (150.0, 10_000), (3e4, 690_688)]:  # below C*s + sqrt(d)
        assert c <= quantize.norm_bound(c, 1.0, d) < c + np.sqrt(d)


def test_scale_leaves_room_for_noise_sized_by_the_norm_bound():
    bits, clip, n, width, d = 16, 1.0, 13, 2.4, 690_688
    scale = quantize.scale_for(bits, clip, n, width, d)
    used = n * (clip * scale + 1) + quantize.TAIL * width * quantize.norm_bound(clip, scale, d)
    assert used <= 2**15 - 1 < n * (clip * scale * 1.001 + 1) + quantize.TAIL * width * quantize.norm_bound(
        clip, scale * 1.001, d)
    assert scale < quantize.scale_for(bits, clip, n, width)  # rounding's share of the norm costs scale


def test_clip_scales_only_what_exceeds():
    x = np.array([3.0, 4.0])
    assert np.allclose(quantize.clip(x, 1.0), [0.6, 0.8])
    assert np.array_equal(quantize.clip(x, 10.0), x)


@pytest.mark.parametrize("n,k", [(10, 9), (20, 8), (100, 22), (257, 30)])
def test_graph_is_symmetric_regular_and_deterministic(n, k):
    seed = bytes(range(32))
    adjacency = graph.neighbours(seed, 4, n, k)
    assert adjacency == graph.neighbours(seed, 4, n, k)
    assert all(len(peers) == min(k, n - 1) and u not in peers for u, peers in enumerate(adjacency))
    assert all(u in adjacency[v] for u, peers in enumerate(adjacency) for v in peers)
    assert [graph.neighbours_of(seed, 4, n, k, u) for u in (0, n // 2, n - 1)] == [
        adjacency[0], adjacency[n // 2], adjacency[n - 1]]
    if k < n - 1:
        assert adjacency != graph.neighbours(seed, 5, n, k)  # another round, another graph
        assert sorted(graph.permutation(seed, 4, n)) == list(range(n))


def test_default_degree_and_threshold():
    assert [graph.default_degree(n) for n in (3, 10, 100, 1000)] == [2, 9, 22, 30]
    assert [graph.default_threshold(k) for k in (2, 9, 22, 30)] == [2, 6, 15, 20]


def test_config_round_trips_and_messages_are_checked():
    config = RoundConfig(round_id=2**40 + 3, cohort_size=10, degree=9, threshold=6, min_survivors=7, bits=16,
                         num_params=1234, scale=3275.7, clip=1.5, graph_seed=bytes(range(32)), noise_std=0.25)
    data = config.encode()
    assert len(data) == 20 + 80
    assert RoundConfig.decode(data) == config
    with pytest.raises(MessageError):
        open_message(data, Type.CONFIG, config.round_id + 1)
    with pytest.raises(MessageError):
        open_message(data, Type.ROSTER, config.round_id)
    with pytest.raises(MessageError):
        RoundConfig.decode(data[:-1])
    with pytest.raises(MessageError):
        RoundConfig.decode(b"XXXX" + data[4:])
