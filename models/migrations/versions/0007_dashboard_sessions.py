"""dashboard sessions: sign-in links work once, and signing out ends the session

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 09:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('dashboard_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('link_sha256', sa.String(length=64), nullable=False),
    sa.Column('session_sha256', sa.String(length=64), nullable=False),
    sa.Column('agent_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('link_expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('signed_out_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_dashboard_sessions_agent_id_agents')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dashboard_sessions')),
    sa.UniqueConstraint('link_sha256', name=op.f('uq_dashboard_sessions_link_sha256')),
    sa.UniqueConstraint('session_sha256', name=op.f('uq_dashboard_sessions_session_sha256'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('dashboard_sessions')
