"""A database the server cannot use for a while: a 503 the client retries, and a quiet ticker."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient
from server import app as server_app
from server import db

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def test_a_pool_whose_connections_are_all_busy_answers_503(config, monkeypatch):
    """Every pooled connection busy for POOL_TIMEOUT_S: SQLAlchemy's TimeoutError was a 500
    internal_error ("the update was not stored"); it is a 503 database_unavailable with
    Retry-After, like a refused connection, and the next request once one is free succeeds.
    """
    # Prepare: a short wait for a connection; the test holds every connection the pool has
    monkeypatch.setattr(db, "POOL_TIMEOUT_S", 0.2)
    app = server_app.create_app(config)
    client, engine = app.test_client(), db.get_engine(app)
    fed = FederatedClient(client)
    held: list[sa.Connection] = []
    with pytest.raises(sa.exc.TimeoutError):
        for _ in range(100):
            held.append(engine.connect())
    # Execute
    try:
        busy = client.post("/api/tickets", json={"client_id": fed.client_id})
    finally:
        for connection in held:
            connection.close()
    back = client.post("/api/tickets", json={"client_id": fed.client_id})
    # Assert
    assert len(held) >= 5
    assert (busy.status_code, busy.get_json()["error"], busy.headers.get("Retry-After")) == (
        503, "database_unavailable", "1")
    assert back.status_code == 201


def test_the_ticker_logs_an_outage_once_and_its_end_but_every_other_failure(
        app, database, request, monkeypatch, log_lines):
    """Three ticks while PostgreSQL refuses connections log one tick_failed line without a
    traceback (it logged a traceback every tick, e.g. every second of an outage), the next good
    tick logs tick_recovered; a failure of another kind logs its traceback every time.
    """
    if database != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    # Prepare
    cluster, name = request.getfixturevalue("postgresql_cluster"), db.get_engine(app).url.database
    down = False
    # Execute: three ticks with the database down, one after, two with a full disk
    cluster.allow_connections(name, False)
    cluster.drop_connections(name)
    try:
        for _ in range(3):
            down = server_app.tick(app, down)
    finally:
        cluster.allow_connections(name, True)
    down = server_app.tick(app, down)

    def disk_full() -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(app.extensions["fedurl.coordinator"], "prune_tickets", disk_full)
    for _ in range(2):
        down = server_app.tick(app, down)
    # Assert
    lines = [json.loads(line) for line in log_lines()]
    assert [(line["event"], "exception" in line) for line in lines] == [
        ("tick_failed", False), ("tick_recovered", False), ("tick_failed", True), ("tick_failed", True)]
    assert lines[0]["error"] and "No space left" in lines[2]["exception"]
    assert not down


def test_an_in_memory_sqlite_database_still_opens():
    """``sqlite://`` (in memory) opened before POOL_TIMEOUT_S was added; passing pool_timeout to its
    pool (one connection per thread, nothing to wait for) made create_engine a TypeError.
    """
    # Execute
    engine = db.create_engine("sqlite://")
    # Assert: migrated, and usable
    with db.reading(engine) as conn:
        assert db.quarantined_count(conn) == 0
