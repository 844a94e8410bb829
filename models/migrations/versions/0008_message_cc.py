"""message cc: whom a customer copied on their mail, so our answer copies them too

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 05:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('messages') as batch:
        batch.add_column(sa.Column('cc', sa.JSON(), server_default=sa.text("'[]'"), nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('cc')
