"""The tables of the first release: versions, files, rounds, tickets, updates, refusal counts.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the first release's tables (as its ``create_all`` did)."""
    op.create_table(
        "versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("parent", sa.Integer, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("round_id", sa.Integer, nullable=True),
        sa.Column("created", sa.Float, nullable=False))
    op.create_table(
        "files",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("path", sa.String(255), nullable=False))
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("close_reason", sa.String(32), nullable=True),
        sa.Column("result_version", sa.Integer, nullable=True))
    op.create_table(
        "tickets",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("round_id", sa.Integer, nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("used_at", sa.Float, nullable=True))
    op.create_table(
        "updates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("ticket_digest", sa.String(64), nullable=False),
        sa.Column("base_version", sa.Integer, nullable=False),
        sa.Column("staleness", sa.Integer, nullable=False),
        sa.Column("num_examples", sa.Integer, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("loss_before", sa.Float, nullable=False),
        sa.Column("loss_after", sa.Float, nullable=False),
        sa.Column("norm", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.UniqueConstraint("ticket_digest"),
        sa.UniqueConstraint("round_id", "client_id", name="one_update_per_client_and_round"))
    op.create_index("ix_updates_round_id", "updates", ["round_id"])
    op.create_table(
        "rejections",
        sa.Column("round_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("total", sa.Integer, nullable=False))


def downgrade() -> None:
    """Drop every table."""
    for table in ("rejections", "updates", "tickets", "rounds", "files", "versions"):
        op.drop_table(table)
