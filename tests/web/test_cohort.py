"""Three pages in a server-chosen cohort ([T2]): each enrolls once (a proof-of-work puzzle solved
by pow.js), checks in, waits to be drawn, and only then trains and uploads."""

from __future__ import annotations

import pytest
from page_helpers import pages_ready_to_train
from playwright.sync_api import expect

from server import db

TRAINING_MS = 120_000  # three browsers on two cores
HISTORIES = [["qxalpha.org/docs"], ["qxbeta.net/download"], ["qxgamma.com/search"]]


@pytest.fixture
def server_config(server_config):
    """The test server with the default selection (cohorts), drawing exactly the three pages."""
    return {**server_config, "SELECTION": "cohort", "OVER_SELECTION": 0.0}


def test_three_pages_are_drawn_into_one_cohort_and_close_the_round(browser, base_url, live_app):
    """No page gets a ticket before the third checks in; then all three train and the round closes."""
    # Prepare
    contexts, pages = pages_ready_to_train(browser, base_url, HISTORIES)
    # Execute: the first two wait, drawn by nobody, until the third checks in
    pages[0].get_by_role("button", name="Train now").click()
    pages[1].get_by_role("button", name="Train now").click()
    for page in pages[:2]:
        expect(page.locator("#server-answer")).to_contain_text("waiting", timeout=TRAINING_MS)
    pages[2].get_by_role("button", name="Train now").click()
    # Assert
    for page in pages:
        expect(page.locator("#server-answer")).to_contain_text("accepted", timeout=TRAINING_MS)
        expect(page.locator("#model-version")).to_have_text("version 2", timeout=TRAINING_MS)
    with db.transaction(live_app.extensions["fedurl.engine"]) as conn:
        assert len(db.cohort(conn, 1)) == 3
        assert all(db.is_enrolled(conn, client) for client, _ in db.cohort(conn, 1))
    for context in contexts:
        context.close()
