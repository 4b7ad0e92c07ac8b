"""The publish gate: a candidate scored on the bundle's public validation set before publishing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.protocol import FederatedClient
from server.app import create_app
from server.gate import VALIDATION_FILE
from tests.server.conftest import ADMIN_TOKEN


@pytest.fixture
def gated(bundle_dir, tmp_path) -> dict:
    """A real bundle (it carries validation.txt), two-client rounds, clients taking tickets."""
    return {"BUNDLE_DIR": str(bundle_dir), "DATA_DIR": str(tmp_path / "data"), "MIN_CLIENTS": 2,
            "MIN_CLIENTS_FLOOR": 2, "TICK_INTERVAL_S": 0, "LOG_LEVEL": "ERROR", "ADMIN_TOKEN": ADMIN_TOKEN,
            "SELECTION": "open", "IDENTITY": "", "MAX_UPDATE_NORM": 1000.0, "AGGREGATION": "plain",
            "DP_NOISE_MULTIPLIER": 0.0}


def upload_round(app, deltas: list[dict]) -> list[dict]:
    """Each delta from a new client."""
    answers = []
    for delta in deltas:
        fed = FederatedClient(app.test_client())
        answers.append(fed.upload(delta, fed.ticket(), 10, 5.0, 4.0))
    return answers


def test_the_gate_refuses_a_version_whose_validation_loss_jumps(gated):
    """Two agreeing clients add noise to every weight (influence unbounded here, to test the gate
    alone). The candidate's validation loss jumps (3.7 to about 20); it is not published, the
    round is recorded as refused with the reason, the parent stays current and a new round opens
    on it."""
    # Prepare
    app = create_app({**gated, "INFLUENCE": "none"})
    coordinator = app.extensions["fedurl.coordinator"]
    v1 = coordinator.store.weights(1)
    rng = np.random.default_rng(0)
    wreck = {n: (rng.normal(size=a.shape) * 0.5).astype(np.float32) for n, a in v1.items()}
    # Execute
    answers = upload_round(app, [wreck, wreck])
    status = app.test_client().get("/api/status").get_json()
    # Assert
    assert answers[-1]["version"] == 1 and coordinator.version == 1
    assert sorted(p.name for p in (coordinator.store.root).iterdir()) == ["1"]
    refused = status["rounds"][0]
    assert refused["status"] == "refused" and refused["result_version"] is None
    assert "validation loss" in refused["detail"] and "stays current" in refused["detail"]
    assert status["gate"] == "on" and status["round"]["base_version"] == 1
    assert status["round"]["id"] == refused["id"] + 1


def test_the_gate_publishes_a_round_within_the_tolerance(gated):
    """A tiny step is scored and published."""
    app = create_app(gated)
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    nudge = {n: np.full(a.shape, 1e-4, np.float32) for n, a in v1.items()}
    assert upload_round(app, [nudge, nudge])[-1]["version"] == 2


def test_the_validation_set_is_kept_and_checked_on_every_start(gated):
    """The first start copies it into the data dir; a changed copy stops the next start."""
    create_app(gated)
    kept = Path(gated["DATA_DIR"]) / VALIDATION_FILE
    assert kept.is_file() and kept.read_text().count("\n") == 200
    kept.write_text("example.com\n")
    with pytest.raises(RuntimeError, match="validation sha256"):
        create_app(gated)
