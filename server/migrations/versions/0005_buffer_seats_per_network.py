"""FedBuff seats per network ([X]/[T2]): updates.network and updates.seat, unique per round.

Revision ID: 0005
Revises: 0004_t1_secure
Create Date: 2026-11-26 12:50:00.000000

A buffer takes at most MAX_MEMBERS_PER_NETWORK updates from one /24 or /56: each takes a seat
0 .. cap-1 of its network, and the unique (round_id, network, seat) key makes two uploads that
race for the last seat on two workers collide. Existing rows get network '' and seat NULL:
NULLs never collide, so they keep the key valid.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004_t1_secure'
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this change."""
    with op.batch_alter_table('updates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('network', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('seat', sa.Integer(), nullable=True))
        batch_op.create_unique_constraint('one_update_per_seat_and_round', ['round_id', 'network', 'seat'])


def downgrade() -> None:
    """Undo it."""
    with op.batch_alter_table('updates', schema=None) as batch_op:
        batch_op.drop_constraint('one_update_per_seat_and_round', type_='unique')
        batch_op.drop_column('seat')
        batch_op.drop_column('network')
