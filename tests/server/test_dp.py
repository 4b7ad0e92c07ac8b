"""Central DP in plain mode ([T1], server/dp.py): the wrapper against its oracle, the ledger in every
manifest and /api/status, the budget that stops training, and the settings' checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.protocol import FederatedClient, ProtocolError
from privacy import dp as accountant
from server.app import create_app
from server.dp import DifferentiallyPrivate, DpSettings, Ledger
from server.influence import global_norm
from server.strategies import FedAvgMean, StackedDeltas, TrimmedMean
from tests.server.conftest import small_delta
from tests.server.test_strategies import SHAPES, random_round, run

Z, CLIP, DELTA = 1.5, 0.5, 1e-6


def settings(z: float = Z, budget: float = math.inf, m: int = 5, n: int = 5) -> DpSettings:
    """DP settings for a cohort of m drawn from n."""
    return DpSettings(z, CLIP, DELTA, budget, m, n)


def test_output_minus_noise_is_the_equally_weighted_mean_of_the_clipped_deltas():
    """The oracle: replay the seeded noise and take it off; what is left is the clipped mean, whatever
    weights the clients claimed."""
    # Prepare: norms around 4, far above C = 0.5, and one short delta left alone
    deltas, weights = random_round(6, seed=3)
    deltas.append({name: array * 1e-3 for name, array in deltas[0].items()})
    weights.append(1.0)
    wrapper = DifferentiallyPrivate(FedAvgMean(), settings(), rng=np.random.default_rng(7))
    # Execute
    noisy = run(wrapper, deltas, weights)
    # Assert
    n, replay = len(deltas), np.random.default_rng(7)
    for name, shape in SHAPES.items():
        noise = replay.normal(0.0, 2 * Z * CLIP, shape)
        clipped = [d[name] * min(1.0, CLIP / global_norm(d)) for d in deltas]
        np.testing.assert_allclose(noisy[name] - noise / n, np.mean(clipped, axis=0), atol=1e-6)
    assert global_norm(deltas[-1]) < CLIP  # the short one was not scaled up


def test_the_noise_has_std_2zc_on_the_sum():
    """Identical deltas: the sum's deviation from n * delta is the noise alone, std 2zC."""
    delta = {"embed": np.zeros((200, 50), np.float32), "bias": np.zeros(5, np.float32),
             "scalar": np.zeros((), np.float32)}
    wrapper = DifferentiallyPrivate(FedAvgMean(), settings(), rng=np.random.default_rng(1))
    wrapper.start({name: array.shape for name, array in delta.items()})
    for _ in range(4):
        wrapper.accumulate(delta, 1.0)
    noisy = wrapper.finalize(StackedDeltas([delta] * 4))
    assert np.std(4 * noisy["embed"]) == pytest.approx(2 * Z * CLIP, rel=0.03)


def test_without_noise_the_inner_strategy_runs_as_it_is_and_epsilon_is_infinite():
    deltas, weights = random_round(5, seed=4)
    wrapper = DifferentiallyPrivate(FedAvgMean(), settings(z=0.0))
    result = run(wrapper, deltas, weights)
    expected = run(FedAvgMean(), deltas, weights)
    for name in SHAPES:
        np.testing.assert_array_equal(result[name], expected[name])
    report = wrapper.report()["privacy"]
    assert report["mode"] == "off" and report["epsilon"] is None and "without noise" in report["epsilon_note"]


def test_the_ledger_goes_through_carry_and_counts_a_repeated_close_once():
    """A close that failed after finalize (disk full) finalizes again: still one round."""
    deltas, weights = random_round(3, seed=5)
    wrapper = DifferentiallyPrivate(FedAvgMean(), settings())
    run(wrapper, deltas, weights)
    wrapper.finalize(StackedDeltas(deltas))
    carried = wrapper.carry()
    again = DifferentiallyPrivate(FedAvgMean(), settings())
    again.start(SHAPES, carried)
    assert Ledger.from_carried(carried).rounds == 1
    assert again.report()["privacy"]["epsilon"] == pytest.approx(accountant.epsilon(1, Z, 5, 5, DELTA))


def test_dp_refuses_a_strategy_whose_sensitivity_it_does_not_know():
    with pytest.raises(ValueError, match="fedavg"):
        DifferentiallyPrivate(TrimmedMean(), settings())


def test_a_ledger_of_mixed_settings_composes_every_part():
    ledger = Ledger().add(1.0, 10, 100, 3).add(2.0, 10, 1000, 5)
    parts = [(3, 1.0, 10, 100), (5, 2.0, 10, 1000)]
    assert ledger.epsilon(DELTA) == pytest.approx(accountant.composed_epsilon(parts, DELTA))
    assert Ledger(ledger.to_json()).entries == ledger.entries
    assert ledger.add(0.0, 10, 10).epsilon(DELTA) == math.inf


def test_secure_rounds_enter_the_ledger_as_the_discrete_gaussian_theorem_says():
    """Secure mode: the ledger's epsilon after 3 rounds equals Kairouz et al.'s bound, computed here
    from the round configs the clients get (server.secure.SecureRules), fed to dp-accounting's RDP
    accountant as the Gaussian with the same RDP curve, sampled m of N. At 8 bits and z = 0.03 the
    per-client sigma is 0.57 to 1.2, where tau (a sum of discrete Gaussians is not one) matters: the
    result is larger than the central Gaussian's at z."""
    import dp_accounting
    from dp_accounting import rdp

    from server.secure import SecureRules

    z, bits, m, population, shapes = 0.03, 8, 6, 60, {"w": (10, 10)}
    d = 100
    dp_settings = DpSettings(z, CLIP, DELTA, math.inf, m, population, "distributed", bits, 3)
    carried = None
    for _ in range(3):
        wrapper = DifferentiallyPrivate(FedAvgMean(), dp_settings)
        wrapper.start(shapes, carried)
        wrapper.aggregated_elsewhere()
        carried = wrapper.carry()
    got = wrapper.report()["privacy"]

    def equivalent_z(n: int) -> float:
        config = SecureRules(clip=CLIP, bits=bits, min_cohort=3, noise_multiplier=z).config(1, n, d)
        sigma, survivors, cs = config.noise_std, config.min_survivors, CLIP * config.scale
        sensitivity = 2 * math.sqrt(cs**2 + d / 4 + math.sqrt(2 * math.log(1 / math.exp(-0.5))) * (
            cs + math.sqrt(d) / 2))
        tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, survivors))
        eps = min(math.sqrt(sensitivity**2 / (survivors * sigma**2) + tau * d / 2),
                  sensitivity / (math.sqrt(survivors) * sigma) + tau * math.sqrt(d))
        return 1 / eps

    z_equivalent = min(equivalent_z(n) for n in range(3, m + 1))
    oracle = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    oracle.compose(dp_accounting.SampledWithoutReplacementDpEvent(
        population, m, dp_accounting.GaussianDpEvent(z_equivalent)), count=3)
    assert got["mode"] == "distributed" and got["rounds"] == 3
    assert got["epsilon"] == pytest.approx(oracle.get_epsilon(DELTA), rel=1e-9)
    assert z_equivalent < 0.995 * z
    assert got["epsilon"] > accountant.epsilon(3, z, m, population, DELTA)


# -- through the server ----------------------------------------------------------------------------

def dp_config(config, **changes) -> dict:
    """The test server with DP on (open selection: N = m = MIN_CLIENTS, no amplification)."""
    return {**config, "DP_NOISE_MULTIPLIER": Z, "DP_CLIP": CLIP, "DP_EPSILON_BUDGET": 1e6, **changes}


def close_round(app, values=(0.1, 0.2, 0.3)) -> None:
    """Three clients upload constant deltas (MIN_CLIENTS is 3)."""
    for value in values:
        fed = FederatedClient(app.test_client())
        fed.upload(small_delta(value), fed.ticket(), 10, 5.0, 4.0)


def test_every_published_version_carries_the_accountants_epsilon(config):
    app = create_app(dp_config(config))
    for _ in range(3):
        close_round(app)
    coordinator = app.extensions["fedurl.coordinator"]
    for version, rounds in ((2, 1), (3, 2), (4, 3)):
        privacy = coordinator.store.manifest(version)["aggregation"]["privacy"]
        assert privacy["epsilon"] == pytest.approx(accountant.epsilon(rounds, Z, 3, 3, DELTA), rel=1e-9)
        assert (privacy["mode"], privacy["rounds"], privacy["noise_multiplier"], privacy["clip"],
                privacy["cohort_size"], privacy["population"], privacy["delta"]) == (
                    "central", rounds, Z, CLIP, 3, 3, DELTA)
    status = app.test_client().get("/api/status").get_json()
    assert status["privacy"]["epsilon"] == pytest.approx(accountant.epsilon(3, Z, 3, 3, DELTA))
    assert [v["epsilon"] for v in status["versions"]][1:] == [  # oldest first
        pytest.approx(accountant.epsilon(r, Z, 3, 3, DELTA)) for r in (1, 2, 3)]
    assert status["versions"][0]["mode"] is None  # the imported bundle was never aggregated
    assert status["training"] == {"open": True}


def test_with_dp_on_no_self_reported_loss_or_count_is_published_only_the_participants(config):
    """Each client's loss and example count are functions of its data that no noise covers: with DP
    on, neither the manifest nor /api/status publishes their means; without DP both do."""
    for settings_, published in ((dp_config(config), False), (config, True)):
        app = create_app({**settings_, "DATA_DIR": f"{config['DATA_DIR']}-{published}"})
        close_round(app)
        aggregation = app.extensions["fedurl.coordinator"].store.manifest(2)["aggregation"]
        row = next(r for r in app.test_client().get("/api/status").get_json()["rounds"] if r["id"] == 1)
        for record in (aggregation, row):
            assert record["participants"] == 3
            shown = [record[key] for key in ("examples", "loss_before", "loss_after", "mean_staleness")]
            assert shown == ([30, 5.0, 4.0, 0.0] if published else [None] * 4), (settings_, record)


def test_a_round_without_noise_is_published_with_an_infinite_epsilon(config):
    app = create_app(config)  # DP_NOISE_MULTIPLIER 0
    close_round(app)
    privacy = app.extensions["fedurl.coordinator"].store.manifest(2)["aggregation"]["privacy"]
    assert privacy["epsilon"] is None and privacy["noiseless_rounds"] == 1
    assert "infinite" in privacy["epsilon_note"]


def test_dp_clips_and_equalises_weights_even_with_influence_bounded(config):
    """One client claims 1,000 examples and sends a delta 20x the others: with DP on it counts as
    one delta clipped to norm C, weighed like the others (the adaptive bound and the cap do not run)."""
    app = create_app(dp_config(config, INFLUENCE="bounded", DP_NOISE_MULTIPLIER=1e-9,  # noise ~ 0
                               DP_EPSILON_BUDGET=math.inf))
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    for value, count in ((0.1, 10), (0.1, 10), (-2.0, 1000)):
        fed = FederatedClient(app.test_client())
        fed.upload(small_delta(value), fed.ticket(), count, 5.0, 4.0)
    v2 = app.extensions["fedurl.coordinator"].store.weights(2)
    unit = global_norm(small_delta(1.0))  # small_delta(v) has norm |v| * unit; 0.1 * unit < C
    for name in v1:
        np.testing.assert_allclose(v2[name] - v1[name], (0.1 + 0.1 - CLIP / unit) / 3, rtol=1e-4)
    status = app.test_client().get("/api/status").get_json()
    assert "clipped" not in status["influence"]  # a count of clipped clients is not noised: not shown


def test_training_stops_when_the_next_round_would_exceed_the_budget(config):
    """Budget between 1 and 2 rounds' epsilon: the first round trains, then tickets are refused with
    privacy_budget_spent, /api/status and /api/model say so, and a restart remembers."""
    one, two = (accountant.epsilon(r, Z, 3, 3, DELTA) for r in (1, 2))
    settings_ = dp_config(config, DP_EPSILON_BUDGET=(one + two) / 2)
    app = create_app(settings_)
    close_round(app)
    fed = FederatedClient(app.test_client())
    with pytest.raises(ProtocolError) as refused:
        fed.ticket()
    assert (refused.value.status, refused.value.code) == (403, "privacy_budget_spent")
    status = app.test_client().get("/api/status").get_json()
    assert status["training"]["code"] == "privacy_budget_spent" and status["privacy"]["rounds"] == 1
    assert app.test_client().get("/api/model").get_json()["training"]["open"] is False
    again = create_app(settings_)
    with pytest.raises(ProtocolError, match="privacy budget"):
        FederatedClient(again.test_client()).ticket()


def test_check_ins_are_refused_once_the_budget_is_spent(config):
    app = create_app(dp_config(config, DP_EPSILON_BUDGET=accountant.epsilon(1, Z, 3, 3, DELTA) / 2))
    with pytest.raises(ProtocolError) as refused:
        FederatedClient(app.test_client()).check_in()
    assert refused.value.code == "privacy_budget_spent"


def test_a_cohort_is_drawn_only_from_the_stated_population(config):
    """DP_MIN_POPULATION is the accountant's N: with 4 of 5 check-ins the round keeps selecting."""
    app = create_app(dp_config(config, SELECTION="cohort", SELECTION_WINDOW_S=0.0, OVER_SELECTION=0.0,
                               MAX_MEMBERS_PER_NETWORK=100, DP_MIN_POPULATION=5))
    feds = [FederatedClient(app.test_client()) for _ in range(5)]
    assert {fed.check_in()["state"] for fed in feds[:4]} == {"waiting"}
    assert feds[4].check_in()["phase"] == "reporting"
    privacy = app.test_client().get("/api/status").get_json()["privacy"]
    assert (privacy["cohort_size"], privacy["population"]) == (3, 5)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("DP_NOISE_MULTIPLIER", -1.0, "DP_NOISE_MULTIPLIER"), ("DP_NOISE_MULTIPLIER", math.nan, "DP_NOISE"),
    ("DP_CLIP", 0.0, "DP_CLIP"), ("DP_CLIP", math.inf, "DP_CLIP"), ("DP_DELTA", 1.0, "DP_DELTA"),
    ("DP_EPSILON_BUDGET", 0.0, "DP_EPSILON_BUDGET"), ("DP_MIN_POPULATION", 0, "DP_MIN_POPULATION"),
    ("AGGREGATOR", "median", "fedavg")])
def test_bad_dp_settings_stop_the_start_with_a_clear_error(config, key, value, message):
    with pytest.raises(ValueError, match=message):
        create_app(dp_config(config, **{key: value}))
