"""The ticket state machine of DESIGN.md; every transition becomes an audit event."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from models.errors import IllegalTransition
from models.tables import Ticket, TicketEvent

NEW, ASSIGNED, IN_PROGRESS = "new", "assigned", "in_progress"
AWAITING_CUSTOMER, RESOLVED, CLOSED = "awaiting_customer", "resolved", "closed"
REOPENED, MERGED = "reopened", "merged"

STATES = (NEW, ASSIGNED, IN_PROGRESS, AWAITING_CUSTOMER, RESOLVED, CLOSED, REOPENED, MERGED)
OPEN_STATES = frozenset({NEW, ASSIGNED, IN_PROGRESS, AWAITING_CUSTOMER, REOPENED})

# Forward along the happy path; back to `new` when an assignment is declined or times out;
# `reopened` when the customer says it is not solved; `merged` is final. Any open ticket can close
# at once: that is what marking it spam does (router/blocking.py), with nothing to resolve.
TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset({ASSIGNED, IN_PROGRESS, AWAITING_CUSTOMER, RESOLVED, CLOSED, MERGED}),
    ASSIGNED: frozenset({NEW, ASSIGNED, IN_PROGRESS, AWAITING_CUSTOMER, RESOLVED, CLOSED, MERGED}),
    IN_PROGRESS: frozenset({NEW, ASSIGNED, AWAITING_CUSTOMER, RESOLVED, CLOSED, MERGED}),
    AWAITING_CUSTOMER: frozenset({NEW, ASSIGNED, IN_PROGRESS, RESOLVED, CLOSED, MERGED}),
    RESOLVED: frozenset({CLOSED, REOPENED}),
    CLOSED: frozenset({REOPENED}),
    REOPENED: frozenset({NEW, ASSIGNED, IN_PROGRESS, AWAITING_CUSTOMER, RESOLVED, CLOSED, MERGED}),
    MERGED: frozenset(),
}


CLOSE_BATCH = 500


def close_resolved(session: Session, after: timedelta, now: datetime, *, limit: int = CLOSE_BATCH) -> int:
    """Close the tickets resolved at least `after` ago (the customer did not write again, which would
    have reopened them); returns how many. A zero `after` closes nothing."""
    if after <= timedelta(0):
        return 0
    tickets = session.scalars(
        select(Ticket).where(Ticket.state == RESOLVED, Ticket.resolved_at <= now - after)
        .order_by(Ticket.resolved_at, Ticket.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    days = after.total_seconds() / 86400
    for ticket in tickets:
        transition(session, ticket, CLOSED, actor="router", at=now,
                   reason=f"closed: resolved {days:g} day(s) ago and the customer did not write again")
    return len(tickets)


def touch(ticket: Ticket, at: datetime) -> None:
    """Something happened on the ticket at `at`. Written even when it equals the loaded value (two steps
    at one `at`): otherwise the column's onupdate stamps the wall clock, wrong on any other clock."""
    ticket.updated_at = at
    flag_modified(ticket, "updated_at")


def allowed(from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS.get(from_state, frozenset())


def transition(
    session: Session, ticket: Ticket, to_state: str, *, actor: str, reason: str, at: datetime
) -> TicketEvent:
    """Move `ticket` to `to_state` and record who, when and why; refuse what the machine forbids."""
    from_state = ticket.state
    if not allowed(from_state, to_state):
        raise IllegalTransition(ticket.number, from_state, to_state, TRANSITIONS.get(from_state, frozenset()))
    ticket.state = to_state
    touch(ticket, at)
    if to_state == RESOLVED:
        ticket.resolved_at = at
    elif to_state == CLOSED:
        ticket.closed_at = at
    elif to_state == REOPENED:
        ticket.resolved_at = ticket.closed_at = None
    # ticket_id, not the relationship: events of one flush then keep the order they happened in.
    event = TicketEvent(
        ticket_id=ticket.id, at=at, actor=actor, kind="transition",
        from_state=from_state, to_state=to_state, reason=reason,
    )
    session.add(event)
    return event
