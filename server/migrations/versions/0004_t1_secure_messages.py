"""Secure rounds ([T1]): the secure_messages table, every accepted message of a secure round.

Revision ID: 0004_t1_secure
Revises: 0003
Create Date: 2026-11-26 02:45:00.000000

Another 0004 lands in parallel; the merger re-chains this one on top of it (down_revision).
"""

import sqlalchemy as sa
from alembic import op

revision = '0004_t1_secure'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this change."""
    op.create_table('secure_messages',
    sa.Column('round_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('sender', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('round_id', 'phase', 'sender')
    )


def downgrade() -> None:
    """Undo it."""
    op.drop_table('secure_messages')
