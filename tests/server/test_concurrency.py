"""Many uploads at the same instant through real HTTP: each is counted exactly once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from client.protocol import FederatedClient
from server.app import create_app
from study.background import serving
from tests.server.conftest import TINY_PARAMETERS

pytestmark = pytest.mark.databases("sqlite", "postgresql")

CLIENTS = 50


def test_fifty_concurrent_uploads_are_each_counted_once(config, admin_headers):
    """50 threads released together upload distinct deltas into one round; the running count
    takes every value 1..50 once, and the aggregate is exactly their weighted mean."""
    # Prepare: a round that stays open, tickets for all, distinct deltas and example counts
    app = create_app({**config, "MIN_CLIENTS": 1000, "REQUESTS_PER_ADDR_PER_MIN": 10_000})
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    rng = np.random.default_rng(7)
    deltas = [{n: rng.normal(scale=0.1, size=s).astype(np.float32) for n, s in TINY_PARAMETERS.items()}
              for _ in range(CLIENTS)]
    examples = list(range(1, CLIENTS + 1))
    with serving(app) as url:
        clients = [FederatedClient(url) for _ in range(CLIENTS)]
        tickets = [c.ticket() for c in clients]
        barrier = threading.Barrier(CLIENTS)

        def send(i: int) -> dict:
            barrier.wait()
            return clients[i].upload(deltas[i], tickets[i], examples[i], 5.0, 4.0)

        # Execute
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(send, range(CLIENTS)))
        status = clients[0].status()
        closed = app.test_client().post("/api/admin/close", headers=admin_headers)
    # Assert
    assert sorted(a["updates_in_round"] for a in answers) == list(range(1, CLIENTS + 1))
    assert status["round"]["updates"] == CLIENTS and status["accepted"] == CLIENTS
    assert status["rounds"][0]["examples"] == sum(examples)
    assert closed.status_code == 200
    v2 = app.extensions["fedurl.coordinator"].store.weights(2)
    for name in v1:
        pairs = zip(examples, deltas, strict=True)
        expected = sum(w * d[name].astype(np.float64) for w, d in pairs) / sum(examples)
        np.testing.assert_allclose(v2[name], v1[name] + expected, rtol=1e-5, atol=1e-7)
