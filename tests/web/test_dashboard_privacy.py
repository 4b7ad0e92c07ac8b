"""The dashboard's privacy parts ([T1]): epsilon per version against the budget, the settings, and
axe-core on them."""

from __future__ import annotations

import numpy as np
import pytest
from page_helpers import ADMIN_TOKEN, axe_violations
from playwright.sync_api import expect

from client.protocol import FederatedClient
from privacy import dp


@pytest.fixture
def server_config(server_config):
    """DP on; a tiny clip so one page's noisy round still passes the publish gate."""
    return {**server_config, "DP_NOISE_MULTIPLIER": 1.0, "DP_CLIP": 1e-4, "DP_EPSILON_BUDGET": 100.0}


def publish(app, rounds: int) -> None:
    """rounds versions, each from one client's zero delta closed by the admin."""
    for _ in range(rounds):
        client = FederatedClient(app.test_client())
        client.enroll()
        zeros = {name: np.zeros(t.shape, np.float32) for name, t in client.global_weights().items()}
        client.upload(zeros, client.ticket(), num_examples=4, loss_before=3.1, loss_after=2.7)
        app.test_client().post("/api/admin/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


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
