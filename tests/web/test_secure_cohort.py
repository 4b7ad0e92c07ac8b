"""A secure round ([T1]) of three pages and two Python clients through the real server: each page's
training worker runs its side of the protocol with secagg.js, and the server unmasks only the sum."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from page_helpers import pages_ready_to_train
from playwright.sync_api import expect

from client.protocol import FederatedClient, SecureParticipant
from server import db

TRAINING_MS = 180_000  # three browsers on two cores, then four phases
HISTORIES = [["qxalpha.org/docs"], ["qxbeta.net/download"], ["qxgamma.com/search"]]
PYTHON_MEMBERS = 2

@pytest.fixture
def server_config(server_config):
    """Secure aggregation over a drawn cohort of exactly the three pages and the two Python clients."""
    return {**server_config, "SELECTION": "cohort", "OVER_SELECTION": 0.0, "AGGREGATION": "secure",
            "MIN_CLIENTS": len(HISTORIES) + PYTHON_MEMBERS, "SECURE_PHASE_S": 600.0}


def python_member(base_url: str, failures: list) -> None:
    """Enroll, check in until drawn, then take part in every phase with a small random delta."""
    try:
        fed = FederatedClient(base_url)
        fed.enroll()
        while fed.check_in()["state"] != "selected":
            threading.Event().wait(0.2)
        model = fed.fetch_model()
        size = sum(int(np.prod(p["shape"])) for p in model["manifest"]["parameters"])
        member = SecureParticipant(fed, fed.ticket(), np.random.default_rng().normal(0, 1e-3, size))
        member.run(poll_s=0.3)
    except Exception as error:  # reported by the test's thread
        failures.append(error)


def test_three_pages_and_two_python_clients_complete_one_secure_round(browser, base_url, live_app):
    # Prepare
    contexts, pages = pages_ready_to_train(browser, base_url, HISTORIES)
    for page in pages:
        expect(page.locator("#aggregation-mode")).to_contain_text("secure")
    failures: list = []
    threads = [threading.Thread(target=python_member, args=(base_url, failures), daemon=True)
               for _ in range(PYTHON_MEMBERS)]
    # Execute
    for thread in threads:
        thread.start()
    for page in pages:
        page.get_by_role("button", name="Train now").click()
    # Assert
    for page in pages:
        expect(page.locator("#server-answer")).to_contain_text("Masked update accepted", timeout=TRAINING_MS)
        expect(page.locator("#model-version")).to_have_text("version 2", timeout=TRAINING_MS)
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    record = live_app.extensions["fedurl.coordinator"].manifest["aggregation"]
    assert (record["mode"], record["survivors"], record["dropped"]) == ("secure", 5, 0)
    with db.transaction(live_app.extensions["fedurl.engine"]) as conn:
        assert len(db.cohort(conn, 1)) == 5
        assert db.accepted_count(conn) == 0  # no update in clear
    for context in contexts:
        context.close()
