"""A close commits only while its worker still holds the round lock ([X], issue #12).

Two apps on one PostgreSQL database and one data dir are two workers. Worker A's round-lock
connection is cut (``pg_terminate_backend``, as a network cut or a PostgreSQL restart would) after
its close wrote the next version's files and before it commits: PostgreSQL then releases the lock
and worker B may close the same round. Before the fix, A committed its publish on a fresh pooled
connection anyway, without the lock; now the publish commits on the lock's own connection
(``db.fenced``), so A commits nothing and exactly one version is published, by B.
"""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from client.protocol import FederatedClient, ProtocolError
from server import db, recovery, schema
from server.app import create_app
from server.rounds import Verdict
from server.versions import WEIGHTS
from tests.server.conftest import small_delta
from tests.server.test_secure_rounds import (  # noqa: F401  (bundle, settings: fixtures)
    COHORT,
    bundle,
    form_cohort,
    join,
    settings,
    sparse_deltas,
    started,
    stored_rows,
)

pytestmark = pytest.mark.databases("postgresql")


def coordinator(app):
    """The app's coordinator."""
    return app.extensions["fedurl.coordinator"]


def upload(app, value: float) -> dict:
    """A new client uploads a constant delta through app; the 202 body."""
    fed = FederatedClient(app.test_client())
    return fed.upload(small_delta(value), fed.ticket(), 10, 5.0, 4.0)


def table(app, name: str) -> list:
    """Every row of a table, straight from the database."""
    with db.reading(db.get_engine(app)) as conn:
        return list(conn.execute(sa.select(db.metadata.tables[name])))


def cut_lock_after_write(app, cluster, monkeypatch, then=lambda: None) -> list[int]:
    """Make app's next publish lose its round lock's connection right after it wrote the version's
    files (then run then()): the pids cut, filled in when it happens.
    """
    store, cut = coordinator(app).store, []
    write = store.write

    def write_then_cut(*args, **kwargs):
        manifest = write(*args, **kwargs)
        cut.extend(cluster.end_lock_holders(db.get_engine(app).url.database))
        then()
        return manifest

    monkeypatch.setattr(store, "write", write_then_cut)
    return cut


def advertised(app) -> list[int]:
    """The senders of the stored advertisements of a secure round."""
    return [row["sender"] for row in stored_rows(app) if row["phase"] == "advertise"]


def published_intact(app, version: int) -> bool:
    """Whether the weights file the database records for version hashes to its recorded sha256."""
    versions, files = schema.versions.c, schema.files.c
    query = (sa.select(files.sha256, files.path).where(files.name == WEIGHTS)
             .where(files.path == coordinator(app).store.relative(version, WEIGHTS)))
    with db.reading(db.get_engine(app)) as conn:
        assert conn.execute(sa.select(versions.version).where(versions.version == version)).first()
        sha256, path = conn.execute(query).one()
    return coordinator(app).store.intact(path, sha256)


@pytest.mark.parametrize("trigger", ["admin", "upload"])
def test_a_close_that_loses_its_lock_connection_before_its_commit_commits_nothing(
        config, postgresql_cluster, monkeypatch, admin_headers, log_lines, trigger):
    """A's lock backend is terminated once A wrote version 2's files: A's close must not commit
    (before the fix it did: version 2 recorded and round 1 closed by a worker holding no lock). The
    round stays open with all its updates; an admin close is answered 503, an upload that triggered
    the close still 202 with close_failed logged. B's close then publishes one version 2 whose files
    match the recorded sha256 (A's directory moved aside), and both workers and a restarted one
    serve it.
    """
    # Prepare: two workers; two updates through A (MIN_CLIENTS is 3)
    first, second = create_app(config), create_app(config)
    upload(first, 0.1)
    upload(first, 0.3)
    cut = cut_lock_after_write(first, postgresql_cluster, monkeypatch)
    # Execute: A closes (admin, or a third upload) and loses its lock before the commit; then B closes
    if trigger == "admin":
        answer = first.test_client().post("/api/admin/close", headers=admin_headers)
        answered = (answer.status_code, answer.get_json()["error"])
    else:  # FederatedClient.upload raises on anything but 202
        answered = (202, upload(first, 0.5)["accepted"])
    after_a = (table(first, "versions"), table(first, "rounds"), table(first, "updates"))
    closed = second.test_client().post("/api/admin/close", headers=admin_headers)
    restarted = create_app(config)
    # Assert: A committed nothing; the round kept every update
    count = 2 if trigger == "admin" else 3
    assert len(cut) == 1
    assert [v.version for v in after_a[0]] == [1], "A published without holding the round lock"
    assert [(r.id, r.status) for r in after_a[1]] == [(1, "open")]
    assert len(after_a[2]) == count
    assert answered == ((503, "database_unavailable") if trigger == "admin" else (202, True))
    failed = [json.loads(line) for line in log_lines() if '"close_failed"' in line]
    assert len(failed) == (trigger == "upload")
    # Assert: B published exactly one version 2, of every update, whose files match the database
    assert closed.status_code == 200 and closed.get_json()["version"] == 2
    assert [v.version for v in table(second, "versions")] == [1, 2]
    assert published_intact(second, 2)
    assert coordinator(second).store.manifest(2)["aggregation"]["participants"] == count
    assert [(q.kind, q.ref, q.reason) for q in table(second, "quarantine")] == [
        ("version", "2", "left by a failed publish")]
    served = [FederatedClient(app.test_client()).fetch_model() for app in (first, second, restarted)]
    assert [model["version"] for model in served] == [2, 2, 2]
    assert len({model["manifest"]["files"][WEIGHTS]["sha256"] for model in served}) == 1


def test_a_worker_that_lost_its_lock_cannot_commit_after_another_synced(
        config, postgresql_cluster, monkeypatch):
    """The interleaving of issue #12, made deterministic: A's lock is cut after A wrote version 2;
    B takes the lock and aggregates the round (still open); only then does A go on to commit. Before the
    fix A's commit succeeded on a fresh connection, B's close moved A's *published* directory aside
    as debris, wrote its own files (B runs another server learning rate, so they differ) and failed
    on the version's primary key: the database recorded A's sha256 over B's files. Now A's commit
    fails, and B publishes version 2 with files that match the database.
    """
    # Prepare: two workers whose results differ; two updates; A's lock is cut after its write, and A
    # waits there until B has taken the lock and aggregated the open round
    first, second = create_app(config), create_app({**config, "SERVER_LR": 0.5})
    upload(first, 0.1)
    upload(first, 0.3)
    a_cut, b_synced, a_done = threading.Event(), threading.Event(), threading.Event()

    def wait_for_b():
        """A lost its lock: B may close now; A goes on once B has read the round."""
        a_cut.set()
        b_synced.wait(30)

    cut = cut_lock_after_write(first, postgresql_cluster, monkeypatch, then=wait_for_b)
    clear_way = coordinator(second)._clear_way

    def clear_way_after_a(version: int) -> None:
        """B's close read the open round and its updates under the lock: let A commit, go on once it tried."""
        b_synced.set()
        a_done.wait(30)
        clear_way(version)

    monkeypatch.setattr(coordinator(second), "_clear_way", clear_way_after_a)
    outcome: dict = {}

    def close(app, name: str) -> None:
        """app's admin close; its result or what it raised goes in outcome[name]."""
        try:
            outcome[name] = coordinator(app).close_now()
        except Exception as exc:  # asserted below
            outcome[name] = exc

    def close_a() -> None:
        close(first, "a")
        a_done.set()

    # Execute: A closes; once its lock is cut, B closes
    worker_a = threading.Thread(target=close_a)
    worker_a.start()
    try:
        assert a_cut.wait(30), "A's close did not reach its write"
        close(second, "b")
    finally:
        b_synced.set()
        worker_a.join(60)
    # Assert: one version 2, whose files match the database; B published it, A's close failed
    assert len(cut) == 1 and b_synced.is_set()
    assert [v.version for v in table(second, "versions")] == [1, 2]
    assert published_intact(second, 2), "the database records another sha256 than version 2's files"
    assert [(r.id, r.status, r.result_version) for r in table(second, "rounds")] == [
        (1, "closed", 2), (2, "open", None)]
    assert isinstance(outcome["b"], dict), outcome["b"]
    assert outcome["b"]["version"] == 2 and outcome["b"]["ended_round"] == 1
    assert isinstance(outcome["a"], db.RoundLockLost), outcome["a"]


def test_a_worker_that_lost_its_lock_while_aggregating_leaves_the_published_version_alone(
        config, postgresql_cluster):
    """A's lock is cut while A aggregates (at its publish gate), and B closes the round and
    publishes version 2 meanwhile. A then goes on to publish version 2 too: before the fix it moved
    B's published directory aside as "left by a failed publish" and wrote its own there (its
    commit then failed on the version's key), so the recorded version 2 was B's sha256 over A's
    files. Now A's first statement on the lock's connection, which looks the version up before any
    file is moved, fails.
    """
    # Prepare: two workers whose results differ, two updates; A's gate is where its lock is lost
    # and B closes the round
    first, second = create_app(config), create_app({**config, "SERVER_LR": 0.5})
    upload(first, 0.1)
    upload(first, 0.3)
    outcome: dict = {}

    def gate(_version: int, _weights: dict) -> Verdict:
        """A aggregated: its lock is cut, and B publishes before A goes on."""
        outcome["cut"] = postgresql_cluster.end_lock_holders(db.get_engine(first).url.database)
        outcome["b"] = coordinator(second).close_now()
        return Verdict(True, "publish")

    coordinator(first).gate = gate
    # Execute
    with pytest.raises(db.RoundLockLost):
        coordinator(first).close_now()
    # Assert: B's version 2 is in place, nothing quarantined
    assert len(outcome["cut"]) == 1 and outcome["b"]["version"] == 2
    assert [v.version for v in table(second, "versions")] == [1, 2]
    assert published_intact(second, 2), "the published version 2 lost its files"
    assert table(second, "quarantine") == []


def test_a_fenced_transaction_never_commits_once_its_lock_connection_dropped(config, postgresql_cluster):
    """Once the lock's connection dropped, every transaction on it fails, the second too (SQLAlchemy
    would reconnect a dropped connection, without the lock, and commit), and leaving the lock is
    no error: the lock went with the connection.
    """
    # Prepare
    engine = db.create_engine(config["DATABASE_URL"])
    failures = []
    # Execute
    with db.round_lock(engine) as lock:
        assert lock is not None
        cut = postgresql_cluster.end_lock_holders(engine.url.database)
        for _ in range(2):
            try:
                with db.fenced(lock) as conn:
                    db.quarantine_version(conn, 9, "a test", "nowhere", 0.0)
            except db.RoundLockLost as exc:
                failures.append(exc)
    # Assert
    assert len(cut) == 1 and len(failures) == 2
    with db.reading(engine) as conn:
        assert db.quarantined_count(conn) == 0


@pytest.mark.databases("sqlite", "postgresql")
def test_ending_a_round_that_is_no_longer_open_fails(app):
    """The first statement of a publish ends the open round, and fails when it is not open (any
    more): a worker holding no lock (a bug, or SQLite's one process) cannot end a round twice.
    """
    # Prepare: round 1 ends, round 2 opens
    engine = db.get_engine(app)
    with db.transaction(engine) as conn:
        db.end_round(conn, 1, "aborted", 1.0, "rollback", None)
        db.open_round(conn, 1, 1.0, 2.0)
    # Execute
    with pytest.raises(db.RoundLockLost), db.transaction(engine) as conn:
        db.end_round(conn, 1, "closed", 3.0, "admin", 2)
    # Assert: round 1 keeps its first ending
    assert [(r.id, r.status, r.close_reason) for r in table(app, "rounds")] == [
        (1, "aborted", "rollback"), (2, "open", None)]


@pytest.mark.parametrize("drops", ["lock", "all"])
def test_a_close_whose_connections_drop_after_its_commit_answers_its_version(
        config, postgresql_cluster, monkeypatch, admin_headers, drops):
    """The lock's connection (before the unlock) or every connection (a PostgreSQL restart, before
    the worker reads the new round back) drops after the publish committed: the close is done, so
    the admin close answers 200 with the version and round it opened, and the next request reads
    them. The unlock's error answered 503 before, and so did the read-back's until this review;
    an operator's retry of that 503 closed the next round.
    """
    # Prepare: two updates; the connections drop when the close drops the ended round's bodies
    app = create_app(config)
    upload(app, 0.1)
    upload(app, 0.3)
    spool, name, dropped = coordinator(app).spool, db.get_engine(app).url.database, []
    drop_round = spool.drop_round

    def cut_then_drop(round_id: int) -> None:
        dropped.append(len(postgresql_cluster.end_lock_holders(name)) if drops == "lock"
                       else postgresql_cluster.drop_connections(name))
        drop_round(round_id)

    monkeypatch.setattr(spool, "drop_round", cut_then_drop)
    # Execute
    answer = app.test_client().post("/api/admin/close", headers=admin_headers)
    monkeypatch.undo()
    served = FederatedClient(app.test_client()).fetch_model()
    # Assert
    assert len(dropped) == 1 and dropped[0] >= 1
    assert answer.status_code == 200, answer.get_json()
    assert (answer.get_json()["version"], answer.get_json()["round"]) == (2, 2)
    assert [v.version for v in table(app, "versions")] == [1, 2]
    assert (served["version"], served["round"]) == (2, 2)


def test_a_secure_message_is_stored_only_while_its_worker_holds_the_round_lock(
        request, postgresql_url, dispose_engines, postgresql_cluster, monkeypatch):
    """[T1] A secure round's messages and phase moves are changes of the round too: one stored
    after the lock was lost could reach a phase another worker already closed (a masked input
    counted after its sender was taken for dropped, whose key shares are then asked for). The
    lock's connection is cut as a member's advertisement is stored: it is answered 503 and nothing
    is stored (before the fix it was stored, on a pooled connection); its retry is stored once.
    """
    # Prepare: a secure round's cohort on PostgreSQL; the lock is cut at the first message's store
    app, _clock = started({**request.getfixturevalue("settings"), "DATABASE_URL": postgresql_url})
    members = join(form_cohort(app), sparse_deltas(0, COHORT))
    store, cut, sent = db.add_secure_message, [], []

    def cut_then_store(conn, round_id, phase, sender, body, now) -> None:
        if not cut:
            cut.extend(postgresql_cluster.end_lock_holders(db.get_engine(app).url.database))
            sent.append(body)
        store(conn, round_id, phase, sender, body, now)

    monkeypatch.setattr(db, "add_secure_message", cut_then_store)
    # Execute
    with pytest.raises(ProtocolError) as refused:
        members[0].step("advertise")
    stored_after_cut = advertised(app)
    retried = members[0].fed.secure_send(members[0].ticket, "advertise", sent[0])  # the same message again
    # Assert
    assert len(cut) == 1
    assert (refused.value.status, refused.value.code) == (503, "database_unavailable")
    assert stored_after_cut == []
    assert retried["accepted"]
    assert advertised(app) == [members[0].index]


def test_a_stored_secure_message_is_accepted_whatever_closing_its_phase_meets(
        request, postgresql_url, dispose_engines, postgresql_cluster, monkeypatch, log_lines):
    """[T1] The last expected advertisement is stored, then closes the phase, and the lock's
    connection is cut as the phase moves: the message is committed, so the answer is 202 (it was
    503, and its retry a 400 bad_secure_message, "sent twice", so the member took itself for
    dropped), the failure is logged, and the next request closes the phase.
    """
    # Prepare: a secure round on PostgreSQL; every member but the last advertised
    app, _clock = started({**request.getfixturevalue("settings"), "DATABASE_URL": postgresql_url})
    members = join(form_cohort(app), sparse_deltas(0, COHORT))
    for member in members[:-1]:
        member.step("advertise")
    set_phase, cut = db.set_phase, []

    def cut_then_set(conn, round_id, phase, deadline) -> None:
        if not cut:
            cut.extend(postgresql_cluster.end_lock_holders(db.get_engine(app).url.database))
        set_phase(conn, round_id, phase, deadline)

    monkeypatch.setattr(db, "set_phase", cut_then_set)
    # Execute
    answer = members[-1].step("advertise")
    phase_after = members[0].state()["phase"]
    # Assert
    assert len(cut) == 1
    assert answer["accepted"] and answer["phase"] == "advertise"
    assert sorted(advertised(app)) == list(range(COHORT))
    assert phase_after == "share_keys"
    assert [json.loads(line)["event"] for line in log_lines() if '"secure_advance_failed"' in line] == [
        "secure_advance_failed"]


def test_a_worker_whose_cohort_draw_failed_serves_the_round_another_worker_drew(
        request, postgresql_url, dispose_engines, postgresql_cluster, monkeypatch):
    """[T1] Worker A draws a secure cohort and its lock's connection is cut before the draw commits:
    the check-in that triggered it is a 503 and nothing is stored. Worker B then draws the round.
    A must serve B's round: before the fix A kept the round its failed draw had built in memory
    (another random graph seed, maybe other members) and handed its CONFIG to the members who
    asked A, so their masks could never cancel with those of B's members.
    """
    # Prepare: two workers; nine of ten clients check in through A
    secure = {**request.getfixturevalue("settings"), "DATABASE_URL": postgresql_url}
    (first, _), (second, _) = started(secure), started(secure)
    feds = [FederatedClient(first.test_client()) for _ in range(COHORT)]
    for fed in feds[:-1]:
        fed.check_in()
    start_reporting, cut = db.start_reporting, []

    def cut_then_start(*args, **kwargs) -> None:
        if not cut:
            cut.extend(postgresql_cluster.end_lock_holders(db.get_engine(first).url.database))
        start_reporting(*args, **kwargs)

    monkeypatch.setattr(db, "start_reporting", cut_then_start)
    # Execute: the tenth check-in makes A draw, and fails; B draws; the members join through A
    with pytest.raises(ProtocolError) as refused:
        feds[-1].check_in()
    coordinator(second).tick()
    members = join(feds, sparse_deltas(0, COHORT))
    # Assert: every member got the CONFIG B stored
    assert len(cut) == 1 and (refused.value.status, refused.value.code) == (503, "database_unavailable")
    stored = [row["body"] for row in stored_rows(second) if row["phase"] == "config"]
    assert len(stored) == 1
    assert {member.machine.config.encode() for member in members} == {bytes(stored[0])}


@pytest.mark.parametrize("cut_at_read", [1, 2])
def test_a_worker_that_lost_its_lock_while_reading_the_round_back_touches_no_body_or_row(
        config, postgresql_cluster, monkeypatch, admin_headers, cut_at_read):
    """A's lock is cut while its close reads the round's bodies back (after the first or the last
    of two); meanwhile, no longer held off, B takes a third update, which closes round 1 (version
    2), and a fourth, the first of round 2. Before the fix A went on as if it held the lock: it
    quarantined the body it had not read yet, which B's close had dropped, as missing (a row taken
    out of a round B had closed with it), and its sweep of the spool deleted round 2's directory (the
    fourth update, answered 202, lost its body). Now A's first write on the lock's connection, a
    quarantine or the sweep's check, fails: A's close is a 503 and round 2 keeps its update.
    """
    # Prepare: two updates through A; A's n-th body read cuts its lock and lets B take two
    first, second = create_app(config), create_app(config)
    upload(first, 0.1)
    upload(first, 0.3)
    spool, cut, reads, through_b = coordinator(first).spool, [], [], []
    read = spool.read

    def read_then_cut(round_id: int, key: str) -> bytes:
        reads.append(key)
        body = read(round_id, key) if len(reads) == cut_at_read else None
        if len(reads) == cut_at_read:
            cut.extend(postgresql_cluster.end_lock_holders(db.get_engine(first).url.database))
            through_b.extend(upload(second, value) for value in (0.5, 0.7))
        return read(round_id, key) if body is None else body

    monkeypatch.setattr(spool, "read", read_then_cut)
    # Execute: A closes; then B closes round 2
    answer = first.test_client().post("/api/admin/close", headers=admin_headers)
    closed = second.test_client().post("/api/admin/close", headers=admin_headers)
    # Assert: A's close failed and touched nothing; round 1 closed with its three updates, round 2
    # published its one
    assert len(cut) == 1 and [u["round"] for u in through_b] == [1, 2]
    assert (answer.status_code, answer.get_json()["error"]) == (503, "database_unavailable")
    assert table(second, "quarantine") == []
    assert sorted(u.round_id for u in table(second, "updates")) == [1, 1, 1, 2]
    assert closed.status_code == 200, closed.get_json()
    assert coordinator(second).store.manifest(3)["aggregation"]["participants"] == 1


def test_a_starting_worker_that_lost_its_lock_leaves_the_version_being_published_alone(
        config, postgresql_cluster, monkeypatch):
    """A starts and takes the round lock, which is cut at once; B takes it and closes the round.
    B has written version 2's directory and not yet recorded it when A's start-up looks for a
    directory a crash left: before the fix A read the versions on a pooled connection, took
    B's directory for debris and moved it aside, and B then recorded a version 2 without files.
    Now A reads them on the lock's connection, and its start fails instead.
    """
    # Prepare: B with two updates; A's start-up check of the versions runs while B publishes
    second = create_app(config)
    upload(second, 0.1)
    upload(second, 0.3)
    known_versions, outcome = recovery.known_versions, {}
    write = coordinator(second).store.write

    def write_then_a_looks(*args, **kwargs):
        manifest = write(*args, **kwargs)
        try:
            outcome["a"] = known_versions(*outcome["args"])
        except Exception as exc:  # asserted below
            outcome["a"] = exc
        return manifest

    def cut_then_b_closes(*args):
        outcome["args"], outcome["cut"] = args, postgresql_cluster.end_lock_holders(
            db.get_engine(second).url.database)
        monkeypatch.setattr(coordinator(second).store, "write", write_then_a_looks)
        outcome["b"] = coordinator(second).close_now()
        if isinstance(outcome["a"], Exception):
            raise outcome["a"]
        return outcome["a"]

    monkeypatch.setattr(recovery, "known_versions", cut_then_b_closes)
    # Execute
    with pytest.raises(db.RoundLockLost):
        create_app(config)
    # Assert: B published version 2 with its files; nothing was quarantined
    assert len(outcome["cut"]) == 1 and outcome["b"]["version"] == 2
    assert published_intact(second, 2), "the published version 2 lost its files"
    assert table(second, "quarantine") == []


def test_a_round_lock_whose_unlock_fails_goes_with_its_connection(config):
    """The unlock fails without the connection dropping (a statement_timeout, an operator's
    pg_cancel_backend): before the fix the error went up (a 500 after a committed close) and the
    connection went back to the pool still holding the session lock, so every upload of every
    worker waited on an idle connection. Now the connection is closed, which releases the lock.
    """
    # Prepare: an unlock that fails before it unlocks (as a cancelled one may), on a live connection
    engine = db.create_engine(config["DATABASE_URL"])
    failing = sa.text("SELECT pg_advisory_unlock(:key) FROM no_such_table")
    held = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
    # Execute
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(db, "_UNLOCK_ROUND", failing)
        with db.round_lock(engine):
            pass
    # Assert
    with db.reading(engine) as conn:
        assert conn.execute(held).scalar_one() == 0


def test_a_change_of_the_round_outside_the_round_lock_is_refused(app):
    """``Coordinator.writing`` outside ``_exclusive`` on PostgreSQL is a bug (a change of the round
    committed without the lock): it raises instead of silently taking a pooled connection, as it
    did; under the lock it is the lock's own connection.
    """
    # Prepare
    coordinator_ = coordinator(app)
    # Execute
    with pytest.raises(RuntimeError):
        coordinator_.writing()
    with coordinator_._exclusive(), coordinator_.writing() as conn:
        fenced = conn is coordinator_.fence
    # Assert
    assert fenced
