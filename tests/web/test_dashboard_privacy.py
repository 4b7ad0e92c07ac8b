"""The dashboard's privacy parts ([T1]): epsilon per version against the budget, the settings, and
axe-core on them."""

from __future__ import annotations

import pytest
from page_helpers import axe_violations, publish
from playwright.sync_api import expect

from privacy import dp


@pytest.fixture
def server_config(server_config):
    """DP on; a tiny clip so one page's noisy round still passes the publish gate."""
    return {**server_config, "DP_NOISE_MULTIPLIER": 1.0, "DP_CLIP": 1e-4, "DP_EPSILON_BUDGET": 100.0}


def test_the_dashboard_plots_epsilon_per_version_and_shows_the_settings(sized_page, live_app, axe_path):
    publish(live_app, 2)
    sized_page.goto("/dashboard")
    expect(sized_page.locator("#version")).to_have_text("3")
    expect(sized_page.locator("#epsilon")).to_have_text(f"{dp.epsilon(2, 1.0, 3, 3, 1e-6):.2f}")
    expect(sized_page.locator("#epsilon-chart circle")).to_have_count(2)
    expect(sized_page.locator("#epsilon-chart line[stroke-dasharray]")).to_have_count(1)  # the budget
    for text in ("central", "z = 1", "C = 0.0001", "δ = 0.000001", "ε ≤ 100"):
        expect(sized_page.locator("#privacy")).to_contain_text(text)
    expect(sized_page.locator("#training")).to_have_text("Training is open.")
    assert axe_violations(sized_page, axe_path) == []
