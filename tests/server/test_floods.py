"""[H] 6: a flood of refused requests writes nothing to disk; tickets expire and are capped."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient, ProtocolError
from server import db, schema
from server.app import create_app, housekeeping
from tests.server.conftest import small_delta


def rows(app, table) -> list[tuple]:
    """Every row of a table."""
    with db.transaction(db.get_engine(app)) as conn:
        return [tuple(row) for row in conn.execute(sa.select(table))]


def disk(config) -> dict[str, str]:
    """sha256 of every file of the database (main file, WAL, shared memory index excluded)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in Path(config["DATA_DIR"]).glob("fedurl.sqlite3*") if not p.name.endswith("-shm")}


def test_refusals_write_nothing_and_are_counted_in_memory_until_flushed(config):
    """Malformed bodies, unknown tickets and rate-limited requests leave the database files
    byte for byte unchanged; /api/status counts them at once; the ticker's flush writes the
    counts once, without counting them twice."""
    # Prepare
    app = create_app({**config, "REQUESTS_PER_ADDR_PER_MIN": 30})
    client = app.test_client()
    fed = FederatedClient(client)
    forged = {"ticket": "forged-ticket-000000000000", "version": 1}
    before = disk(config)
    # Execute
    codes = []
    for _ in range(40):
        try:
            fed.upload(small_delta(), forged, 10, 5.0, 4.0)
        except ProtocolError as refused:
            codes.append(refused.code)
        codes.append(client.post("/api/updates", data=b"x", content_type="application/octet-stream")
                     .get_json()["error"])
    counted = FederatedClient(client).status()["rejected"]
    unchanged = disk(config) == before
    stored_before_flush = rows(app, schema.rejections)
    housekeeping(app)
    # Assert
    assert unchanged and stored_before_flush == []
    assert {"ticket_invalid", "malformed_payload", "rate_limited"} <= set(codes)
    assert counted == {code: codes.count(code) for code in set(codes)}
    assert FederatedClient(client).status()["rejected"] == counted
    assert sum(total for _, _, total in rows(app, schema.rejections)) == len(codes)


def test_expired_tickets_are_pruned_and_a_used_one_still_reads_reused(config):
    """Tickets past their expiry by one more TTL are deleted by the ticker; a used ticket is still
    refused as ticket_reused afterwards (its update row remembers it)."""
    # Prepare
    app = create_app(config)
    fed = FederatedClient(app.test_client())
    used = fed.ticket()
    fed.upload(small_delta(), used, 10, 5.0, 4.0)
    for _ in range(3):
        FederatedClient(app.test_client()).ticket()
    coordinator = app.extensions["fedurl.coordinator"]
    # Execute
    housekeeping(app)
    kept = len(rows(app, schema.tickets))
    coordinator.clock = lambda: time.time() + 2 * config.get("TICKET_TTL_S", 900) + 1
    housekeeping(app)
    # Assert
    assert kept == 4 and rows(app, schema.tickets) == []
    with pytest.raises(ProtocolError) as refused:
        fed.upload(small_delta(), used, 10, 5.0, 4.0)
    assert refused.value.code == "ticket_reused"


def test_outstanding_tickets_are_capped_per_address(config):
    """Past MAX_TICKETS_PER_ADDR unused, unexpired tickets an address gets 429 and no ticket row is
    written; using one frees a slot."""
    # Prepare
    app = create_app({**config, "MAX_TICKETS_PER_ADDR": 3})
    clients = [FederatedClient(app.test_client()) for _ in range(4)]
    tickets = [c.ticket() for c in clients[:3]]
    # Execute
    with pytest.raises(ProtocolError) as capped:
        clients[3].ticket()
    written = len(rows(app, schema.tickets))
    clients[0].upload(small_delta(), tickets[0], 10, 5.0, 4.0)
    # Assert
    assert (capped.value.status, capped.value.code) == (429, "rate_limited")
    assert written == 3
    assert clients[3].ticket()["version"] == 1
