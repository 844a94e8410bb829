"""Where each poller got to (IMAP uidvalidity and last UID, Telegram offset), kept in the database
so a restart resumes instead of re-reading or skipping. One JSON value per poller name."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models.tables import ChannelCursor
from router.dialects import PerDialect


def _upsert(insert):
    stmt = insert(ChannelCursor.__table__)
    return stmt.on_conflict_do_update(
        index_elements=["name"], set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at}
    )


# One statement for "first save" and "later saves": two pollers of the same name (two `paidan
# serve` processes) cannot trip over each other's INSERT.
_UPSERT = PerDialect(_upsert)


def load_cursor(engine: Engine, name: str) -> dict:
    """The value last saved under `name`; `{}` when the poller has never saved one."""
    with Session(engine) as session:
        value = session.scalar(select(ChannelCursor.value).where(ChannelCursor.name == name))
    return dict(value) if value else {}


def save_cursor(engine: Engine, name: str, value: dict) -> None:
    """Replace the value under `name`, committed before this returns."""
    with Session(engine) as session, session.begin():
        session.execute(_UPSERT.for_session(session),
                        {"name": name, "value": dict(value), "updated_at": datetime.now(UTC)})
