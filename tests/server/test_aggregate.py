"""Aggregation math: hand-computed cases, and the streaming sum against the naive batch formula."""

import numpy as np
import pytest

from server.aggregate import FedAdam, FedAvg, FedAvgM, WeightedSum, make_optimizer, staleness_weight


def naive_weighted_mean(deltas: list[dict], weights: list[float]) -> dict:
    """Test oracle: FedAvg written as the textbook batch formula, all deltas held at once."""
    pairs = list(zip(deltas, weights, strict=True))
    return {name: sum(w * d[name].astype(np.float64) for d, w in pairs) / sum(weights) for name in deltas[0]}


def test_weighted_mean_by_hand():
    """Two clients with 1 and 3 examples: the mean leans 3:1 towards the second."""
    # Prepare
    acc = WeightedSum({"w": (2,)})
    # Execute
    acc.add({"w": np.array([1.0, 2.0], np.float32)}, 1)
    acc.add({"w": np.array([3.0, 6.0], np.float32)}, 3)
    # Assert: (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5
    np.testing.assert_allclose(acc.mean()["w"], [2.5, 5.0])
    assert acc.count == 2 and acc.total_weight == 4


def test_streaming_equals_batch_on_random_arrays():
    """Folding 40 random deltas one by one equals the batch weighted mean."""
    # Prepare
    rng = np.random.default_rng(0)
    shapes = {"embed": (7, 5), "bias": (5,), "scalar": ()}
    deltas = [{n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()} for _ in range(40)]
    weights = list(rng.integers(1, 500, size=40).astype(float))
    acc = WeightedSum(shapes)
    # Execute
    for delta, weight in zip(deltas, weights, strict=True):
        acc.add(delta, weight)
    # Assert
    expected = naive_weighted_mean(deltas, weights)
    for name in shapes:
        np.testing.assert_allclose(acc.mean()[name], expected[name], rtol=1e-12, atol=1e-12)


def test_empty_sum_has_no_mean():
    """Asking for the mean of nothing is a bug, not a zero update."""
    with pytest.raises(AssertionError, match="empty"):
        WeightedSum({"w": (1,)}).mean()


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_weight_is_refused(weight):
    """A zero, negative or non-finite weight would corrupt the mean."""
    with pytest.raises(AssertionError, match="weight"):
        WeightedSum({"w": (1,)}).add({"w": np.ones(1, np.float32)}, weight)


def test_staleness_weight_by_hand():
    """(1 + s)^-a: fresh updates keep full weight, three rounds late with a=0.5 halves it."""
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(1, 1.0) == pytest.approx(0.5)


def test_fedavg_lr1_adds_the_mean_delta():
    """Plain FedAvg with lr 1 is x + delta, in the weights' own dtype."""
    # Prepare
    weights = {"w": np.array([1.0, 1.0], np.float32)}
    # Execute
    new = FedAvg().step(weights, {"w": np.array([0.5, -1.0])})
    # Assert
    np.testing.assert_array_equal(new["w"], [1.5, 0.0])
    assert new["w"].dtype == np.float32


def test_fedavgm_momentum_by_hand():
    """Momentum 0.9: v1 = 1 -> x = 1; v2 = 0.9 + 1 = 1.9 -> x = 2.9."""
    # Prepare
    opt, x = FedAvgM(lr=1.0, momentum=0.9), {"w": np.zeros(1, np.float32)}
    # Execute
    x = opt.step(x, {"w": np.ones(1)})
    first = x["w"].copy()
    x = opt.step(x, {"w": np.ones(1)})
    # Assert
    np.testing.assert_allclose(first, [1.0])
    np.testing.assert_allclose(x["w"], [2.9], rtol=1e-6)


def test_fedadam_by_hand():
    """Reddi et al. Alg. 2 with lr 0.1, b1 0.9, b2 0.99, tau 1e-3, v0 = tau^2, deltas +1 then -1."""
    # Prepare
    opt, x = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3), {"w": np.zeros(1, np.float32)}
    # Execute
    x = opt.step(x, {"w": np.ones(1)})
    first = x["w"].copy()
    x = opt.step(x, {"w": -np.ones(1)})
    # Assert
    # step 1: m = 0.1, v = 0.99e-6 + 0.01 = 0.01000099, x = 0.1 * 0.1 / (sqrt(v) + 1e-3) = 0.0990050
    np.testing.assert_allclose(first, [0.0990050], rtol=1e-6)
    # step 2: m = 0.09 - 0.1 = -0.01, v = 0.99 * 0.01000099 + 0.01 = 0.0199009801,
    #         x = 0.0990050 + 0.1 * -0.01 / (sqrt(v) + 1e-3) = 0.0919663
    np.testing.assert_allclose(opt.state["m/w"], [-0.01], rtol=1e-6)
    np.testing.assert_allclose(opt.state["v/w"], [0.0199009801], rtol=1e-6)
    np.testing.assert_allclose(x["w"], [0.0919663], rtol=1e-6)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_restored_state_continues_identically(name):
    """An optimizer rebuilt from saved state (restart, rollback) takes the same next step."""
    # Prepare
    rng = np.random.default_rng(1)
    x = {"w": rng.normal(size=4).astype(np.float32)}
    d1, d2 = ({"w": rng.normal(size=4)} for _ in range(2))
    straight = make_optimizer(name, lr=0.5)
    restored = make_optimizer(name, lr=0.5)
    # Execute
    x1 = straight.step(x, d1)
    restored.state = dict(straight.state)
    # Assert
    np.testing.assert_array_equal(straight.step(x1, d2)["w"], restored.step(x1, d2)["w"])


def test_make_optimizer_defaults_and_unknown_name():
    """Each optimizer keeps its own default lr; settings it does not take are ignored; typos fail."""
    assert make_optimizer("fedavg").lr == 1.0
    assert make_optimizer("fedadam", momentum=0.5).lr == 0.01
    assert make_optimizer("fedavgm", momentum=0.5).momentum == 0.5
    with pytest.raises(ValueError, match="unknown server optimizer 'fedsgd'"):
        make_optimizer("fedsgd")
