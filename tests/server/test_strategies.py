"""Aggregation strategies: each against its naive batch formula, plus hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from formats import tensors as tensor_codec
from server.spool import Spool
from server.strategies import (
    AGGREGATORS,
    CoordinateMedian,
    FedAvgMean,
    StackedDeltas,
    TrimmedMean,
    make_aggregator,
)
from tests.server.test_aggregate import naive_weighted_mean

SHAPES = {"embed": (7, 5), "bias": (5,), "scalar": ()}


def random_round(count: int, seed: int) -> tuple[list[dict], list[float]]:
    """count random float32 deltas shaped like SHAPES, and random positive weights."""
    rng = np.random.default_rng(seed)
    deltas = [{n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(count)]
    return deltas, list(rng.integers(1, 500, size=count).astype(float))


def run(aggregator, deltas: list[dict], weights: list[float]) -> dict | None:
    """One round through the three calls of the contract."""
    aggregator.start(SHAPES)
    for delta, weight in zip(deltas, weights, strict=True):
        aggregator.accumulate(delta, weight)
    return aggregator.finalize(StackedDeltas(deltas))


def naive_coordinatewise(deltas: list[dict], reduce) -> dict:
    """Test oracle: apply reduce to the plain Python list of each coordinate's values."""
    result = {}
    for name, shape in SHAPES.items():
        out = np.empty(shape)
        for index in np.ndindex(*shape):
            out[index] = reduce(sorted(float(d[name][index]) for d in deltas))
        result[name] = out
    return result


def naive_trimmed(values: list[float], beta: float) -> float:
    """Yin et al. Def. 2 on one sorted coordinate."""
    cut = int(beta * len(values))
    kept = values[cut:len(values) - cut]
    return sum(kept) / len(kept)


def naive_median(values: list[float]) -> float:
    """The middle value, or the mean of the two middle ones."""
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


@pytest.mark.parametrize("count", [1, 2, 7, 40])
def test_fedavg_strategy_equals_the_batch_weighted_mean(count):
    """The streaming strategy gives the textbook weighted mean."""
    deltas, weights = random_round(count, seed=count)
    result = run(FedAvgMean(), deltas, weights)
    expected = naive_weighted_mean(deltas, weights)
    for name in SHAPES:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count, beta", [(1, 0.1), (5, 0.2), (10, 0.1), (11, 0.3), (40, 0.25), (6, 0.0)])
def test_trimmed_mean_equals_the_naive_formula(count, beta):
    """Coordinate-wise trimmed mean against a per-coordinate Python sort."""
    deltas, weights = random_round(count, seed=100 + count)
    result = run(TrimmedMean(trim_fraction=beta), deltas, weights)
    expected = naive_coordinatewise(deltas, lambda values: naive_trimmed(values, beta))
    for name in SHAPES:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count", [1, 2, 5, 8, 41])
def test_median_equals_the_naive_formula(count):
    """Coordinate-wise median against a per-coordinate Python sort (odd and even counts)."""
    deltas, weights = random_round(count, seed=200 + count)
    result = run(CoordinateMedian(), deltas, weights)
    expected = naive_coordinatewise(deltas, naive_median)
    for name in SHAPES:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-12, atol=1e-12)


def test_robust_strategies_by_hand():
    """Five clients, one of them an attacker sending 1000: the median and the 20 %-trimmed mean
    ignore it, FedAvg does not."""
    # Prepare
    values = [1.0, 2.0, 3.0, 4.0, 1000.0]
    deltas = [{name: np.full(shape, v, np.float32) for name, shape in SHAPES.items()} for v in values]
    weights = [1.0] * 5
    # Execute
    median = run(CoordinateMedian(), deltas, weights)
    trimmed = run(TrimmedMean(trim_fraction=0.2), deltas, weights)
    mean = run(FedAvgMean(), deltas, weights)
    # Assert: median 3; trimmed drops 1 and 1000 -> (2 + 3 + 4) / 3 = 3; mean 1010 / 5 = 202
    assert float(median["bias"][0]) == 3.0
    assert float(trimmed["bias"][0]) == 3.0
    assert float(mean["bias"][0]) == 202.0


def test_robust_strategies_ignore_weights():
    """Yin et al. weigh every client alike: a huge claimed weight changes nothing."""
    deltas, _ = random_round(5, seed=7)
    equal = run(CoordinateMedian(), deltas, [1.0] * 5)
    skewed = run(CoordinateMedian(), deltas, [1.0, 1.0, 1.0, 1.0, 1e6])
    for name in SHAPES:
        np.testing.assert_array_equal(equal[name], skewed[name])


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_an_empty_round_finalizes_to_none(name):
    """No delta, no aggregate: the coordinator never publishes from nothing."""
    aggregator = make_aggregator(name)
    aggregator.start(SHAPES)
    assert aggregator.count == 0
    assert aggregator.finalize(StackedDeltas([])) is None


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_start_forgets_the_previous_round(name):
    """A second round's aggregate depends only on its own deltas."""
    first, weights = random_round(3, seed=1)
    second, _ = random_round(3, seed=2)
    aggregator = make_aggregator(name)
    run(aggregator, first, weights)
    again = run(aggregator, second, weights)
    fresh = run(make_aggregator(name), second, weights)
    assert aggregator.count == 3
    for key in SHAPES:
        np.testing.assert_array_equal(again[key], fresh[key])


def test_make_aggregator_settings_and_unknown_name():
    """Each strategy takes only its own settings; a typo or an impossible fraction fails."""
    assert make_aggregator("trimmed_mean", trim_fraction=0.3).trim_fraction == 0.3
    assert make_aggregator("trimmed_mean", trim_fraction=None).trim_fraction == 0.1
    assert make_aggregator("median", trim_fraction=0.3).name == "median"
    with pytest.raises(ValueError, match="unknown aggregator 'krum'"):
        make_aggregator("krum")
    with pytest.raises(ValueError, match="trim_fraction"):
        make_aggregator("trimmed_mean", trim_fraction=0.5)


def naive_bounded(deltas: list[dict], weights: list[float], bound: float, cap_factor: float) -> dict:
    """Test oracle: clip each delta to min(bound, median norm) by a plain loop, cap each weight at
    cap_factor x median weight, then the weighted mean of the float64 results."""
    norms = [np.sqrt(sum(float((d[n].astype(np.float64) ** 2).sum()) for n in SHAPES)) for d in deltas]
    bound = min(bound, float(np.median(norms)))
    cap = cap_factor * float(np.median(weights))
    clipped = [{n: d[n].astype(np.float64) * min(1.0, bound / norm) for n in SHAPES}
               for d, norm in zip(deltas, norms, strict=True)]
    return naive_weighted_mean(clipped, [min(w, cap) for w in weights])


@pytest.mark.parametrize("inner", ["fedavg", "median"])
@pytest.mark.parametrize("seed", range(3))
def test_bounded_influence_matches_its_naive_formula(inner, seed):
    """Clipping to the bound and capping the weights, whichever strategy it wraps."""
    # Prepare: one delta 100x longer, one weight 100x larger than the rest
    deltas, weights = random_round(9, seed)
    deltas[0] = {n: a * 100 for n, a in deltas[0].items()}
    weights[1] *= 100
    aggregator = make_aggregator(inner, {"cap_factor": 2.0, "clip_initial": 3.0})
    # Execute
    got = run(aggregator, deltas, weights)
    # Assert
    if inner == "fedavg":
        expected = naive_bounded(deltas, weights, 3.0, 2.0)
    else:  # the median ignores weights; its input is the clipped deltas
        norms = [np.sqrt(sum(float((d[n].astype(np.float64) ** 2).sum()) for n in SHAPES)) for d in deltas]
        bound = min(3.0, float(np.median(norms)))
        clipped = [{n: d[n] * np.float32(min(1.0, bound / nm)) for n in SHAPES}
                   for d, nm in zip(deltas, norms, strict=True)]
        expected = naive_coordinatewise(clipped, np.median)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert aggregator.report()["clipped"] >= 1 and (inner != "fedavg" or aggregator.report()["capped"] == 1)


def test_the_clip_bound_is_carried_to_the_next_round():
    """carry() after a round is what start() takes: the bound moves once per round, not per start."""
    # Prepare
    deltas, weights = random_round(5, 0)
    first = make_aggregator("fedavg", {"clip_initial": 100.0})
    run(first, deltas, weights)
    carried = first.carry()
    # Execute
    second = make_aggregator("fedavg", {"clip_initial": 100.0})
    second.start(SHAPES, carried)
    # Assert: every norm was below 100, so the bound shrank by exp(-0.2 * (1 - 0.5))
    assert carried["clip_bound"] == pytest.approx(100.0 * np.exp(-0.1))
    assert second.clip.bound == pytest.approx(carried["clip_bound"])


def test_a_bounded_fedavg_close_reads_each_stored_body_once(tmp_path, monkeypatch):
    """From the spool, clipped FedAvg streams: one read per body (it read every body once per
    parameter, and held a parameter of every delta at once), same result as the naive formula.
    """
    # Prepare: float16 bodies in a spool, as browsers send them; count the reads
    deltas, weights = random_round(6, 3)
    deltas = [{n: a.astype(np.float16).astype(np.float32) for n, a in d.items()} for d in deltas]
    spool = Spool(tmp_path)
    for k, delta in enumerate(deltas):
        body = tensor_codec.encode({n: a.astype(np.float16) for n, a in delta.items()})
        spool.place(spool.stage(body), 1, f"key{k}")
    reads = []
    read = spool.read
    monkeypatch.setattr(spool, "read", lambda round_id, key: reads.append(key) or read(round_id, key))
    aggregator = make_aggregator("fedavg", {"cap_factor": 2.0, "clip_initial": 3.0})
    aggregator.start(SHAPES)
    for delta, weight in zip(deltas, weights, strict=True):
        aggregator.accumulate(delta, weight)
    # Execute
    got = aggregator.finalize(spool.deltas(1, [f"key{k}" for k in range(6)]))
    # Assert
    assert reads == [f"key{k}" for k in range(6)]
    expected = naive_bounded(deltas, weights, 3.0, 2.0)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
