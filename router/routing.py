"""The routing step: classifier, priority rules, triage, SLA clocks, assignment and acknowledgement.

Intake commits a message first (so the channel can acknowledge at once); this step then picks up
every ticket whose `routed_at` is empty and routes it in one transaction, with its reasons. A
ticket a customer writes to again comes back here too: the new message is classified, the
second-contact rule may raise the priority, and the agent hears of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.message import OUTBOUND_FLAG
from models.prediction import Classifier, Prediction
from models.tables import Agent, Customer, Identity, Message, ReviewItem, SlaClock, Ticket, TicketEvent
from router import states
from router.config import PRIORITIES, RouterConfig
from router.intake import our_message_id
from router.outbox import customer_address, enqueue_many, item, notify_agent, notify_supervisors, supervisors_of

log = logging.getLogger(__name__)

# Channels whose customers get our acknowledgement through the outbox; the web form and the API
# already showed the ticket number and the expected response time in their answer.
ACK_CHANNELS = frozenset({"email", "telegram"})
DEFAULT_PRIORITY = "P2"  # when no classifier is loaded: a supervisor triages, the clock still runs


@dataclass(frozen=True, slots=True)
class PriorityDecision:
    priority: str
    bumps: tuple[str, ...]  # the reasons each level was added, in order


def raise_priority(priority: str, levels: int = 1, *, ceiling: str = "P0") -> str:
    """`levels` more urgent, never past `ceiling` (P0 is the most urgent)."""
    index = max(PRIORITIES.index(priority) - levels, PRIORITIES.index(ceiling))
    return PRIORITIES[min(index, PRIORITIES.index(priority))]


def first_priority(predicted: str, *, vip: bool) -> PriorityDecision:
    """Priority of a new ticket: the classifier's (its rules included), one level up for a VIP."""
    if vip and predicted != "P0":
        return PriorityDecision(raise_priority(predicted), (f"VIP customer: {predicted} → {raise_priority(predicted)}",))
    return PriorityDecision(predicted, ())


def second_contact_priority(current: str, *, already_bumped: bool) -> PriorityDecision:
    """A second contact on an open ticket within the window: one level up, never above P1 on this rule alone."""
    bumped = raise_priority(current, ceiling="P1")
    if already_bumped or bumped == current:
        return PriorityDecision(current, ())
    return PriorityDecision(bumped, (f"second contact within the window: {current} → {bumped}",))


def needs_triage(prediction: Prediction | None, config: RouterConfig) -> str | None:
    """Why a supervisor must look before anyone is assigned, or None."""
    if prediction is None:
        return "no classifier model is loaded (run `paidan model ensure`); labels need a human"
    low = [f"{head} {score.label} at {score.confidence:.2f}"
           for head, score in (("type", prediction.type), ("category", prediction.category))
           if score.confidence < config.triage_threshold]
    if low:
        return f"low classifier confidence ({', '.join(low)} < {config.triage_threshold:.2f})"
    return None


def route_pending(
    session: Session, classifier: Classifier | None, config: RouterConfig, now: datetime, *, limit: int = 200
) -> int:
    """Route up to `limit` tickets waiting for the router; returns how many were routed."""
    tickets = session.scalars(
        select(Ticket)
        .where(Ticket.routed_at.is_(None), Ticket.state != states.MERGED)
        .order_by(Ticket.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # several `paidan serve` on one PostgreSQL share the work
    ).all()
    if not tickets:
        return 0
    pending = _unclassified_messages(session, [t.id for t in tickets])
    texts = [classification_text(t.subject, [m.text for m in pending.get(t.id, [])], new_ticket=_unrouted(t))
             for t in tickets]
    predictions: Sequence[Prediction | None] = classifier.predict_many(texts) if classifier else [None] * len(tickets)
    batch = _BatchReads.load(session, [t for t in tickets if _unrouted(t)])
    to_assign: list[Ticket] = []
    acknowledgements: list[dict] = []  # written together after the loop, one statement
    # The loop only adds and changes rows, and what it reads was read above or is its own ticket's:
    # one flush at the end writes each kind of row together instead of a round trip per query.
    with session.no_autoflush:
        for ticket, prediction in zip(tickets, predictions):
            messages = pending.get(ticket.id, [])
            _label_messages(messages, prediction)
            if _unrouted(ticket):
                wants_agent = _route_new(session, ticket, messages, prediction, config, now, batch, acknowledgements)
            else:
                wants_agent = _route_again(session, ticket, messages, prediction, config, now)
            if wants_agent:
                to_assign.append(ticket)
            ticket.routed_at = now
    enqueue_many(session, acknowledgements)
    if to_assign:
        from router import assignment

        # One set-based assignment for the batch (agents read once, rows written together: see
        # bench/router.py), most urgent first so that scarce capacity goes to P0 before P3.
        to_assign.sort(key=lambda t: (PRIORITIES.index(t.priority), t.id))
        assignment.assign_many(session, to_assign, config, now)
    return len(tickets)


@dataclass(slots=True)
class _BatchReads:
    """What routing new tickets reads, read once for the batch: customers (VIP), their identities
    (where to acknowledge), any clocks the tickets already have (a relabelled ticket's) and, when a
    ticket is urgent or needs triage, the supervisors to tell."""

    customers: dict[int, Customer]  # held here: the session only keeps rows someone refers to
    identities: dict[int, list[Identity]]
    clocks: dict[int, list[SlaClock]]
    _supervisors: list[Agent] | None = None

    @classmethod
    def load(cls, session: Session, tickets: list[Ticket]) -> _BatchReads:
        if not tickets:
            return cls({}, {}, {})
        customer_ids = {t.customer_id for t in tickets}
        customers: dict[int, Customer] = {}
        identities: dict[int, list[Identity]] = {}
        # Customers and their identities in one statement (a customer without any: None).
        for customer, identity in session.execute(
                select(Customer, Identity).outerjoin(Identity, Identity.customer_id == Customer.id)
                .where(Customer.id.in_(customer_ids)).order_by(Customer.id, Identity.id)):
            customers[customer.id] = customer
            if identity is not None:
                identities.setdefault(customer.id, []).append(identity)
        clocks: dict[int, list[SlaClock]] = {t.id: [] for t in tickets}
        for clock in session.scalars(select(SlaClock).where(SlaClock.ticket_id.in_(list(clocks)))
                                     .order_by(SlaClock.id)):
            clocks[clock.ticket_id].append(clock)
        return cls(customers, identities, clocks)

    def supervisors(self, session: Session) -> list[Agent]:
        if self._supervisors is None:
            self._supervisors = supervisors_of(session)
        return self._supervisors


def _unrouted(ticket: Ticket) -> bool:
    """A ticket the router has not labelled and dispatched yet (it sets the priority first). Not one
    an agent opened by writing first (router/outreach.py): that one is theirs already, and the
    customer's answer only fills the labels the agent left out."""
    return ticket.priority is None and OUTBOUND_FLAG not in (ticket.flags or ())


def _unclassified_messages(session: Session, ticket_ids: list[int]) -> dict[int, list[Message]]:
    rows = session.scalars(
        select(Message)
        .where(Message.ticket_id.in_(ticket_ids), Message.direction == "in", Message.model_version.is_(None))
        .order_by(Message.id)
    ).all()
    by_ticket: dict[int, list[Message]] = {}
    for row in rows:
        by_ticket.setdefault(row.ticket_id, []).append(row)
    return by_ticket


def classification_text(subject: str | None, texts: Sequence[str], *, new_ticket: bool) -> str:
    """What the classifier reads: the subject of a new ticket and the customer's new words."""
    body = "\n".join(texts)
    if new_ticket and subject and subject not in body:
        return f"{subject}\n{body}"
    return body


def opening_text(session: Session, ticket: Ticket) -> tuple[Message | None, str]:
    """The ticket's first customer message, and the text the classifier read when it labelled the new
    ticket (its subject, then that message): what a label correction is about."""
    first = session.scalar(
        select(Message).where(Message.ticket_id == ticket.id, Message.direction == "in").order_by(Message.id).limit(1)
    )
    return first, classification_text(ticket.subject, [first.text] if first else [], new_ticket=True)


def _label_messages(messages: list[Message], prediction: Prediction | None) -> None:
    if prediction is None:
        return
    for message in messages:
        message.type, message.category = prediction.type.label, prediction.category.label
        message.priority, message.model_version = prediction.priority.label, prediction.model_version
        message.confidence = min(prediction.type.confidence, prediction.category.confidence)


def _route_new(session: Session, ticket: Ticket, messages: list[Message], prediction: Prediction | None,
               config: RouterConfig, now: datetime, batch: _BatchReads, acknowledgements: list[dict]) -> bool:
    """Label, prioritise, start the clocks and acknowledge a new ticket (the acknowledgement added to
    `acknowledgements`, for the caller to write); True when it wants an agent (False when it went to
    triage)."""
    from router import sla

    customer = batch.customers.get(ticket.customer_id)
    predicted = prediction.priority.label if prediction else DEFAULT_PRIORITY
    decision = first_priority(predicted, vip=bool(customer and customer.vip))
    if prediction is not None:
        ticket.type, ticket.category = prediction.type.label, prediction.category.label
        ticket.confidence = min(prediction.type.confidence, prediction.category.confidence)
        ticket.model_version = prediction.model_version
    ticket.priority = decision.priority
    _record_classification(session, ticket, prediction, decision, now)

    _review_flags(session, ticket, messages, now)
    clocks = sla.start_clocks(session, ticket, config, now, existing=batch.clocks[ticket.id])
    if ticket.priority in sla.ON_CALL_PRIORITIES:
        sla.notify_on_call_at_creation(session, ticket, now, supervisors=batch.supervisors(session))

    triage = needs_triage(prediction, config)
    if triage:
        ticket.queue, ticket.queue_reason = "triage", triage
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="router", kind="queued", reason=f"triage: {triage}",
                                data={"queue": "triage"}))
        notify_supervisors(session, kind="triage", ticket=ticket, now=now, dedupe_key=f"triage:{ticket.id}",
                           text=f"{ticket.number} needs triage: {triage}", supervisors=batch.supervisors(session))
    first_response = next((c for c in clocks if c.kind == sla.FIRST_RESPONSE), None)
    acknowledgement = _acknowledgement(session, ticket, now, first_response.due_at if first_response else None,
                                       batch.identities.get(ticket.customer_id, []),
                                       next((m.email_message_id for m in messages if m.email_message_id), None))
    if acknowledgement is not None:
        acknowledgements.append(acknowledgement)
    return not triage


def _route_again(session: Session, ticket: Ticket, messages: list[Message], prediction: Prediction | None,
                 config: RouterConfig, now: datetime) -> bool:
    """The customer wrote again on a ticket that was already routed; True when it wants an agent."""
    from router import sla

    # Intake already moved the state (awaiting_customer → in_progress, resolved → reopened);
    # the clocks follow: running again, or started afresh for a reopened ticket.
    if ticket.state == states.REOPENED:
        sla.restart_clocks(session, ticket, config, now)
    elif ticket.state != states.AWAITING_CUSTOMER:
        sla.resume_clocks(session, ticket, config, now)
    unlabelled = None in (ticket.type, ticket.category, ticket.priority)
    if prediction is not None and ticket.model_version is None and unlabelled:
        # A ticket an agent opened without labels (router/outreach.py), or one routed while no model was
        # loaded: the customer's words are the first the classifier reads. Labels someone chose stay.
        filled = {head: getattr(prediction, head).label for head in ("type", "category", "priority")
                  if getattr(ticket, head) is None}
        for head, label in filled.items():
            setattr(ticket, head, label)
        ticket.confidence = min(prediction.type.confidence, prediction.category.confidence)
        ticket.model_version = prediction.model_version
        if "priority" in filled:
            sla.reprioritise(session, ticket, config, now)  # its clock held P3's targets until now
        said = ", ".join(f"{head} {label}" for head, label in filled.items())
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="router", kind="classified",
                                reason=f"labelled from the customer's answer: {said}",
                                data={"prediction": prediction.as_dict(), "filled": filled}))

    if ticket.state in states.OPEN_STATES and _is_second_contact(session, ticket, messages, config):
        decision = second_contact_priority(ticket.priority, already_bumped="second_contact" in (ticket.flags or []))
        if decision.bumps:
            old = ticket.priority
            ticket.priority = decision.priority
            ticket.flags = [*(ticket.flags or []), "second_contact"]
            session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="router", kind="priority_raised",
                                    reason=decision.bumps[0], data={"from": old, "to": ticket.priority}))
            sla.reprioritise(session, ticket, config, now)
    if ticket.assigned_agent_id is not None:
        latest = messages[-1].id if messages else None
        notify_agent(session, ticket.assigned_agent, kind="customer_message", ticket=ticket, now=now,
                     text=f"{ticket.number}: the customer wrote again",
                     dedupe_key=f"msg:{latest}" if latest else None)
        return False
    return ticket.queue is None and ticket.state in (states.NEW, states.REOPENED)


def _is_second_contact(session: Session, ticket: Ticket, new: list[Message], config: RouterConfig) -> bool:
    if not new:
        return False
    earlier = session.scalar(
        select(Message.received_at)
        .where(Message.ticket_id == ticket.id, Message.direction == "in", Message.id < new[0].id)
        .order_by(Message.id.desc()).limit(1)
    )
    return earlier is not None and new[0].received_at - earlier <= config.second_contact_window


def _record_classification(session: Session, ticket: Ticket, prediction: Prediction | None,
                           decision: PriorityDecision, now: datetime) -> None:
    if prediction is None:
        reason = f"not classified (no model); priority {decision.priority} until a supervisor relabels"
        data: dict = {"prediction": None}
    else:
        reason = (f"classified {prediction.type.label}/{prediction.category.label}/{prediction.priority.label} "
                  f"(confidence {prediction.type.confidence:.2f}/{prediction.category.confidence:.2f}/"
                  f"{prediction.priority.confidence:.2f}, model {prediction.model_version})")
        if prediction.rules:
            reason += f"; rules: {', '.join(prediction.rules)}"
        data = {"prediction": prediction.as_dict()}
    if decision.bumps:
        reason += "; " + "; ".join(decision.bumps)
    data |= {"priority": decision.priority, "priority_bumps": list(decision.bumps)}
    session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="router", kind="classified", reason=reason, data=data))


def _review_flags(session: Session, ticket: Ticket, messages: list[Message], now: datetime) -> None:
    """Evidence intake could not judge goes to a supervisor, once per ticket and kind."""
    flags = {flag for m in messages for flag in (m.flags or [])}
    if "ticket_ref_rejected" in flags:
        exists = session.scalar(select(ReviewItem.id).where(ReviewItem.ticket_id == ticket.id,
                                                            ReviewItem.kind == "ticket_ref_rejected"))
        if exists is None:
            session.add(ReviewItem(kind="ticket_ref_rejected", ticket_id=ticket.id, customer_id=ticket.customer_id,
                                   created_at=now, detail={"reason": "the message named a ticket of another customer; "
                                                           "a new ticket was opened instead"}))


def _acknowledgement(session: Session, ticket: Ticket, now: datetime, due: datetime | None,
                     identities: list[Identity], answers: str | None = None) -> dict | None:
    """The outbox row that tells the customer their ticket number and when to expect an answer;
    `answers`: the Message-ID of the customer's mail, so their mail client shows the two together."""
    if ticket.channel not in ACK_CHANNELS:
        return None
    address = customer_address(session, ticket, ticket.channel, identities)
    if address is None:
        return None
    channel, recipient = address
    return item(kind="ack", channel=channel, recipient=recipient, ticket_id=ticket.id, now=now,
                dedupe_key=f"ack:{ticket.id}",
                payload={"ticket": ticket.number, "subject": ticket.subject, "language": ticket.language,
                         "first_response_due": due.isoformat() if due else None,
                         **(_email_ack_ids(ticket, answers) if channel == "email" else {})})


def _email_ack_ids(ticket: Ticket, answers: str | None) -> dict:
    """An email acknowledgement's own Message-ID, in the form our replies have (router/actions.py), so a
    customer's answer to it finds the ticket even with the subject tag gone (router/intake.py); and
    In-Reply-To the customer's mail, so their mail client shows the two together."""
    ids = {"message_id": our_message_id(ticket.number)}
    return ids | ({"in_reply_to": answers} if answers else {})
