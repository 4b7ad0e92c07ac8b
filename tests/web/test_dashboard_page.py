"""The dashboard (server/templates/dashboard.html, server/static/dashboard.js) as people see it:
legends, whole-number axes, empty states, landmarks, links, an icon, and axe-core at both sizes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from page_helpers import ADMIN_TOKEN, axe_violations
from playwright.sync_api import expect

from client.protocol import FederatedClient


def publish_version_2(app) -> None:
    """One client's update (with losses) closes round 1 into version 2; one request is refused."""
    client = FederatedClient(app.test_client())
    client.enroll()  # the page's server asks for a (cheap) proof of work
    zeros = {name: np.zeros(t.shape, np.float32) for name, t in client.global_weights().items()}
    client.upload(zeros, client.ticket(), num_examples=4, loss_before=3.1, loss_after=2.7)
    app.test_client().post("/api/admin/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    app.test_client().post("/api/tickets", data="not json")  # refused: bad_content_type


def open_dashboard(page):
    """Go to the dashboard and wait for its first /api/status to be drawn."""
    page.goto("/dashboard")
    expect(page.locator("#updated")).to_contain_text("updated")
    return page


def test_empty_federation_says_so(page):
    """A fresh server: the refusals table says there are none, axes count in whole numbers,
    each chart has a legend with colour keys, and there is a main landmark and a way back."""
    open_dashboard(page)
    expect(page.locator("#aggregation")).to_have_text("plain")  # the web tests' server runs plain mode
    expect(page.locator("#refusals tbody")).to_have_text("No refused requests.")
    for chart in ("clients-chart", "versions-chart"):
        labels = page.locator(f"#{chart} text").all_text_contents()
        assert labels and not any(re.fullmatch(r"\d+\.\d+", text) for text in labels), labels
    for legend, count in (("loss-legend", 2), ("clients-legend", 2), ("versions-legend", 3)):
        expect(page.locator(f"#{legend} li")).to_have_count(count)
        expect(page.locator(f"#{legend} .key")).to_have_count(count)
    expect(page.get_by_role("main")).to_have_count(1)
    expect(page.get_by_role("link", name="URL autocomplete page")).to_have_attribute("href", "/")
    assert page.request.get("/favicon.ico").ok


@pytest.mark.parametrize("state", ["empty", "version-2"])
def test_axe_finds_no_violation_on_the_dashboard(sized_page, live_app, axe_path, screenshots, state):
    """axe-core: 0 violations on the dashboard, fresh and after a round with a refusal."""
    if state == "version-2":
        publish_version_2(live_app)
    page = open_dashboard(sized_page)
    if state == "version-2":
        expect(page.locator("#version")).to_have_text("2")
        expect(page.locator("#refusals tbody")).to_contain_text("bad_content_type")
    page.screenshot(path=screenshots / f"dashboard-{page.size}-{state}.png", full_page=True)
    assert axe_violations(page, axe_path) == []
