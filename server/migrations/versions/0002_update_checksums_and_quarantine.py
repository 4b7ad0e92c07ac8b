"""Each update row keeps its body's sha256; what start-up sets aside goes to a quarantine table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add updates.sha256 (NULL in older rows: start-up then checks the body's format only) and
    create the quarantine table.
    """
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("sha256", sa.String(64), nullable=True))
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("round_id", sa.Integer, nullable=True),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("moved_to", sa.String(255), nullable=True),
        sa.Column("record", sa.Text, nullable=True),
        sa.Column("at", sa.Float, nullable=False))


def downgrade() -> None:
    """Drop the quarantine table and updates.sha256."""
    op.drop_table("quarantine")
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("sha256")
