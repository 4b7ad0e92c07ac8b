"""server/influence.py against hand-computed numbers and the quantile it should track."""

from __future__ import annotations

import numpy as np
import pytest

from server.influence import AdaptiveClip, capped_weights, clip_to_norm, global_norm


def test_global_norm_flattens_every_tensor():
    assert global_norm({"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32)}) == 5.0


def test_a_long_delta_is_scaled_to_the_bound_and_keeps_its_direction():
    delta = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}
    clipped, norm = clip_to_norm(delta, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [0.8], rtol=1e-6)
    assert clipped["a"].dtype == np.float32


def test_a_short_delta_is_left_alone():
    delta = {"a": np.array([0.1], np.float32)}
    clipped, _ = clip_to_norm(delta, 1.0)
    assert clipped is delta


def test_one_inflated_claim_weighs_at_most_the_cap_times_the_median():
    weights = capped_weights([100, 90, 110, 10_000, 95], cap_factor=2.0)
    assert weights == [100.0, 90.0, 110.0, 200.0, 95.0]
    share = weights[3] / sum(weights)
    assert share < 0.35, "the liar held 91.7 % of the weight before the cap"


def test_a_cap_below_the_median_is_refused():
    with pytest.raises(AssertionError):
        capped_weights([1, 2], cap_factor=0.5)


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_the_bound_converges_to_the_target_quantile_of_honest_norms(quantile):
    """Oracle: the empirical quantile of the norm distribution the rounds draw from."""
    rng = np.random.default_rng(0)
    clip = AdaptiveClip(bound=50.0, quantile=quantile, learning_rate=0.2)
    for _ in range(400):
        clip.update(list(rng.lognormal(mean=np.log(2.0), sigma=0.3, size=20)))
    expected = float(np.quantile(rng.lognormal(mean=np.log(2.0), sigma=0.3, size=200_000), quantile))
    assert clip.bound == pytest.approx(expected, rel=0.15)


def test_the_bound_starts_24x_too_high_and_comes_down_within_40_rounds():
    """Today's fixed cap (50) sits ~24x above honest norms (~2); adaptive clipping closes the gap."""
    rng = np.random.default_rng(1)
    clip = AdaptiveClip(bound=50.0, quantile=0.5, learning_rate=0.2)
    for _ in range(40):
        clip.update(list(rng.lognormal(mean=np.log(2.0), sigma=0.3, size=20)))
    assert clip.bound < 4.0


# -- through the server: what one client can do to a round, whatever it claims -----------------

def _round(app, deltas_and_counts) -> dict:
    """Each (delta, num_examples) uploaded by a new client; the published weights."""
    from client.protocol import FederatedClient

    for delta, count in deltas_and_counts:
        fed = FederatedClient(app.test_client())
        fed.upload(delta, fed.ticket(), count, 5.0, 4.0)
    coordinator = app.extensions["fedurl.coordinator"]
    assert coordinator.version == 2, "the round should have closed"
    return coordinator.store.weights(2)


def test_an_inflated_num_examples_weighs_at_most_twice_the_median(config):
    """Nine clients report 100 examples, one claims 1,000 (the hard limit here). Trusted, it
    held 53 % of the round's weight; capped at 2 x the median it holds 18 %."""
    from server.app import create_app
    from tests.server.conftest import small_delta

    # Prepare
    app = create_app({**config, "MIN_CLIENTS": 10, "INFLUENCE": "bounded"})
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    # Execute
    v2 = _round(app, [(small_delta(0.1), 100)] * 9 + [(small_delta(-0.1), 1000)])
    # Assert
    expected = (9 * 100 * 0.1 + 200 * -0.1) / (9 * 100 + 200)
    for name in v1:
        np.testing.assert_allclose(v2[name] - v1[name], expected, rtol=1e-5)


def test_an_anti_gradient_at_the_allowed_norm_is_clipped_not_refused(config):
    """One client sends -g scaled to just below MAX_UPDATE_NORM (10 here, 24x an honest norm):
    accepted (202), then scaled to the round's median norm, so it moves the mean by at most one
    honest update's worth over ten, instead of reversing it."""
    from server.app import create_app
    from tests.server.conftest import small_delta

    # Prepare
    app = create_app({**config, "MIN_CLIENTS": 10, "INFLUENCE": "bounded"})
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    honest = small_delta(0.1)
    attack = {name: -array * (9.98 / global_norm(honest)) for name, array in honest.items()}
    # Execute
    v2 = _round(app, [(honest, 100)] * 9 + [(attack, 100)])
    # Assert: the attacker's delta counts as -0.1 everywhere, the honest median's length
    for name in v1:
        np.testing.assert_allclose(v2[name] - v1[name], (9 * 0.1 - 0.1) / 10, rtol=1e-4)
    status = app.test_client().get("/api/status").get_json()
    assert status["influence"]["clipped"] == 1 and status["rejected"] == {}
