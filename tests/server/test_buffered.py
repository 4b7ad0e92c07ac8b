"""FedBuff (SCHEDULE=buffered): a server step at exactly K accepted updates, no deadline, latecomers
carried into the next buffer (row and body), on SQLite and PostgreSQL; several workers on one
PostgreSQL fold exactly K per step under concurrent uploads.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from client.protocol import FederatedClient
from formats.bundle import load_bundle
from server import db, schema
from server.app import create_app
from server.rounds import Verdict
from server.spool import INCOMING
from tests.server.conftest import write_tiny_bundle
from tests.server.test_durability import PARAMETERS, deltas_for
from tests.server.test_rounds import coordinator, disk_full, upload, weights
from tests.server.test_workers import OPEN, WORKERS, rows, start_workers, stop_all

BOTH = pytest.mark.databases("sqlite", "postgresql")
K = 3


@pytest.fixture
def buffered(config) -> dict:
    """The test server's settings with FedBuff buffers of K."""
    return {**config, "SCHEDULE": "buffered", "MIN_CLIENTS": K}


@BOTH
def test_a_buffer_steps_at_k_updates_and_never_at_a_deadline(buffered):
    """Two updates past the deadline stay in the buffer (sync would close at its floor of 2); the
    third makes the step."""
    # Prepare
    app = create_app(buffered)
    client = app.test_client()
    upload(client, 0.1)
    upload(client, 0.2)
    # Execute
    coordinator(app).clock = lambda: time.time() + app.config["ROUND_DEADLINE_S"] + 1
    coordinator(app).tick()
    waited = coordinator(app).version
    third = upload(client, 0.6)
    # Assert
    assert waited == 1 and third["version"] == 2
    assert FederatedClient(client).status()["rounds"][0]["close_reason"] == "buffer_full"


@BOTH
def test_latecomers_of_a_full_buffer_are_the_next_buffer(buffered, monkeypatch):
    """Five updates arrive while the step cannot be recorded: the step then folds exactly the first
    three, the other two wait in the next round (rows and bodies), survive a restart, and make the
    next step with one more."""
    # Prepare: the step fails (disk full) until five updates are in
    app = create_app(buffered)
    with monkeypatch.context() as patch:  # (undo() would also drop conftest's engine tracking)
        patch.setattr(db, "record_version", disk_full)
        for value in (0.1, 0.2, 0.3, 0.4, 0.5):
            upload(app.test_client(), value)
    v1 = weights(app, 1)
    # Execute
    coordinator(app).tick()
    waiting = coordinator(app).progress().updates
    restarted = create_app(buffered)
    upload(restarted.test_client(), 0.6)
    # Assert: version 2 is the mean of the first three, version 3 of the two latecomers and the last
    assert waiting == 2 and coordinator(restarted).version == 3
    for name, array in weights(restarted, 2).items():
        np.testing.assert_allclose(array, v1[name] + 0.2, rtol=1e-6)
    for name, array in weights(restarted, 3).items():
        np.testing.assert_allclose(array, v1[name] + 0.2 + 0.5, rtol=1e-6, atol=1e-7)
    rounds = FederatedClient(restarted.test_client()).status()["rounds"]
    assert [r["participants"] for r in rounds[:2]] == [K, K]


@BOTH
def test_a_step_that_fails_after_linking_the_latecomers_loses_none(buffered, monkeypatch):
    """A crash between the latecomers' links and the commit: the round is still the old one with all
    five updates, the stray links are swept at start, and the step is redone."""
    # Prepare: five updates while the step cannot be recorded; then it dies after the links
    app = create_app(buffered)
    with monkeypatch.context() as patch:
        patch.setattr(db, "record_version", disk_full)
        for value in (0.1, 0.2, 0.3, 0.4, 0.5):
            upload(app.test_client(), value)
    spool = coordinator(app).spool
    carry = spool.carry

    def carry_then_crash(*args):
        carry(*args)
        raise OSError("killed")

    monkeypatch.setattr(spool, "carry", carry_then_crash)
    coordinator(app).tick()
    stuck = (coordinator(app).version, coordinator(app).progress().updates)
    linked = sorted(p.name for p in (Path(buffered["DATA_DIR"]) / "spool").iterdir() if p.name != INCOMING)
    v1 = weights(app, 1)
    # Execute
    restarted = create_app(buffered)
    # Assert
    assert stuck == (1, 5) and linked == ["1", "2"]
    assert coordinator(restarted).version == 2 and coordinator(restarted).progress().updates == 2
    for name, array in weights(restarted, 2).items():
        np.testing.assert_allclose(array, v1[name] + 0.2, rtol=1e-6)
    assert upload(restarted.test_client(), 0.6)["version"] == 3


@BOTH
def test_a_stale_update_keeps_its_staleness_weight(buffered):
    """A delta trained on version 1 that arrives after two steps weighs examples * 3 ** -0.5."""
    # Prepare
    app = create_app(buffered)
    client = app.test_client()
    late = FederatedClient(client)
    late_ticket = late.ticket()
    for _ in range(2 * K):
        upload(client, 0.0)
    v3 = weights(app, 3)
    # Execute
    upload(client, 1.0, 10, late_ticket, late)
    upload(client, 0.0, 10)
    upload(client, 0.0, 10)
    # Assert
    stale = 10 * 3 ** -0.5
    for name, array in weights(app, 4).items():
        np.testing.assert_allclose(array, v3[name] + stale / (stale + 20), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("change", "message"), [
    ({"AGGREGATION": "secure", "SELECTION": "cohort"}, "not implemented with AGGREGATION=secure"),
    ({"SELECTION": "cohort"}, "set SELECTION=open"),
    ({"SCHEDULE": "fedasync"}, "SCHEDULE must be one of sync, buffered"),
    ({"MAX_STALENESS": -1}, "MAX_STALENESS must be 0 or more"),
])
def test_settings_a_buffer_cannot_honour_stop_the_start(buffered, change, message):
    """Secure buffers, cohorts, unknown schedules and negative staleness are refused at start."""
    with pytest.raises(ValueError, match=message):
        create_app({**buffered, **change})


def test_max_staleness_defaults_to_the_schedule(config):
    """Unset, MAX_STALENESS is 1 for rounds and 20 for buffers; a set value is kept."""
    sync = create_app(config).config["MAX_STALENESS"]
    buffered = create_app({**config, "SCHEDULE": "buffered"}).config["MAX_STALENESS"]
    chosen = create_app({**config, "SCHEDULE": "buffered", "MAX_STALENESS": 3}).config["MAX_STALENESS"]
    assert (sync, buffered, chosen) == (1, 20, 3)


def test_several_workers_fold_exactly_k_per_step_under_concurrent_uploads(tmp_path, postgresql_url):
    """48 uploads through 3 workers, 16 at a time, buffers of 4: every step folds exactly 4 updates,
    each accepted update is in exactly one step or the open buffer, and every version is its parent
    plus the exact staleness-weighted mean of its step's rows."""
    # Prepare
    bundle = write_tiny_bundle(tmp_path / "bundle", PARAMETERS)
    data_dir, count, k = tmp_path / "data", 48, 4
    workers = start_workers(bundle, data_dir, postgresql_url,
                            {**OPEN, "SCHEDULE": "buffered", "MIN_CLIENTS": k})
    try:
        clients = [FederatedClient(workers[i % WORKERS].url) for i in range(count)]
        tickets = [client.ticket() for client in clients]
        deltas = dict(zip([c.client_id for c in clients], deltas_for(count, seed=5), strict=True))
        examples = {c.client_id: 5 + i for i, c in enumerate(clients)}

        def send(i: int) -> dict:
            """Upload through another worker than the one that issued the ticket."""
            uploader = FederatedClient(workers[(i + 1) % WORKERS].url, client_id=clients[i].client_id)
            return uploader.upload(deltas[clients[i].client_id], tickets[i], examples[clients[i].client_id],
                                   5.0, 4.0)

        # Execute
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, range(count)))
    finally:
        stop_all(workers)
    # Assert: exactly k per step, each update once
    updates, rounds = rows(postgresql_url, schema.updates), rows(postgresql_url, schema.rounds)
    versions = sorted(rows(postgresql_url, schema.versions), key=lambda v: v.version)
    by_round = {r.id: [u for u in updates if u.round_id == r.id] for r in rounds}
    closed = [r for r in rounds if r.status == "closed"]
    assert all(a["accepted"] for a in answers)
    assert sorted(u.client_id for u in updates) == sorted(deltas)
    assert [len(by_round[r.id]) for r in closed] == [k] * len(closed)
    assert len(closed) == count // k and len(updates) == count  # nothing is left in the open buffer
    assert [v.round_id for v in versions[1:]] == [r.id for r in closed]
    # Assert: every version is its parent plus the weighted mean of exactly its step's rows
    for version in versions[1:]:
        parent = load_bundle(data_dir / "versions" / str(version.parent)).load_weights()
        new = load_bundle(data_dir / "versions" / str(version.version)).load_weights()
        members = by_round[version.round_id]
        weights_ = [examples[u.client_id] * (1 + u.staleness) ** -0.5 for u in members]
        for name in PARAMETERS:
            pairs = zip(weights_, [deltas[u.client_id] for u in members], strict=True)
            mean = sum(w * d[name].astype(np.float64) for w, d in pairs) / sum(weights_)
            np.testing.assert_allclose(new[name], parent[name] + mean, rtol=1e-5, atol=1e-7)
    assert not list((data_dir / "spool").rglob("*.st")), "closed steps leave no bodies behind"



@BOTH
def test_a_refused_step_still_carries_its_latecomers(buffered, monkeypatch):
    """The gate refuses a step of five buffered updates: its first three go with the refused round,
    the two latecomers are the next buffer on the same version."""
    # Prepare
    app = create_app(buffered)
    with monkeypatch.context() as patch:
        patch.setattr(db, "record_version", disk_full)
        for value in (0.1, 0.2, 0.3, 0.4, 0.5):
            upload(app.test_client(), value)
    v1 = weights(app, 1)
    # Execute
    coordinator(app).gate = lambda parent, candidate: Verdict(False, "worse than its parent")
    coordinator(app).tick()
    carried = (coordinator(app).version, coordinator(app).progress().updates)
    coordinator(app).gate = None
    upload(app.test_client(), 0.6)
    # Assert
    assert carried == (1, 2)
    assert [r["status"] for r in FederatedClient(app.test_client()).status()["rounds"][:2]] == ["refused",
                                                                                                 "closed"]
    for name, array in weights(app, 2).items():
        np.testing.assert_allclose(array, v1[name] + 0.5, rtol=1e-6, atol=1e-7)
