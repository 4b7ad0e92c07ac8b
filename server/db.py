"""The one module that opens the database: schema, engine, transactions, and the init-db command.

SQLAlchemy Core over SQLite by default (a file under DATA_DIR, WAL journal, synchronous=FULL so a
committed update survives kill -9 and power loss); any SQLAlchemy URL, e.g. PostgreSQL, works
too. Other modules use ``transaction(engine)`` and the tables below, never their own connection.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click
import sqlalchemy as sa
from flask import Flask, current_app

metadata = sa.MetaData()

versions = sa.Table(
    "versions", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("parent", sa.Integer, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),  # initial | aggregate | rollback
    sa.Column("round_id", sa.Integer, nullable=True),  # the round whose updates made it
    sa.Column("created", sa.Float, nullable=False))

files = sa.Table(  # content-addressed: the graphs shared by every version are one row
    "files", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("path", sa.String(255), nullable=False))  # relative to DATA_DIR

rounds = sa.Table(
    "rounds", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("base_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | closed | aborted
    sa.Column("opened_at", sa.Float, nullable=False),
    sa.Column("deadline", sa.Float, nullable=False),
    sa.Column("closed_at", sa.Float, nullable=True),
    sa.Column("close_reason", sa.String(32), nullable=True),
    sa.Column("result_version", sa.Integer, nullable=True))

tickets = sa.Table(
    "tickets", metadata,
    sa.Column("digest", sa.String(64), primary_key=True),  # sha256 of the ticket: a DB leak is no ticket
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("round_id", sa.Integer, nullable=False),
    sa.Column("issued_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True))

updates = sa.Table(
    "updates", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("round_id", sa.Integer, nullable=False, index=True),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("ticket_digest", sa.String(64), nullable=False, unique=True),
    sa.Column("base_version", sa.Integer, nullable=False),
    sa.Column("staleness", sa.Integer, nullable=False),
    sa.Column("num_examples", sa.Integer, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),  # num_examples * staleness factor
    sa.Column("loss_before", sa.Float, nullable=False),
    sa.Column("loss_after", sa.Float, nullable=False),
    sa.Column("norm", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.UniqueConstraint("round_id", "client_id", name="one_update_per_client_and_round"))

rejections = sa.Table(
    "rejections", metadata,
    sa.Column("round_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("total", sa.Integer, nullable=False))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Durable, concurrent SQLite: WAL readers never block the writer; FULL fsyncs each commit."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> sa.Engine:
    """An engine for url, with the tables created if missing."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine


@contextmanager
def transaction(engine: sa.Engine):
    """A connection inside one transaction: committed on success, rolled back on any error."""
    with engine.begin() as connection:
        yield connection


def get_engine(app: Flask | None = None) -> sa.Engine:
    """The engine of app (default: the current app)."""
    return (app or current_app).extensions["fedurl.engine"]


@click.command("init-db")
def init_db_command() -> None:
    """Create the tables if missing (the server also does this when it starts)."""
    click.echo(f"database ready: {get_engine().url.render_as_string(hide_password=True)}")


def init_app(app: Flask) -> None:
    """Open the app's engine and register the init-db command."""
    app.extensions["fedurl.engine"] = create_engine(app.config["DATABASE_URL"])
    app.cli.add_command(init_db_command)
