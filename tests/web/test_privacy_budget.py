"""The page once the server's privacy budget is spent ([T1]): it says training has stopped for
privacy, offers no training, and still suggests."""

from __future__ import annotations

import pytest
from page_helpers import open_page, shown_suggestions
from playwright.sync_api import expect


@pytest.fixture
def server_config(server_config):
    """DP on with a budget below one round's epsilon: no round may train."""
    return {**server_config, "DP_NOISE_MULTIPLIER": 1.0, "DP_EPSILON_BUDGET": 0.1}


def test_the_page_says_training_stopped_for_privacy_and_still_suggests(page):
    open_page(page)
    expect(page.locator("#train-hint")).to_contain_text("Training has stopped for privacy")
    expect(page.locator("#auto-train")).to_contain_text("stopped for privacy")
    page.fill("#url", "example.org/a")
    page.keyboard.press("Enter")  # a visit: training would otherwise be offered
    expect(page.locator("#visit-note")).to_contain_text("Visited example.org/a")
    expect(page.get_by_role("button", name="Train now")).to_be_disabled()
    assert shown_suggestions(page, "goo"), "suggestions keep working"
