"""Tickets waiting on the customer: a reminder, then resolved.

An agent sets a ticket to wait for the customer (`/wait`: a screenshot, an order number, a yes) and
its SLA clocks pause. Customers often never answer — the problem went away — and the ticket would
wait forever, holding a place of the agent's capacity. So, with nothing happening on it (its
`updated_at`: an agent's note or reply counts as something):

- after `remind_waiting_after` the customer is reminded once, on their channel, with the date it
  will be resolved;
- after `resolve_waiting_after` it is resolved by the router, its agent gets the place back. No
  survey is sent: the customer did not take part in the ending.

A word from the customer at any point does what it always does: a waiting ticket goes back to work,
a resolved one reopens. Each 0 turns its step off.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from models.tables import Customer, Ticket, TicketEvent
from router import states
from router.config import RouterConfig
from router.outbox import customer_address, enqueue

BATCH = 200  # tickets per step and tick: a backlog is worked off over a few minutes, not in one long transaction
REMINDED = "waiting_reminder"  # the event that says this wait's reminder went out


def remind_and_resolve(session: Session, config: RouterConfig, now: datetime, *, limit: int = BATCH) -> int:
    """One tick of both steps; returns how many tickets were reminded or resolved."""
    return remind(session, config, now, limit=limit) + resolve(session, config, now, limit=limit)


def remind(session: Session, config: RouterConfig, now: datetime, *, limit: int = BATCH) -> int:
    after, resolve_after = config.remind_waiting_after, config.resolve_waiting_after
    if not after or (resolve_after and after >= resolve_after):
        return 0  # off, or it would come after the ticket is resolved
    # Reminded already in this wait: an event since the ticket last changed (writing the event does
    # not change the ticket, so the reminder itself does not restart the wait).
    reminded = exists().where(TicketEvent.ticket_id == Ticket.id, TicketEvent.kind == REMINDED,
                              TicketEvent.at >= Ticket.updated_at)
    blocked = select(Customer.id).where(Customer.blocked_at.is_not(None))  # nothing goes back to a blocked sender
    tickets = session.scalars(
        select(Ticket).where(Ticket.state == states.AWAITING_CUSTOMER, Ticket.updated_at <= now - after, ~reminded,
                             Ticket.customer_id.not_in(blocked))
        .order_by(Ticket.updated_at, Ticket.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    for ticket in tickets:
        resolve_by = ticket.updated_at + resolve_after if resolve_after else None
        address = customer_address(session, ticket, ticket.channel)
        if address is not None:
            enqueue(session, kind="reminder", channel=address[0], recipient=address[1], ticket_id=ticket.id, now=now,
                    dedupe_key=f"reminder:{ticket.id}:{ticket.updated_at.isoformat()}",
                    payload={"ticket": ticket.number, "subject": ticket.subject, "language": ticket.language,
                             "resolve_by": resolve_by.isoformat() if resolve_by else None})
        sent = f"reminded on {address[0]}" if address else "no address to remind them at (the status page shows it)"
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="router", kind=REMINDED,
                                reason=f"waiting on the customer for {_days(now - ticket.updated_at)}: {sent}",
                                data={"channel": address[0] if address else None,
                                      "resolve_by": resolve_by.isoformat() if resolve_by else None}))
    return len(tickets)


def resolve(session: Session, config: RouterConfig, now: datetime, *, limit: int = BATCH) -> int:
    from router import assignment, sla

    after = config.resolve_waiting_after
    if not after:
        return 0
    tickets = session.scalars(
        select(Ticket).where(and_(Ticket.state == states.AWAITING_CUSTOMER, Ticket.updated_at <= now - after))
        .order_by(Ticket.updated_at, Ticket.id).limit(limit).with_for_update(skip_locked=True)
    ).all()
    freed = False
    for ticket in tickets:
        waited = _days(now - ticket.updated_at)
        states.transition(session, ticket, states.RESOLVED, actor="router", at=now,
                          reason=f"resolved: waited {waited} for the customer, who did not write again")
        sla.stop_clocks(session, ticket, ("resolution",) if ticket.first_response_at else
                        ("resolution", "first_response"), now)
        ticket.queue = ticket.queue_reason = None
        freed |= assignment.release(session, ticket, now, why="resolved", actor="router") is not None
    if freed:
        assignment.drain_queue(session, config, now)
    return len(tickets)


def _days(span) -> str:
    days = span.total_seconds() / 86400
    return f"{days:.0f} day(s)" if days >= 1 else f"{span.total_seconds() / 3600:.0f} hour(s)"
