"""Ticket search for agents and supervisors: "I wrote to you last week about order 1234567890".

One query finds the tickets each way a query can match (ticket number, a customer's email, phone or
Telegram id, their name, the subject, the text of any message), each already ordered and cut to
`limit`, so the first `limit` of their union are the answer; then one query describes the chosen
tickets and one more finds the text around each hit. Staff see everything they could open anyway:
customers' messages, agents' replies and internal notes, each hit saying which it was.

A person is a customer together with everyone merged into them (router.identity), so finding any of
their identities or names lists all their tickets. A ticket merged into another is listed too, pointing
at the one that carries on: the customer quotes the number they were given, and its subject is still
theirs (its messages moved on with the merge, so a text hit lands on the ticket that carries on).

Never commits, never writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from itertools import chain

from sqlalchemy import Select, and_, case, or_, select
from sqlalchemy.orm import Session, aliased

from models.errors import InvalidInput
from models.message import ERASED, Identity, IdentityKind
from models.tables import Agent, Customer, Identity as IdentityRow, Message, Ticket
from router import states
from router.identity import DEFAULT_REGION, make_identity, root_customer
from router.privacy import same_person

SHORTEST_QUERY = 2
LONGEST_QUERY = 200
SNIPPET_CHARS = 60

NUMBER, NAME, SUBJECT = "number", "name", "subject"
CUSTOMER_MESSAGE, AGENT_REPLY, NOTE = "customer message", "agent reply", "note"
_TEXT = "text"  # a message hit, until its message says which of the three it was
# How strongly each kind of match says "this is the ticket you mean"; a ticket found several ways
# is listed once, for the strongest. Identity kinds are the IdentityKind values (email, phone, …).
_IDENTITY_KINDS = frozenset(kind.value for kind in IdentityKind)
_STRENGTH = {NUMBER: 0, **dict.fromkeys(_IDENTITY_KINDS, 1), NAME: 2, SUBJECT: 3, _TEXT: 4}

_NUMBER = re.compile(r"GD\d{8}\d*")  # at least the date part of a ticket number
_PHONE_LIKE = re.compile(r"\+?[\d\s().-]{5,40}")
_OPEN_FIRST = case((Ticket.state.in_(sorted(states.OPEN_STATES)), 0), else_=1)
# Merged-away customers whose name matches are followed to the person they joined, one by one; a name
# that more of them share than this is too vague to be worth following every one.
_MERGED_NAMES_FOLLOWED = 100


@dataclass(frozen=True, slots=True)
class Found:
    """One ticket a search found, and why."""

    number: str
    state: str
    priority: str | None
    subject: str
    customer: str  # their name, else their first identity ("email:a@b.cn"), else ""
    channel: str  # where the customer first wrote
    last_activity: datetime  # UTC
    agent: str | None  # who holds (or last held) it
    matched: str  # number | email | phone | telegram | web_session | name | subject | customer message | agent reply | note
    snippet: str  # one line: the text around the hit, or the identity or name matched; "" for a number
    merged_into: str | None = None  # for a merged ticket, the number of the one that carries on

    def as_dict(self) -> dict:
        return {"number": self.number, "state": self.state, "priority": self.priority, "subject": self.subject,
                "customer": self.customer, "channel": self.channel, "last_activity": self.last_activity.isoformat(),
                "agent": self.agent, "matched": self.matched, "snippet": self.snippet, "merged_into": self.merged_into}


@dataclass(frozen=True, slots=True)
class _Hit:
    ticket_id: int
    matched: str
    snippet: str
    open: bool
    last_activity: datetime
    exact_number: bool = False

    @property
    def strength(self) -> int:
        return _STRENGTH[self.matched]

    def order(self) -> tuple:
        # The ticket whose number was typed in full comes first: it is the one asked for, and a later
        # ticket's number can start with it (…100 and …1000). Then open tickets, most recently active first.
        return (not self.exact_number, not self.open, -self.last_activity.timestamp(), -self.ticket_id)


def find_tickets(session: Session, query: str, *, limit: int = 10,
                 default_region: str = DEFAULT_REGION) -> list[Found]:
    """Tickets matching `query`: open first, then the most recently active; each once, for its strongest match.

    Refused (InvalidInput, field "query") for fewer than 2 or more than 200 characters. `default_region`
    reads a phone number typed without a country code, as intake does (settings' `phone_region`).
    """
    text = _checked(query)
    if limit < 1:
        raise InvalidInput("limit", "show at least 1 ticket")
    best: dict[int, _Hit] = {}
    for hit in chain(_by_number(session, text, limit), _by_identity(session, text, limit, default_region),
                     _by_name(session, text, limit), _by_subject(session, text, limit), _by_text(session, text, limit)):
        kept = best.get(hit.ticket_id)
        if kept is None or hit.strength < kept.strength:
            best[hit.ticket_id] = hit
    chosen = sorted(best.values(), key=_Hit.order)[:limit]
    return _describe(session, chosen, text)


def _checked(query: str) -> str:
    text = (query or "").strip()
    if len(text) < SHORTEST_QUERY:
        raise InvalidInput("query", f"type at least {SHORTEST_QUERY} characters: a ticket number (GD…), an email "
                                    f"address, a phone number, a Telegram id, a name, or words from the messages")
    if len(text) > LONGEST_QUERY:
        raise InvalidInput("query", f"at most {LONGEST_QUERY} characters ({len(text)} given): search for its most "
                                    f"telling part, such as an order number or a short phrase")
    return text


def _ranked(query: Select, limit: int) -> Select:
    return query.order_by(_OPEN_FIRST, Ticket.updated_at.desc(), Ticket.id.desc()).limit(limit)


def _hit(row, matched: str, snippet: str = "", *, exact_number: bool = False) -> _Hit:
    return _Hit(row.id, matched, snippet, row.state in states.OPEN_STATES, row.updated_at, exact_number)


# ---------------------------------------------------------------- the ways a query matches


def _by_number(session: Session, text: str, limit: int) -> list[_Hit]:
    wanted = text.strip("[]#").upper()  # as quoted in a subject tag, `[GD…]`
    if not _NUMBER.fullmatch(wanted):
        return []
    exact_first = case((Ticket.number == wanted, 0), else_=1)
    rows = session.execute(_ranked(
        select(Ticket.id, Ticket.state, Ticket.updated_at, Ticket.number)
        .where(Ticket.number.startswith(wanted, autoescape=True)).order_by(exact_first), limit)).all()
    return [_hit(r, NUMBER, exact_number=r.number == wanted) for r in rows]


def _identities_in(text: str, default_region: str) -> list[Identity]:
    """What `text` could be as an identity, normalised as intake stores identities."""
    kind, sep, value = text.partition(":")
    if sep and kind in _IDENTITY_KINDS:
        guesses = [(kind, value)]  # spelled out: `telegram:123`, `phone:138…`
    else:
        guesses = []
        if "@" in text[1:]:
            guesses.append((IdentityKind.EMAIL, text))
        if _PHONE_LIKE.fullmatch(text):
            guesses.append((IdentityKind.PHONE, text))
        if text.isdigit():
            guesses.append((IdentityKind.TELEGRAM, text))
    found = []
    for kind, value in guesses:
        try:
            found.append(make_identity(kind, value, default_region=default_region))
        except InvalidInput:
            pass  # not that kind after all (an order number is no phone)
    return found


def _people(session: Session, customer_ids) -> dict[int, int]:
    """Every customer who is one person with one of `customer_ids`, mapped to that person's root customer."""
    root_of: dict[int, int] = {}
    for root in {root_customer(session, cid) for cid in customer_ids}:
        for member in same_person(session, root):
            root_of[member] = root
    return root_of


def _tickets_of_people(session: Session, root_of: dict[int, int], limit: int):
    if not root_of:
        return []
    return session.execute(_ranked(
        select(Ticket.id, Ticket.state, Ticket.updated_at, Ticket.customer_id)
        .where(Ticket.customer_id.in_(sorted(root_of))), limit)).all()


def _by_identity(session: Session, text: str, limit: int, default_region: str) -> list[_Hit]:
    wanted = _identities_in(text, default_region)
    if not wanted:
        return []
    owners = session.execute(select(IdentityRow.customer_id, IdentityRow.kind, IdentityRow.value).where(
        or_(*(and_(IdentityRow.kind == i.kind.value, IdentityRow.value == i.value) for i in wanted)))).all()
    root_of = _people(session, {o.customer_id for o in owners})
    how = {root_of[o.customer_id]: (o.kind, o.value) for o in owners}
    return [_hit(r, *how[root_of[r.customer_id]]) for r in _tickets_of_people(session, root_of, limit)]


def _by_name(session: Session, text: str, limit: int) -> list[_Hit]:
    # Telegram usernames are not identities; a Telegram customer without a name is called by it.
    needle = text[1:] if text.startswith("@") and "@" not in text[1:] else text
    if len(needle) < SHORTEST_QUERY:
        return []
    # An erased person is called ERASED: that marker is no name, or "erased" would list every one of them.
    named = and_(Customer.display_name.icontains(needle, autoescape=True), Customer.display_name != ERASED)
    rows = session.execute(_ranked(
        select(Ticket.id, Ticket.state, Ticket.updated_at, Customer.display_name)
        .join(Customer, Customer.id == Ticket.customer_id).where(named), limit)).all()
    hits = [_hit(r, NAME, snippet(r.display_name, needle)) for r in rows]
    # A customer merged into another keeps their name, but their tickets moved to the person they joined.
    merged_away = session.execute(select(Customer.id, Customer.display_name)
                                  .where(named, Customer.merged_into_id.is_not(None))
                                  .order_by(Customer.id).limit(_MERGED_NAMES_FOLLOWED)).all()
    if merged_away:
        root_of = _people(session, {c.id for c in merged_away})
        name_of = {root_of[c.id]: c.display_name for c in merged_away}
        hits += [_hit(r, NAME, snippet(name_of[root_of[r.customer_id]], needle))
                 for r in _tickets_of_people(session, root_of, limit)]
    return hits


def _by_subject(session: Session, text: str, limit: int) -> list[_Hit]:
    rows = session.execute(_ranked(
        select(Ticket.id, Ticket.state, Ticket.updated_at, Ticket.subject)
        .where(Ticket.subject.icontains(text, autoescape=True), Ticket.subject != ERASED), limit)).all()
    return [_hit(r, SUBJECT, snippet(r.subject, text)) for r in rows]


def _text_matches(text: str):
    # Erased messages read ERASED, which is not what anybody wrote.
    return and_(Message.text.icontains(text, autoescape=True), Message.text != ERASED)


def _by_text(session: Session, text: str, limit: int) -> list[_Hit]:
    rows = session.execute(_ranked(
        select(Ticket.id, Ticket.state, Ticket.updated_at)
        .where(Ticket.id.in_(select(Message.ticket_id).where(_text_matches(text)))), limit)).all()
    return [_hit(r, _TEXT) for r in rows]  # which message, and the words around it: once the list is cut


# ---------------------------------------------------------------- describing what was found


def _describe(session: Session, hits: list[_Hit], text: str) -> list[Found]:
    if not hits:
        return []
    ids = [h.ticket_id for h in hits]
    carried_on = aliased(Ticket)
    rows = {r.id: r for r in session.execute(
        select(Ticket.id, Ticket.number, Ticket.state, Ticket.priority, Ticket.subject, Ticket.channel,
               Ticket.updated_at, Ticket.customer_id, Customer.display_name, Agent.name.label("agent"),
               carried_on.number.label("merged_into"))
        .join(Customer, Customer.id == Ticket.customer_id)
        .outerjoin(Agent, Agent.id == Ticket.assigned_agent_id)
        .outerjoin(carried_on, carried_on.id == Ticket.merged_into_id)
        .where(Ticket.id.in_(ids)))}
    contacts = _first_identities(session, {r.customer_id for r in rows.values() if not r.display_name})
    in_messages = _message_hits(session, [h.ticket_id for h in hits if h.matched == _TEXT], text)
    found = []
    for hit in hits:
        r = rows[hit.ticket_id]
        matched, snip = in_messages.get(hit.ticket_id, (hit.matched, hit.snippet))
        found.append(Found(
            number=r.number, state=r.state, priority=r.priority, subject=r.subject,
            customer=r.display_name or contacts.get(r.customer_id, ""), channel=r.channel,
            last_activity=r.updated_at, agent=r.agent, matched=matched, snippet=snip, merged_into=r.merged_into))
    return found


def _first_identities(session: Session, customer_ids: set[int]) -> dict[int, str]:
    """Each nameless customer's oldest identity, `kind:value`, to call them by."""
    if not customer_ids:
        return {}
    first: dict[int, str] = {}
    for r in session.execute(select(IdentityRow.customer_id, IdentityRow.kind, IdentityRow.value)
                             .where(IdentityRow.customer_id.in_(customer_ids)).order_by(IdentityRow.id.desc())):
        first[r.customer_id] = f"{r.kind}:{r.value}"  # newest first, so the oldest is written last
    return first


def _message_hits(session: Session, ticket_ids: list[int], text: str) -> dict[int, tuple[str, str]]:
    """For each ticket, its latest message that matches: who wrote it, and the words around the hit."""
    if not ticket_ids:
        return {}
    latest: dict[int, tuple[str, str]] = {}
    for m in session.execute(select(Message.ticket_id, Message.text, Message.direction, Message.public)
                             .where(Message.ticket_id.in_(ticket_ids), _text_matches(text))
                             .order_by(Message.id.desc())):
        if m.ticket_id not in latest:
            who = NOTE if not m.public else CUSTOMER_MESSAGE if m.direction == "in" else AGENT_REPLY
            latest[m.ticket_id] = (who, snippet(m.text, text))
    return latest


def snippet(text: str, needle: str, width: int = SNIPPET_CHARS) -> str:
    """About `width` characters of `text` on one line, with the first hit of `needle` in the middle."""
    line, needle = " ".join(text.split()), " ".join(needle.split())
    hit = re.search(re.escape(needle), line, re.IGNORECASE) if needle else None
    start = max(0, hit.start() - max(0, (width - len(needle)) // 2)) if hit else 0
    end = min(len(line), start + width)
    start = max(0, min(start, end - width))
    return ("…" if start else "") + line[start:end].strip() + ("…" if end < len(line) else "")
