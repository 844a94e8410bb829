"""Tickets an agent opens by writing to a customer first: a payment that failed on our side, an
outage they are about to notice, an answer promised on the phone.

The ticket is the agent's from the start (accepted, no offer, no notice), the first message goes out
on the customer's channel like any reply (email with the ticket's number in the subject, so their
answer threads back; Telegram to someone who has written to the bot), and then it waits on the
customer: the waiting job reminds them and resolves it if they never answer (router/waiting.py).

Its only SLA clock is the resolution clock, paused until the customer answers (we wrote first: there
is no first response to owe); their answer reaches the agent like any answer. Reports count these
tickets apart (`opened_by_agents`): they are not contacts, and a "first response" of zero seconds
would flatter every average.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import ActionRefused, InvalidInput, NotFound
from models.message import OUTBOUND_FLAG, IdentityKind, written_language
from models.tables import Customer, Identity as IdentityRow, Ticket, TicketEvent
from router import actions, assignment, sla, states
from router.config import RouterConfig
from router.identity import DEFAULT_REGION, find_customer, parse_identity
from router.intake import new_ticket_number

CHANNELS = ("email", "telegram")  # where we can write first (phone numbers: we send no SMS)
MAX_SUBJECT = 200


def open_ticket(session: Session, to: str, actor, config: RouterConfig, now: datetime, *, text: str,
                subject: str = "", via: str | None = None, name: str = "", labels: dict[str, str] | None = None,
                default_region: str = DEFAULT_REGION) -> actions.Outcome:
    """Open a ticket for the customer `to` (a customer id such as #12, an email address, a phone
    number or telegram:ID of someone known) by sending them `text`; the ticket is `actor`'s.

    An email address nobody has written from yet makes a new customer (`name`, if given). `via`
    picks the channel when they have both; by default the one `to` names, else email. `labels`:
    type, category and priority, each optional and checked against the label sets."""
    agent = actions.resolve_agent(session, actor)
    body = (text or "").replace("\x00", "").strip()
    if not body:
        raise ActionRefused("the message is empty; write what the customer should read (nothing was sent)")
    if via is not None and via not in CHANNELS:
        raise InvalidInput("via", f"{via!r} is not a channel we can write first on; choose {' or '.join(CHANNELS)}")
    customer, named = _customer(session, to, name, default_region, now)
    channel = _channel(session, customer, named, via)
    chosen = _labels(labels or {}, config)
    already = session.scalars(select(Ticket.number).where(
        Ticket.customer_id == customer.id, Ticket.state.in_(states.OPEN_STATES)).order_by(Ticket.id.desc()).limit(3)).all()

    number = new_ticket_number(session, now, config.calendar.timezone)
    title = " ".join((subject or body.splitlines()[0]).split())[:MAX_SUBJECT]
    ticket = Ticket(number=number, customer_id=customer.id, channel=channel, subject=title, state=states.NEW,
                    language=customer.language or written_language(body), routed_at=now, flags=[OUTBOUND_FLAG],
                    created_at=now, updated_at=now, **chosen)
    session.add(ticket)
    session.flush()
    session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=actions.actor_of(agent), kind="opened",
                            reason=f"{agent.name} opened the ticket by writing to customer #{customer.id} on {channel}",
                            data={"action": "open", "channel": channel, "customer_id": customer.id, **chosen}))
    assignment.take_by_hand(session, ticket, agent, now, actor=actions.actor_of(agent),
                            reason=f"{agent.name} opened it")
    # The resolution clock only, paused at once below: it runs from the customer's answer, and it is there
    # (not started later from the ticket's creation) for a reopen or a new priority to act on.
    sla.start_clocks(session, ticket, config, now, kinds=(sla.RESOLUTION,))
    sent = actions.reply(session, number, agent, body, config, now)
    actions.wait_for_customer(session, number, agent, config, now, note="we wrote first")
    where = sent.summary.removeprefix(f"reply to {number} ")
    data = {"customer_id": customer.id, "channel": channel, **sent.data, **chosen}
    if already:
        # Sent all the same (the agent chose to write anew), but a second conversation is worth knowing of.
        data["warning"] = (f"customer #{customer.id} also has open ticket(s) {', '.join(already)}; if it is the "
                           f"same matter, /merge {number} {already[0]}")
    return actions.Outcome(number, "open", states.AWAITING_CUSTOMER, agent.name,
                           f"{number} opened for customer #{customer.id}: the message is {where}; it waits for "
                           f"their answer, which comes to you", data)


def _customer(session: Session, to: str, name: str, default_region: str, now: datetime) -> tuple[Customer, str | None]:
    """The customer `to` names, and the channel kind it named ("email", "telegram", or None for a
    customer id or a phone number). An email address nobody has written from makes a new customer."""
    ref = (to or "").strip()
    if not ref:
        raise InvalidInput("to", "say whom to write to: a customer id (#12), an email address or telegram:ID")
    if _customer_id(ref):
        return find_customer(session, ref, default_region=default_region), None
    try:
        return find_customer(session, ref, default_region=default_region), _named_kind(ref, default_region)
    except NotFound:
        identity = parse_identity(ref, default_region=default_region)
        if identity.kind != IdentityKind.EMAIL:
            raise NotFound(f"no customer is known by {identity}; we can write first only to an email address, or on "
                           f"Telegram to someone who has written to the bot") from None
    customer = Customer(display_name=(name.strip() or identity.value.split("@")[0])[:200], created_at=now)
    session.add(customer)
    session.flush()
    session.add(IdentityRow(customer_id=customer.id, kind=identity.kind.value, value=identity.value, created_at=now))
    return customer, "email"


def _customer_id(ref: str) -> bool:
    """`#12` or a short number: a customer id, as find_customer reads it (a long one is a phone)."""
    return ref.lstrip("#").isdigit() and (ref.startswith("#") or len(ref.lstrip("#")) < 7)


def _named_kind(ref: str, default_region: str) -> str | None:
    kind = parse_identity(ref, default_region=default_region).kind.value
    return kind if kind in CHANNELS else None


def _channel(session: Session, customer: Customer, named: str | None, via: str | None) -> str:
    """Where the first message goes: `via`, else the channel `to` named, else email, else Telegram."""
    held = set(session.scalars(select(IdentityRow.kind).where(IdentityRow.customer_id == customer.id)))
    for kind in ([via] if via else [named, "email", "telegram"]):
        if kind in held:
            return kind
    has = ", ".join(sorted(held)) or "nothing"
    wanted = via or " or ".join(CHANNELS)
    raise ActionRefused(f"customer #{customer.id} has no {wanted} to write to (they have {has}); give an email "
                        f"address instead (nothing was sent)")


def _labels(given: dict[str, str], config: RouterConfig) -> dict[str, str]:
    sets = actions.label_sets(config)
    chosen = {}
    for head, value in given.items():
        if not value:
            continue
        if head not in sets:
            raise InvalidInput(head, f"{head!r} is not a label head; use type, category or priority")
        match = next((label for label in sets[head] if label.lower() == value.strip().lower()), None)
        if match is None:
            raise InvalidInput(head, f"{value!r} is not a {head}; choose one of {', '.join(sets[head])}")
        chosen[head] = match
    return chosen
