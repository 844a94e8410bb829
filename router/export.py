"""Tickets as rows for a spreadsheet (`paidan tickets export`): one row a ticket, what a supervisor sorts
and filters on in Excel or feeds to a BI tool — labels, who held it, the times, each SLA clock's outcome,
the satisfaction rating.

Rows are read in pages of ids, so a year of a busy desk streams without holding it in memory, and each
page's clocks and surveys are read with one query each. Times are in the desk's time zone, as people
read them; durations are wall-clock minutes (what the customer lived through, as in the report).
Customers appear as their number only: the export is for counting, and travels further than the
database (`paidan customers export` is the way to a person's data). Subjects are the customers' words,
so the CLI writes the file for its owner only.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.message import MACHINE_FLAGS, OUTBOUND_FLAG
from models.tables import Agent, SlaClock, Survey, Ticket, TicketEvent
from router import states

COLUMNS = (
    "number", "created", "channel", "state", "type", "category", "priority", "confidence", "language",
    "customer", "agent", "first_response", "first_response_minutes", "resolved", "resolution_minutes",
    "first_response_sla", "resolution_sla", "reopened", "rating", "origin", "subject",
)
PAGE = 2_000  # tickets a query reads


def count(session: Session, since: datetime, until: datetime) -> int:
    return session.scalar(select(func.count()).select_from(Ticket)
                          .where(Ticket.created_at >= since, Ticket.created_at < until)) or 0


def rows(session: Session, since: datetime, until: datetime, timezone: str) -> Iterator[dict[str, str]]:
    """The tickets created in [since, until), oldest first, as COLUMNS → text."""
    zone = ZoneInfo(timezone)
    after_id = 0
    while True:
        page = session.execute(
            select(Ticket, Agent.name).outerjoin(Agent, Agent.id == Ticket.assigned_agent_id)
            .where(Ticket.created_at >= since, Ticket.created_at < until, Ticket.id > after_id)
            .order_by(Ticket.id).limit(PAGE)
        ).all()
        if not page:
            return
        ids = [ticket.id for ticket, _ in page]
        clocks = {(c.ticket_id, c.kind): c for c in session.scalars(select(SlaClock).where(SlaClock.ticket_id.in_(ids)))}
        ratings = dict(session.execute(select(Survey.ticket_id, Survey.rating).where(Survey.ticket_id.in_(ids))).all())
        reopened = dict(session.execute(
            select(TicketEvent.ticket_id, func.count())
            .where(TicketEvent.ticket_id.in_(ids), TicketEvent.kind == "transition",
                   TicketEvent.to_state == states.REOPENED)
            .group_by(TicketEvent.ticket_id)).all())
        for ticket, agent in page:
            yield _row(ticket, agent, clocks, ratings.get(ticket.id), reopened.get(ticket.id, 0), zone)
        after_id = ids[-1]
        session.expunge_all()  # a page at a time in memory


def _row(t: Ticket, agent: str | None, clocks: dict, rating: int | None, reopened: int, zone: ZoneInfo) -> dict[str, str]:
    return {
        "number": t.number, "created": _local(t.created_at, zone), "channel": t.channel, "state": t.state,
        "type": t.type or "", "category": t.category or "", "priority": t.priority or "",
        "confidence": f"{t.confidence:.2f}" if t.confidence is not None else "", "language": t.language or "",
        "customer": str(t.customer_id), "agent": agent or "",
        "first_response": _local(t.first_response_at, zone), "first_response_minutes": _minutes(t.created_at, t.first_response_at),
        "resolved": _local(t.resolved_at, zone), "resolution_minutes": _minutes(t.created_at, t.resolved_at),
        "first_response_sla": _outcome(clocks.get((t.id, "first_response"))),
        "resolution_sla": _outcome(clocks.get((t.id, "resolution"))),
        "reopened": str(reopened), "rating": str(rating) if rating is not None else "",
        "origin": origin(t.flags or ()), "subject": t.subject or "",
    }


def origin(flags) -> str:
    """Whose the ticket is, as the report counts them: a customer's contact, an agent's outreach, a machine's."""
    if not MACHINE_FLAGS.isdisjoint(flags):
        return "machine"
    return "agent" if OUTBOUND_FLAG in flags else "customer"


def _outcome(clock: SlaClock | None) -> str:
    if clock is None:
        return ""
    if clock.breached_at is not None:
        return "breached"
    if clock.stopped_at is not None:
        return "met"
    return "paused" if clock.paused_since is not None else "running"


def _local(at: datetime | None, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%Y-%m-%d %H:%M") if at is not None else ""


def _minutes(start: datetime, end: datetime | None) -> str:
    return f"{(end - start).total_seconds() / 60:.0f}" if end is not None else ""
