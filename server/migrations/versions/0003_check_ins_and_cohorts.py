"""Check-ins and cohorts ([T2]): the checkins and enrollments tables, the round's phase and carried state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 01:34:48.244632
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this change."""
    op.create_table('checkins',
    sa.Column('round_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('network', sa.String(length=64), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('selected', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('round_id', 'client_id')
    )
    op.create_table('enrollments',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('proof', sa.String(length=32), nullable=False),
    sa.Column('network', sa.String(length=64), nullable=False),
    sa.Column('enrolled_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('client_id')
    )
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phase', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('selected_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('carried', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('detail', sa.Text(), nullable=True))



def downgrade() -> None:
    """Undo it."""
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('detail')
        batch_op.drop_column('carried')
        batch_op.drop_column('selected_at')
        batch_op.drop_column('phase')

    op.drop_table('enrollments')
    op.drop_table('checkins')
