"""Everything we send goes through the outbox, written in the transaction of the decision that caused it.

Channel senders (email, Telegram) claim pending rows and deliver them; a channel without a sender
yet simply leaves its rows pending, to be delivered when it lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import Agent, Identity, OutboxItem, Ticket
from router.config import SUPERVISOR_ROLES
from router.dialects import PerDialect

# Where a notification to an agent or supervisor goes: the agent console lives in Telegram.
STAFF_CHANNEL = "telegram"


@dataclass(frozen=True, slots=True)
class Queued:
    """One row `enqueue` added to the outbox (it is written at once, so it has its id)."""

    id: int
    kind: str
    channel: str
    recipient: str


_OUTBOX_ID = OutboxItem.__table__.c.id
# A dedupe key already queued adds nothing, in the same statement.
_INSERT_ITEM = PerDialect(lambda insert: insert(OutboxItem.__table__)
                          .on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(_OUTBOX_ID))
_INSERT_ITEMS = PerDialect(lambda insert: insert(OutboxItem.__table__)
                           .on_conflict_do_nothing(index_elements=["dedupe_key"]))


def item(*, kind: str, channel: str, recipient: str, payload: dict, ticket_id: int | None = None,
         dedupe_key: str | None = None, now: datetime, due: datetime | None = None) -> dict:
    """One outbox row, for `enqueue` or `enqueue_many`; sent from `due` on (default: at once)."""
    return {"kind": kind, "channel": channel, "recipient": recipient, "payload": payload, "ticket_id": ticket_id,
            "dedupe_key": dedupe_key, "status": "pending", "attempts": 0, "next_attempt_at": due or now,
            "created_at": now}


def enqueue(
    session: Session, *, kind: str, channel: str, recipient: str, payload: dict,
    ticket_id: int | None = None, dedupe_key: str | None = None, now: datetime, due: datetime | None = None,
) -> Queued | None:
    """Add one item to send; with a `dedupe_key` already queued, nothing is added (sent once).

    One INSERT … ON CONFLICT DO NOTHING, not a look-up and then an insert: half the statements, and
    two transactions queueing the same key at once cannot both add it (the loser adds nothing).
    """
    return _insert(session, item(kind=kind, channel=channel, recipient=recipient, payload=payload,
                                 ticket_id=ticket_id, dedupe_key=dedupe_key, now=now, due=due))


def _insert(session: Session, row: dict) -> Queued | None:
    item_id = session.execute(_INSERT_ITEM.for_session(session), row).scalar()
    return Queued(item_id, row["kind"], row["channel"], row["recipient"]) if item_id is not None else None


def enqueue_many(session: Session, items: Sequence[dict]) -> None:
    """`enqueue` for the rows of a whole step (routing's acknowledgements, a sweep's notices), in one
    statement; for callers that need neither the ids nor which keys were new."""
    if items:
        session.execute(_INSERT_ITEMS.for_session(session), list(items))


def agent_address(agent: Agent) -> str:
    """How the agent console reaches an agent: their Telegram id, else their name for a human to see."""
    return f"telegram:{agent.telegram_id}" if agent.telegram_id else f"agent:{agent.id}"


def notify_agent(session: Session, agent: Agent, *, kind: str, ticket: Ticket, text: str, now: datetime,
                 dedupe_key: str | None = None, due: datetime | None = None, **extra) -> Queued | None:
    return _insert(session, staff_item(agent, kind=kind, ticket=ticket, text=text, now=now, dedupe_key=dedupe_key,
                                        due=due, **extra))


def supervisors_of(session: Session) -> list[Agent]:
    return list(session.scalars(select(Agent).where(Agent.role.in_(sorted(SUPERVISOR_ROLES))).order_by(Agent.id)))


def notify_supervisors(session: Session, *, kind: str, ticket: Ticket, text: str, now: datetime,
                       on_call_only: bool = False, dedupe_key: str | None = None,
                       supervisors: Sequence[Agent] | None = None, **extra) -> list[Queued]:
    """Tell the supervisors (or only the on-call ones, falling back to all when none is on call).
    `supervisors`: `supervisors_of(session)`, when the caller tells them about many tickets."""
    if supervisors is None:
        supervisors = supervisors_of(session)
    rows = supervisor_items(supervisors, kind=kind, ticket=ticket, text=text, now=now, on_call_only=on_call_only,
                            dedupe_key=dedupe_key, **extra)
    return [queued for queued in map(partial(_insert, session), rows) if queued is not None]


def supervisor_items(supervisors: Sequence[Agent], *, kind: str, ticket: Ticket, text: str, now: datetime,
                     on_call_only: bool = False, dedupe_key: str | None = None, **extra) -> list[dict]:
    """The outbox rows of `notify_supervisors`, for `enqueue_many`."""
    if on_call_only and any(s.on_call for s in supervisors):
        supervisors = [s for s in supervisors if s.on_call]
    if not supervisors:
        # Nobody to tell yet: keep the notice anyway, addressed to the role, so it is not lost.
        return [item(kind=kind, channel=STAFF_CHANNEL, recipient="role:supervisor", ticket_id=ticket.id,
                     payload={"ticket": ticket.number, "text": text, **extra}, dedupe_key=dedupe_key, now=now)]
    return [staff_item(s, kind=kind, ticket=ticket, text=text, now=now,
                       dedupe_key=f"{dedupe_key}:{s.id}" if dedupe_key else None, **extra) for s in supervisors]


def staff_item(agent: Agent, *, kind: str, ticket: Ticket, text: str, now: datetime, dedupe_key: str | None = None,
               due: datetime | None = None, **extra) -> dict:
    """The outbox row of `notify_agent`, for `enqueue_many`."""
    return item(kind=kind, channel=STAFF_CHANNEL, recipient=agent_address(agent), ticket_id=ticket.id,
                payload={"ticket": ticket.number, "text": text, "agent_id": agent.id, **extra},
                dedupe_key=dedupe_key, now=now, due=due)


def customer_address(session: Session, ticket: Ticket, channel: str,
                     identities: Sequence[Identity] | None = None) -> tuple[str, str] | None:
    """(channel, recipient) to reach the ticket's customer on `channel`, or on any channel they have.
    `identities`: the customer's, when the caller has read them already."""
    kinds = {"email": ["email"], "telegram": ["telegram"], "web": ["email", "phone"], "api": ["email", "phone"]}
    if identities is None:
        identities = session.scalars(select(Identity).where(Identity.customer_id == ticket.customer_id)).all()
    for kind in kinds.get(channel, []) + ["email", "telegram", "phone"]:
        match = next((i for i in identities if i.kind == kind), None)
        if match is not None:
            out_channel = {"email": "email", "telegram": "telegram", "phone": "sms"}[kind]
            return out_channel, match.value
    return None
