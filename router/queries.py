"""Read-side questions the channels ask, answered without exposing the ORM."""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models.message import Identity, PublicMessage, TicketView
from models.tables import Agent, Customer, Identity as IdentityRow, Message, Ticket


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
    if owner is None or not _same_customer(session, owner, ticket.customer_id):
        return None
    rows = session.execute(
        select(Message.direction, Message.text, Message.received_at, Agent.name)
        .outerjoin(Agent, Agent.id == Message.author_agent_id)
        .where(Message.ticket_id == ticket.id, Message.public.is_(True))
        .order_by(Message.id)
    ).all()
    return TicketView(
        number=ticket.number,
        state=ticket.state,
        subject=ticket.subject,
        created_at=ticket.created_at,
        messages=tuple(PublicMessage(r.direction, r.text, r.received_at, r.name or "") for r in rows),
    )


def _same_customer(session: Session, customer_id: int, ticket_customer_id: int) -> bool:
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

    async def db_ok(self) -> bool:
        return await asyncio.to_thread(self._db_ok)
