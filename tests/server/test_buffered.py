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
import sqlalchemy as sa

from client.protocol import FederatedClient, ProtocolError
from formats.bundle import load_bundle
from server import db, schema
from server.app import create_app
from server.rounds import Verdict
from server.spool import INCOMING
from tests.server.conftest import small_delta, write_tiny_bundle
from tests.server.test_cohorts import ATTACKER, At
from tests.server.test_durability import PARAMETERS, deltas_for
from tests.server.test_rounds import coordinator, disk_full, upload, weights
from tests.server.test_workers import OPEN, WORKERS, rows, start_workers, stop_all

BOTH = pytest.mark.databases("sqlite", "postgresql")
K = 3


@pytest.fixture
def buffered(config) -> dict:
    """The test server's settings with FedBuff buffers of K; every test client uploads from
    127.0.0.1, so the per-network cap is raised past any buffer here (test_a_buffer_takes_... keeps it).
    """
    return {**config, "SCHEDULE": "buffered", "MIN_CLIENTS": K, "MAX_MEMBERS_PER_NETWORK": 100}


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
                            {**OPEN, "SCHEDULE": "buffered", "MIN_CLIENTS": k,
                             "MAX_MEMBERS_PER_NETWORK": 100})  # every upload comes from 127.0.0.1
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


# -- the per-network cap of a buffer ([X]/[T2], docs/SECURITY.md) -----------------------------------

def tried(fed: FederatedClient, ticket: dict, value: float = 0.5) -> dict | tuple[int, str]:
    """Upload a constant delta: the 202 body, or (status, code) of the refusal."""
    try:
        return fed.upload(small_delta(value), ticket, 10, 5.0, 4.0)
    except ProtocolError as refused:
        return refused.status, refused.code


def unused(engine, tickets: list[dict]) -> list[bool]:
    """Whether each ticket is still unused in the database."""
    with db.transaction(engine) as conn:
        return [db.find_ticket(conn, db.ticket_digest(t["ticket"])).used_at is None for t in tickets]


def bodies(data_dir: Path) -> list[Path]:
    """Every update body in the spool, staged or placed."""
    return [p for p in (data_dir / "spool").rglob("*") if p.is_file()]


@BOTH
def test_one_address_with_many_ids_lands_at_most_the_cap_in_any_buffer(config):
    """One address enrolls K + 1 ids (a proof of work each, as by default) and uploads from all:
    the buffer takes MAX_MEMBERS_PER_NETWORK (1), the others are 429 network_full with their
    tickets unused and no body left; honest clients on other networks fill the buffer, and a
    refused update sent again after the step is accepted, one version stale (before the cap, the
    address filled the buffer alone and made the step)."""
    # Prepare
    settings = {**config, "SCHEDULE": "buffered", "MIN_CLIENTS": K, "IDENTITY": "pow"}
    app = create_app(settings)
    web, engine = app.test_client(), app.extensions["fedurl.engine"]
    sybils = [FederatedClient(At(web, ATTACKER)) for _ in range(K + 1)]
    honest = [FederatedClient(At(web, f"198.51.{i}.7")) for i in range(K - 1)]
    for fed in sybils + honest:
        fed.enroll()
    tickets = [fed.ticket() for fed in sybils]
    # Execute
    first = [tried(fed, ticket) for fed, ticket in zip(sybils, tickets, strict=True)]
    alone = (coordinator(app).version, len(bodies(Path(settings["DATA_DIR"]))), unused(engine, tickets))
    stepped = [tried(fed, fed.ticket(), 0.1)["version"] for fed in honest]
    again = [tried(sybils[i], tickets[i]) for i in (1, 2)]
    # Assert: one seat per network per buffer, refusals leave nothing behind
    assert first[0]["accepted"] and first[1:] == [(429, "network_full")] * K
    assert alone == (1, 1, [False] + [True] * K)
    assert stepped == [1, 2]
    assert again[0]["accepted"] and again[0]["round"] == 2 and again[1] == (429, "network_full")
    assert seats(engine, 1) == [("198.51.0.0/24", 0), ("198.51.1.0/24", 0), ("203.0.113.0/24", 0)]
    assert seats(engine, 2) == [("203.0.113.0/24", 0)]


@BOTH
def test_an_upload_that_loses_the_race_for_a_seat_takes_the_next_or_is_refused(buffered, monkeypatch):
    """Uploads of one network that looked while seat 0 seemed free (as two workers racing do): the
    unique (round, network, seat) key makes each collide; the second then takes seat 1, and the
    third, with both seats taken, is network_full with its ticket unused."""
    # Prepare
    app = create_app({**buffered, "MIN_CLIENTS": 5, "MAX_MEMBERS_PER_NETWORK": 2})
    client, engine, taken = app.test_client(), app.extensions["fedurl.engine"], db.seats_taken
    upload(client, 0.1)
    looks: list[int] = []

    def racing(conn, round_id: int, network: str) -> set[int]:
        """The second's first look in _store, and the third's in vet_ticket and in _store, miss
        what the others committed."""
        looks.append(round_id)
        return set() if len(looks) in (2, 4, 5) else taken(conn, round_id, network)

    monkeypatch.setattr(db, "seats_taken", racing)
    racer, late = FederatedClient(client), FederatedClient(client)
    late_ticket = late.ticket()
    # Execute
    second = tried(racer, racer.ticket())
    third = tried(late, late_ticket)
    # Assert
    assert second["updates_in_round"] == 2 and third == (429, "network_full") and len(looks) == 6
    assert seats(engine, 1) == [("127.0.0.0/24", 0), ("127.0.0.0/24", 1)]
    assert unused(engine, [late_ticket]) == [True]


def test_a_full_networks_upload_is_refused_before_its_body_is_decoded_or_written(buffered, monkeypatch):
    """Its ticket stays unused, so the same body could come again and again: each time it is
    refused from its header and one look at the seats, never decoded nor staged."""
    # Prepare
    app = create_app({**buffered, "MAX_MEMBERS_PER_NETWORK": 1})
    client = app.test_client()
    upload(client, 0.1)
    fed = FederatedClient(client)
    ticket = fed.ticket()
    calls: list[str] = []
    spool = coordinator(app).spool
    monkeypatch.setattr(spool, "stage", lambda *a: calls.append("stage"))
    monkeypatch.setattr("server.api.decode_upload", lambda *a: calls.append("decode"))
    # Execute
    refused = [tried(fed, ticket) for _ in range(3)]
    # Assert
    assert refused == [(429, "network_full")] * 3 and calls == []
    assert not list(spool.incoming.iterdir())


@pytest.mark.parametrize("cap", [1, 100])
def test_a_second_update_of_a_client_in_a_buffer_is_a_duplicate_whether_or_not_seats_are_left(buffered, cap):
    """The client's own earlier update is what refuses it, not its network's seats."""
    # Prepare
    app = create_app({**buffered, "MAX_MEMBERS_PER_NETWORK": cap})
    fed = FederatedClient(app.test_client())
    upload(app.test_client(), 0.1, fed=fed)
    # Execute
    second = tried(fed, fed.ticket())
    # Assert
    assert second == (409, "duplicate_client")


def seats(engine, round_id: int) -> list[tuple[str, int]]:
    """(network, seat) of a round's update rows, sorted."""
    u = schema.updates.c
    with db.transaction(engine) as conn:
        query = sa.select(u.network, u.seat).where(u.round_id == round_id)
        return sorted((network, seat) for network, seat in conn.execute(query))


class Forwarded:
    """A client's transport whose requests reach a worker behind one trusted proxy (PROXY_HOPS=1)
    from addr."""

    def __init__(self, transport, addr: str):
        self.transport, self.addr = transport, addr

    def request(self, method: str, path: str, body, headers: dict):
        """The transport's request with X-Forwarded-For: addr."""
        return self.transport.request(method, path, body, {**headers, "X-Forwarded-For": self.addr})


def test_concurrent_uploads_from_one_network_never_exceed_the_cap_on_several_workers(tmp_path,
                                                                                     postgresql_url):
    """3 workers on PostgreSQL behind a proxy, buffers of 4, 2 seats per network: 36 uploads, 18 at a
    time, 30 of them from 30 addresses of one /24 and 6 from six other networks. No round ever holds
    more than 2 rows of a network, every refusal is network_full with its ticket unused, every other
    network's upload is accepted, and the spool holds exactly the rows' bodies."""
    # Prepare
    bundle = write_tiny_bundle(tmp_path / "bundle", PARAMETERS)
    data_dir, k, cap = tmp_path / "data", 4, 2
    workers = start_workers(bundle, data_dir, postgresql_url,
                            {**OPEN, "SCHEDULE": "buffered", "MIN_CLIENTS": k, "MAX_MEMBERS_PER_NETWORK": cap,
                             "PROXY_HOPS": 1})
    addrs = [f"203.0.113.{i + 1}" for i in range(30)] + [f"198.51.{i}.7" for i in range(6)]
    try:
        clients = []
        for i, addr in enumerate(addrs):
            fed = FederatedClient(workers[i % WORKERS].url)
            fed.transport = Forwarded(fed.transport, addr)
            clients.append(fed)
        tickets = [fed.ticket() for fed in clients]
        deltas = deltas_for(len(addrs), seed=6)

        def send(i: int) -> dict | tuple[int, str]:
            """Upload through another worker than the one that issued the ticket."""
            uploader = FederatedClient(workers[(i + 1) % WORKERS].url, client_id=clients[i].client_id)
            uploader.transport = Forwarded(uploader.transport, addrs[i])
            try:
                return uploader.upload(deltas[i], tickets[i], 10, 5.0, 4.0)
            except ProtocolError as refused:
                return refused.status, refused.code

        # Execute
        with ThreadPoolExecutor(18) as pool:
            answers = list(pool.map(send, range(len(addrs))))
    finally:
        stop_all(workers)
    # Assert
    updates = rows(postgresql_url, schema.updates)
    tickets_ = {t.digest: t for t in rows(postgresql_url, schema.tickets)}
    per_round_network: dict[tuple[int, str], int] = {}
    for u in updates:
        per_round_network[u.round_id, u.network] = per_round_network.get((u.round_id, u.network), 0) + 1
    refused = [i for i, a in enumerate(answers) if not isinstance(a, dict)]
    assert max(per_round_network.values()) <= cap
    assert {answers[i] for i in refused} <= {(429, "network_full")} and refused
    assert all(i < 30 for i in refused), "another network's upload was refused"
    assert all(tickets_[db.ticket_digest(tickets[i]["ticket"])].used_at is None for i in refused)
    assert len(updates) == len(addrs) - len(refused)
    placed = {p.stem for p in (data_dir / "spool").rglob("*.st")}
    open_round = max(r.id for r in rows(postgresql_url, schema.rounds))
    assert placed == {u.ticket_digest for u in updates if u.round_id == open_round}

