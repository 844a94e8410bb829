"""Where each poller got to (IMAP uidvalidity and last UID, Telegram offset), kept in the database
so a restart resumes instead of re-reading or skipping. One JSON value per poller name.

Also the "acted once" keys: an update Telegram delivers again (an agent's command, a survey button,
a /link request) claims its key in the transaction of what it does, so the second delivery finds the
key taken and does nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, select, update
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


# Telegram redelivers an update it holds for up to 24 h; a key kept longer outlives any redelivery.
ONCE_KEPT = timedelta(days=2)
# The agent console had these keys first; the prefix stays, so keys written before an upgrade still count.
ONCE_PREFIX = "console-once:"
_CLAIM_ONCE = PerDialect(lambda insert: insert(ChannelCursor.__table__)
                         .on_conflict_do_nothing(index_elements=["name"]).returning(ChannelCursor.name))


def claim_once(session: Session, key: str, now: datetime) -> dict | None:
    """Claim `key` in the caller's transaction: None the first time (committed together with what the
    caller does, or not at all); later, the value remembered with it (`remember_once`), `{}` if none.
    Keys older than any redelivery are dropped on the way."""
    session.execute(delete(ChannelCursor).where(ChannelCursor.name.startswith(ONCE_PREFIX),
                                                ChannelCursor.updated_at < now - ONCE_KEPT))
    name = _once_name(key)
    if session.execute(_CLAIM_ONCE.for_session(session), {"name": name, "value": {}, "updated_at": now}).scalar():
        return None
    return dict(session.scalar(select(ChannelCursor.value).where(ChannelCursor.name == name)) or {})


def remember_once(session: Session, key: str, value: dict) -> None:
    """Keep `value` with a claimed key (e.g. the answer a redelivery should get again)."""
    session.execute(update(ChannelCursor).where(ChannelCursor.name == _once_name(key)).values(value=dict(value)))


def recall_once(session: Session, key: str) -> dict | None:
    """What was remembered with a claimed key, without claiming it; None if it was never claimed."""
    value = session.scalar(select(ChannelCursor.value).where(ChannelCursor.name == _once_name(key)))
    return None if value is None else dict(value)


def _once_name(key: str) -> str:
    return f"{ONCE_PREFIX}{key}"[:200]
