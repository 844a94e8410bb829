"""Durable, idempotent intake: every channel hands its InboundMessage to `Intake.accept`.

The message, its customer and its ticket are written in one transaction; only after the commit
does `accept` return the Receipt the channel acknowledges with. Concurrent accepts are
group-committed by one writer thread: SQLite allows one writer anyway, and one fsync for a
batch of messages is what lets a single machine take thousands of messages a second.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from models.errors import ActionRefused, PaidanError, StorageUnavailable
from models.message import MACHINE_FLAGS, OUTBOUND_FLAG, Attachment, InboundMessage, Receipt, written_language
from models.tables import (
    AttachmentRow,
    Customer,
    Identity,
    Message,
    ReviewItem,
    Ticket,
    TicketCounter,
    TicketEvent,
)
from router import blocking, states
from router.config import RouterConfig
from router.dialects import PerDialect
from router.identity import conflicts, describe_conflicts, identities_of, merge_customers, root_customer
from router.topics import has_topic, topic_similarity

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


# The look-ups every batch makes, built once: building a statement (columns, operators, coercion)
# cost more CPU than SQLite took to run it, about a millisecond per batch (bench/intake.py).
_T, _M, _I, _C = Ticket.__table__.c, Message.__table__.c, Identity.__table__.c, Customer.__table__.c
_EXISTING = (
    select(_M.channel, _M.external_id, _M.id, _M.ticket_id, _T.number)
    .join_from(Message.__table__, Ticket.__table__, _T.id == _M.ticket_id)
    .where(_M.channel == bindparam("channel"), _M.external_id.in_(bindparam("ids", expanding=True)))
)
_OWNERS = (
    select(_I.kind, _I.value, _I.customer_id, _C.merged_into_id)
    .join_from(Identity.__table__, Customer.__table__, _C.id == _I.customer_id)
    # both columns, so the (kind, value) unique index answers it
    .where(_I.kind.in_(bindparam("kinds", expanding=True)), _I.value.in_(bindparam("values", expanding=True)))
)
_CONTINUED = select(_T.id, _T.number, _T.state, _T.flags).where(_T.id.in_(bindparam("ids", expanding=True)))
_TOUCH = (update(Ticket.__table__).where(_T.id.in_(bindparam("ids", expanding=True)))
          .values(routed_at=None, updated_at=bindparam("now", type_=_T.updated_at.type)))
# Topic threading continues open tickets and reopens resolved ones (not closed: that is final for
# the customer's side). DESIGN.md: "reopened when the customer says it is not solved" — details on
# the same topic an hour after "resolved" say so as much as a reply to our email does.
_TOPIC_STATES = states.OPEN_STATES | {states.RESOLVED}
# Each customer's open (then resolved) tickets active since `since`, with the first customer message.
_FIRST_IN = (select(func.min(_M.id)).where(_M.ticket_id == _T.id, _M.direction == "in")
             .correlate(Ticket.__table__).scalar_subquery())
_OPEN_TICKETS = (
    select(_T.id, _T.number, _T.customer_id, _T.subject, _T.state, _T.flags, _M.text)
    .select_from(Ticket.__table__)
    .outerjoin(Message.__table__, _M.id == _FIRST_IN)
    .where(_T.customer_id.in_(bindparam("customers", expanding=True)),
           _T.state.in_(sorted(_TOPIC_STATES)),
           _T.updated_at >= bindparam("since", type_=_T.updated_at.type))
    .order_by(_T.updated_at.desc(), _T.id.desc())
)


def store_batch(
    session: Session, messages: list[InboundMessage], *, tz: ZoneInfo, first_response: timedelta, now: datetime,
    config: RouterConfig | None = None,
) -> list[Receipt]:
    """Write messages (and new tickets for those that start a conversation). Never commits.

    Set-based on purpose: a handful of multi-row statements for the whole batch instead of a
    dozen per message, which is most of intake's cost. A batch of one is the careful path.
    """
    config = config or RouterConfig()
    receipts: dict[int, Receipt] = {}
    already = _existing_messages(session, messages)
    fresh: list[tuple[int, InboundMessage]] = []
    seen_keys: dict[tuple[str, str], int] = {}
    for pos, msg in enumerate(messages):
        key = (msg.channel.value, msg.external_id)
        if key in already:
            receipts[pos] = already[key]
        elif key in seen_keys:
            fresh.append((pos, msg))  # the same message twice in one batch: settled below
        else:
            seen_keys[key] = pos
            fresh.append((pos, msg))

    originals = [(pos, msg) for pos, msg in fresh if seen_keys[(msg.channel.value, msg.external_id)] == pos]
    senders = _customers_for(session, [msg for _, msg in originals], now)
    threads = _find_threads(session, originals, senders, config, now)

    new_ticket_positions = [pos for pos, _ in originals if threads[pos].opens_ticket]
    numbers = next_ticket_numbers(session, now.astimezone(tz).strftime("%Y%m%d"), len(new_ticket_positions))
    by_pos = dict(originals)
    customer_of = {pos: s.customer_id for (pos, _), s in zip(originals, senders)}
    # Held back, with what each is: an auto-reply or bounce that names no ticket of ours (DESIGN.md:
    # no loops), or anything a blocked customer sends (router/blocking.py). Either is stored on a
    # ticket closed from the start, or on its own ticket without touching it: kept and visible, but
    # nobody is assigned, no clock starts and nothing is sent back.
    blocked = blocking.blocked_among(session, set(customer_of.values()))
    held_back = {pos: "message from a blocked customer" if customer_of[pos] in blocked else _machine_kind(msg)
                 for pos, msg in originals if msg.machine_generated or customer_of[pos] in blocked}
    flags_of = {pos: [*s.flags, *threads[pos].flags] for (pos, _), s in zip(originals, senders)}

    ticket_ids: dict[int, int] = {}
    if new_ticket_positions:
        rows = session.execute(
            insert(Ticket.__table__).returning(Ticket.__table__.c.id, sort_by_parameter_order=True),
            [
                {
                    "number": number,
                    "customer_id": customer_of[pos],
                    "channel": by_pos[pos].channel.value,
                    "subject": _subject(by_pos[pos]),
                    "state": states.CLOSED if pos in held_back else states.NEW,
                    # The channel's word (Telegram's app language, the form's), else the script it is
                    # written in: email says nothing, and a Chinese mail deserves a Chinese answer.
                    "language": by_pos[pos].language or written_language(f"{by_pos[pos].subject}\n{by_pos[pos].text}"),
                    # identity conflicts and rejected references: for triage; auto_reply / bounce; spam
                    "flags": [*flags_of[pos], *_machine_flags(by_pos[pos]),
                              *([blocking.SPAM_FLAG] if customer_of[pos] in blocked else [])],
                    "routed_at": now if pos in held_back else None,  # the router leaves it alone
                    "closed_at": now if pos in held_back else None,
                    "created_at": now,
                    "updated_at": now,
                }
                for pos, number in zip(new_ticket_positions, numbers)
            ],
        ).scalars().all()
        ticket_ids.update(zip(new_ticket_positions, rows))
        session.execute(insert(TicketEvent.__table__), [
            {
                "ticket_id": ticket_ids[pos], "at": now, "actor": "customer", "kind": "created",
                "to_state": states.CLOSED if pos in held_back else states.NEW,
                "reason": (f"{held_back[pos]} on {by_pos[pos].channel.value}"
                           f"{'' if customer_of[pos] in blocked else ' that names no open ticket'}: "
                           f"kept closed, nothing sent" if pos in held_back else
                           f"first message on {by_pos[pos].channel.value}; {threads[pos].reason}"),
                "data": {"external_id": by_pos[pos].external_id, "flags": flags_of[pos], "thread": threads[pos].data},
            }
            for pos in new_ticket_positions
        ])
    number_of = dict(zip(new_ticket_positions, numbers))
    continued = {t.ticket_id for t in threads.values() if t.ticket_id is not None}
    current = {r.id: r for r in session.execute(_CONTINUED, {"ids": list(continued)})} if continued else {}
    first_message: dict[int, InboundMessage] = {}
    conflicted: set[int] = set()
    message_events = []  # one multi-row insert, not an ORM object per message
    for pos, msg in originals:
        thread = threads[pos]
        if thread.ticket_id is not None:
            row = current[thread.ticket_id]
            if pos not in held_back:  # an auto-reply neither reopens a ticket nor ends a wait on the customer
                first_message.setdefault(row.id, msg)
            if "identity_conflict" in flags_of[pos] and "identity_conflict" not in row.flags:
                conflicted.add(row.id)
            ticket_ids[pos], number_of[pos] = row.id, row.number
        elif thread.join_pos is not None:  # continues a ticket an earlier message of this batch opened
            ticket_ids[pos], number_of[pos] = ticket_ids[thread.join_pos], number_of[thread.join_pos]
        else:
            continue
        what = f"{held_back[pos]} (the ticket's state is unchanged)" if pos in held_back else "message"
        message_events.append({"ticket_id": ticket_ids[pos], "at": now, "actor": "customer", "kind": "message",
                               "reason": f"{what} on {msg.channel.value}; {thread.reason}",
                               "data": {"external_id": msg.external_id, "thread": thread.data}})
    _customer_wrote_again(session, {tid: current[tid].state for tid in first_message}, first_message, now)
    for ticket_id in conflicted:
        ticket = session.get(Ticket, ticket_id)
        ticket.flags = [*ticket.flags, "identity_conflict"]
    session.flush()  # state transitions' events first, so the audit trail reads in order
    if message_events:
        session.execute(insert(TicketEvent.__table__), message_events)
    _record_notes(session, originals, senders, ticket_ids, now)
    session.flush()

    message_ids = session.execute(
        insert(Message.__table__).returning(Message.__table__.c.id, sort_by_parameter_order=True),
        [
            {
                "ticket_id": ticket_ids[pos],
                "customer_id": customer_of[pos],
                "direction": "in",
                "channel": msg.channel.value,
                "external_id": msg.external_id,
                "sender": _no_nul(str(msg.sender.identities[0]))[:400],
                "subject": _no_nul(msg.subject)[:500],
                "text": _no_nul(msg.text),
                "raw": msg.raw,
                "email_message_id": msg.message_id,
                "in_reply_to": msg.thread_refs.in_reply_to,
                "references": list(msg.thread_refs.references),
                "cc": list(msg.cc),
                "public": not msg.machine_generated,  # an auto-reply or bounce is for agents, not the status page
                "flags": [*msg.flags, *flags_of[pos], *([blocking.BLOCKED_FLAG] if customer_of[pos] in blocked else [])],
                "received_at": msg.received_at,
                "created_at": now,
            }
            for pos, msg in originals
        ],
    ).scalars().all() if originals else []
    attachments = [row for (pos, msg), message_id in zip(originals, message_ids)
                   for row in attachment_rows(message_id, msg.attachments)]
    if attachments:
        session.execute(insert(AttachmentRow.__table__), attachments)

    new_positions = set(new_ticket_positions)
    for (pos, msg), message_id in zip(originals, message_ids):
        new = pos in new_positions
        receipts[pos] = Receipt(number_of[pos], ticket_ids[pos], message_id, duplicate=False, new_ticket=new,
                                first_response_due=first_response if new and pos not in held_back else None)
    for pos, msg in fresh:
        first = seen_keys[(msg.channel.value, msg.external_id)]
        if first != pos:
            r = receipts[first]
            receipts[pos] = Receipt(r.ticket_number, r.ticket_id, r.message_id, duplicate=True, new_ticket=False)
    return [receipts[pos] for pos in range(len(messages))]


def _machine_flags(msg: InboundMessage) -> list[str]:
    return sorted(MACHINE_FLAGS.intersection(msg.flags))


def _machine_kind(msg: InboundMessage) -> str:
    return "bounce" if "bounce" in msg.flags else "automatic reply"


def _subject(msg: InboundMessage) -> str:
    return _no_nul(msg.subject.strip() or msg.text.strip().split("\n", 1)[0])[:500]


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL; the exact bytes stay in `raw` (bytea)."""
    return text.replace("\x00", "")


def _existing_messages(session: Session, messages: list[InboundMessage]) -> dict[tuple[str, str], Receipt]:
    by_channel: dict[str, set[str]] = {}
    for msg in messages:
        by_channel.setdefault(msg.channel.value, set()).add(msg.external_id)
    found = {}
    for channel, ids in by_channel.items():
        rows = session.execute(_EXISTING, {"channel": channel, "ids": list(ids)}).all()
        for r in rows:
            found[(r.channel, r.external_id)] = Receipt(r.number, r.ticket_id, r.id, duplicate=True, new_ticket=False)
    return found


@dataclass(slots=True)
class _Note:
    """Something that happened to a message's customer, told on its ticket once the ticket exists."""

    kind: str  # customer_merged | identity_conflict | ticket_ref_rejected
    reason: str
    data: dict
    review: dict | None = None  # detail of a ReviewItem for a supervisor, when one is needed
    skip_tickets: frozenset[int] = frozenset()  # tickets already told (a merge tells the ones it moved)


@dataclass(slots=True)
class _Sender:
    customer_id: int
    new: bool = False  # first contact: created by this batch, so no tickets yet
    flags: list[str] = field(default_factory=list)
    notes: list[_Note] = field(default_factory=list)


_CHANNEL_WORDS = {"web": "web form", "email": "email", "telegram": "Telegram message", "api": "API message"}


def _evidence(msg: InboundMessage) -> str:
    """`web form gave email a@x and phone +86… together`: the words a supervisor reads on a merge."""
    gave = " and ".join(f"{i.kind.value.replace('_', ' ')} {i.value}" for i in msg.sender.identities)
    return f"{_CHANNEL_WORDS.get(msg.channel.value, msg.channel.value)} {msg.external_id!r} gave {gave} together"


def _customers_for(session: Session, messages: list[InboundMessage], now: datetime) -> list[_Sender]:
    """The customer each sender is, creating customers on first contact.

    Identities not yet known are attached to the sender's customer. A message carrying identities
    of two customers is evidence they are one person: they are merged into the older one, unless
    they hold different identities of the same kind — then nothing is merged, the message is
    flagged and a supervisor gets a review item. Queries beyond the look-up happen only then.
    """
    wanted = {(i.kind.value, i.value) for msg in messages for i in msg.sender.identities}
    owner: dict[tuple[str, str], int] = {}
    if wanted:
        rows = session.execute(_OWNERS, {"kinds": list({k for k, _ in wanted}),
                                         "values": list({v for _, v in wanted})}).all()
        for r in rows:
            if (r.kind, r.value) in wanted:
                owner[(r.kind, r.value)] = _root_customer(session, r.customer_id) if r.merged_into_id else r.customer_id
    known = set(owner)  # identities already stored

    # Senders we have never seen: one customer each (two messages of one new sender in this
    # batch share theirs), created with one multi-row insert.
    newcomers: dict[tuple[str, str], InboundMessage] = {}
    for msg in messages:
        keys = [(i.kind.value, i.value) for i in msg.sender.identities]
        if not any(k in owner for k in keys) and not any(k in newcomers for k in keys):
            newcomers[keys[0]] = msg
    if newcomers:
        ids = session.execute(
            insert(Customer.__table__).returning(Customer.__table__.c.id, sort_by_parameter_order=True),
            [{"display_name": _no_nul(m.sender.display_name)[:200], "language": m.language, "vip": False,
              "created_at": now} for m in newcomers.values()],
        ).scalars().all()
        owner.update(zip(newcomers, ids))

    merged_into: dict[int, int] = {}  # merges made by this batch, so later messages find the survivor
    held: dict[int, list[tuple[str, str]]] = {}  # identities of customers a message ties together
    pending: list[dict] = []  # identities to attach, inserted together

    def current(customer_id: int) -> int:
        while customer_id in merged_into:
            customer_id = merged_into[customer_id]
        return customer_id

    def write_pending() -> None:
        if pending:
            session.execute(insert(Identity.__table__), pending)
            pending.clear()

    senders: list[_Sender] = []
    for msg in messages:
        keys = [(i.kind.value, i.value) for i in msg.sender.identities]
        owners = sorted({current(owner[k]) for k in keys if k in owner})
        sender = _Sender(owners[0])  # the oldest survives a merge, and keeps a conflicting message
        if len(owners) > 1:
            write_pending()  # the merge moves identities in the database, these included
            missing = [c for c in owners if c not in held]
            held.update(identities_of(session, missing))
            for other in owners[1:]:
                _tie(session, msg, sender, other, held, merged_into, now)
        for k in keys:
            if k not in known:
                known.add(k)
                owner.setdefault(k, sender.customer_id)  # later messages of this batch from the same sender find it
                if sender.customer_id in held:
                    held[sender.customer_id].append(k)
                pending.append({"customer_id": sender.customer_id, "kind": k[0], "value": k[1], "verified": False,
                                "created_at": now})
        senders.append(sender)
    write_pending()
    created = set(owner[k] for k in newcomers)
    for sender in senders:  # a later message of the batch may have merged an earlier one's customer
        sender.customer_id = current(sender.customer_id)
        sender.new = sender.customer_id in created
    return senders


def _tie(session: Session, msg: InboundMessage, sender: _Sender, other: int,
         held: dict[int, list[tuple[str, str]]], merged_into: dict[int, int], now: datetime) -> None:
    """One message names `sender.customer_id` and `other`: merge them, or flag the conflict."""
    target = sender.customer_id
    evidence = _evidence(msg)
    clash = conflicts(held[target], held[other])
    refused = None
    if not clash:
        try:
            merge = merge_customers(session, other, target, actor="intake", evidence=evidence, now=now)
        except ActionRefused as exc:  # another process merged one of them a moment ago: a person looks
            refused = str(exc)
    if not clash and refused is None:
        merged_into[other] = target
        held[target].extend(held.pop(other))
        sender.notes.append(_Note(
            "customer_merged", f"customer #{other} merged into #{target}: {evidence} (merge #{merge.id}, undoable)",
            {"merge_id": merge.id, "source_id": other, "target_id": target, "tickets_moved": merge.ticket_ids},
            skip_tickets=frozenset(merge.ticket_ids),
        ))
        return
    if "identity_conflict" not in sender.flags:
        sender.flags.append("identity_conflict")
    why = describe_conflicts(clash, target, other) if clash else f"the merge was refused: {refused}"
    sender.notes.append(_Note(
        "identity_conflict",
        f"not merged: {evidence}, but {why}; kept with #{target}, a supervisor decides",
        {"customers": [target, other], "conflicts": clash},
        review={"customers": [target, other],
                "identities": {str(target): [f"{k}:{v}" for k, v in held[target]],
                               str(other): [f"{k}:{v}" for k, v in held[other]]},
                "conflicts": clash, "evidence": evidence, **({"merge_refused": refused} if refused else {}),
                "message": {"channel": msg.channel.value, "external_id": msg.external_id}},
    ))


def _record_notes(session: Session, originals: list[tuple[int, InboundMessage]], senders: list[_Sender],
                  ticket_ids: dict[int, int], now: datetime) -> None:
    """Merges, conflicts and rejected references of this batch, on the tickets the messages went to.
    Rare, so one statement each is fine."""
    for (pos, _), sender in zip(originals, senders):
        for note in sender.notes:
            ticket_id = ticket_ids[pos]
            data = dict(note.data)
            reason = note.reason
            if note.review is not None:
                review_id = _open_review(session, note, sender.customer_id)
                if review_id is None:
                    review_id = session.execute(
                        insert(ReviewItem.__table__).returning(ReviewItem.__table__.c.id),
                        {"kind": note.kind, "ticket_id": ticket_id, "customer_id": sender.customer_id,
                         "detail": note.review, "created_at": now},
                    ).scalar_one()
                    reason += f" (review item #{review_id})"
                else:
                    reason += f" (already awaiting review item #{review_id})"
                data["review_item_id"] = review_id
            if ticket_id not in note.skip_tickets:
                session.execute(insert(TicketEvent.__table__), {
                    "ticket_id": ticket_id, "at": now, "actor": "intake", "kind": note.kind, "reason": reason,
                    "data": data,
                })


def _open_review(session: Session, note: _Note, customer_id: int) -> int | None:
    """The unresolved review item already asking about the same two customers, if any: a customer who
    sends the same conflicting form again should not bury the supervisor in copies."""
    if note.kind != "identity_conflict":
        return None
    for item_id, detail in session.execute(
        select(ReviewItem.id, ReviewItem.detail).where(
            ReviewItem.kind == note.kind, ReviewItem.customer_id == customer_id, ReviewItem.resolved_at.is_(None))
    ):
        if sorted(detail.get("customers", [])) == sorted(note.review["customers"]):
            return item_id
    return None


def _root_customer(session: Session, customer_id: int) -> int:
    return root_customer(session, customer_id)


@dataclass(slots=True)
class _Thread:
    """Where a message goes: an existing ticket, a ticket an earlier message of the batch opens, or a new one."""

    ticket_id: int | None = None
    join_pos: int | None = None
    reason: str = "no earlier ticket matched"
    flags: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # {"how": ticket_number|in_reply_to|references|topic|greeting|answer|no_topic|new, …}

    @property
    def opens_ticket(self) -> bool:
        return self.ticket_id is None and self.join_pos is None


@dataclass(slots=True)
class _Candidate:
    """A ticket (or one this batch opens) a message of the same customer might continue."""

    text: str
    number: str | None  # None for a ticket this batch opens (not numbered yet)
    ticket_id: int | None = None
    pos: int | None = None
    resolved: bool = False  # continuing it reopens it
    awaits_answer: bool = False  # an agent wrote first (router/outreach.py) and the customer has not answered yet


def _find_threads(
    session: Session, originals: list[tuple[int, InboundMessage]], senders: list[_Sender], config: RouterConfig,
    now: datetime,
) -> dict[int, _Thread]:
    """The ticket each message continues, in DESIGN.md's order: its ticket number (only when the
    sender is that ticket's customer; someone else's number opens a new, flagged ticket), email
    In-Reply-To, References, then the same customer's open ticket on the same topic within the
    window, whatever the channel (or a resolved one, which the message reopens); otherwise a new ticket.

    Explicit references cost a query only for messages that carry them; topic threading one query
    for the whole batch, and only when some sender existed before it.
    """
    threads: dict[int, _Thread] = {}
    for (pos, msg), sender in zip(originals, senders):
        if msg.thread_refs.new_ticket:
            threads[pos] = _Thread(reason="the customer asked for a new ticket", data={"how": "new", "asked": True})
            continue
        threads[pos] = _explicit_thread(session, sender, msg)
    # Only an explicit reference threads an auto-reply: "I am on leave" resembles no topic, and a
    # bounce's text is the mail system's, not the customer's.
    looking = [(pos, msg, s.customer_id) for (pos, msg), s in zip(originals, senders)
               if threads[pos].opens_ticket and "ticket_ref_rejected" not in threads[pos].flags
               and not msg.machine_generated and not msg.thread_refs.new_ticket]
    if not looking or config.topic_window <= timedelta(0):  # a zero window turns topic threading off
        return threads
    returning = {s.customer_id for s in senders if not s.new}  # only they can have tickets already
    candidates = _open_tickets(session, returning & {cid for _, _, cid in looking}, config, now)
    threshold = config.topic_threshold
    for pos, msg, customer_id in looking:
        thread = threads[pos]
        mine = candidates.setdefault(customer_id, [])
        text = _topic_text(msg)
        chosen: _Candidate | None = None
        best: tuple[float, str | None] | None = None  # the highest similarity seen, and its ticket
        open_ones = [c for c in mine if not c.resolved]
        pool = mine
        if mine and not has_topic(text):
            # "好的谢谢", a photo without caption: it belongs with the latest open conversation (and a
            # "thanks" after "resolved" is no reason to reopen anything)
            if open_ones:
                chosen = open_ones[0]
                thread.reason = "nothing topical to compare: continues the latest open ticket"
                thread.data = {"how": "no_topic", "ticket": chosen.number}
            pool = []
        greeting: _Candidate | None = None  # the latest open ticket that was only "在吗" / "hello?"
        asked: _Candidate | None = None  # the latest ticket on which we wrote first, still unanswered
        for cand in pool if chosen is None else ():
            if cand.awaits_answer:  # resolved too: a week's silence ended by the answer after all
                asked = asked or cand
            if not has_topic(cand.text):
                if not cand.resolved:
                    greeting = greeting or cand
                continue
            score = round(topic_similarity(text, cand.text), 3)
            if best is None or score > best[0]:
                best = (score, cand.number)
            if score >= threshold:
                chosen = cand
                thread.reason = (f"same topic as {'resolved ' if cand.resolved else ''}"
                                 f"{cand.number or 'a ticket opened just before'} (similarity {score:.2f} >= "
                                 f"{threshold:.2f}) within {_hours(config.topic_window)}")
                thread.data = {"how": "topic", "ticket": cand.number, "similarity": score,
                               **({"reopens": True} if cand.resolved else {})}
                break
        if chosen is None and greeting is not None:  # no topic matched: this is what the greeting was about
            chosen = greeting
            thread.reason = "the open ticket was only a greeting: this continues it"
            thread.data = {"how": "greeting", "ticket": greeting.number}
        if chosen is None and asked is not None:  # no topic matched: the answer to what we wrote
            chosen = asked
            thread.reason = f"we wrote first on {asked.number} and this is the customer's first answer"
            thread.data = {"how": "answer", "ticket": asked.number, **({"reopens": True} if asked.resolved else {})}
        if chosen is not None:
            thread.ticket_id, thread.join_pos = chosen.ticket_id, chosen.pos
            chosen.resolved = False  # reopened by this message, for the batch's later ones
            continue
        if best is not None:
            thread.reason = (f"no open ticket on the same topic (best {best[1] or 'a ticket opened just before'} "
                             f"at similarity {best[0]:.2f} < {threshold:.2f})")
            thread.data = {"how": "new", "best_ticket": best[1], "best_similarity": best[0]}
        # later messages of this batch from the same customer may continue this new ticket
        mine.insert(0, _Candidate(text, None, pos=pos))
    return threads


def _explicit_thread(session: Session, sender: _Sender, msg: InboundMessage) -> _Thread:
    refs = msg.thread_refs
    thread = _Thread()
    if refs.ticket_number:
        number = refs.ticket_number.strip().upper()
        row = _ticket_by_number(session, number)
        if row is not None:
            if _same_customer(session, row.customer_id, sender.customer_id):
                return _Thread(row.id, reason=f"ticket number {number} given",
                               data={"how": "ticket_number", "ticket": row.number})
            if msg.machine_generated:
                # A bounce of our acknowledgement comes from the mail system, not the customer: it
                # belongs on the ticket (the agent learns the address fails), kept internal (machine
                # mail never shows on the status page), with no review item for each bounce.
                return _Thread(row.id, reason=f"{_machine_kind(msg)} from a mail system naming ticket {number}",
                               data={"how": "ticket_number", "ticket": row.number, "machine": True})
            # Someone else's ticket: never attach to it, never guess further; a person looks.
            thread.flags.append("ticket_ref_rejected")
            thread.reason = f"ticket number {number} belongs to another customer: new ticket, flagged"
            thread.data = {"how": "new", "rejected_ticket": number}
            sender.notes.append(_Note(
                "ticket_ref_rejected",
                f"the message named ticket {number}, which belongs to customer #{row.customer_id}, "
                f"not to the sender #{sender.customer_id}",
                {"ticket_number": number},
                review={"ticket_number": number, "ticket_customer_id": row.customer_id,
                        "sender_customer_id": sender.customer_id,
                        "sender": [str(i) for i in msg.sender.identities],
                        "message": {"channel": msg.channel.value, "external_id": msg.external_id}},
            ))
            return thread
        thread.flags.append("ticket_ref_unknown")
    for how, ref in [("in_reply_to", refs.in_reply_to), *(("references", r) for r in reversed(refs.references))]:
        if not ref:
            continue
        row = _follow_merges(session, session.execute(
            select(*_TICKET_COLUMNS)
            .join(Message, Message.ticket_id == Ticket.id)
            .where(Message.email_message_id == ref)
            .limit(1)
        ).first())
        if row is None and (named := _OUR_MESSAGE_ID.fullmatch(ref)):
            # One of our own mails (an acknowledgement is not stored as a message): its Message-ID
            # names the ticket, so a reply whose subject tag was deleted still finds it.
            row = _ticket_by_number(session, named.group(1).upper())
        if row is not None and _same_customer(session, row.customer_id, sender.customer_id):
            label = "In-Reply-To" if how == "in_reply_to" else "References"
            return _Thread(row.id, reason=f"{label} {ref}", flags=thread.flags,
                           data={"how": how, "ticket": row.number})
    return thread


def attachment_rows(message_id: int, attachments: Sequence[Attachment]) -> list[dict]:
    """The attachments rows of one message's files (a customer's at intake, an agent's reply)."""
    return [{"message_id": message_id, "filename": a.filename[:255], "content_type": a.content_type[:127],
             "size": a.size, "sha256": a.sha256, "data": a.data} for a in attachments]


def our_message_id(ticket_number: str, token: str | None = None) -> str:
    """The Message-ID of a mail we send about a ticket (router/actions.py's replies, router/routing.py's
    acknowledgements): it names the ticket, so an answer to it finds the ticket (_OUR_MESSAGE_ID)."""
    return f"<{token or uuid.uuid4().hex}.{ticket_number.lower()}@paidan>"


_OUR_MESSAGE_ID = re.compile(r"<[0-9a-f]{16,32}\.(gd\d{11,})@paidan>", re.IGNORECASE)


_TICKET_COLUMNS = (Ticket.id, Ticket.number, Ticket.customer_id, Ticket.state, Ticket.merged_into_id)


def _ticket_by_number(session: Session, number: str):
    """The ticket called `number` (id, number, customer_id, state, merged_into_id), following merges
    on to the ticket it was merged into; None when there is none (or the merges lead nowhere)."""
    return _follow_merges(session, session.execute(select(*_TICKET_COLUMNS).where(Ticket.number == number)).first())


def _follow_merges(session: Session, row):
    """A merged ticket's row leads on to the ticket it was merged into: a customer answering mail of
    the ticket a supervisor merged away continues the one that lives on."""
    for _ in range(8):  # merges chain (A into B, B into C); a loop is a bug, and leads nowhere
        if row is None or row.state != states.MERGED or row.merged_into_id is None:
            break
        row = session.execute(select(*_TICKET_COLUMNS).where(Ticket.id == row.merged_into_id)).first()
    return row if row is not None and row.state != states.MERGED else None


def _same_customer(session: Session, ticket_customer_id: int, customer_id: int) -> bool:
    return ticket_customer_id == customer_id or _root_customer(session, ticket_customer_id) == customer_id


def _open_tickets(session: Session, customer_ids: set[int], config: RouterConfig,
                  now: datetime) -> dict[int, list[_Candidate]]:
    """Each customer's open (then resolved) tickets active within the topic window, latest first, with
    the text to compare (subject and first customer message). One query for the batch, none for newcomers."""
    if not customer_ids:
        return {}
    rows = session.execute(_OPEN_TICKETS, {"customers": list(customer_ids), "since": now - config.topic_window}).all()
    found: dict[int, list[_Candidate]] = {}
    for r in rows:
        found.setdefault(r.customer_id, []).append(_Candidate(
            f"{r.subject}\n{r.text or ''}", r.number, ticket_id=r.id, resolved=r.state == states.RESOLVED,
            awaits_answer=r.text is None and OUTBOUND_FLAG in (r.flags or ())))
    for candidates in found.values():
        candidates.sort(key=lambda c: c.resolved)  # stable: open ones first, each group latest first
    return found


def _topic_text(msg: InboundMessage) -> str:
    return f"{msg.subject}\n{msg.text}"


def _hours(window: timedelta) -> str:
    return f"{window.total_seconds() / 3600:g} h"


def new_ticket_number(session: Session, now: datetime, timezone: str) -> str:
    """One ticket number of `now`'s day in the desk's time zone (a ticket an agent opens or splits off)."""
    return next_ticket_numbers(session, now.astimezone(ZoneInfo(timezone)).strftime("%Y%m%d"), 1)[0]


def next_ticket_numbers(session: Session, day: str, count: int) -> list[str]:
    """`count` ticket numbers, `GD` + day + a per-day sequence of at least three digits.

    One atomic upsert reserves the whole range and holds the counter row's lock until commit,
    so concurrent writers (threads or processes, SQLite or PostgreSQL) never share a number.
    """
    if count == 0:
        return []
    last = session.execute(_RESERVE_NUMBERS.for_session(session), {"day": day, "count": count}).scalar_one()
    return [f"GD{day}{seq:03d}" for seq in range(last - count + 1, last + 1)]


def _reserve_numbers(upsert) -> object:
    counter = TicketCounter.__table__
    return (
        upsert(counter)
        .values(day=bindparam("day"), last_seq=bindparam("count"))
        .on_conflict_do_update(index_elements=[counter.c.day],
                               set_={"last_seq": counter.c.last_seq + bindparam("count")})
        .returning(counter.c.last_seq)
    )


_RESERVE_NUMBERS = PerDialect(_reserve_numbers)


# A customer message restarts work on a ticket in these states (the rest just take the message).
_RESTARTED_BY = {states.AWAITING_CUSTOMER: states.IN_PROGRESS, states.RESOLVED: states.REOPENED,
                 states.CLOSED: states.REOPENED}


def _customer_wrote_again(
    session: Session, state_of: dict[int, str], first_message: dict[int, InboundMessage], now: datetime
) -> None:
    """Customer messages on existing tickets restart work on them where the state calls for it, and
    hand the tickets back to the router (classify the new message, second-contact rule, tell the agent).

    Set-based: one UPDATE for the common case; ORM objects (and their transition events) only for
    the tickets that change state.
    """
    plain = [tid for tid, state in state_of.items() if state not in _RESTARTED_BY]
    if plain:
        session.execute(_TOUCH, {"ids": plain, "now": now})
    for ticket_id in state_of.keys() - set(plain):
        ticket, msg = session.get(Ticket, ticket_id), first_message[ticket_id]
        ticket.routed_at = None
        if ticket.state == states.AWAITING_CUSTOMER:
            reason = f"customer replied on {msg.channel.value}"
        else:
            reason = f"customer wrote again on {msg.channel.value} after {ticket.state}"
        states.transition(session, ticket, _RESTARTED_BY[ticket.state], actor="customer", reason=reason, at=now)


class Intake:
    """The sink every connector is given. `await accept(msg)` returns only after the commit."""

    def __init__(
        self,
        engine: Engine,
        *,
        timezone: str = "Asia/Shanghai",
        first_response: timedelta = timedelta(hours=4),
        max_batch: int = 256,
        clock: Callable[[], datetime] = utcnow,
        config: RouterConfig | None = None,
    ):
        self.engine = engine
        self.config = config or RouterConfig()
        self.tz = ZoneInfo(timezone)
        self.first_response = first_response
        self.max_batch = max_batch
        self.clock = clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def accept_now(self, msg: InboundMessage) -> Receipt:
        """Store one message in its own transaction, in the calling thread (CLI, importers, tests)."""
        [result] = self._commit_batch([msg])
        if isinstance(result, Exception):
            raise result
        return result

    async def accept(self, msg: InboundMessage) -> Receipt:
        if self._closed:
            raise StorageUnavailable("intake is shutting down")
        self._ensure_writer()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((msg, loop, future))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        self._closed = True
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _ensure_writer(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._writer, name="paidan-intake", daemon=True)
                    self._thread.start()

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            results = self._commit_batch([m for m, _, _ in batch])
            for (_, loop, future), result in zip(batch, results):
                loop.call_soon_threadsafe(_settle, future, result)
            if stop:
                return

    def _commit_batch(self, messages: list[InboundMessage]) -> list[Receipt | Exception]:
        """One transaction for the whole batch; if the data fails it, each message alone, so one
        bad message (or a race with another process) fails only itself."""
        now = self.clock()
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                return self._store(session, messages, now)
        except (OperationalError, InterfaceError) as exc:
            # The database itself is unreachable, locked or full: every message would fail alike.
            log.error("intake could not commit %d message(s): %s", len(messages), type(exc).__name__)
            return [StorageUnavailable("the database could not store the message; try again later")] * len(messages)
        except (SQLAlchemyError, PaidanError) as exc:
            if len(messages) == 1:
                return [self._retry_alone(messages[0], now, exc)]
        return [result for msg in messages for result in self._commit_batch([msg])]

    def _retry_alone(self, msg: InboundMessage, now: datetime, first_error: Exception) -> Receipt | Exception:
        if isinstance(first_error, PaidanError):
            return first_error
        if isinstance(first_error, IntegrityError):
            # Another process stored the same message or identity between our look-up and insert:
            # once more, and the look-up now finds it.
            try:
                with Session(self.engine, expire_on_commit=False) as session, session.begin():
                    return self._store(session, [msg], now)[0]
            except PaidanError as exc:
                return exc
            except SQLAlchemyError as exc:
                first_error = exc
        log.error("intake: a %s message could not be stored: %s", msg.channel, type(first_error).__name__)
        return StorageUnavailable("the database could not store the message; try again later")

    def _store(self, session: Session, messages: list[InboundMessage], now: datetime) -> list[Receipt]:
        return store_batch(session, messages, tz=self.tz, first_response=self.first_response, now=now,
                           config=self.config)


def _settle(future: asyncio.Future, result: Receipt | Exception) -> None:
    if future.done():  # the caller went away (client disconnected); the message is stored anyway
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
