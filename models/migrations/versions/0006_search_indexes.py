"""search indexes: trigram indexes for ticket search on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 05:00:00

`paidan tickets find` and /find look for words anywhere in a message, a subject or a name (ILIKE
'%…%'), which no B-tree index answers: on PostgreSQL it scanned every message. pg_trgm's GIN indexes
answer such patterns of three or more characters from the index. They exist on PostgreSQL only
(SQLite teams are small; it scans), and only where the server lets the database's owner create the
extension (pg_trgm is a trusted extension since PostgreSQL 13); elsewhere search still works, by
scanning. The models do not declare them: `models.tables.SEARCH_INDEXES` names them for comparisons.
"""
import logging
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# (index, table, column): kept in step with models.tables.SEARCH_INDEXES.
INDEXES = (
    ("ix_messages_text_trgm", "messages", "text"),
    ("ix_tickets_subject_trgm", "tickets", "subject"),
    ("ix_customers_display_name_trgm", "customers", "display_name"),
)
log = logging.getLogger("paidan.migrations")


def upgrade() -> None:
    """Upgrade schema."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():  # a refusal must not abort the migration's transaction
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as refused:
        log.warning("search indexes not created: the server refused the pg_trgm extension (%s); "
                    "ticket search still works, by scanning", str(refused.orig).strip().splitlines()[0])
        return
    for name, table, column in INDEXES:
        op.create_index(name, table, [column], postgresql_using="gin", postgresql_ops={column: "gin_trgm_ops"},
                        if_not_exists=True)


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table, if_exists=True)
