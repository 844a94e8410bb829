"""Blocked customers: spammers and abusers.

A blocked customer's messages are still stored — a channel that acknowledged a message must keep it,
and a block set by mistake must lose nothing — but intake keeps them on closed tickets flagged
`spam`: nobody is assigned, no clock runs and nothing is sent back, the way an auto-reply is kept.
Agents block from a ticket (`actions.mark_spam`, which also closes the sender's unanswered tickets);
supervisors can block a customer directly. Unblocking (`actions.not_spam`, or `unblock`) hands
everything kept meanwhile back to the router.

The block belongs to the person: it is set on the customer everyone else was merged into (the root),
and a merge carries it over (router/identity.py), so a spammer cannot shed it by writing from a new
address that also names a blocked one.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import ActionRefused
from models.tables import Customer, Message, Ticket, TicketEvent
from router import states
from router.config import RouterConfig

SPAM_FLAG = "spam"  # on tickets closed as spam, and on tickets opened closed for a blocked sender
BLOCKED_FLAG = "blocked"  # on each message that arrived while its sender was blocked


def blocked_among(session: Session, customer_ids: Collection[int]) -> set[int]:
    """Which of these customers are blocked: one indexed look-up for a whole intake batch."""
    if not customer_ids:
        return set()
    return set(session.scalars(select(Customer.id).where(Customer.id.in_(list(customer_ids)),
                                                          Customer.blocked_at.is_not(None))))


def block(session: Session, customer: Customer, *, by: str, reason: str, now: datetime) -> bool:
    """Block `customer` (a root customer); False when they already were (the first block's who and
    why are kept: they say why it started)."""
    if customer.merged_into_id is not None:
        raise ActionRefused(f"customer #{customer.id} was merged into #{customer.merged_into_id}; block that one")
    if customer.blocked_at is not None:
        return False
    customer.blocked_at, customer.blocked_by, customer.blocked_reason = now, by[:200], reason.strip() or None
    return True


def copy_block(source: Customer, target: Customer, source_id: int) -> None:
    """A merge carries the source's block to the target (router/identity.py), saying where it came
    from, so that undoing the merge can tell a copied block from one set on the target itself."""
    target.blocked_at, target.blocked_by = source.blocked_at, source.blocked_by
    target.blocked_reason = f"{_copied_from(source_id)}: {source.blocked_reason or ''}".rstrip(": ")


def came_with_merge(target: Customer, source_id: int) -> bool:
    """Whether the target's block is the one a merge of customer `source_id` copied to it."""
    reason = target.blocked_reason or ""
    return target.blocked_at is not None and (reason == _copied_from(source_id)
                                               or reason.startswith(f"{_copied_from(source_id)}: "))


def _copied_from(source_id: int) -> str:
    return f"merged with blocked customer #{source_id}"


def unblock(session: Session, customer: Customer) -> bool:
    """Lift the block; False when there was none. What arrived meanwhile is the caller's to release
    (`actions.not_spam` reopens it)."""
    if customer.blocked_at is None:
        return False
    customer.blocked_at = customer.blocked_by = customer.blocked_reason = None
    return True


def close_unanswered(session: Session, customer: Customer, *, first: Ticket | None, actor: str, reason: str,
                     config: RouterConfig, now: datetime) -> list[Ticket]:
    """Close `first` and every other open ticket of the person that no agent has answered, as spam:
    a spammer opens many, and an answered one is a real conversation that an agent closes (or not) by
    hand. Their clocks stop, their agents get the capacity back (and the queue it); each is flagged so
    `release_kept` finds it. Returns them, `first` first."""
    from router import assignment, sla
    from router.privacy import same_person

    others = session.scalars(
        select(Ticket).where(Ticket.customer_id.in_(same_person(session, customer.id)),
                             Ticket.id != (first.id if first else -1), Ticket.state.in_(states.OPEN_STATES),
                             Ticket.first_response_at.is_(None))
        .order_by(Ticket.id).with_for_update()
    ).all()
    tickets = [first, *others] if first is not None else list(others)
    freed = False
    for ticket in tickets:
        ticket.flags = [*ticket.flags, SPAM_FLAG]
        if ticket.state not in states.OPEN_STATES:
            continue  # closed or resolved already: flagged, so release_kept knows it, and left as it is
        ticket.queue = ticket.queue_reason = None
        sla.stop_clocks(session, ticket, ("first_response", "resolution"), now)
        freed |= assignment.release(session, ticket, now, why="spam", actor=actor) is not None
        with_first = "" if ticket is first or first is None else f" with {first.number}"
        event = states.transition(session, ticket, states.CLOSED, actor=actor, at=now,
                                  reason=f"closed as spam{with_first}: {reason}")
        event.data = {"action": "spam", "customer_id": customer.id, "with": first.number if first else None}
    if freed:
        assignment.drain_queue(session, config, now)
    return tickets


def release_kept(session: Session, customer: Customer, *, actor: str, reason: str,
                 now: datetime) -> tuple[list[str], list[str]]:
    """Hand what was kept from agents while the customer was blocked back to the router: tickets
    closed as spam (or opened closed) reopen, and the router labels, acknowledges and assigns them
    as if they had just arrived; open tickets holding messages that arrived meanwhile are routed
    again, so their agent hears of them. Returns (reopened, rerouted) ticket numbers."""
    from router.privacy import same_person

    tickets = session.scalars(
        select(Ticket).where(Ticket.customer_id.in_(same_person(session, customer.id)), Ticket.state != states.MERGED)
        .order_by(Ticket.id).with_for_update()
    ).all()
    unread = set(session.scalars(select(Message.ticket_id).where(
        Message.ticket_id.in_([t.id for t in tickets]), Message.direction == "in", Message.model_version.is_(None))))
    reopened, rerouted = [], []
    for ticket in tickets:
        if SPAM_FLAG in ticket.flags:
            ticket.flags = [f for f in ticket.flags if f != SPAM_FLAG]
            if ticket.state == states.CLOSED:
                event = states.transition(session, ticket, states.REOPENED, actor=actor, at=now,
                                          reason=f"not spam: {reason}")
                event.data = {"action": "not_spam", "customer_id": customer.id}
                ticket.routed_at = None
                reopened.append(ticket.number)
        elif ticket.state in states.OPEN_STATES and ticket.id in unread:
            ticket.routed_at = None
            rerouted.append(ticket.number)
            session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=actor, kind="not_spam",
                                    reason=f"customer #{customer.id} unblocked: {reason}; the messages kept "
                                           f"meanwhile go to the ticket's agent", data={}))
    return reopened, rerouted


def released(customer_id: int, reopened: list[str], rerouted: list[str]) -> str:
    """What unblocking did, in one sentence for the person who did it."""
    return "; ".join([f"customer #{customer_id} unblocked",
                      *([f"reopened {', '.join(reopened)} for the router to assign"] if reopened else []),
                      *([f"messages kept meanwhile on {', '.join(rerouted)} go to their agents"] if rerouted else [])])
