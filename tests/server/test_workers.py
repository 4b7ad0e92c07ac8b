"""Several fedurl-serve workers on one PostgreSQL and one data dir serve one federation ([X]).

The workers start together on an empty database, clients take tickets from one worker and upload
to another, and rounds close while uploads are in flight: every 202 is counted exactly once, each
round closes exactly once (one version each), and each version is its parent plus the exact
weighted mean of its round's rows. Then one worker of three is SIGKILLed under load.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient, ProtocolError, SecureParticipant, flatten
from formats.bundle import load_bundle
from privacy import quantize
from server import schema
from tests.server.conftest import write_tiny_bundle
from tests.server.test_durability import (
    KILL_AFTER,
    KILLED_CLIENTS,
    MIN_CLIENTS,
    PARAMETERS,
    ServerProcess,
    _retry,
    deltas_for,
    draw_cohort,
    upload_until_killed,
)

WORKERS = 3
OPEN = {"SELECTION": "open", "IDENTITY": "", "MAX_STALENESS": 20}  # tickets straight away, no cohort


def start_workers(bundle: Path, data_dir: Path, db_url: str,
                  settings: dict | None = None) -> list[ServerProcess]:
    """WORKERS fedurl-serve processes started at once on the same data dir and database (if one
    fails to start, the others are stopped: no process outlives the test).
    """
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(ServerProcess, bundle, data_dir, db_url, settings) for _ in range(WORKERS)]
    for future in futures:
        if future.exception() is not None:
            stop_all([f.result() for f in futures if f.exception() is None])
            future.result()  # raises what stopped that worker
    return [future.result() for future in futures]


def stop_all(workers: list[ServerProcess]) -> None:
    """Terminate every worker still running."""
    for worker in workers:
        worker.stop()


def rows(db_url: str, table: sa.Table) -> list:
    """Every row of a table in key order (an updated row may move on disk, and a table scan
    follows the disk), read straight from the database the workers share."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(*table.primary_key.columns)))


@pytest.fixture
def bundle(tmp_path) -> Path:
    """The tiny bundle with a 512 KiB parameter (uploads take a moment)."""
    return write_tiny_bundle(tmp_path / "bundle", PARAMETERS)


def test_concurrent_uploads_to_several_workers_close_each_round_once_with_the_exact_mean(
        tmp_path, bundle, postgresql_url):
    """40 uploads through 3 workers, 12 at a time, rounds of 8: closes race the uploads."""
    # Prepare
    data_dir, count, min_clients = tmp_path / "data", 40, 8
    workers = start_workers(bundle, data_dir, postgresql_url, {**OPEN, "MIN_CLIENTS": min_clients})
    try:
        clients = [FederatedClient(workers[i % WORKERS].url) for i in range(count)]
        tickets = [client.ticket() for client in clients]
        deltas = dict(zip([c.client_id for c in clients], deltas_for(count, seed=3), strict=True))
        examples = {c.client_id: 5 + i for i, c in enumerate(clients)}

        def send(i: int) -> str:
            """Upload through another worker than the one that issued the ticket."""
            client_id = clients[i].client_id
            uploader = FederatedClient(workers[(i + 1) % WORKERS].url, client_id=client_id)
            try:
                uploader.upload(deltas[client_id], tickets[i], examples[client_id], 5.0, 4.0)
            except ProtocolError as refused:
                return refused.code
            return "accepted"

        # Execute
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(count)))
        status = FederatedClient(workers[2].url).status()
    finally:
        stop_all(workers)
    # Assert: each upload counted once, each round closed once into one version
    updates, rounds = rows(postgresql_url, schema.updates), rows(postgresql_url, schema.rounds)
    versions = rows(postgresql_url, schema.versions)
    assert answers == ["accepted"] * count
    assert sorted(u.client_id for u in updates) == sorted(deltas)
    closed = [r for r in rounds if r.status == "closed"]
    assert len(closed) >= 2, "rounds should close while uploads are in flight"
    assert [r.status for r in rounds].count("open") == 1
    assert sorted(v.version for v in versions) == list(range(1, len(closed) + 2))
    assert sorted(p.name for p in (data_dir / "versions").iterdir()) == [str(v.version) for v in versions]
    assert status["version"] == len(closed) + 1
    by_round = {r.id: [u for u in updates if u.round_id == r.id] for r in rounds}
    assert all(len(by_round[r.id]) >= min_clients for r in closed)
    # Assert: every version is its parent plus the exact weighted mean of its round's rows
    for version in sorted(versions, key=lambda v: v.version)[1:]:
        parent = load_bundle(data_dir / "versions" / str(version.parent)).load_weights()
        new = load_bundle(data_dir / "versions" / str(version.version)).load_weights()
        members = by_round[version.round_id]
        weights = [examples[u.client_id] * (1 + u.staleness) ** -0.5 for u in members]
        np.testing.assert_allclose([u.weight for u in members], weights, rtol=1e-12)
        for name in PARAMETERS:
            pairs = zip(weights, [deltas[u.client_id] for u in members], strict=True)
            mean = sum(w * d[name].astype(np.float64) for w, d in pairs) / sum(weights)
            np.testing.assert_allclose(new[name], parent[name] + mean, rtol=1e-5, atol=1e-7)


def test_sigkill_of_one_worker_under_load_loses_no_acknowledged_update(tmp_path, bundle, postgresql_url):
    """Three workers with the default cohort; uploads spread over all three; worker 0 is killed
    after 8 acknowledgements, one of them its own. The other two go on serving: every client that
    got 202 (from any worker) is counted once (a retry is duplicate_client), and the round closes
    with the exact weighted mean of all 40. A restarted worker 0 sweeps what it left and serves
    the new version."""
    # Prepare
    data_dir = tmp_path / "data"
    workers = start_workers(bundle, data_dir, postgresql_url)
    v1 = load_bundle(bundle).load_weights()
    try:
        clients, fill_clients, tickets = draw_cohort([worker.url for worker in workers])
        deltas = deltas_for(KILLED_CLIENTS, seed=1)
        # Execute: kill worker 0 mid-upload, retry everyone on worker 1, fill the round through worker 2
        # kill only once worker 0 acknowledged one: under load the other two may take the first 8
        acknowledged = upload_until_killed(workers[0], clients, tickets, deltas,
                                           served={i for i in range(KILLED_CLIENTS) if i % WORKERS == 0})
        counted = FederatedClient(workers[1].url).status()["round"]["updates"]
        retried = {i: _retry(workers[1].url, clients[i].client_id, deltas[i], 10 + i)
                   for i in range(KILLED_CLIENTS)}
        fillers = deltas_for(MIN_CLIENTS - KILLED_CLIENTS, seed=2)
        for filler, delta in zip(fill_clients, fillers, strict=True):
            filler = FederatedClient(workers[2].url, client_id=filler.client_id)
            filler.upload(delta, filler.ticket(), 5, 5.0, 4.0)
        workers[0] = ServerProcess(bundle, data_dir, postgresql_url)
        restarted = FederatedClient(workers[0].url).fetch_model()["version"]
    finally:
        stop_all(workers)
    # Assert
    assert KILL_AFTER <= len(acknowledged) < KILLED_CLIENTS, "the kill should land mid-round"
    assert any(i % WORKERS == 0 for i in acknowledged), "worker 0 acknowledged uploads before it died"
    assert all(retried[i] == "duplicate_client" for i in acknowledged), retried
    assert sum(r == "duplicate_client" for r in retried.values()) == counted
    assert restarted == 2 and len(rows(postgresql_url, schema.updates)) == MIN_CLIENTS
    weights = [10 + i for i in range(KILLED_CLIENTS)] + [5] * len(fillers)
    v2 = load_bundle(data_dir / "versions" / "2").load_weights()
    for name in PARAMETERS:
        pairs = zip(weights, deltas + fillers, strict=True)
        mean = sum(w * d[name].astype(np.float64) for w, d in pairs) / sum(weights)
        np.testing.assert_allclose(v2[name], v1[name] + mean, rtol=1e-5, atol=1e-7)
    assert sorted(p.name for p in (data_dir / "versions").iterdir()) == ["1", "2"]
    assert not list((data_dir / "spool").rglob("*.st")), "closed rounds leave no bodies behind"


def test_a_close_waits_for_uploads_in_flight(tmp_path, bundle, postgresql_url):
    """Rounds of 1 with 16 uploads at once through 3 workers: every upload lands in exactly one
    closed round (none is left open), and no round makes two versions."""
    data_dir, count = tmp_path / "data", 16
    workers = start_workers(bundle, data_dir, postgresql_url, {**OPEN, "MIN_CLIENTS": 1})
    barrier = threading.Barrier(count)
    try:
        clients = [FederatedClient(workers[i % WORKERS].url) for i in range(count)]
        tickets = [client.ticket() for client in clients]
        deltas = deltas_for(count, seed=4)

        def send(i: int) -> None:
            barrier.wait(10)
            clients[i].upload(deltas[i], tickets[i], 7, 5.0, 4.0)

        with ThreadPoolExecutor(count) as pool:
            list(pool.map(send, range(count)))
    finally:
        stop_all(workers)
    updates, versions = rows(postgresql_url, schema.updates), rows(postgresql_url, schema.versions)
    aggregated = [v.round_id for v in versions if v.kind == "aggregate"]
    assert len(updates) == count and len(aggregated) == len(set(aggregated))
    assert {u.round_id for u in updates} == set(aggregated)


def test_a_secure_round_runs_across_workers_whichever_worker_each_message_reaches(
        tmp_path, bundle, postgresql_url):
    """[T1] on several workers: a cohort of 6 drawn across 3 workers; each member sends each phase's
    message through another worker than the one before, and one member vanishes after sharing its
    keys, so the masked-input phase closes at its deadline on whichever worker is asked next and the
    survivors unmask its masks from shares. Exactly one version is published: its parent plus the
    mean of the 5 survivors' clipped deltas (the plain mean is the oracle). Before, a worker knew
    only the phases it had seen itself."""
    # Prepare
    data_dir, cohort, phase_s = tmp_path / "data", 6, 10.0
    workers = start_workers(bundle, data_dir, postgresql_url, {
        "SELECTION": "cohort", "AGGREGATION": "secure", "IDENTITY": "", "MIN_CLIENTS": cohort,
        "SECURE_PHASE_S": phase_s})
    order = [{"name": name, "shape": list(shape)} for name, shape in PARAMETERS.items()]
    deltas = deltas_for(cohort, seed=5)
    urls = [worker.url for worker in workers]
    try:
        feds = [FederatedClient(urls[k % WORKERS]) for k in range(cohort)]
        assert [fed.check_in()["state"] for fed in feds][-1] == "selected"
        members = [SecureParticipant(fed, fed.ticket(), flatten(delta, order), np.random.default_rng(k))
                   for k, (fed, delta) in enumerate(zip(feds, deltas, strict=True))]
        # Execute: phase by phase, each member through the next worker; the last one leaves
        for step, phase in enumerate(SecureParticipant.PHASES):
            for k, member in enumerate(members):
                if k == cohort - 1 and phase in ("masked_input", "unmask"):
                    continue
                member.fed = FederatedClient(urls[(k + step) % WORKERS], client_id=member.fed.client_id)
                member.step(phase)
            if phase == "masked_input":
                time.sleep(phase_s + 0.5)  # the vanished member's deadline passes
        status = FederatedClient(urls[1]).status()
    finally:
        stop_all(workers)
    # Assert: one version, from exactly the survivors' masked inputs
    versions = rows(postgresql_url, schema.versions)
    assert sorted(v.version for v in versions) == [1, 2] and status["version"] == 2
    v1, v2 = (load_bundle(data_dir / "versions" / str(v)).load_weights() for v in (1, 2))
    config = members[0].machine.config
    published = flatten({name: v2[name].astype(np.float64) - v1[name] for name in v2}, order)
    expected = np.mean([quantize.clip(flatten(delta, order), config.clip) for delta in deltas[:-1]], axis=0)
    assert np.abs(published - expected).max() < quantize.error_bound(config.scale)
    manifest = load_bundle(data_dir / "versions" / "2").manifest["aggregation"]
    assert (manifest["mode"], manifest["survivors"], manifest["dropped"]) == ("secure", cohort - 1, 1)
    assert rows(postgresql_url, schema.updates) == []  # nothing in clear
