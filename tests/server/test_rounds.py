"""Round life cycle: closing rules, staleness, restart, crash debris, optimizer state."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient, ProtocolError, encode_update
from formats import durable
from formats.bundle import MANIFEST
from formats.update import Q8, decode_update, dequantise
from server import db
from server.app import create_app
from tests.server.conftest import small_delta, snapshot, write_tiny_bundle

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def upload(client, value: float, examples: int = 10, ticket: dict | None = None, fed=None) -> dict:
    """One client uploads a constant delta; returns the 202 body."""
    fed = fed or FederatedClient(client)
    return fed.upload(small_delta(value), ticket or fed.ticket(), examples, 5.0, 4.0)


def coordinator(app):
    """The app's coordinator."""
    return app.extensions["fedurl.coordinator"]


def weights(app, version: int) -> dict:
    """A version's weights from disk."""
    return coordinator(app).store.weights(version)


def test_round_closes_exactly_at_min_clients(client):
    """Updates 1 and 2 leave version 1; the third (MIN_CLIENTS = 3) publishes version 2."""
    assert [upload(client, 0.1)["version"] for _ in range(2)] == [1, 1]
    third = upload(client, 0.1)
    assert (third["version"], third["round"], third["updates_in_round"]) == (2, 1, 3)
    assert FederatedClient(client).fetch_model()["round"] == 2


def test_deadline_closes_with_the_floor(app, client):
    """Past the deadline, a round with MIN_CLIENTS_FLOOR updates closes on the next tick."""
    upload(client, 0.1)
    upload(client, 0.3)
    coordinator(app).tick()
    assert coordinator(app).version == 1  # deadline not reached yet
    coordinator(app).clock = lambda: time.time() + app.config["ROUND_DEADLINE_S"] + 1
    coordinator(app).tick()
    assert coordinator(app).version == 2
    assert FederatedClient(client).status()["rounds"][0]["close_reason"] == "deadline"


def test_deadline_below_floor_waits_for_the_floor(app, client):
    """Past the deadline with one update nothing closes; the second update closes it at once."""
    coordinator(app).clock = lambda: time.time() + app.config["ROUND_DEADLINE_S"] + 1
    upload(client, 0.1)
    coordinator(app).tick()
    assert coordinator(app).version == 1
    assert upload(client, 0.1)["version"] == 2


def test_stale_update_is_down_weighted(config):
    """A delta one version old counts with weight examples * (1 + 1)^-1 (exponent 1)."""
    # Prepare
    app = create_app({**config, "STALENESS_EXPONENT": 1.0})
    client = app.test_client()
    late = FederatedClient(client)
    late_ticket = late.ticket()  # for version 1
    for _ in range(3):
        upload(client, 0.0)  # closes round 1 -> version 2
    v2 = weights(app, 2)
    # Execute: stale delta 1.0 with 10 examples (weight 5), two fresh zeros with 5 examples each
    upload(client, 1.0, 10, late_ticket, late)
    upload(client, 0.0, 5)
    upload(client, 0.0, 5)
    # Assert: mean = 5 * 1.0 / (5 + 5 + 5) = 1/3
    for name, array in weights(app, 3).items():
        np.testing.assert_allclose(array, v2[name] + 1 / 3, rtol=1e-6)
    assert late.status()["rounds"][1]["mean_staleness"] == pytest.approx(1 / 3)


def test_restart_resumes_the_open_round(config):
    """Two updates, a restart, a third update: the new version averages all three."""
    # Prepare
    first = create_app(config)
    upload(first.test_client(), 0.1)
    upload(first.test_client(), 0.2)
    v1 = weights(first, 1)
    # Execute
    second = create_app(config)
    resumed = coordinator(second).progress().updates
    upload(second.test_client(), 0.6)
    # Assert
    assert resumed == 2 and coordinator(second).version == 2
    for name, array in weights(second, 2).items():
        np.testing.assert_allclose(array, v1[name] + 0.3, rtol=1e-6)


def test_crash_between_publish_and_record_is_swept_and_redone(config):
    """A version dir the database never recorded (kill -9 after the rename), temp dirs and
    uncommitted update bodies are removed on start; the round is still open with its updates
    and closes again into a complete version."""
    # Prepare: two updates, then a half-done close: the directory is published, nothing recorded
    app = create_app(config)
    upload(app.test_client(), 0.1)
    upload(app.test_client(), 0.2)
    c = coordinator(app)
    c.store.write(c.manifest, 2, {n: a + 99 for n, a in c.weights.items()}, {}, {}, time.time())
    data = Path(config["DATA_DIR"])
    debris = [data / "versions" / ".tmp-2-crashed", data / "spool" / "1" / "f00d.st",
              data / "spool" / "1" / "x.tmp", data / "spool" / "0"]
    for path in debris:  # a half-written version; bodies written but never committed; an old round
        path.mkdir() if path.suffix == "" else path.write_bytes(b"half")
    stale, in_flight = data / "spool" / "incoming" / "old.tmp", data / "spool" / "incoming" / "new.tmp"
    for path in (stale, in_flight):  # staged bodies: a crash's, and another worker's upload in flight
        path.write_bytes(b"staged")
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    # Execute
    restarted = create_app(config)
    # Assert
    assert not any(path.exists() for path in debris) and not (data / "versions" / "2").exists()
    assert not stale.exists() and in_flight.exists()
    assert len(list((data / "spool" / "1").iterdir())) == 2  # the two committed bodies stay
    assert (coordinator(restarted).version, coordinator(restarted).progress().updates) == (1, 2)
    upload(restarted.test_client(), 0.3)
    for name, array in weights(restarted, 2).items():
        np.testing.assert_allclose(array, c.weights[name] + 0.2, rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["fedavgm", "fedadam"])
def test_optimizer_state_survives_restart(config, tmp_path, optimizer, another_database):
    """Two rounds with a restart between them give the same weights as two rounds without."""
    def two_rounds(data_dir: Path, restart: bool) -> dict:
        settings = {**config, "DATA_DIR": str(data_dir), "SERVER_OPTIMIZER": optimizer, **another_database()}
        app = create_app(settings)
        for value in (0.1, 0.2, 0.3):
            upload(app.test_client(), value)
        app = create_app(settings) if restart else app
        for value in (-0.1, 0.5, 0.2):
            upload(app.test_client(), value)
        assert coordinator(app).optimizer.name == optimizer
        return weights(app, 3)

    straight, restarted = two_rounds(tmp_path / "a", False), two_rounds(tmp_path / "b", True)
    for name in straight:
        np.testing.assert_array_equal(straight[name], restarted[name])


def test_server_lr_scales_the_step(config):
    """FedAvg with SERVER_LR 0.5 moves half the mean delta."""
    app = create_app({**config, "SERVER_LR": 0.5})
    v1 = weights(app, 1)
    for value in (0.2, 0.2, 0.2):
        upload(app.test_client(), value)
    for name, array in weights(app, 2).items():
        np.testing.assert_allclose(array, v1[name] + 0.1, rtol=1e-6)


def test_a_published_version_keeps_the_completion_settings(config, tmp_path):
    """The bundle's calibrated threshold (manifest "completion", docs/FORMAT.md) reaches every
    version the server publishes, so pages keep the operator's tau after a round."""
    bundle = write_tiny_bundle(tmp_path / "calibrated")
    manifest = json.loads((bundle / MANIFEST).read_text())
    durable.write_json(bundle / MANIFEST, {**manifest, "completion": {"min_probability": 0.003}})
    app = create_app({**config, "BUNDLE_DIR": str(bundle)})
    for value in (0.1, 0.1, 0.1):
        upload(app.test_client(), value)
    published = FederatedClient(app.test_client()).fetch_model()
    assert published["version"] == 2
    assert published["manifest"]["completion"] == {"min_probability": 0.003}


def test_f16_deltas_are_accepted(client, app):
    """A client may halve its upload with float16; the server widens it to float32."""
    fed = FederatedClient(client)
    v1 = weights(app, 1)
    fed.upload(small_delta(0.25), fed.ticket(), 10, 5.0, 4.0, dtype=np.float16)
    upload(client, 0.25)
    upload(client, 0.25)
    for name, array in weights(app, 2).items():
        np.testing.assert_allclose(array, v1[name] + 0.25, rtol=1e-6)


def test_q8_deltas_are_averaged_as_they_decode(config, tmp_path):
    """Q8 uploads (int8, a float32 scale per 64 values) are accepted and the close averages
    exactly what they decode to: oracle, each body decoded here and the float32 mean taken. A
    200-value parameter has three full blocks and a short one, so a scale applied to the wrong
    block (or the short block's) would show.
    """
    # Prepare
    shapes = {"embed.weight": (40, 5), "head.bias": (5,)}
    app = create_app({**config, "BUNDLE_DIR": str(write_tiny_bundle(tmp_path / "q8", shapes))})
    v1, rng = weights(app, 1), np.random.default_rng(3)
    bodies = []
    for _ in range(3):  # MIN_CLIENTS
        fed = FederatedClient(app.test_client())
        delta = {name: rng.normal(scale=0.02, size=s).astype(np.float32) for name, s in shapes.items()}
        body = encode_update(delta, fed.ticket(), fed.client_id, 10, 5.0, 4.0, Q8, rng)
        # Execute
        fed.post_update(body)
        bodies.append(decode_update(body, 1000).tensors)
    # Assert
    for name in shapes:
        mean = np.mean([dequantise(t[name], t[name + "#scale"]) for t in bodies], axis=0, dtype=np.float32)
        np.testing.assert_allclose(weights(app, 2)[name], v1[name] + mean, rtol=1e-6, atol=1e-7)
    assert coordinator(app).version == 2


def disk_full(*args):
    """Stand-in for a write that fails."""
    raise OSError("No space left on device")


@pytest.mark.parametrize("step", ["stage", "place"])
def test_a_failed_store_is_a_json_500_and_keeps_the_ticket(app, client, monkeypatch, step):
    """A body that cannot be stored (staged, or renamed into its round): 500 internal_error,
    nothing recorded, no staged file left, the ticket still works."""
    # Prepare
    fed = FederatedClient(client)
    ticket = fed.ticket()
    monkeypatch.setattr(coordinator(app).spool, step, disk_full)
    before = snapshot(app)
    # Execute
    with pytest.raises(ProtocolError) as failed:
        fed.upload(small_delta(), ticket, 10, 5.0, 4.0)
    # Assert
    assert (failed.value.status, failed.value.code) == (500, "internal_error")
    assert snapshot(app) == before
    assert not list(coordinator(app).spool.incoming.iterdir())
    monkeypatch.undo()
    assert fed.upload(small_delta(), ticket, 10, 5.0, 4.0)["updates_in_round"] == 1


def test_a_failed_close_keeps_the_round_and_its_updates(app, client, monkeypatch):
    """If recording the new version fails, the triggering upload is still accepted, the round
    stays open, and the next tick sweeps the orphaned directory and publishes the version."""
    # Prepare: the version row cannot be written once
    c = coordinator(app)
    monkeypatch.setattr(db, "record_version", disk_full)
    upload(client, 0.1)
    upload(client, 0.2)
    # Execute
    third = upload(client, 0.3)
    stuck = (c.version, c.progress().updates, (Path(app.config["DATA_DIR"]) / "versions" / "2").exists())
    monkeypatch.undo()
    c.tick()
    # Assert
    assert third == {"accepted": True, "round": 1, "updates_in_round": 3, "version": 1}
    assert stuck == (1, 3, True)
    assert c.version == 2 and FederatedClient(client).status()["rounds"][0]["participants"] == 3


def test_an_upload_whose_close_cannot_even_start_is_still_accepted(app, client, monkeypatch):
    """The close an upload triggers runs after its commit: when reading the round back fails there
    (the round lock's connection dropped, a spool read error), the upload is stored and counted
    all the same, so it is answered 202, not a 5xx that says "not stored"; the next tick closes.
    Before, only a failure inside the publish was caught, and the third upload got a 500."""
    # Prepare: the close's read-back of the round fails once (its sweep of the spool)
    c = coordinator(app)
    upload(client, 0.1)
    upload(client, 0.2)
    monkeypatch.setattr(c.spool, "sweep", disk_full)
    # Execute
    third = upload(client, 0.3)
    stuck = (c.version, c.progress().updates)
    monkeypatch.undo()
    c.tick()
    # Assert
    assert third == {"accepted": True, "round": 1, "updates_in_round": 3, "version": 1}
    assert stuck == (1, 3)
    assert c.version == 2 and FederatedClient(client).status()["rounds"][0]["participants"] == 3


@pytest.mark.parametrize("case", ["made_up", "used", "expired", "other_client"])
def test_a_bad_ticket_is_refused_before_the_body_is_decoded_or_written(app, client, monkeypatch, case):
    """An upload whose ticket cannot be used is refused from its header alone: its body is never
    decoded nor staged (a flood of made-up tickets cost a 1 MB write and fsync each), and nothing
    changes. Fails on the code that staged and decoded before the ticket lookup.
    """
    # Prepare
    fed = FederatedClient(client)
    ticket = fed.ticket()
    if case == "made_up":
        ticket = {**ticket, "ticket": "made-up-ticket-0123456789"}
    elif case == "used":
        fed.upload(small_delta(), ticket, 10, 5.0, 4.0)
    elif case == "expired":
        coordinator(app).clock = lambda: time.time() + app.config["TICKET_TTL_S"] + 1
    else:
        fed = FederatedClient(client, client_id="someone-else-0123")
    calls: list[str] = []
    spool = coordinator(app).spool
    monkeypatch.setattr(spool, "stage", lambda *a: calls.append("stage"))
    monkeypatch.setattr("server.api.decode_upload", lambda *a: calls.append("decode"))
    before = snapshot(app)
    # Execute
    with pytest.raises(ProtocolError) as refused:
        fed.upload(small_delta(), ticket, 10, 5.0, 4.0)
    # Assert
    codes = {"made_up": "ticket_invalid", "used": "ticket_reused", "expired": "ticket_expired",
             "other_client": "ticket_mismatch"}
    assert (refused.value.status, refused.value.code) == (409 if case == "used" else 403, codes[case])
    assert calls == []
    assert not list(spool.incoming.iterdir())
    assert snapshot(app) == before


@pytest.mark.parametrize("case", ["unknown_version", "duplicate_client"])
def test_a_ticket_refused_for_what_its_upload_says_pays_for_one_body_only(app, client, monkeypatch, case):
    """An upload refused after its body was staged, for its base version or its client, spends its
    ticket: the same upload sent again is refused from its header, and twenty tries stage one body
    (before: the refusal rolled the claim back, and one ticket paid for a fsynced body per try)."""
    # Prepare
    fed = FederatedClient(client)
    if case == "duplicate_client":
        fed.upload(small_delta(), fed.ticket(), 10, 5.0, 4.0)  # counted in the open round
    ticket = fed.ticket()
    if case != "duplicate_client":  # the body's base_version is the client's to say
        ticket = {**ticket, "version": 999}
    spool = coordinator(app).spool
    stage, staged = spool.stage, []
    monkeypatch.setattr(spool, "stage", lambda body: staged.append(1) or stage(body))
    # Execute
    codes = []
    for _ in range(20):
        with pytest.raises(ProtocolError) as refused:
            fed.upload(small_delta(), ticket, 10, 5.0, 4.0)
        codes.append(refused.value.code)
    # Assert
    assert codes == [case] + ["ticket_spent"] * 19
    assert len(staged) == 1 and not list(spool.incoming.iterdir())
    assert "refused for its version, round or client" in refused.value.message


def test_an_accepted_upload_runs_five_statements_six_on_postgresql(app, client, database):
    """Look the ticket up (before the body is decoded or staged, outside any lock), read the round,
    claim the ticket (one UPDATE ... RETURNING), insert, count. PostgreSQL adds the shared round
    lock and counts after the commit instead of inside the transaction (another worker's upload may
    have committed meanwhile); it counted in both places before (seven). It was four: the first
    SELECT is new, the price of refusing a made-up ticket before its 1 MB is written and fsynced
    (the claim stays: the ticket may be used meanwhile). Before that it was six: a ticket SELECT
    before its UPDATE, and a duplicate SELECT before the insert that the unique (round, client)
    key already refuses.
    """
    # Prepare
    fed = FederatedClient(client)
    ticket = fed.ticket()
    statements: list[str] = []
    engine = db.get_engine(app)

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement.split()[0])

    sa.event.listen(engine, "before_cursor_execute", record)
    # Execute
    try:
        upload(client, 0.1, ticket=ticket, fed=fed)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    # Assert
    claim = ["SELECT", "UPDATE", "INSERT"]
    assert statements == (["SELECT", "SELECT", *claim, "SELECT"] if database == "postgresql"
                          else ["SELECT", *claim, "SELECT"])


def test_a_dropped_database_connection_fails_one_request_with_503_and_the_next_reconnects(
        app, client, database, request):
    """Without a ping before every transaction (a round trip each, three per upload), a connection
    the database dropped is found by the request that uses it: that request is answered 503
    database_unavailable (retried by every client) instead of a 500, and the pool then replaces
    every connection older than the failure, so the next request succeeds.
    """
    if database != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    # Prepare: a pooled connection, then the server drops every backend of the app's database
    fed = FederatedClient(client)
    fed.ticket()
    dropped = request.getfixturevalue("postgresql_cluster").drop_connections(db.get_engine(app).url.database)
    # Execute
    first = client.post("/api/tickets", json={"client_id": fed.client_id})
    second = client.post("/api/tickets", json={"client_id": fed.client_id})
    # Assert
    assert dropped >= 1
    assert (first.status_code, first.get_json()["error"]) == (503, "database_unavailable")
    assert first.headers["Retry-After"] == "1"
    assert second.status_code == 201 and second.get_json()["ticket"]


def test_a_dropped_connection_under_the_round_lock_is_a_503_too(app, client, database, request,
                                                                admin_headers):
    """The round lock takes a pooled connection of its own (``db.round_lock``): an admin close, the
    first request after the database dropped every connection, was answered 500 internal_error
    (the raw OperationalError) instead of 503 database_unavailable; the retry closes the round.
    """
    if database != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    # Prepare: one update, then the database drops the app's connections
    upload(client, 0.1)
    request.getfixturevalue("postgresql_cluster").drop_connections(db.get_engine(app).url.database)
    # Execute
    first = client.post("/api/admin/close", headers=admin_headers)
    second = client.post("/api/admin/close", headers=admin_headers)
    # Assert
    assert (first.status_code, first.get_json()["error"]) == (503, "database_unavailable")
    assert second.status_code == 200 and second.get_json()["version"] == 2


def test_a_database_refusing_connections_is_a_503(app, client, database, request):
    """While PostgreSQL restarts it refuses new connections ("the database system is starting
    up"): after the request that found its connection dropped, the next ones failed to connect and
    were answered 500 internal_error ("the update was not stored") instead of 503
    database_unavailable, which every client retries after Retry-After; and the refusal counter
    (an after_request hook that reads the open round) turned even a 503 into a 500.
    """
    if database != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    # Prepare: the database takes no new connections, then drops the app's
    cluster, name = request.getfixturevalue("postgresql_cluster"), db.get_engine(app).url.database
    fed = FederatedClient(client)
    fed.ticket()
    cluster.allow_connections(name, False)
    cluster.drop_connections(name)
    # Execute
    try:
        answers = [client.post("/api/tickets", json={"client_id": fed.client_id}) for _ in range(2)]
    finally:
        cluster.allow_connections(name, True)
    back = client.post("/api/tickets", json={"client_id": fed.client_id})
    # Assert
    assert [(a.status_code, a.get_json()["error"], a.headers.get("Retry-After")) for a in answers] == [
        (503, "database_unavailable", "1")] * 2
    assert back.status_code == 201


def test_a_duplicate_upload_is_refused_by_the_unique_key_and_spends_its_ticket(app, client):
    """A second update of one client in a round: refused by the insert (its transaction, the
    claim included, rolls back), then its ticket is spent, with no update counted for it.
    """
    # Prepare
    fed = FederatedClient(client)
    upload(client, 0.1, fed=fed)
    second = fed.ticket()
    # Execute
    with pytest.raises(ProtocolError) as refused:
        upload(client, 0.1, ticket=second, fed=fed)
    # Assert
    assert refused.value.code == "duplicate_client"
    with db.transaction(db.get_engine(app)) as conn:
        assert db.find_ticket(conn, db.ticket_digest(second["ticket"])).used_at is not None
        assert not db.ticket_was_used(conn, db.ticket_digest(second["ticket"]))
    assert FederatedClient(client).status()["accepted"] == 1


def test_a_ticket_for_an_older_base_version_is_issued_while_its_update_would_be_accepted(client):
    """An update that waited (trained offline, or its ticket expired) gets a ticket for the version
    it was trained on while MAX_STALENESS (1) still accepts it, and is counted one version stale;
    two versions back, no ticket (before: a ticket was always for the current version, so the page
    discarded every update that outlived its ticket)."""
    # Prepare: one client trains on version 1 and waits; three others publish version 2
    waiting = FederatedClient(client)
    for _ in range(3):
        upload(client, 0.1)
    # Execute
    ticket = waiting.ticket(base_version=1)
    accepted = waiting.upload(small_delta(0.1), ticket, 10, 5.0, 4.0)
    for _ in range(2):
        upload(client, 0.1)
    late = FederatedClient(client)
    refusals = {}
    for base_version in (1, 999, "1"):
        with pytest.raises(ProtocolError) as refused:
            late.ticket(base_version=base_version)
        refusals[base_version] = (refused.value.status, refused.value.code)
    # Assert
    assert ticket["version"] == 1 and accepted["accepted"] and accepted["version"] == 2
    with db.transaction(db.get_engine(client.application)) as conn:
        staleness = conn.execute(sa.text("SELECT staleness FROM updates WHERE client_id = :c"),
                                 {"c": waiting.client_id}).scalar_one()
    assert staleness == 1
    assert refusals == {1: (409, "stale_version"), 999: (400, "unknown_version"), "1": (400, "bad_metadata")}
