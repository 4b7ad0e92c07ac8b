"""The database schema: one SQLAlchemy Core table per kind of record, and nothing that runs SQL.

``server.db`` opens the database and holds every statement over them; ``server.migrations`` creates
and changes them (a change here needs a migration there: server/migrations/README.md).
"""

from __future__ import annotations

import sqlalchemy as sa

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
    sa.Column("result_version", sa.Integer, nullable=True),
    # selecting (check-ins gather) | reporting (the cohort trains); NULL in rows from before [T2].
    # A secure cohort ([T1]) adds its own phases between the two.
    sa.Column("phase", sa.String(16), nullable=True),
    sa.Column("selected_at", sa.Float, nullable=True),
    sa.Column("carried", sa.Text, nullable=True),  # the strategy's state from the previous round (JSON)
    sa.Column("detail", sa.Text, nullable=True))  # why a round was refused or abandoned, for people

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
    sa.Column("sha256", sa.String(64), nullable=True),  # of the spool body; NULL in rows from before
    # the /24 or /56 the upload came from ('' in rows from before); in a FedBuff buffer, which of
    # its MAX_MEMBERS_PER_NETWORK seats it took (NULL outside buffers: NULLs never collide)
    sa.Column("network", sa.String(64), nullable=False, server_default=""),
    sa.Column("seat", sa.Integer, nullable=True),
    sa.UniqueConstraint("round_id", "client_id", name="one_update_per_client_and_round"),
    sa.UniqueConstraint("round_id", "network", "seat", name="one_update_per_seat_and_round"))

enrollments = sa.Table(  # client ids that paid for their identity (proof of work, operator token)
    "enrollments", metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("proof", sa.String(32), nullable=False),  # which proofs it gave: "pow", "pow+token", "none"
    sa.Column("network", sa.String(64), nullable=False),  # /24 or /56 it enrolled from
    sa.Column("enrolled_at", sa.Float, nullable=False))

checkins = sa.Table(  # who asked to take part in a round while its cohort was being chosen
    "checkins", metadata,
    sa.Column("round_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("network", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("selected", sa.Boolean, nullable=False, default=False))

secure_messages = sa.Table(  # [T1] every accepted message of a secure round, to rebuild it on restart
    "secure_messages", metadata,
    sa.Column("round_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phase", sa.String(16), primary_key=True),  # config | advertise | shares | masked | unmask
    sa.Column("sender", sa.Integer, primary_key=True, autoincrement=False),  # cohort index; -1: the server
    sa.Column("body", sa.LargeBinary, nullable=False),  # privacy.messages bytes; a masked input is masked
    sa.Column("at", sa.Float, nullable=False))

rejections = sa.Table(
    "rejections", metadata,
    sa.Column("round_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("total", sa.Integer, nullable=False))

quarantine = sa.Table(  # what start-up refused to use: never silently deleted
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # update | version
    sa.Column("round_id", sa.Integer, nullable=True),
    sa.Column("ref", sa.String(64), nullable=False),  # the update's ticket digest, or the version
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("moved_to", sa.String(255), nullable=True),  # relative to DATA_DIR; NULL: nothing on disk
    sa.Column("record", sa.Text, nullable=True),  # the update's row as JSON
    sa.Column("at", sa.Float, nullable=False))
