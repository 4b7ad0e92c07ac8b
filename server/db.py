"""The one storage module: it opens the database and holds every SQL statement the server runs.

SQLAlchemy Core over SQLite by default (a file under DATA_DIR, WAL journal, synchronous=FULL so a
committed update survives kill -9 and power loss); any SQLAlchemy URL, e.g. PostgreSQL, works
too. The tables are in ``server.schema``. Other modules open ``transaction(engine)`` and call the
named functions below with its connection (as Flask's tutorial ``db.py`` does); none of them
writes SQL, and rows come back as plain dataclasses, dicts and tuples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import sqlalchemy as sa
from flask import Flask, current_app
from flask.cli import with_appcontext

from server import migrations
from server.schema import (
    checkins,
    enrollments,
    files,
    metadata,  # noqa: F401  (tests reach the tables as db.metadata)
    quarantine,
    rejections,
    rounds,
    secure_messages,
    tickets,
    updates,
    versions,
)

Connection = sa.Connection  # what the functions below take; callers need not import SQLAlchemy
Engine = sa.Engine


@dataclass(frozen=True)
class Round:
    """An open round: the version its deltas start from, when it opened and falls due, its phase.

    ``phase`` is "selecting" while check-ins gather, "reporting" once the cohort is chosen (and
    always in open selection); ``carried`` is the strategy's state handed over from the last round.
    """

    id: int
    base_version: int
    opened_at: float
    deadline: float
    phase: str = "reporting"
    selected_at: float | None = None
    carried: dict | None = None


@dataclass(frozen=True)
class Ticket:
    """A stored ticket (its digest, never the ticket itself)."""

    digest: str
    client_id: str
    version: int
    expires_at: float
    used_at: float | None
    round_id: int | None = None


@dataclass(frozen=True)
class StoredUpdate:
    """What start-up needs to replay one accepted update of the open round."""

    key: str  # the ticket digest, which also names the spool body
    weight: float
    sha256: str | None = None  # of the body; None for rows stored before checksums


def ticket_digest(ticket: str) -> str:
    """The stored form of a ticket: a leaked database holds no usable ticket."""
    return hashlib.sha256(ticket.encode()).hexdigest()


# -- connections -----------------------------------------------------------------------------------

def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Durable, concurrent SQLite: WAL readers never block the writer; FULL fsyncs each commit."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


POOL_RECYCLE_S = 600  # PostgreSQL: a pooled connection's age at which it is replaced (a new login)
POOL_TIMEOUT_S = 30.0  # how long a request waits for a free pooled connection before its 503


def create_engine(url: str) -> sa.Engine:
    """An engine for url, its schema migrated to the newest revision (``server.migrations``).

    ``postgresql://`` means psycopg 3 (the driver fedurl installs), not SQLAlchemy's default psycopg2.

    :raise DatabaseUnavailable: no connection could be opened (the message names the database and why).
    """
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False},
                                  pool_timeout=POOL_TIMEOUT_S)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    elif parsed.drivername.startswith("sqlite"):  # in memory: a connection per thread, none to wait for
        engine = sa.create_engine(parsed)  # (its pool refuses pool_timeout: a TypeError at start-up)
    else:  # no pre-ping (a round trip before every transaction): a dropped connection fails its
        # request once with DatabaseUnavailable (503, retried) and the pool replaces every older one;
        # connections are renewed after POOL_RECYCLE_S, before a firewall's idle timeout drops them
        engine = sa.create_engine(parsed, pool_recycle=POOL_RECYCLE_S, pool_timeout=POOL_TIMEOUT_S)
    try:  # before the migrations, whose OperationalError would not say that it is the connection
        _connect(engine).close()
    except DatabaseUnavailable as exc:
        cause = getattr(exc.__cause__, "orig", exc.__cause__)
        raise DatabaseUnavailable(f"cannot reach the database {database_name(engine)}: {cause}") from cause
    init_schema(engine)
    return engine


def init_schema(engine: sa.Engine) -> None:
    """Create or upgrade the tables: Alembic's ``upgrade head`` (rows are kept)."""
    migrations.upgrade(engine)


class DatabaseUnavailable(Exception):
    """The database connection broke mid-request (a restart, a network cut): a retry connects
    anew; an upload whose commit was under way may have been stored (its retry: ticket_reused).
    """

    code = "database_unavailable"


class RoundLockLost(DatabaseUnavailable):
    """The round lock was lost while this worker changed the round (its connection dropped, or
    another worker ended the round meanwhile): nothing of that change was committed, unless the
    connection dropped during the commit itself (then it may have been, as after any 503).
    """


@contextmanager
def transaction(engine: sa.Engine) -> Iterator[Connection]:
    """A connection inside one transaction: committed on success, rolled back on any error.

    :raise DatabaseUnavailable: the connection broke (the database restarted, a network cut), or
        none could be opened.
    """
    with _unavailable_if_dropped(), _connect(engine) as connection, connection.begin():
        yield connection


@contextmanager
def reading(engine: sa.Engine) -> Iterator[Connection]:
    """A connection for reads that need no transaction of their own (each statement sees what was
    committed when it ran): on PostgreSQL no BEGIN and COMMIT round trips.

    :raise DatabaseUnavailable: as ``transaction``.
    """
    with _unavailable_if_dropped(), _connect(engine).execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def _connect(engine: sa.Engine) -> Connection:
    """A connection from the pool; a failure to open one (the database is down or starting up,
    "the database system is starting up", a refused socket) is DatabaseUnavailable, as a dropped
    one is: without it, every request while PostgreSQL restarts was a 500. So is a pool whose
    connections all stayed busy for POOL_TIMEOUT_S (it was a 500 too).
    """
    try:
        return engine.connect()
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable("the database cannot be reached; try again") from exc
    except sa.exc.TimeoutError as exc:
        raise DatabaseUnavailable("every database connection is busy; try again") from exc


@contextmanager
def _unavailable_if_dropped(lost: DatabaseUnavailable | None = None) -> Iterator[None]:
    """Turn a broken connection (SQLAlchemy has invalidated the pool's older ones) into lost
    (default: DatabaseUnavailable), a 503 the client retries; any other database error stays an error.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise (lost or DatabaseUnavailable("the database connection was lost; try again")) from exc
        raise


# -- the round lock: several workers on one PostgreSQL ------------------------------------------------

ROUND_LOCK = 0x66656475726C  # the advisory lock key of the open round ("fedurl")


def shares_workers(engine: sa.Engine) -> bool:
    """Whether several worker processes may use this database (PostgreSQL); SQLite has one process."""
    return engine.dialect.name == "postgresql"


_SHARE_ROUND = sa.text("SELECT pg_advisory_xact_lock_shared(:key)")


def share_round(conn: Connection) -> None:
    """Hold the round lock shared until conn's transaction ends: an upload in flight keeps any
    worker from closing the round under it. A no-op on SQLite, where one process serves.
    """
    if shares_workers(conn.engine):
        conn.execute(_SHARE_ROUND, {"key": ROUND_LOCK})


_LOCK_ROUND = sa.text("SELECT pg_advisory_lock(:key)")
_UNLOCK_ROUND = sa.text("SELECT pg_advisory_unlock(:key)")


@contextmanager
def round_lock(engine: sa.Engine) -> Iterator[Connection | None]:
    """Hold the round lock exclusively: wait until no worker has an upload in flight, and keep new
    ones waiting until the block ends (PostgreSQL releases it if this process dies, or if its
    connection drops). Yields the lock's own connection, for ``fenced`` transactions; None on
    SQLite, where it is a no-op.
    """
    if not shares_workers(engine):
        yield None
        return
    with _unavailable_if_dropped(), _connect(engine) as conn:
        conn.execute(_LOCK_ROUND, {"key": ROUND_LOCK})
        conn.commit()  # a session lock: it outlives this transaction, and the fenced ones to come
        try:
            yield conn
        finally:
            _unlock(conn)


def _unlock(conn: Connection) -> None:
    """Release the round lock, unless its connection dropped: then the lock went with it, and a
    close committed before the drop must not be reported as failed. An unlock that fails otherwise
    (cancelled, timed out) closes the connection, which releases the lock: back in the pool it
    would hold it for good, and every upload of every worker would wait on it.
    """
    if conn.invalidated:
        return
    try:
        conn.execute(_UNLOCK_ROUND, {"key": ROUND_LOCK})
        conn.commit()
    except sa.exc.DBAPIError:
        conn.invalidate()


@contextmanager
def fenced(lock: Connection) -> Iterator[Connection]:
    """One transaction on the round lock's own connection (``round_lock``): a session lock is only
    lost with its session, and a transaction on a lost session cannot commit, so a commit here
    proves the lock was held from the moment it was taken until the commit.

    :raise RoundLockLost: the lock's connection dropped, before or during the transaction
        (SQLAlchemy would silently reconnect a dropped one, without the lock: it is refused).
    """
    lost = RoundLockLost("the round lock's connection was lost; nothing was committed, try again")
    if lock.invalidated:
        raise lost
    with _unavailable_if_dropped(lost), lock.begin():
        yield lock


def get_engine(app: Flask | None = None) -> sa.Engine:
    """The engine of app (default: the current app)."""
    return (app or current_app).extensions["fedurl.engine"]


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create or upgrade the tables to the newest migration (the server also does this when it starts)."""
    engine = get_engine()
    init_schema(engine)
    click.echo(f"database ready: {engine.url.render_as_string(hide_password=True)}")


def init_app(app: Flask) -> None:
    """Open the app's engine and register the init-db command."""
    app.extensions["fedurl.engine"] = create_engine(app.config["DATABASE_URL"])
    app.cli.add_command(init_db_command)


# -- versions and their files ----------------------------------------------------------------------

def version_parents(conn: Connection) -> dict[int, int | None]:
    """Every recorded version and its parent (None for the imported one)."""
    return {v: p for v, p in conn.execute(sa.select(versions.c.version, versions.c.parent))}


def version_recorded(conn: Connection, version: int) -> bool:
    """Whether a version is recorded (its directory is then a published one, never debris)."""
    query = sa.select(versions.c.version).where(versions.c.version == version)
    return conn.execute(query).first() is not None


def record_version(conn: Connection, version: int, parent: int | None, kind: str, round_id: int | None,
                   created: float, new_files: list[tuple[str, str, str]]) -> None:
    """Insert a version row and its new content-addressed files, each (sha256, name, path).

    A file whose hash is already recorded (a graph shared with the parent) keeps its first row.
    """
    conn.execute(versions.insert().values(version=version, parent=parent, kind=kind, round_id=round_id,
                                          created=created))
    for sha256, name, path in new_files:
        if conn.execute(sa.select(files.c.sha256).where(files.c.sha256 == sha256)).first() is None:
            conn.execute(files.insert().values(sha256=sha256, name=name, path=path))


def database_name(engine: sa.Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def find_file(conn: Connection, sha256: str) -> tuple[str, str] | None:
    """(path relative to DATA_DIR, bundle file name) of a content-addressed file, or None."""
    row = conn.execute(sa.select(files.c.path, files.c.name).where(files.c.sha256 == sha256)).first()
    return None if row is None else (row.path, row.name)


def recent_versions(conn: Connection, limit: int) -> list[dict]:
    """The latest versions, oldest first: version, parent, kind, round_id, created."""
    query = sa.select(versions).order_by(versions.c.version.desc()).limit(limit)
    return [row._asdict() for row in conn.execute(query)][::-1]


# -- rounds ----------------------------------------------------------------------------------------

def open_round(conn: Connection, base_version: int, now: float, deadline: float, phase: str = "reporting",
               carried: dict | None = None) -> int:
    """Insert a new open round on base_version, in its first phase, with the strategy's carried
    state; its id.
    """
    inserted = conn.execute(rounds.insert().values(base_version=base_version, status="open", opened_at=now,
                                                   deadline=deadline, phase=phase,
                                                   carried=json.dumps(carried) if carried else None))
    return inserted.inserted_primary_key[0]  # type: ignore[index]  # an insert always has one


# The statements of every upload and ticket request (this and the other _UPPER_CASE ones) are
# built once: building one costs more than running it (about 50 of 70 us on SQLite), and
# SQLAlchemy keeps their compiled form.
_CURRENT_ROUND = (sa.select(rounds.c.id, rounds.c.base_version, rounds.c.opened_at, rounds.c.deadline,
                            rounds.c.phase, rounds.c.selected_at, rounds.c.carried)
                  .where(rounds.c.status == "open"))


def current_round(conn: Connection) -> Round:
    """The one open round."""
    row = conn.execute(_CURRENT_ROUND).one()
    return Round(row.id, row.base_version, row.opened_at, row.deadline, row.phase or "reporting",
                 row.selected_at, json.loads(row.carried) if row.carried else None)


def end_round(conn: Connection, round_id: int, status: str, now: float, reason: str,
              result_version: int | None, detail: str | None = None) -> None:
    """Mark the open round closed (aggregated), aborted (rollback), refused (publish gate) or
    abandoned (too few reports by the deadline), naming the version it led to, if any, and why.

    :raise RoundLockLost: the round is not open (any more): another worker ended it, which only a
        lost round lock allows; the caller's transaction must not commit.
    """
    ended = conn.execute(rounds.update().where(rounds.c.id == round_id, rounds.c.status == "open").values(
        status=status, closed_at=now, close_reason=reason, result_version=result_version, detail=detail))
    if ended.rowcount != 1:
        raise RoundLockLost(f"round {round_id} was ended by another worker; nothing was committed")


def start_reporting(conn: Connection, round_id: int, members: list[str], now: float, deadline: float,
                    phase: str = "reporting") -> None:
    """End a round's selection: mark its chosen check-ins as members, start the next phase
    (reporting, or a secure round's first) and its deadline.
    """
    if members:
        conn.execute(checkins.update().where(checkins.c.round_id == round_id,
                                             checkins.c.client_id.in_(members)).values(selected=True))
    conn.execute(rounds.update().where(rounds.c.id == round_id).values(
        phase=phase, selected_at=now, deadline=deadline))


def set_phase(conn: Connection, round_id: int, phase: str, deadline: float) -> None:
    """Move an open round to its next phase with that phase's deadline (a secure round's phases)."""
    conn.execute(rounds.update().where(rounds.c.id == round_id).values(phase=phase, deadline=deadline))


def add_secure_message(conn: Connection, round_id: int, phase: str, sender: int, body: bytes,
                       now: float) -> None:
    """Store one accepted message of a secure round (sender: cohort index, -1 the server)."""
    conn.execute(secure_messages.insert().values(round_id=round_id, phase=phase, sender=sender, body=body,
                                                 at=now))


def drop_secure_messages_before(conn: Connection, round_id: int) -> int:
    """Delete the stored messages of ended secure rounds (those before round_id); how many went."""
    return conn.execute(secure_messages.delete().where(secure_messages.c.round_id < round_id)).rowcount


def secure_messages_of(conn: Connection, round_id: int,
                       only: list[tuple[str, int]] | None = None) -> list[tuple[str, int, bytes]]:
    """(phase, sender, body) of every stored message of a secure round (only: these (phase,
    sender) pairs), in arrival order.
    """
    m = secure_messages.c
    query = sa.select(m.phase, m.sender, m.body).where(m.round_id == round_id).order_by(m.at, m.sender)
    if only is not None:
        if not only:
            return []
        query = query.where(sa.tuple_(m.phase, m.sender).in_(only))
    return [(phase, sender, bytes(body)) for phase, sender, body in conn.execute(query)]


def secure_message_senders(conn: Connection, round_id: int) -> list[tuple[str, int]]:
    """(phase, sender) of every stored message of a secure round, without the bodies."""
    m = secure_messages.c
    return [(phase, sender) for phase, sender in
            conn.execute(sa.select(m.phase, m.sender).where(m.round_id == round_id))]


# -- identities, check-ins, cohorts ---------------------------------------------------------------

def enroll(conn: Connection, client_id: str, proof: str, network: str, now: float) -> bool:
    """Record an enrolled client id; False if it was enrolled already (the first record stays)."""
    if is_enrolled(conn, client_id):
        return False
    conn.execute(enrollments.insert().values(client_id=client_id, proof=proof, network=network,
                                             enrolled_at=now))
    return True


def is_enrolled(conn: Connection, client_id: str) -> bool:
    """Whether client_id enrolled."""
    query = sa.select(enrollments.c.client_id).where(enrollments.c.client_id == client_id)
    return conn.execute(query).first() is not None


def check_in(conn: Connection, round_id: int, client_id: str, network: str, now: float) -> bool:
    """Record a check-in for the round being selected; False if this client already checked in."""
    key = (checkins.c.round_id == round_id) & (checkins.c.client_id == client_id)
    if conn.execute(sa.select(checkins.c.client_id).where(key)).first() is not None:
        return False
    conn.execute(checkins.insert().values(round_id=round_id, client_id=client_id, network=network, at=now,
                                          selected=False))
    return True


def round_checkins(conn: Connection, round_id: int) -> list[tuple[str, str]]:
    """(client_id, network) of every check-in of the round, in arrival order."""
    query = (sa.select(checkins.c.client_id, checkins.c.network).where(checkins.c.round_id == round_id)
             .order_by(checkins.c.at, checkins.c.client_id))
    return [(client, network) for client, network in conn.execute(query)]


def checkins_by_network(conn: Connection, round_id: int) -> dict[str, int]:
    """How many clients of each network checked in for the round."""
    c = checkins.c
    query = sa.select(c.network, sa.func.count()).where(c.round_id == round_id).group_by(c.network)
    return {network: n for network, n in conn.execute(query)}


def is_member(conn: Connection, round_id: int, client_id: str) -> bool:
    """Whether client_id was chosen into the round's cohort."""
    c = checkins.c
    query = sa.select(c.client_id).where(c.round_id == round_id, c.client_id == client_id, c.selected)
    return conn.execute(query).first() is not None


def cohort(conn: Connection, round_id: int) -> list[tuple[str, str]]:
    """(client_id, network) of the round's cohort."""
    c = checkins.c
    query = sa.select(c.client_id, c.network).where(c.round_id == round_id, c.selected).order_by(c.client_id)
    return [(client, network) for client, network in conn.execute(query)]


def cohort_sizes(conn: Connection, round_ids: list[int]) -> dict[int, dict]:
    """Per round: check-ins and cohort members."""
    c = checkins.c
    query = (sa.select(c.round_id, sa.func.count(), sa.func.sum(sa.case((c.selected, 1), else_=0)))
             .where(c.round_id.in_(round_ids)).group_by(c.round_id))
    return {rid: {"checkins": n, "cohort": int(members or 0)} for rid, n, members in conn.execute(query)}


def recent_rounds(conn: Connection, limit: int) -> list[dict]:
    """The latest rounds, oldest first, as their table rows."""
    query = sa.select(rounds).order_by(rounds.c.id.desc()).limit(limit)
    return [row._asdict() for row in conn.execute(query)][::-1]


def round_stats(conn: Connection, round_ids: list[int] | None = None,
                keys: list[str] | None = None) -> dict[int, dict]:
    """Per round: participants, examples, example-weighted mean loss before/after, mean staleness.

    :param keys: count only these updates (ticket digests): a FedBuff step folds the first K.
    """
    u = updates.c
    examples = sa.func.sum(u.num_examples)
    query = sa.select(u.round_id, sa.func.count(), examples,
                      sa.func.sum(u.loss_before * u.num_examples) / examples,
                      sa.func.sum(u.loss_after * u.num_examples) / examples,
                      sa.func.avg(u.staleness)).group_by(u.round_id)
    if round_ids is not None:
        query = query.where(u.round_id.in_(round_ids))
    if keys is not None:
        query = query.where(u.ticket_digest.in_(keys))
    return {rid: {"participants": n, "examples": int(ex), "loss_before": before, "loss_after": after,
                  "mean_staleness": float(stale)}
            for rid, n, ex, before, after, stale in conn.execute(query)}


# -- tickets and updates ---------------------------------------------------------------------------

def insert_ticket(conn: Connection, digest: str, client_id: str, version: int, round_id: int,
                  issued_at: float, expires_at: float) -> None:
    """Store an issued ticket by its digest."""
    conn.execute(_INSERT_TICKET, {"digest": digest, "client_id": client_id, "version": version,
                                  "round_id": round_id, "issued_at": issued_at, "expires_at": expires_at})


TICKET_COLUMNS = (tickets.c.digest, tickets.c.client_id, tickets.c.version, tickets.c.expires_at,
                  tickets.c.used_at, tickets.c.round_id)
_INSERT_TICKET = tickets.insert()
_FIND_TICKET = sa.select(*TICKET_COLUMNS).where(tickets.c.digest == sa.bindparam("digest"))
_USE_TICKET = (tickets.update().where(tickets.c.digest == sa.bindparam("key"), tickets.c.used_at.is_(None))
               .values(used_at=sa.bindparam("now")).returning(*TICKET_COLUMNS))


def find_ticket(conn: Connection, digest: str) -> Ticket | None:
    """The ticket with this digest, or None."""
    row = conn.execute(_FIND_TICKET, {"digest": digest}).first()
    return None if row is None else Ticket(*row)


def use_ticket(conn: Connection, digest: str, now: float) -> Ticket | None:
    """Mark an unused ticket used and return it, in one statement (an upload's checks follow; a
    refusal rolls the mark back); None if no unused ticket has this digest (unknown, or used: by
    another transaction first, two workers and one ticket).
    """
    row = conn.execute(_USE_TICKET, {"key": digest, "now": now}).first()
    return None if row is None else Ticket(*row)


def ticket_was_used(conn: Connection, digest: str) -> bool:
    """Whether an accepted update came with this ticket (its ticket row may be pruned since)."""
    return conn.execute(sa.select(updates.c.id).where(updates.c.ticket_digest == digest)).first() is not None


def prune_tickets(conn: Connection, expired_before: float) -> int:
    """Delete the tickets that expired before the given time; return how many went."""
    return conn.execute(tickets.delete().where(tickets.c.expires_at < expired_before)).rowcount


_INSERT_UPDATE = updates.insert()
_COUNT_UPDATES = (sa.select(sa.func.count()).select_from(updates)
                  .where(updates.c.round_id == sa.bindparam("round_id")))


def insert_update(conn: Connection, **values: object) -> bool:
    """Insert an accepted update's row (columns as in ``server.schema.updates``); False if the
    client already has one in the round, or its network's seat is taken (a concurrent upload on
    another worker won; the transaction must then end).
    """
    try:
        conn.execute(_INSERT_UPDATE, values)
    except sa.exc.IntegrityError:
        return False
    return True


def has_update(conn: Connection, round_id: int, client_id: str) -> bool:
    """Whether client_id has an accepted update in the round."""
    u = updates.c
    query = sa.select(u.id).where(u.round_id == round_id, u.client_id == client_id)
    return conn.execute(query).first() is not None


def seats_taken(conn: Connection, round_id: int, network: str) -> set[int]:
    """The seats a network's updates hold in a FedBuff buffer (the unique key's index answers it)."""
    u = updates.c
    query = sa.select(u.seat).where(u.round_id == round_id, u.network == network, u.seat.is_not(None))
    return {seat for seat, in conn.execute(query)}


def count_updates(conn: Connection, round_id: int) -> int:
    """How many updates the round has accepted (every worker's)."""
    return conn.execute(_COUNT_UPDATES, {"round_id": round_id}).scalar_one()


def round_updates(conn: Connection, round_id: int) -> list[StoredUpdate]:
    """The round's accepted updates in arrival order."""
    query = (sa.select(updates.c.ticket_digest, updates.c.weight, updates.c.sha256)
             .where(updates.c.round_id == round_id).order_by(updates.c.id))
    return [StoredUpdate(key, weight, sha) for key, weight, sha in conn.execute(query)]


def move_updates(conn: Connection, keys: list[str], round_id: int) -> None:
    """Move accepted updates (by ticket digest) into another round: a FedBuff buffer's latecomers
    wait in the next one.
    """
    if keys:
        conn.execute(updates.update().where(updates.c.ticket_digest.in_(keys)).values(round_id=round_id))


def quarantine_update(conn: Connection, round_id: int, key: str, reason: str, moved_to: str | None,
                      now: float) -> None:
    """Take an update out of its round: its row moves into the quarantine table (kept as JSON)."""
    row = conn.execute(sa.select(updates).where(updates.c.ticket_digest == key)).first()
    conn.execute(quarantine.insert().values(kind="update", round_id=round_id, ref=key, reason=reason[:255],
                                            moved_to=moved_to, at=now,
                                            record=json.dumps(row._asdict()) if row else None))
    conn.execute(updates.delete().where(updates.c.ticket_digest == key))


def quarantine_version(conn: Connection, version: int, reason: str, moved_to: str, now: float) -> None:
    """Record a version directory that start-up moved aside."""
    conn.execute(quarantine.insert().values(kind="version", ref=str(version), reason=reason[:255],
                                            moved_to=moved_to, at=now))


def quarantined_count(conn: Connection) -> int:
    """How many things start-up ever quarantined."""
    return conn.execute(sa.select(sa.func.count()).select_from(quarantine)).scalar_one()


def accepted_count(conn: Connection) -> int:
    """How many updates were ever accepted."""
    return conn.execute(sa.select(sa.func.count()).select_from(updates)).scalar_one()


# -- refusal counts --------------------------------------------------------------------------------

def add_rejections(conn: Connection, round_id: int, code: str, count: int = 1) -> None:
    """Add count refusals under code to the round's counter."""
    key = (rejections.c.round_id == round_id) & (rejections.c.code == code)
    if conn.execute(rejections.update().where(key).values(total=rejections.c.total + count)).rowcount == 0:
        conn.execute(rejections.insert().values(round_id=round_id, code=code, total=count))


def rejections_by_round(conn: Connection, round_ids: list[int]) -> dict[int, dict[str, int]]:
    """Refused requests per round and code."""
    r = rejections.c
    counts: dict[int, dict[str, int]] = {}
    query = sa.select(r.round_id, r.code, r.total).where(r.round_id.in_(round_ids))
    for rid, code, total in conn.execute(query):
        counts.setdefault(rid, {})[code] = total
    return counts


def rejections_by_code(conn: Connection) -> dict[str, int]:
    """Refused requests per code, over every round."""
    query = sa.select(rejections.c.code, sa.func.sum(rejections.c.total)).group_by(rejections.c.code)
    return {code: int(total) for code, total in conn.execute(query)}
