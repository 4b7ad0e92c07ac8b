"""A database the server cannot use for a while: a 503 the client retries, and a quiet ticker."""

from __future__ import annotations

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

