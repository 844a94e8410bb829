"""Personal data on request (PIPL / GDPR): export everything held about one person, erase it, and age
old conversations out.

Erasure keeps the help desk's numbers honest: what a person *wrote* (message bodies, subjects, raw
bytes, attachments, survey comments, the text a label correction copied) and who they *are*
(identities, display name, link codes, addresses in the outbox and the audit trail) go; the facts the
reports count (tickets, states, labels, times, SLA clocks, offers, ratings) stay. Erased text is the
fixed marker ERASED, so a person reading a ticket sees that something was there.

A person is a customer together with every customer merged into it (router.identity's merges), so
export and erasure follow merges. Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, case, cast, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session

from models.errors import ActionRefused, InvalidInput, NotFound
from models.tables import (
    Agent,
    AttachmentRow,
    Customer,
    CustomerMerge,
    Identity,
    LabelCorrection,
    LinkCode,
    Message,
    OutboxItem,
    ReviewItem,
    Survey,
    Ticket,
    TicketEvent,
)
from models.message import ERASED
from router import states
from router.identity import root_customer

ERASED_BYTES = ERASED.encode()
ERASURE_EVENT = "personal_data_erased"
RETENTION_EVENT = "content_expired"
RETENTION_ACTOR = "retention"
# An outbox row that must never be sent: router.delivery claims only "pending" rows, and the reports
# count only "failed" ones as undelivered, so a cancelled row is neither sent nor counted as a failure.
CANCELLED = "cancelled"
# Outbox kinds that go to the customer (the rest go to staff, about the customer's tickets).
CUSTOMER_KINDS = frozenset({"ack", "reply", "survey", "link_code", "reminder"})
# Outbox payload fields that quote what the customer wrote or sent (a staff notice's text names the
# subject; a file sent to an agent, its name).
QUOTING_FIELDS = ("text", "subject", "preview", "comment", "filename")
# Shorter values are not searched for in audit text: "12" would erase every number in it. Two Chinese
# characters are a whole name (张三), and erasing them by mistake in the person's own records costs little.
SHORTEST_NEEDLE = 3
SHORTEST_CJK_NEEDLE = 2
# Email keeps its external id (the Message-ID, or a hash of the bytes): paidan never deletes mail from
# the mailbox, and a re-read mailbox must find the message already stored rather than store it again.
# Other channels' ids carry the Telegram chat id or a client's key, and are replaced.
KEEPS_EXTERNAL_ID = frozenset({"email"})


# ---------------------------------------------------------------- who the person is


def same_person(session: Session, customer_id: int) -> list[int]:
    """The customer `customer_id` ended up as, first, then every customer merged into it (transitively)."""
    if session.get(Customer, customer_id) is None:
        raise NotFound(f"no customer #{customer_id}")
    root = root_customer(session, customer_id)
    found, frontier = [root], [root]
    while frontier:
        frontier = [c for c in session.scalars(
            select(Customer.id).where(Customer.merged_into_id.in_(frontier)).order_by(Customer.id)) if c not in found]
        found += frontier
    return found


def _tickets_of(session: Session, person: list[int]) -> list[Ticket]:
    return list(session.scalars(select(Ticket).where(Ticket.customer_id.in_(person)).order_by(Ticket.id)))


def _messages_of(session: Session, person: list[int], ticket_ids: list[int]) -> list[Message]:
    """Every message on the person's tickets (agents' replies quote them too), and theirs anywhere else."""
    return list(session.scalars(
        select(Message).where(or_(Message.ticket_id.in_(ticket_ids), Message.customer_id.in_(person)))
        .order_by(Message.id)))


# ---------------------------------------------------------------- export


def export_customer(session: Session, customer_id: int, *, now: datetime | None = None) -> dict:
    """Everything held about the person `customer_id` is (following merges), as JSON-ready data."""
    person = same_person(session, customer_id)
    root = session.get(Customer, person[0])
    tickets = _tickets_of(session, person)
    ticket_ids = [t.id for t in tickets]
    number_of = {t.id: t.number for t in tickets}
    agents = dict(session.execute(select(Agent.id, Agent.name)).all())
    messages = _messages_of(session, person, ticket_ids)
    message_ids = [m.id for m in messages]
    number_of |= dict(session.execute(
        select(Ticket.id, Ticket.number).where(Ticket.id.in_({m.ticket_id for m in messages}))).all())
    attachments: dict[int, list[dict]] = {}
    for a in session.scalars(select(AttachmentRow).where(AttachmentRow.message_id.in_(message_ids))
                             .order_by(AttachmentRow.id)):
        attachments.setdefault(a.message_id, []).append({
            "id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
            "erased": a.filename == ERASED,
            "stored": f"in the database: table attachments, row id {a.id} (column data); not included here",
        })
    identities, link_codes = _identities(session, person), _link_codes(session, person)
    surveys = session.scalars(select(Survey).where(or_(Survey.ticket_id.in_(ticket_ids), Survey.customer_id.in_(person)))
                              .order_by(Survey.id))
    corrections = session.scalars(select(LabelCorrection).where(LabelCorrection.message_id.in_(message_ids))
                                  .order_by(LabelCorrection.id))
    addresses = {i.value for i in identities} | {c.value for c in link_codes}
    outbox = session.scalars(select(OutboxItem).where(_to_the_customer(ticket_ids, addresses)).order_by(OutboxItem.id))
    merges = session.scalars(select(CustomerMerge).where(
        or_(CustomerMerge.source_id.in_(person), CustomerMerge.target_id.in_(person))).order_by(CustomerMerge.id))
    customers = {c.id: c for c in session.scalars(select(Customer).where(Customer.id.in_(person)))}
    return {
        "exported_at": _iso(now),
        "customer_id": root.id,
        "customers": [_customer(customers[cid]) for cid in person],
        "identities": [{"kind": i.kind, "value": i.value, "verified": i.verified, "customer_id": i.customer_id,
                        "created_at": _iso(i.created_at)} for i in identities],
        "merges": [{"id": m.id, "source_id": m.source_id, "target_id": m.target_id, "evidence": m.evidence,
                    "actor": m.actor, "at": _iso(m.at), "undone_at": _iso(m.undone_at)} for m in merges],
        "tickets": [{
            "number": t.number, "channel": t.channel, "subject": t.subject, "state": t.state,
            "labels": {"type": t.type, "category": t.category, "priority": t.priority},
            "agent": agents.get(t.assigned_agent_id), "created_at": _iso(t.created_at),
            "updated_at": _iso(t.updated_at), "first_response_at": _iso(t.first_response_at),
            "resolved_at": _iso(t.resolved_at), "closed_at": _iso(t.closed_at),
        } for t in tickets],
        "messages": [{
            "id": m.id, "ticket": number_of.get(m.ticket_id), "channel": m.channel, "direction": m.direction,
            "public": m.public, "sender": m.sender, "agent": agents.get(m.author_agent_id), "subject": m.subject,
            "text": m.text, "received_at": _iso(m.received_at), "stored_at": _iso(m.created_at),
            "raw_bytes": len(m.raw or b""), "flags": list(m.flags or ()), "cc": list(m.cc or ()),
            "attachments": attachments.get(m.id, []),
        } for m in messages],
        "surveys": [{"ticket": number_of.get(s.ticket_id), "channel": s.channel, "sent_at": _iso(s.sent_at),
                     "rating": s.rating, "comment": s.comment, "answered_at": _iso(s.answered_at)} for s in surveys],
        # The code itself is never kept (only its HMAC), so a code row holds only the address it was for.
        "link_codes": [{"kind": c.kind, "value": c.value, "created_at": _iso(c.created_at),
                        "expires_at": _iso(c.expires_at), "used_at": _iso(c.used_at)} for c in link_codes],
        "label_corrections": [{"message_id": c.message_id, "text": c.text, "head": c.head, "old_label": c.old_label,
                               "new_label": c.new_label, "corrected_by": c.corrected_by,
                               "corrected_at": _iso(c.corrected_at)} for c in corrections],
        "outbox": [{"id": o.id, "kind": o.kind, "channel": o.channel, "recipient": o.recipient,
                    "ticket": number_of.get(o.ticket_id), "status": o.status, "created_at": _iso(o.created_at),
                    "sent_at": _iso(o.sent_at),
                    # a link code mail carries the code sealed with the deployment's key: a secret, not theirs
                    "payload": {k: v for k, v in (o.payload or {}).items() if k != "sealed_code"}} for o in outbox],
    }


def _customer(c: Customer) -> dict:
    return {"id": c.id, "display_name": c.display_name, "language": c.language, "vip": c.vip,
            "merged_into_id": c.merged_into_id, "created_at": _iso(c.created_at),
            # Blocking them is something held about them too (router/blocking.py).
            "blocked_at": _iso(c.blocked_at), "blocked_reason": c.blocked_reason}


def _identities(session: Session, person: list[int]) -> list[Identity]:
    return list(session.scalars(select(Identity).where(Identity.customer_id.in_(person)).order_by(Identity.id)))


def _link_codes(session: Session, person: list[int]) -> list[LinkCode]:
    return list(session.scalars(select(LinkCode).where(LinkCode.customer_id.in_(person)).order_by(LinkCode.id)))


def _to_the_customer(ticket_ids: Collection[int], addresses: Collection[str]):
    """Outbox rows addressed to the person: to one of their addresses, or a customer kind on their tickets."""
    return or_(OutboxItem.recipient.in_(sorted(addresses)),
               OutboxItem.ticket_id.in_(ticket_ids) & OutboxItem.kind.in_(sorted(CUSTOMER_KINDS)))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ---------------------------------------------------------------- erasure


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What `forget_customer` erased; all zero (and `changed` False) when the person was forgotten before."""

    customer_id: int
    customers: tuple[int, ...]  # the person: the customer and those merged into it
    tickets: tuple[str, ...]  # their ticket numbers (kept, with labels and times)
    open_tickets: tuple[str, ...]  # erased anyway, because `force` was given
    messages: int
    attachments: int
    identities: int  # removed: a new message from the same address makes a new customer
    link_codes: int
    surveys: int  # comments erased (ratings stay)
    corrections: int  # label corrections whose copied text was erased
    outbox_cancelled: int  # pending rows to the person, never to be sent
    outbox_erased: int  # rows whose payload or recipient held their data
    audit_records: int  # events, review items and merges whose text named them
    email_messages: int  # also still in the mailbox paidan polls, if any: paidan never deletes mail there

    @property
    def changed(self) -> bool:
        return any((self.messages, self.attachments, self.identities, self.link_codes, self.surveys,
                    self.corrections, self.outbox_cancelled, self.outbox_erased, self.audit_records))


def forget_customer(
    session: Session, customer_id: int, *, actor: str, reason: str, now: datetime, force: bool = False,
) -> ForgetReport:
    """Erase the person `customer_id` is (following merges), keeping what the reports count.

    Refused (ActionRefused) while they have open tickets, unless `force`. Idempotent: a second call
    erases nothing more and writes no more events. Never commits.
    """
    if not (reason or "").strip():
        raise InvalidInput("reason", "say why (the request and its reference): it is kept in the audit trail")
    reason = reason.strip()
    person = same_person(session, customer_id)
    # One erasure at a time per person, and none while a merge moves their rows (merges lock these too).
    session.execute(select(Customer.id).where(Customer.id.in_(person)).order_by(Customer.id).with_for_update())
    tickets = _tickets_of(session, person)
    open_tickets = tuple(t.number for t in tickets if t.state in states.OPEN_STATES)
    if open_tickets and not force:
        raise ActionRefused(
            f"customer #{person[0]} has {len(open_tickets)} open ticket(s) ({', '.join(open_tickets)}); resolve or "
            f"close them first, or force the erasure (`--force`): agents would then work on erased messages")
    ticket_ids = [t.id for t in tickets]
    messages = _messages_of(session, person, ticket_ids)
    identities = _identities(session, person)
    codes = _link_codes(session, person)
    addresses = {i.value for i in identities} | {c.value for c in codes if c.value != ERASED}
    names = session.scalars(select(Customer.display_name).where(Customer.id.in_(person))).all()
    needles = _needles([*addresses, *names, *_survey_comments(session, ticket_ids),
                        *(m.external_id for m in messages if m.channel not in KEEPS_EXTERNAL_ID)])

    message_ids = [m.id for m in messages]
    content = _erase_content(session, message_ids, ticket_ids)
    # The copy a correction keeps for retraining quotes the message (retention keeps it; erasure does not).
    corrections = sum(session.execute(
        update(LabelCorrection).where(LabelCorrection.message_id.in_(ids), LabelCorrection.text != ERASED)
        .values(text=ERASED).execution_options(synchronize_session="fetch")
    ).rowcount for ids in _chunks(message_ids))
    cancelled, outbox_erased = _erase_outbox(session, ticket_ids, addresses, needles, reason)
    audit = _scrub_audit(session, person, ticket_ids, needles)
    fresh_codes = [c for c in codes if c.value != ERASED]
    for code in fresh_codes:
        code.value = ERASED
        code.used_at = code.used_at or now  # spent: nobody can confirm it any more
    session.execute(delete(Identity).where(Identity.customer_id.in_(person)))
    for customer in session.scalars(select(Customer).where(Customer.id.in_(person))):
        customer.display_name = ERASED
        if customer.blocked_reason:  # a supervisor's words about them may quote them
            customer.blocked_reason = ERASED

    report = ForgetReport(
        customer_id=person[0], customers=tuple(person), tickets=tuple(t.number for t in tickets),
        open_tickets=open_tickets, messages=content.messages, attachments=content.attachments,
        identities=len(identities), link_codes=len(fresh_codes), surveys=content.surveys, corrections=corrections,
        outbox_cancelled=cancelled, outbox_erased=outbox_erased, audit_records=audit,
        email_messages=sum(1 for m in messages if m.channel == "email" and m.direction == "in"),
    )
    if report.changed:
        data = {"customers": list(person), "messages": report.messages, "attachments": report.attachments,
                "identities": report.identities, "outbox_cancelled": cancelled, "forced": bool(open_tickets)}
        session.add_all([TicketEvent(ticket_id=tid, at=now, actor=actor, kind=ERASURE_EVENT,
                                     reason=f"personal data of customer #{person[0]} erased: {reason}", data=data)
                         for tid in ticket_ids])
    session.flush()
    return report


@dataclass(frozen=True, slots=True)
class _Erased:
    messages: int
    attachments: int
    surveys: int


def _erase_content(session: Session, message_ids: list[int], ticket_ids: list[int]) -> _Erased:
    """Erase what was written: messages (body, subject, raw bytes with their headers and HTML, the sender's
    address, mail threading ids), their attachments' names and bytes (size and type stay), the tickets'
    subjects (a copy of the first message) and survey comments (ratings stay). Labels and times stay."""
    messages = attachments = surveys = 0
    for ids in _chunks(message_ids):
        attachments += session.execute(
            update(AttachmentRow).where(AttachmentRow.message_id.in_(ids), AttachmentRow.filename != ERASED)
            .values(filename=ERASED, data=ERASED_BYTES, sha256="")  # the hash would still identify the file
            .execution_options(synchronize_session="fetch")
        ).rowcount
        messages += session.execute(
            update(Message).where(Message.id.in_(ids), Message.text != ERASED)
            .values(text=ERASED, subject=case((Message.subject == "", ""), else_=ERASED), raw=ERASED_BYTES,
                    sender=case((Message.direction == "in", ERASED), else_=Message.sender),
                    external_id=case((Message.channel.in_(sorted(KEEPS_EXTERNAL_ID)), Message.external_id),
                                     else_=literal("erased:") + cast(Message.id, String)),
                    email_message_id=None, in_reply_to=None, references=[], cc=[])
            .execution_options(synchronize_session="fetch")
        ).rowcount
    for ids in _chunks(ticket_ids):
        # updated_at kept as it was: its onupdate would make an old ticket look active today
        session.execute(
            update(Ticket).where(Ticket.id.in_(ids), Ticket.subject.not_in(("", ERASED)))
            .values(subject=ERASED, updated_at=Ticket.updated_at).execution_options(synchronize_session="fetch"))
        surveys += session.execute(
            update(Survey).where(Survey.ticket_id.in_(ids), Survey.comment.not_in(("", ERASED)))
            .values(comment=ERASED).execution_options(synchronize_session="fetch")
        ).rowcount
    return _Erased(messages, attachments, surveys)


def _erase_outbox(session: Session, ticket_ids: list[int], addresses: set[str], needles: list[str],
                  reason: str) -> tuple[int, int]:
    """Cancel pending rows to the person and erase their payloads; staff notices about their tickets keep
    what a desk needs (ticket, kind, labels) but lose what quotes them. Returns (cancelled, erased)."""
    cancelled = erased = 0
    on_their_tickets = set(ticket_ids)
    rows = session.scalars(select(OutboxItem).where(
        or_(_to_the_customer(ticket_ids, addresses), OutboxItem.ticket_id.in_(ticket_ids))).order_by(OutboxItem.id))
    for row in rows:
        payload = dict(row.payload or {})
        if row.recipient in addresses or (row.ticket_id in on_their_tickets and row.kind in CUSTOMER_KINDS):
            if row.status == "pending":
                row.status, row.last_error = CANCELLED, f"cancelled: the customer's personal data was erased ({reason})"
                cancelled += 1
            kept = {"ticket": payload["ticket"]} if payload.get("ticket") else {}
            if row.recipient != ERASED or payload != kept | {"erased": True}:
                row.recipient, row.payload = ERASED, kept | {"erased": True}
                erased += 1
            continue
        scrubbed = _scrub_payload(payload, needles)
        if scrubbed != payload:
            row.payload = scrubbed
            erased += 1
    return cancelled, erased


def _scrub_payload(payload: dict, needles: list[str]) -> dict:
    return {key: ERASED if key in QUOTING_FIELDS and value else _scrub(value, needles)
            for key, value in payload.items()}


def _scrub_audit(session: Session, person: list[int], ticket_ids: list[int], needles: list[str]) -> int:
    """Take the person's addresses and ids out of the audit trail (merge evidence, conflict reviews, event
    data), leaving who did what and when. Returns how many records changed."""
    if not needles:
        return 0
    changed = _scrub_events(session, ticket_ids, needles)
    for review in session.scalars(select(ReviewItem).where(
            or_(ReviewItem.customer_id.in_(person), ReviewItem.ticket_id.in_(ticket_ids)))):
        detail = _scrub(review.detail, needles)
        if detail != review.detail:
            review.detail = detail
            changed += 1
    for merge in session.scalars(select(CustomerMerge).where(
            or_(CustomerMerge.source_id.in_(person), CustomerMerge.target_id.in_(person)))):
        evidence = _scrub(merge.evidence, needles)
        if evidence != merge.evidence:
            merge.evidence = evidence
            changed += 1
    return changed


def _scrub_events(session: Session, ticket_ids: list[int], needles: list[str]) -> int:
    """Scrub the tickets' audit events (a survey answer's event quotes the comment, a merge's names the
    addresses); returns how many changed."""
    changed = 0
    if not needles:
        return changed
    for ids in _chunks(ticket_ids):
        for event in session.scalars(select(TicketEvent).where(TicketEvent.ticket_id.in_(ids))):
            reason, data = _scrub(event.reason, needles), _scrub(event.data, needles)
            if (reason, data) != (event.reason, event.data):
                event.reason, event.data = reason, data
                changed += 1
    return changed


def _survey_comments(session: Session, ticket_ids: list[int]) -> list[str]:
    return [c for ids in _chunks(ticket_ids) for c in session.scalars(
        select(Survey.comment).where(Survey.ticket_id.in_(ids), Survey.comment.not_in(("", ERASED))))]


def _needles(values: Iterable[str]) -> list[str]:
    """The strings to erase wherever they appear, longest first (an address before a part of it)."""
    def long_enough(v: str) -> bool:
        return len(v) >= (SHORTEST_NEEDLE if v.isascii() else SHORTEST_CJK_NEEDLE)

    return sorted({v.strip() for v in values if v and v.strip() != ERASED and long_enough(v.strip())},
                  key=len, reverse=True)


def _scrub(value, needles: list[str]):
    """`value` (JSON-like) with every needle in its strings (keys included) replaced by ERASED."""
    if isinstance(value, str):
        for needle in needles:
            value = value.replace(needle, ERASED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, needles): _scrub(v, needles) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, needles) for v in value]
    return value


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


# ---------------------------------------------------------------- retention


def purge_expired(session: Session, *, retain_days: int | None, now: datetime, limit: int = 200) -> int:
    """Erase the content of up to `limit` tickets resolved or closed more than `retain_days` ago, as
    `forget_customer` erases it (messages, attachments, the ticket's subject, survey comments); tickets,
    labels, times, customers and their identities stay. Returns how many messages were erased: call
    again until it returns 0. Off (0) when `retain_days` is 0 or None.

    Label corrections keep the text they copied: that copy exists so retraining works after retention.
    """
    if not retain_days or retain_days <= 0:
        return 0
    finished_at = func.coalesce(Ticket.closed_at, Ticket.resolved_at)
    unerased = select(Message.id).where(Message.ticket_id == Ticket.id, Message.text != ERASED).exists()
    tickets = session.execute(
        select(Ticket.id, Ticket.state)
        .where(Ticket.state.in_((states.RESOLVED, states.CLOSED)), finished_at < now - timedelta(days=retain_days),
               unerased)
        .order_by(Ticket.id).limit(limit)
        # several `paidan serve` on PostgreSQL: each takes other tickets (SQLite's writers take turns)
        .with_for_update(of=Ticket, skip_locked=True)
    ).all()
    if not tickets:
        return 0
    ticket_ids = [t.id for t in tickets]
    per_ticket = dict(session.execute(
        select(Message.ticket_id, func.count()).where(Message.ticket_id.in_(ticket_ids), Message.text != ERASED)
        .group_by(Message.ticket_id)).all())
    message_ids = list(session.scalars(select(Message.id).where(Message.ticket_id.in_(ticket_ids))))
    comments = _needles(_survey_comments(session, ticket_ids))
    erased = _erase_content(session, message_ids, ticket_ids).messages
    _scrub_events(session, ticket_ids, comments)
    for ids in _chunks(ticket_ids):
        for row in session.scalars(select(OutboxItem).where(OutboxItem.ticket_id.in_(ids))):
            scrubbed = _scrub_payload(dict(row.payload or {}), [])
            if scrubbed != row.payload:
                row.payload = scrubbed
    session.add_all([TicketEvent(
        ticket_id=t.id, at=now, actor=RETENTION_ACTOR, kind=RETENTION_EVENT,
        reason=f"messages erased {retain_days} days after the ticket was {t.state} (retention)",
        data={"messages": per_ticket.get(t.id, 0), "retain_days": retain_days},
    ) for t in tickets])
    session.flush()
    return erased
