"""Delivering the outbox: claim due rows of one channel, then record what became of each send.

Channel-agnostic: the email sender uses it today, Telegram can tomorrow. A sender claims rows in a
short transaction that commits before any network I/O, sends, and marks each row sent or failed.
A claim is a lease: it pushes `next_attempt_at` forward, so a sender that crashes mid-batch leaves
its rows to be retried once the lease runs out, and no other sender touches them before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from models.message import ERASED
from models.tables import AttachmentRow, OutboxItem, TicketEvent

# A temporary failure is retried after 1 min, 2, 4, … doubling up to an hour between tries.
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
# Ten tries span about four hours (1+2+4+8+16+32+60+60+60 min): a relay outage of a few hours is
# ridden out, but past that the customer has waited beyond any first-response target, so a human
# should hear of it (the delivery_failed event) and reach them another way rather than have the
# mail arrive a day late. A setting, not a law: callers may pass their own.
MAX_ATTEMPTS = 10

_outbox = OutboxItem.__table__


@dataclass(frozen=True, slots=True)
class Claimed:
    """One outbox row a sender now holds (until its lease runs out): plain data, no ORM."""

    id: int
    kind: str
    recipient: str
    payload: dict
    ticket_id: int | None
    attempts: int  # including this one
    dedupe_key: str | None
    created_at: datetime


def claim_due(engine: Engine, channel: str, *, now: datetime, limit: int = 50, lease: timedelta) -> list[Claimed]:
    """Take up to `limit` pending rows of `channel` that are due, for `lease`; oldest due first.

    The lease must outlast sending the whole batch (limit × the sender's timeout), or a slow batch's
    tail could be claimed again by another sender. The claim is committed before this returns.
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        # PostgreSQL: rows another sender is claiming are skipped, not waited for. SQLite has no row
        # locks: paidan's engine opens every transaction with BEGIN IMMEDIATE, so claims take turns.
        due_ids = session.scalars(
            select(_outbox.c.id)
            .where(_outbox.c.channel == channel, _outbox.c.status == "pending", _outbox.c.next_attempt_at <= now)
            .order_by(_outbox.c.next_attempt_at, _outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not due_ids:
            return []
        # The same conditions again, so that even without a lock (an SQLite engine opened some other
        # way) a row is only returned to the one claim whose UPDATE changed it.
        rows = session.execute(
            update(_outbox)
            .where(_outbox.c.id.in_(due_ids), _outbox.c.status == "pending", _outbox.c.next_attempt_at <= now)
            .values(attempts=_outbox.c.attempts + 1, next_attempt_at=now + lease)
            .returning(_outbox.c.id, _outbox.c.kind, _outbox.c.recipient, _outbox.c.payload, _outbox.c.ticket_id,
                       _outbox.c.attempts, _outbox.c.dedupe_key, _outbox.c.created_at)
        ).all()
    position = {item_id: n for n, item_id in enumerate(due_ids)}  # RETURNING comes in no set order
    return sorted((Claimed(**row._mapping) for row in rows), key=lambda item: position[item.id])


def mark_sent(engine: Engine, item_id: int, *, now: datetime) -> None:
    """The peer accepted the item: it is done."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.execute(update(_outbox).where(_outbox.c.id == item_id)
                        .values(status="sent", sent_at=now, last_error=None))


def mark_failed(engine: Engine, item_id: int, error: str, *, now: datetime, permanent: bool,
                max_attempts: int = MAX_ATTEMPTS, retry_at: datetime | None = None) -> str:
    """Record a failed send; returns the row's status now: "pending" (it will be retried) or "failed"
    (or "sent", when another sender delivered it meanwhile).

    `retry_at`: the peer asked us to pause until then (Telegram's 429 retry_after). The item was not
    at fault, so the claim's attempt is given back and it waits exactly that long, not the backoff.

    A failed item also gets a `delivery_failed` event on its ticket, so a human sees that the
    customer never received it.
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        row = session.execute(
            select(_outbox.c.kind, _outbox.c.channel, _outbox.c.recipient, _outbox.c.ticket_id, _outbox.c.attempts,
                   _outbox.c.status)
            .where(_outbox.c.id == item_id).with_for_update()
        ).one()
        if row.status != "pending":
            return row.status  # another sender took it over after our lease ran out, and finished it
        if retry_at is not None and not permanent:
            session.execute(update(_outbox).where(_outbox.c.id == item_id)
                            .values(last_error=error, next_attempt_at=retry_at,
                                    attempts=_outbox.c.attempts - 1))
            return "pending"
        if not permanent and row.attempts < max_attempts:
            session.execute(update(_outbox).where(_outbox.c.id == item_id)
                            .values(last_error=error, next_attempt_at=now + retry_delay(row.attempts)))
            return "pending"
        session.execute(update(_outbox).where(_outbox.c.id == item_id).values(status="failed", last_error=error))
        if row.ticket_id is not None:
            tries = "" if permanent else f" after {row.attempts} attempts"
            session.add(TicketEvent(
                ticket_id=row.ticket_id, at=now, actor="system", kind="delivery_failed",
                reason=f"the {row.kind} to {row.recipient} by {row.channel} was not delivered{tries}: {error}",
                data={"outbox_id": item_id, "kind": row.kind, "channel": row.channel, "recipient": row.recipient,
                      "attempts": row.attempts, "permanent": permanent},
            ))
        return "failed"


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th try failed: doubling from FIRST_RETRY, capped."""
    doublings = min(max(attempts - 1, 0), 16)  # 2**16 minutes is far past the cap already
    return min(FIRST_RETRY * 2 ** doublings, LONGEST_RETRY)


def attachment_file(engine: Engine, attachment_id: int) -> tuple[str, bytes] | None:
    """A stored attachment's name and bytes, for a sender sending it on (Telegram's "file" items)."""
    with Session(engine) as session:
        row = session.execute(select(AttachmentRow.filename, AttachmentRow.data)
                              .where(AttachmentRow.id == attachment_id)).first()
    if row is None or row.filename == ERASED:  # erased on request since it was queued
        return None
    return row.filename, row.data
