"""Read-side questions the channels ask, answered without exposing the ORM."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models.message import Identity, PublicMessage, TicketSummary, TicketView
from models.tables import Agent, AttachmentRow, Customer, Identity as IdentityRow, Message, OutboxItem, SlaClock, Ticket
from router import states


def ticket_view_sync(session: Session, number: str, identity: Identity) -> TicketView | None:
    """The ticket if `identity` belongs to its customer; None otherwise, whichever part was wrong."""
    ticket = session.scalar(select(Ticket).where(Ticket.number == number.strip().upper()))
    if ticket is None:
        return None
    owner = session.scalar(
        select(IdentityRow.customer_id).where(
            IdentityRow.kind == identity.kind.value, IdentityRow.value == identity.value
        )
    )
    if owner is None or not same_customer(session, owner, ticket.customer_id):
        return None
    rows = session.execute(
        select(Message.id, Message.direction, Message.text, Message.received_at, Agent.name)
        .outerjoin(Agent, Agent.id == Message.author_agent_id)
        .where(Message.ticket_id == ticket.id, Message.public.is_(True))
        .order_by(Message.id)
    ).all()
    files: dict[int, list[str]] = {}
    for message_id, filename in session.execute(
        select(AttachmentRow.message_id, AttachmentRow.filename)
        .where(AttachmentRow.message_id.in_([r.id for r in rows])).order_by(AttachmentRow.id)
    ):
        files.setdefault(message_id, []).append(filename)
    return TicketView(
        number=ticket.number,
        state=ticket.state,
        subject=ticket.subject,
        created_at=ticket.created_at,
        messages=tuple(PublicMessage(r.direction, r.text, r.received_at, r.name or "", tuple(files.get(r.id, ())))
                       for r in rows),
    )


STATUS_TICKETS = 5  # a phone screen
RECENTLY_FINISHED = timedelta(days=30)  # resolved or closed tickets a customer still asks about


def customer_tickets_sync(session: Session, identity: Identity, now: datetime,
                          limit: int = STATUS_TICKETS) -> list[TicketSummary]:
    """The tickets of the person behind `identity` (everyone merged into them counts): open ones, then
    those finished in the last 30 days, newest activity first. Empty for someone we do not know."""
    from router.privacy import same_person

    owner = session.scalar(select(IdentityRow.customer_id).where(
        IdentityRow.kind == identity.kind.value, IdentityRow.value == identity.value))
    if owner is None:
        return []
    # Finished and never labelled: an auto-reply or bounce kept closed (router/intake.py), nothing they asked.
    finished = (Ticket.state.in_((states.RESOLVED, states.CLOSED)) & (Ticket.updated_at >= now - RECENTLY_FINISHED)
                & Ticket.priority.is_not(None))
    last_reply = (select(func.max(Message.received_at))
                  .where(Message.ticket_id == Ticket.id, Message.direction == "out", Message.public.is_(True))
                  .correlate(Ticket).scalar_subquery())
    due = (select(SlaClock.due_at)
           .where(SlaClock.ticket_id == Ticket.id, SlaClock.kind == "first_response", SlaClock.stopped_at.is_(None),
                  SlaClock.paused_since.is_(None))
           .correlate(Ticket).limit(1).scalar_subquery())
    rows = session.execute(
        select(Ticket.number, Ticket.state, Ticket.subject, Ticket.created_at, last_reply, due)
        .where(Ticket.customer_id.in_(same_person(session, owner)),
               Ticket.state.in_(sorted(states.OPEN_STATES)) | finished)
        .order_by(Ticket.state.in_(sorted(states.OPEN_STATES)).desc(), Ticket.updated_at.desc(), Ticket.id.desc())
        .limit(limit)
    ).all()
    return [TicketSummary(*row) for row in rows]


def same_customer(session: Session, customer_id: int, ticket_customer_id: int) -> bool:
    """True when both ids are the same person, following merges either way."""
    def root(cid: int) -> int:
        seen = set()
        while cid not in seen:
            seen.add(cid)
            merged = session.scalar(select(Customer.merged_into_id).where(Customer.id == cid))
            if merged is None:
                return cid
            cid = merged
        return cid

    return root(customer_id) == root(ticket_customer_id)


class TicketQueries:
    def __init__(self, engine: Engine):
        self.engine = engine

    def _view(self, number: str, identity: Identity) -> TicketView | None:
        with Session(self.engine) as session:
            return ticket_view_sync(session, number, identity)

    async def ticket_view(self, number: str, identity: Identity) -> TicketView | None:
        return await asyncio.to_thread(self._view, number, identity)

    def _db_ok(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 — any failure means "not healthy"; /healthz reports it
            return False

    async def operations(self) -> Operations:
        return await asyncio.to_thread(self._operations)

    def _operations(self) -> Operations:
        with Session(self.engine) as session:
            return operations_sync(session, datetime.now(UTC))

    async def db_ok(self) -> bool:
        return await asyncio.to_thread(self._db_ok)


@dataclass(frozen=True, slots=True)
class Operations:
    """What an operator watches, counted at one moment (served on /metrics)."""

    tickets: dict[str, int]  # open tickets by state (every open state, 0 included)
    waiting: dict[str, int]  # open tickets without an agent, by queue ("assignment", "triage")
    unrouted: int  # stored but not yet classified and routed: the scheduler's backlog
    outbox_pending: dict[str, int]  # notifications and replies not yet delivered, by channel
    outbox_oldest_seconds: dict[str, float]  # how long the oldest of them has waited, by channel
    sla_overdue: dict[str, int]  # running SLA clocks past their due time, by clock


def operations_sync(session: Session, now: datetime) -> Operations:
    # Open states only: the state index finds them, where counting every closed ticket of years would
    # read the whole table on each scrape.
    tickets = dict.fromkeys(sorted(states.OPEN_STATES), 0)
    tickets.update(session.execute(
        select(Ticket.state, func.count()).where(Ticket.state.in_(states.OPEN_STATES)).group_by(Ticket.state)
    ).all())
    waiting = dict(session.execute(
        select(Ticket.queue, func.count())
        .where(Ticket.queue.is_not(None), Ticket.state.in_(states.OPEN_STATES)).group_by(Ticket.queue)
    ).all())
    unrouted = session.scalar(
        select(func.count()).select_from(Ticket).where(Ticket.routed_at.is_(None), Ticket.state != states.MERGED))
    pending = session.execute(
        select(OutboxItem.channel, func.count(), func.min(OutboxItem.created_at))
        .where(OutboxItem.status == "pending").group_by(OutboxItem.channel)
    ).all()
    overdue = dict(session.execute(
        select(SlaClock.kind, func.count())
        .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None), SlaClock.due_at < now)
        .group_by(SlaClock.kind)
    ).all())
    return Operations(
        tickets=tickets, waiting=waiting, unrouted=unrouted or 0,
        outbox_pending={channel: count for channel, count, _ in pending},
        outbox_oldest_seconds={channel: max(0.0, (now - oldest).total_seconds()) for channel, _, oldest in pending},
        sla_overdue=overdue,
    )


@dataclass(frozen=True, slots=True)
class DueClock:
    """A running SLA clock that runs out soon, or ran out: what a supervisor acts on first."""

    number: str
    priority: str
    state: str
    agent: str | None  # who holds the ticket (None: waiting in a queue)
    kind: str  # first_response | resolution
    due_at: datetime
    subject: str


def due_soon(session: Session, now: datetime, within: timedelta, limit: int = 50, *,
             holder: int | None = None) -> list[DueClock]:
    """Running clocks (not paused, not stopped) due before `now + within`, overdue ones first, then the
    soonest; a ticket appears once a clock; `holder`: only that agent's tickets. Every step that moves a clock keeps its projected due time
    on it (router/sla.py), so this is one read of the running clocks, nothing computed per clock."""
    rows = session.execute(
        select(Ticket.number, SlaClock.priority, Ticket.state, Agent.name, SlaClock.kind, SlaClock.due_at,
               Ticket.subject, Ticket.queue)
        .join(Ticket, Ticket.id == SlaClock.ticket_id)
        .outerjoin(Agent, Agent.id == Ticket.assigned_agent_id)
        .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None), SlaClock.due_at.is_not(None),
               SlaClock.due_at <= now + within, Ticket.state.in_(states.OPEN_STATES),
               *([Ticket.assigned_agent_id == holder, Ticket.queue.is_(None)] if holder is not None else []))
        .order_by(SlaClock.due_at, Ticket.id).limit(limit)
    ).all()
    return [DueClock(r.number, r.priority, r.state, None if r.queue else r.name, r.kind, r.due_at, r.subject or "")
            for r in rows]
