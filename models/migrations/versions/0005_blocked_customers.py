"""blocked customers: spammers' messages are kept closed and never answered

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 04:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('customers') as batch:
        batch.add_column(sa.Column('blocked_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('blocked_by', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('blocked_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('customers') as batch:
        batch.drop_column('blocked_reason')
        batch.drop_column('blocked_by')
        batch.drop_column('blocked_at')
