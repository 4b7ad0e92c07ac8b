"""make demo's round: one person's page and the simulated participants (fedurl-participants) form a
secure cohort; the page says how large it is, and the round publishes from the four of them."""

from __future__ import annotations

import threading

import pytest
from page_helpers import pages_ready_to_train
from playwright.sync_api import expect

from study import participants
from tests.conftest import REPO

TRAINING_MS = 180_000  # a page and three Python clients on two cores, then four phases
PARTICIPANTS = 3


@pytest.fixture
def server_config(server_config):
    """make demo's settings: secure, a cohort of the participants and one person, drawn at once."""
    return {**server_config, "SELECTION": "cohort", "OVER_SELECTION": 0.0, "AGGREGATION": "secure",
            "MIN_CLIENTS": PARTICIPANTS + 1, "SECURE_PHASE_S": 600.0}


def test_one_person_and_three_participants_complete_a_secure_round(browser, base_url, live_app):
    # Prepare: the participants check in and wait; the person visits two URLs
    stop = threading.Event()
    argv = ["--server", base_url, "--count", str(PARTICIPANTS), "--rounds", "1",
            "--urls", str(REPO / "pretrained" / "validation.txt"), "--urls-each", "8"]
    crowd = threading.Thread(target=participants.main, args=(argv, stop), daemon=True)
    crowd.start()
    contexts, (page,) = pages_ready_to_train(browser, base_url, [["qxdemo.org/docs", "qxdemo.org/blog"]])
    try:
        # Execute
        page.get_by_role("button", name="Train now").click()
        # Assert: the page names its cohort, then its masked update lands in version 2
        page.wait_for_function("document.getElementById('server-answer').textContent"
                               ".includes('cohort of 4 (you and 3 others)')", timeout=TRAINING_MS)
        expect(page.locator("#server-answer")).to_contain_text("Masked update accepted", timeout=TRAINING_MS)
        expect(page.locator("#model-version")).to_have_text("version 2", timeout=TRAINING_MS)
    finally:
        stop.set()
        crowd.join(timeout=60)
        for context in contexts:
            context.close()
    record = live_app.extensions["fedurl.coordinator"].manifest["aggregation"]
    assert (record["mode"], record["survivors"], record["dropped"]) == ("secure", 4, 0)
