"""Agent actions: the one API the Telegram console, the web and the CLI share.

Every action takes the session, the ticket number, the acting agent (an Agent row, or a name or
id), its own arguments, the RouterConfig and `now`; it never commits (the caller owns the
transaction), writes audit events with actor ``agent:<id>`` and a reason, and returns an
`Outcome` the edge can show. Whatever the rules do not allow is refused with `ActionRefused`
(or `NotFound` for a ticket or agent that does not exist) carrying a sentence that tells the
person what to do instead; a state change the state machine forbids raises `IllegalTransition`.

Who may do what:
- accept, decline: only the agent the ticket is offered to.
- reply, note, wait, resolve, relabel: the holder or a supervisor. When the holder works on a
  ticket offered to them but not yet accepted (a public reply, wait, resolve), that is taken as
  accepting it first, with its own audit event, so the offer cannot expire under their hands.
- reopen: a supervisor or the ticket's last holder.
- reassign: a supervisor or the holder; only a supervisor may `force` past the skills check.
  Capacity is never forced: raise the agent's capacity first (`paidan agents set`).
- merge: a supervisor or the holder of either ticket; only one customer's open tickets.
- spam: a supervisor, or an agent for a ticket that is theirs or nobody's; not spam: a supervisor or
  the agent who marked it.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key
from sqlalchemy.orm.attributes import set_committed_value

from models.errors import ActionRefused, InvalidInput, NotFound
from models.message import ERASED, OUTBOUND_FLAG, Attachment
from models.tables import (Agent, Assignment, AttachmentRow, Customer, Identity as IdentityRow, LabelCorrection,
                           Message, OutboxItem, Ticket, TicketEvent)
from router import states
from router.config import PRIORITIES, SUPERVISOR_ROLES, RouterConfig
from router.intake import attachment_rows, new_ticket_number, our_message_id
from router import outbox
from router.outbox import STAFF_CHANNEL, agent_address, customer_address, enqueue, enqueue_many, notify_agent


# DESIGN.md's default taxonomy; a deployment with its own label sets passes them as `labels`
# (RouterConfig.labels when the lead adds it).
DEFAULT_LABELS: dict[str, tuple[str, ...]] = {
    "type": ("inquiry", "incident", "complaint", "suggestion", "request"),
    "category": ("technical", "service", "transaction", "product"),
    "priority": PRIORITIES,
}
QUEUES = ("assignment", "triage")
MAX_REPLY_CHARS = 100_000
# Telegram takes 4,096 UTF-16 units a message; the reply's header line ("工单 / Ticket GD…") needs
# the rest. A longer reply is refused before anything is stored, rather than cut on the way out.
MAX_TELEGRAM_REPLY_UNITS = 4000
# With files, the text is their caption: Telegram takes 1,024 units, less the header line.
MAX_TELEGRAM_CAPTION_UNITS = 1000
# Telegram sends at most 10 files as one message (a media group); one reply is one message.
MAX_REPLY_FILES = 10
# Mail providers refuse mail over about 25 MB, and base64 makes files a third bigger.
MAX_REPLY_FILE_BYTES = 18_000_000
MENTION_QUOTE = 1_000  # of a note, in the notice to a colleague it asks (the rest is on the ticket)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did, for the edge to show to the person who acted."""

    ticket: str
    action: str
    state: str
    agent: str | None  # who holds the ticket afterwards (name), if anyone
    summary: str  # one readable sentence
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"ticket": self.ticket, "action": self.action, "state": self.state, "agent": self.agent,
                "summary": self.summary, "data": self.data}


# ---------------------------------------------------------------- who and which ticket


def resolve_agent(session: Session, actor: Agent | str | int) -> Agent:
    """The Agent an edge names by row, name or id; NotFound (pointing at the agent list) otherwise."""
    if isinstance(actor, Agent):
        return actor
    if isinstance(actor, int):
        agent = session.get(Agent, actor)
        if agent is None:
            raise NotFound(f"no agent with id {actor} (see `paidan agents list`)")
        return agent
    text = str(actor or "").strip()
    if not text:
        raise ActionRefused("say which agent is acting (e.g. `--as NAME`); see `paidan agents list`")
    from router.agents import get_agent

    # An edge acting for the same people several times in one transaction (a console working
    # through a batch of updates) reads each of them once; the session's row stays current.
    known = session.info.setdefault("agents_by_name", {})
    agent = known.get(text)
    if agent is None or agent not in session or agent.name != text:
        agent = known[text] = get_agent(session, text)
    return agent


def agent_for_telegram(session: Session, telegram_id: int) -> Agent:
    """The agent behind a Telegram user, for the agent console; a clear refusal for anyone else."""
    agent = session.scalar(select(Agent).where(Agent.telegram_id == telegram_id))
    if agent is None:
        raise ActionRefused(
            f"Telegram user {telegram_id} is not registered as an agent; a supervisor can add you with "
            f"`paidan agents add NAME --telegram-id {telegram_id}`"
        )
    return agent


def is_supervisor(agent: Agent) -> bool:
    return agent.role in SUPERVISOR_ROLES


def actor_of(agent: Agent) -> str:
    """How the audit trail names an agent who acted (by id: names change)."""
    return f"agent:{agent.id}"


def _ticket(session: Session, number: str) -> Ticket:
    """The ticket, locked for this transaction on PostgreSQL so two actions on it take turns."""
    wanted = (number or "").strip().upper()
    ticket = session.scalar(select(Ticket).where(Ticket.number == wanted).with_for_update())
    if ticket is None:
        raise NotFound(f"no ticket {number!r} (see `paidan tickets list` or `paidan queue`)")
    return ticket


def _refuse_if_finished(session: Session, ticket: Ticket, action: str) -> None:
    if ticket.state == states.MERGED:
        target = session.get(Ticket, ticket.merged_into_id) if ticket.merged_into_id else None
        where = f"act on {target.number} instead" if target else "act on the ticket it was merged into"
        raise ActionRefused(f"ticket {ticket.number} was merged; {where}")
    if ticket.state == states.CLOSED and action != "reopen":
        raise ActionRefused(f"ticket {ticket.number} is closed; reopen it first (`paidan tickets reopen {ticket.number}`)")


def _name(session: Session, agent_id: int | None) -> str | None:
    if agent_id is None:
        return None
    agent = session.get(Agent, agent_id)
    return agent.name if agent else f"agent {agent_id}"


def _holder_id(ticket: Ticket) -> int | None:
    """Who holds the ticket now. A queued ticket has nobody, even when `assigned_agent_id` still
    names its last agent (assignment keeps that as the record of who worked it)."""
    return None if ticket.queue else ticket.assigned_agent_id


def _not_yours(session: Session, ticket: Ticket, agent: Agent, action: str) -> ActionRefused:
    holder = _name(session, _holder_id(ticket))
    if holder is None:
        where = f" (it waits in the {ticket.queue} queue)" if ticket.queue else ""
        return ActionRefused(
            f"you cannot {action} ticket {ticket.number}: it is not assigned to anyone{where}; "
            f"a supervisor assigns it with `paidan tickets assign {ticket.number} AGENT`"
        )
    return ActionRefused(
        f"you cannot {action} ticket {ticket.number}: it is held by {holder}, not by {agent.name}; "
        f"ask {holder} or a supervisor to reassign it to you"
    )


def _require_holder_or_supervisor(session: Session, ticket: Ticket, agent: Agent, action: str) -> None:
    if _holder_id(ticket) != agent.id and not is_supervisor(agent):
        raise _not_yours(session, ticket, agent, action)


def _event(session: Session, ticket: Ticket, agent: Agent, kind: str, reason: str, now: datetime,
           data: dict | None = None) -> TicketEvent:
    # Not flushed here: the session writes its events in the order they were added, and the one
    # place that writes events behind the ORM's back (assignment's offers) flushes these first.
    event = TicketEvent(ticket_id=ticket.id, at=now, actor=actor_of(agent), kind=kind, reason=reason, data=data or {})
    session.add(event)
    return event


def _move(session: Session, ticket: Ticket, agent: Agent, to_state: str, reason: str, now: datetime,
          data: dict) -> TicketEvent:
    event = states.transition(session, ticket, to_state, actor=actor_of(agent), reason=reason, at=now)
    event.data = data
    return event


def _written_together(action: Callable[..., Outcome]) -> Callable[..., Outcome]:
    """Run an action without autoflush: what it reads (the agent, the ticket, its clocks and offers)
    never depends on its own unwritten changes, so they need not be written before each read. The
    caller's commit then writes each kind of row once, instead of a flush per read, which was most
    of an action's cost. Offers, written behind the ORM, flush what precedes them first."""
    @functools.wraps(action)
    def run(session: Session, *args, **kwargs) -> Outcome:
        with session.no_autoflush:
            return action(session, *args, **kwargs)
    return run


def _outcome(session: Session, ticket: Ticket, action: str, summary: str, data: dict | None = None) -> Outcome:
    return Outcome(ticket.number, action, ticket.state, _name(session, _holder_id(ticket)), summary, data or {})


# ---------------------------------------------------------------- offers


def _open_offer(session: Session, ticket: Ticket, agent_id: int) -> Assignment | None:
    return session.scalar(
        select(Assignment)
        .where(Assignment.ticket_id == ticket.id, Assignment.agent_id == agent_id, Assignment.ended_at.is_(None))
        .order_by(Assignment.id.desc())
        .limit(1)
    )


def _pending_offer(session: Session, ticket: Ticket, agent: Agent, action: str) -> Assignment:
    """The offer of this ticket to `agent` that waits for an answer; refused with the reason otherwise."""
    if _holder_id(ticket) != agent.id:
        raise _not_yours(session, ticket, agent, action)
    offer = _open_offer(session, ticket, agent.id)
    if offer is None:
        last = session.scalar(select(Assignment).where(Assignment.ticket_id == ticket.id,
                                                       Assignment.agent_id == agent.id)
                              .order_by(Assignment.id.desc()).limit(1))
        ended = f" ended at {last.ended_at:%Y-%m-%d %H:%M} UTC ({last.end_reason})" if last and last.ended_at else \
            " is not open"
        raise ActionRefused(f"the offer of {ticket.number} to {agent.name}{ended}; "
                            f"see `paidan tickets explain {ticket.number}`")
    if offer.accepted_at is not None:
        if action == "decline":
            raise ActionRefused(f"{agent.name} accepted {ticket.number} already; hand it on with "
                                f"`paidan tickets assign {ticket.number}` instead of declining")
        raise ActionRefused(f"{agent.name} already accepted {ticket.number} "
                            f"at {offer.accepted_at:%Y-%m-%d %H:%M} UTC; nothing to do")
    return offer


# The agent's open offer of the ticket, accepted if nobody ended it first (see _take_offer).
_CLAIM_OFFER = (
    update(Assignment.__table__)
    .where(Assignment.ticket_id == bindparam("of_ticket"), Assignment.agent_id == bindparam("of_agent"),
           Assignment.accepted_at.is_(None), Assignment.ended_at.is_(None))
    .values(accepted_at=bindparam("accepted"))
    .returning(Assignment.id, Assignment.expires_at)
)


def _take_offer(session: Session, ticket: Ticket, agent: Agent, now: datetime, *, how: str) -> bool:
    """Accept the agent's open offer of the ticket and start work on it (assigned → in_progress);
    False when there is no open offer to accept.

    The offer is claimed with one conditional UPDATE, so an accept racing the offer-expiry timer in
    another process either wins cleanly or finds nothing to accept: never both.
    """
    offer = session.execute(_CLAIM_OFFER, {"of_ticket": ticket.id, "of_agent": agent.id, "accepted": now}).first()
    if offer is None:
        return False
    loaded = session.identity_map.get(identity_key(Assignment, offer.id))
    if loaded is not None:
        set_committed_value(loaded, "accepted_at", now)  # as the UPDATE wrote it, without reading it back
    data: dict = {"action": "accept", "how": how, "assignment_id": offer.id}
    if now > offer.expires_at:
        data["late_by_seconds"] = int((now - offer.expires_at).total_seconds())
    ticket.accepted_at = now
    reason = f"{agent.name} accepted the ticket" + (f" ({how})" if how != "accepted" else "")
    if ticket.state == states.IN_PROGRESS:
        _event(session, ticket, agent, "accepted", reason, now, data)
    else:
        _move(session, ticket, agent, states.IN_PROGRESS, reason, now, data)
    return True


def _accept_if_offered(session: Session, ticket: Ticket, agent: Agent, now: datetime, *, how: str) -> bool:
    """The holder working on a ticket not yet accepted accepts it by doing so."""
    if _holder_id(ticket) != agent.id or ticket.accepted_at is not None:
        return False  # (every new offer clears accepted_at: a ticket that has one was accepted)
    return _take_offer(session, ticket, agent, now, how=how)


@_written_together
def accept(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
           now: datetime) -> Outcome:
    """The agent the ticket is offered to takes it: assigned → in_progress."""
    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "accept")
    if _holder_id(ticket) != agent.id:
        raise _not_yours(session, ticket, agent, "accept")
    if not _take_offer(session, ticket, agent, now, how="accepted"):
        _pending_offer(session, ticket, agent, "accept")  # refuses with the reason: ended, or accepted already
        raise ActionRefused(f"the offer of {ticket.number} to {agent.name} ended a moment ago; "
                            f"see `paidan tickets explain {ticket.number}`")
    return _outcome(session, ticket, "accept", f"{agent.name} accepted {ticket.number}; it is in progress")


@_written_together
def take(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
         now: datetime) -> Outcome:
    """An agent takes a ticket that waits for one (from /queue), theirs at once, as if offered and
    accepted: a desk where agents pull work as well as being offered it. Not a ticket someone holds (a
    supervisor hands that on with `assign`); one in triage only by a supervisor, whose judgement it
    waits for. The agent needs its skills (a supervisor may take it regardless), and room, as ever."""
    from router import assignment

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "take")
    if ticket.state == states.RESOLVED:
        raise ActionRefused(f"ticket {ticket.number} is resolved; reopen it first (`paidan tickets reopen {ticket.number}`)")
    holder = _holder_id(ticket)
    if holder == agent.id:
        todo = f"; accept it: /accept {ticket.number}" if ticket.accepted_at is None else ""
        raise ActionRefused(f"{ticket.number} is yours already{todo}")
    if holder is not None:
        raise ActionRefused(f"{ticket.number} is held by {_name(session, holder)}; ask them, or a supervisor "
                            f"(/assign {ticket.number} {agent.name}), to hand it to you")
    if ticket.routed_at is None:
        raise ActionRefused(f"{ticket.number} is being labelled and routed right now; try again in a few seconds")
    supervisor = is_supervisor(agent)
    if ticket.queue == "triage" and not supervisor:
        raise ActionRefused(f"{ticket.number} waits for a supervisor's triage ({ticket.queue_reason}); a supervisor "
                            f"takes it or hands it on")
    missing = missing_skills(ticket, agent, config)
    if missing and not supervisor:
        raise ActionRefused(f"{agent.name} lacks the skill(s) {', '.join(missing)} that {ticket.number} needs; "
                            f"a supervisor can hand it to you (/assign {ticket.number} {agent.name})")
    was = f"the {ticket.queue} queue" if ticket.queue else "nobody"
    assignment.take_by_hand(session, ticket, agent, now, actor=actor_of(agent),
                            reason=f"{agent.name} took it from {was}" + (" over the skills check" if missing else ""))
    return _outcome(session, ticket, "take", f"{agent.name} took {ticket.number}; it is in progress",
                    {"from": was, **({"warning": f"{agent.name} lacks {', '.join(missing)}"} if missing else {})})


@_written_together
def decline(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
            now: datetime, *, reason: str = "") -> Outcome:
    """The offered agent says no: the offer ends and the ticket goes to someone else (or the queue)."""
    from router import assignment

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "decline")
    offer = _pending_offer(session, ticket, agent, "decline")
    why = reason.strip() or "no reason given"
    _event(session, ticket, agent, "declined", f"{agent.name} declined the offer: {why}", now,
           {"action": "decline", "reason": why, "assignment_id": offer.id})
    # "declined" marks the offer as a refusal, so assignment never offers this ticket to them again.
    assignment.release(session, ticket, now, why="declined", actor=actor_of(agent))
    result = assignment.assign(session, ticket, config, now, actor=actor_of(agent), exclude=frozenset({agent.id}))
    return _outcome(session, ticket, "decline", f"{agent.name} declined {ticket.number}; {_where_now(session, ticket)}",
                    {"assignment": _result_dict(result)})


# ---------------------------------------------------------------- replies and notes


@_written_together
def reply(session: Session, ticket_number: str, actor: Agent | str | int, text: str, config: RouterConfig,
          now: datetime, *, public: bool = True, attachments: Sequence[Attachment] = (),
          saved_reply: str | None = None, hold: timedelta | None = None) -> Outcome:
    """Write to the customer (public) or leave an internal note (public=False).

    A public reply is stored as an outbound message and queued in the outbox for the customer's
    channel; the first one stops the first-response clock. A note is stored and sends nothing.
    `attachments` (a screenshot, a PDF) go with it: attached to the mail, or sent in one Telegram
    message with the text as their caption. `saved_reply`: the name of the saved reply `text` was
    rendered from, kept in the audit event (router/replies.py). `hold`: the reply is sent no sooner,
    so files sent with it as an album can join it (`add_files`).
    """
    from router import sla

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "reply to")
    action = "reply to" if public else "add a note to"
    _require_holder_or_supervisor(session, ticket, agent, action)
    body = (text or "").replace("\x00", "").strip()
    if not body and not attachments:
        raise ActionRefused("the reply is empty; write some text (nothing was sent)")
    if len(attachments) > MAX_REPLY_FILES:
        raise ActionRefused(f"{len(attachments)} files is more than one reply carries ({MAX_REPLY_FILES}); send "
                            f"them in several replies (nothing was sent)")
    if (total := sum(a.size for a in attachments)) > MAX_REPLY_FILE_BYTES:
        raise ActionRefused(f"the files come to {total // 1_000_000} MB; a reply carries at most "
                            f"{MAX_REPLY_FILE_BYTES // 1_000_000} MB (nothing was sent)")
    if len(body) > MAX_REPLY_CHARS:
        raise ActionRefused(f"the reply is {len(body)} characters long; keep it under {MAX_REPLY_CHARS} "
                            f"(nothing was sent)")
    if public and ticket.state == states.RESOLVED:
        raise ActionRefused(f"ticket {ticket.number} is resolved; reopen it first "
                            f"(`paidan tickets reopen {ticket.number}`) or add an internal note")
    if public:
        _accept_if_offered(session, ticket, agent, now, how="by replying")

    address = customer_address(session, ticket, ticket.channel) if public else None
    out_channel = address[0] if address else ticket.channel
    units = len(body.encode("utf-16-le")) // 2  # as Telegram counts
    if address and out_channel == "telegram" and units > MAX_TELEGRAM_REPLY_UNITS:
        raise ActionRefused(f"the reply is {units} characters long and goes to the customer on Telegram, which takes "
                            f"{MAX_TELEGRAM_REPLY_UNITS} in one message: send it as shorter replies (nothing was sent)")
    if address and out_channel == "telegram" and attachments and units > MAX_TELEGRAM_CAPTION_UNITS:
        raise ActionRefused(f"with files, a reply on Telegram is their caption, at most {MAX_TELEGRAM_CAPTION_UNITS} "
                            f"characters (this one is {units}): send the files with a short text, then the rest "
                            f"as a reply of its own (nothing was sent)")
    token = uuid.uuid4().hex
    email_id = our_message_id(ticket.number, token) if public and out_channel == "email" else None
    in_reply_to, references, copied = _email_thread(session, ticket) if email_id else (None, [], [])
    cc = [c for c in copied if c.lower() != address[1].lower()] if email_id and address else []
    subject = _reply_subject(ticket, answering=in_reply_to is not None or OUTBOUND_FLAG not in ticket.flags) if public else ""
    external_id = f"out:{token}"
    message_id = session.execute(insert(Message.__table__).returning(Message.__table__.c.id), dict(
        ticket_id=ticket.id, customer_id=ticket.customer_id, direction="out", channel=out_channel,
        external_id=external_id, author_agent_id=agent.id, sender=f"agent:{agent.name}"[:400],
        subject=subject, text=body, raw=b"", email_message_id=email_id,
        in_reply_to=in_reply_to, references=references, public=public, flags=[], received_at=now, created_at=now,
    )).scalar_one()
    files = _store_files(session, message_id, attachments)

    data: dict = {"action": "reply" if public else "note", "message_id": message_id, "public": public}
    if saved_reply:
        data["saved_reply"] = saved_reply
    if files:
        data["attachments"] = files
    if not public:
        told = _tell_mentioned(session, ticket, agent, body, message_id, now)
        if told:
            data["mentioned"] = told
        _event(session, ticket, agent, "note", f"internal note by {agent.name}", now, data)
        asked = f"; {', '.join(told)} told" if told else ""
        return _outcome(session, ticket, "note", f"note added to {ticket.number} (the customer does not see it){asked}",
                        data)

    if address is None:
        # Nowhere to send it (e.g. a web visitor who left no email): the status page shows it.
        data["outbox_id"] = None
        sent = "stored; the customer has no address we can write to, so they will see it on the status page"
    else:
        payload = {"ticket": ticket.number, "text": body, "in_reply_to": in_reply_to, "agent": agent.name,
                   "language": ticket.language, **({"attachments": files} if files else {})}
        if email_id:
            payload |= {"message_id": email_id, "references": references, "subject": subject,
                        **({"cc": cc} if cc else {})}
        item = enqueue(session, kind="reply", channel=address[0], recipient=address[1], ticket_id=ticket.id,
                       payload=payload, dedupe_key=f"reply:{external_id}", now=now, due=now + hold if hold else None)
        data["outbox_id"] = item.id if item else None
        sent = f"queued to the customer on {address[0]}"
    if ticket.first_response_at is None:
        ticket.first_response_at = now
        sla.stop_clock(session, ticket, "first_response", now)
        data["first_response"] = True
    states.touch(ticket, now)
    _event(session, ticket, agent, "replied", f"{agent.name} replied to the customer: {sent}", now, data)
    return _outcome(session, ticket, "reply", f"reply to {ticket.number} {sent}", data)


@_written_together
def add_files(session: Session, ticket_number: str, actor: Agent | str | int, message_id: int,
              attachments: Sequence[Attachment], now: datetime) -> Outcome | None:
    """More files for the agent's reply or note `message_id`: the rest of an album whose first file went
    with it (Telegram captions only an album's first file, and sends each as an update of its own).
    They join the reply while it has not gone out, so the customer gets one mail or one Telegram
    album rather than one per file; None when it went out already (the caller sends them on their own)."""
    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    message = session.get(Message, message_id)
    if message is None or message.ticket_id != ticket.id or message.author_agent_id != agent.id:
        return None
    held = session.scalars(select(AttachmentRow.size).where(AttachmentRow.message_id == message.id)).all()
    if len(held) + len(attachments) > MAX_REPLY_FILES or \
            sum(held) + sum(a.size for a in attachments) > MAX_REPLY_FILE_BYTES:
        return None  # too many or too big for one message: they go as a reply of their own
    item = None
    if message.public:
        # Locked, and unclaimed (no try yet): a sender claiming it now waits for this, then sees the files.
        item = session.scalar(select(OutboxItem).where(OutboxItem.dedupe_key == f"reply:{message.external_id}")
                              .with_for_update())
        if item is None or item.status != "pending" or item.attempts:
            return None
    files = _store_files(session, message.id, attachments)
    if item is not None:
        item.payload = {**item.payload, "attachments": [*(item.payload.get("attachments") or []), *files]}
    data = {"action": "files_added", "message_id": message.id, "attachments": files}
    what = "reply" if message.public else "note"
    _event(session, ticket, agent, "files_added", f"{agent.name} added {len(files)} file(s) to their {what}", now, data)
    return _outcome(session, ticket, "files_added", f"{len(files)} more file(s) go with your {what} on {ticket.number}",
                    data)


def mentioned(text: str, names: Sequence[str]) -> list[str]:
    """The agents a note asks by "@name", in the order named. Longest names first, so "@Anna" is not
    "@Ann"; a Latin name must end at a word's end, a Chinese one need not ("@李雷帮忙看看"); an "@" inside
    a word (an email address) names nobody."""
    found: dict[int, str] = {}
    taken: set[int] = set()
    for name in sorted(names, key=len, reverse=True):
        for at in (m.start() for m in re.finditer("@" + re.escape(name), text)):
            before, after = text[at - 1:at] if at else "", text[at + 1 + len(name):at + 2 + len(name)]
            if at in taken or _latin_word_char(before) or (name[-1:].isascii() and _latin_word_char(after)):
                continue  # inside an email address, or a longer Latin name
            found.setdefault(at, name)
            taken.update(range(at, at + 1 + len(name)))
    return list(dict.fromkeys(found[at] for at in sorted(found)))


def _latin_word_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _tell_mentioned(session: Session, ticket: Ticket, author: Agent, text: str, message_id: int,
                    now: datetime) -> list[str]:
    """A note that asks a colleague ("@王芳 这个退款你经手过吗？") reaches them in Telegram."""
    if "@" not in text:
        return []
    agents = {a.name: a for a in session.scalars(select(Agent))}
    names = [name for name in mentioned(text, list(agents)) if name != author.name]
    for name in names:
        notify_agent(session, agents[name], kind="mention", ticket=ticket, now=now,
                     text=f"{author.name}: {text[:MENTION_QUOTE]}", dedupe_key=f"mention:{message_id}:{agents[name].id}")
    return names


def _store_files(session: Session, message_id: int, attachments: Sequence[Attachment]) -> list[dict]:
    """The reply's files as attachment rows; what the outbox item names of each (the sender reads the
    bytes from the row when it sends, so the outbox holds no copy)."""
    if not attachments:
        return []
    rows = attachment_rows(message_id, attachments)
    ids = session.execute(insert(AttachmentRow.__table__).returning(AttachmentRow.__table__.c.id,
                                                                     sort_by_parameter_order=True), rows).scalars().all()
    return [{"id": i, "filename": r["filename"], "content_type": r["content_type"], "size": r["size"]}
            for i, r in zip(ids, rows)]


def _email_thread(session: Session, ticket: Ticket) -> tuple[str | None, list[str], list[str]]:
    """In-Reply-To (the customer's last email) and References for an email reply, so mail clients
    thread it and the customer's answer comes back to this ticket; and whom that mail copied, whom
    the reply copies too ("reply all", as the customer expects of a mail)."""
    rows = session.execute(
        select(Message.email_message_id, Message.references, Message.cc)
        .where(Message.ticket_id == ticket.id, Message.direction == "in", Message.email_message_id.is_not(None))
        .order_by(Message.id.desc()).limit(1)
    ).first()
    if rows is None:
        return None, [], []
    references = [r for r in (rows.references or []) if r != rows.email_message_id][-20:]
    return rows.email_message_id, [*references, rows.email_message_id], list(rows.cc or [])


def _reply_subject(ticket: Ticket, *, answering: bool = True) -> str:
    """The ticket's subject with its number, which threads the customer's answer back; "Re:" unless
    we wrote first (router/outreach.py) and the customer has not mailed us on it yet."""
    subject = (ticket.subject or "").strip()
    tag = f"[{ticket.number}]"
    if tag not in subject:
        subject = f"{subject} {tag}".strip()
    return (subject if subject.lower().startswith("re:") or not answering else f"Re: {subject}")[:500]


# ---------------------------------------------------------------- state changes


FOLLOW_UP_RANGE = (timedelta(minutes=5), timedelta(days=90))


@_written_together
def follow_up(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
              now: datetime, *, after: timedelta, note: str = "") -> Outcome:
    """Remind the acting agent of the ticket `after` from now ("the customer calls back at three"):
    a notice in the outbox that is not due before then, so it needs no timer of its own and survives a
    restart. The holder or a supervisor; the ticket changes in nothing but its audit trail."""
    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    if ticket.state == states.MERGED:
        _refuse_if_finished(session, ticket, "set a reminder on")
    _require_holder_or_supervisor(session, ticket, agent, "set a reminder on")
    shortest, longest = FOLLOW_UP_RANGE
    if not shortest <= after <= longest:
        raise ActionRefused(f"a reminder is set from {shortest.seconds // 60} minutes to {longest.days} days ahead, "
                            f"e.g. /remind {ticket.number} 2h or 3d (nothing was set)")
    due, why = now + after, note.strip()
    notify_agent(session, agent, kind="follow_up", ticket=ticket, now=now, due=due,
                 dedupe_key=f"follow_up:{ticket.id}:{agent.id}:{due.isoformat()}",
                 text=f"{ticket.number}: {why or 'the follow-up you asked for'} (set {now:%Y-%m-%d %H:%M} UTC)")
    _event(session, ticket, agent, "follow_up", f"{agent.name} will be reminded at {due:%Y-%m-%d %H:%M} UTC"
           + (f": {why}" if why else ""), now, {"due": _iso(due), "note": why})
    return _outcome(session, ticket, "follow_up", f"you will be reminded of {ticket.number} at {due:%Y-%m-%d %H:%M} UTC",
                    {"due": _iso(due)})


@_written_together
def wait_for_customer(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
                      now: datetime, *, note: str = "") -> Outcome:
    """The ticket waits on the customer: the SLA clocks pause until they write again."""
    from router import sla

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "put on hold")
    _require_holder_or_supervisor(session, ticket, agent, "put on hold")
    if ticket.state == states.AWAITING_CUSTOMER:
        raise ActionRefused(f"ticket {ticket.number} already waits for the customer; nothing to do")
    _accept_if_offered(session, ticket, agent, now, how="by setting it to wait for the customer")
    why = note.strip()
    _move(session, ticket, agent, states.AWAITING_CUSTOMER,
          f"{agent.name}: waiting for the customer" + (f" ({why})" if why else ""), now,
          {"action": "wait", "note": why})
    sla.pause_clocks(session, ticket, now)
    return _outcome(session, ticket, "wait", f"{ticket.number} waits for the customer; its SLA clocks are paused")


@_written_together
def resolve(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
            now: datetime, *, note: str = "") -> Outcome:
    """Done: stop the clocks, free the agent's capacity and give it to the queue at once."""
    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "resolve")
    _require_holder_or_supervisor(session, ticket, agent, "resolve")
    if ticket.state == states.RESOLVED:
        raise ActionRefused(f"ticket {ticket.number} is already resolved; nothing to do")
    _accept_if_offered(session, ticket, agent, now, how="by resolving it")
    why = note.strip()
    _move(session, ticket, agent, states.RESOLVED, f"resolved by {agent.name}" + (f": {why}" if why else ""), now,
          {"action": "resolve", "note": why, "first_response_at": _iso(ticket.first_response_at)})
    drained, survey_id = _after_resolving(session, ticket, config, now, actor=actor_of(agent), agent_id=agent.id)
    return _outcome(session, ticket, "resolve", f"{ticket.number} resolved"
                    + (f"; {drained} queued ticket(s) assigned with the freed capacity" if drained else "")
                    + ("; the customer is asked how we did" if survey_id else ""),
                    {"drained": drained, "survey_id": survey_id})


def _after_resolving(session: Session, ticket: Ticket, config: RouterConfig, now: datetime, *, actor: str,
                     agent_id: int | None) -> tuple[int, int | None]:
    """What every resolve does after the state change: the clocks stop, the agent's place is freed and
    given to the queue, and the customer is asked how we did. Returns (tickets drained, survey id)."""
    from router import assignment, sla, surveys

    # Both clocks: a ticket closed without a reply needs no first response any more (and
    # first_response_at stays empty, so reports can tell it was never answered).
    sla.stop_clocks(session, ticket, ("resolution",) if ticket.first_response_at else ("resolution", "first_response"),
                    now)
    ticket.queue = ticket.queue_reason = None
    # Released as "resolved", the ticket keeps its agent as the record of who worked it.
    freed = assignment.release(session, ticket, now, why="resolved", actor=actor)
    drained = assignment.drain_queue(session, config, now, freed_by=freed) if freed is not None else 0
    # Asked once per ticket, in this transaction: resolved again after a reopen, it is not asked again.
    return drained, surveys.create_survey(session, ticket, agent_id=agent_id, config=config, now=now)


@_written_together
def customer_resolves(session: Session, ticket_number: str, identity: tuple[str, str], config: RouterConfig,
                      now: datetime) -> str:
    """The customer says it is solved (the ✅ under our reply in Telegram): resolved as an agent's
    resolve would, the agent told and their place freed; writing again reopens it as ever. Only the
    ticket's own customer (any identity of theirs, merges followed). Returns what happened:
    "resolved", "already" (resolved or closed before) or "not_theirs" (no such ticket of theirs)."""
    from router.queries import same_customer

    try:
        ticket = _ticket(session, ticket_number)
    except NotFound:
        return "not_theirs"
    while ticket.state == states.MERGED and ticket.merged_into_id:
        ticket = session.get(Ticket, ticket.merged_into_id)  # a button under a reply to a ticket merged since
    kind, value = identity
    owner = session.scalar(select(IdentityRow.customer_id).where(IdentityRow.kind == kind, IdentityRow.value == value))
    if owner is None or not same_customer(session, owner, ticket.customer_id):
        return "not_theirs"
    if ticket.state in (states.RESOLVED, states.CLOSED):
        return "already"
    holder = _holder_id(ticket)
    event = states.transition(session, ticket, states.RESOLVED, actor="customer", at=now,
                              reason="the customer marked it solved")
    event.data = {"action": "customer_resolved", "identity": f"{kind}:{value}"}
    _after_resolving(session, ticket, config, now, actor="customer", agent_id=holder)
    if holder is not None:
        notify_agent(session, session.get(Agent, holder), kind="customer_resolved", ticket=ticket, now=now,
                     text=f"{ticket.number}: the customer marked it solved",
                     dedupe_key=f"customer_resolved:{ticket.id}:{now.isoformat()}")
    return "resolved"


@_written_together
def reopen(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
           now: datetime, *, reason: str = "") -> Outcome:
    """A resolved or closed ticket is not done after all: clocks restart and it is assigned again
    (the customer's previous agent first, as assignment always prefers)."""
    from router import assignment, sla

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "reopen")
    last = _last_holder(session, ticket)
    if not is_supervisor(agent) and last != agent.id:
        who = _name(session, last)
        raise ActionRefused(f"only a supervisor or the ticket's last holder ({who or 'nobody'}) can reopen "
                            f"{ticket.number}")
    why = reason.strip()
    _move(session, ticket, agent, states.REOPENED, f"reopened by {agent.name}" + (f": {why}" if why else ""), now,
          {"action": "reopen", "reason": why})
    sla.restart_clocks(session, ticket, config, now)
    result = assignment.assign(session, ticket, config, now, actor=actor_of(agent))
    return _outcome(session, ticket, "reopen", f"{ticket.number} reopened; {_where_now(session, ticket)}",
                    {"assignment": _result_dict(result)})


def _last_holder(session: Session, ticket: Ticket) -> int | None:
    """The agent who last worked the ticket: the last one to accept it, else the last one offered it."""
    rows = session.execute(
        select(Assignment.agent_id, Assignment.accepted_at).where(Assignment.ticket_id == ticket.id)
        .order_by(Assignment.id.desc())
    ).all()
    accepted = next((r.agent_id for r in rows if r.accepted_at is not None), None)
    return accepted if accepted is not None else (rows[0].agent_id if rows else None)


# ---------------------------------------------------------------- reassign and relabel


def missing_skills(ticket: Ticket, agent: Agent, config: RouterConfig) -> list[str]:
    """The skills `agent` lacks for this ticket, by the same rules automatic assignment uses."""
    from router import assignment

    facts = assignment.TicketFacts(ticket.number, ticket.type, ticket.category, ticket.priority, ticket.language)
    need = assignment.needs(facts, config)
    skills = set(agent.skills or [])
    missing = [need.category_skill] if need.category_skill and need.category_skill not in skills else []
    # An agent who lists no language skill counts as speaking both (as in assignment).
    if need.language and need.language not in skills and skills & assignment.LANGUAGES:
        missing.append(need.language)
    return missing


@_written_together
def reassign(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
             now: datetime, *, to: Agent | str | int | None = None, force: bool = False, reason: str = "") -> Outcome:
    """Hand the ticket to a named agent, or to the best other agent (or the queue).

    A named agent must have the skills (a supervisor may `force` past that) and spare capacity
    (never forced: nobody goes over capacity).
    """
    from router import assignment

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "reassign")
    if ticket.state == states.RESOLVED:
        raise ActionRefused(f"ticket {ticket.number} is resolved; reopen it first "
                            f"(`paidan tickets reopen {ticket.number}`)")
    _require_holder_or_supervisor(session, ticket, agent, "reassign")
    if force and not is_supervisor(agent):
        raise ActionRefused(f"only a supervisor can force an assignment; {agent.name} is an {agent.role}")
    target = resolve_agent(session, to) if to is not None else None
    holder = _holder_id(ticket)
    if target is not None:
        if target.id == holder:
            raise ActionRefused(f"{target.name} already holds {ticket.number}; nothing to do")
        _check_target(ticket, target, config, force=force)

    why = reason.strip()
    data: dict = {"action": "reassign", "from_agent_id": holder, "to_agent_id": target.id if target else None,
                  "forced": force, "reason": why}
    if target is not None and not target.online:
        data["warning"] = f"{target.name} is offline; the offer expires after {config.accept_timeout} if not accepted"
    wanted = f"to {target.name}" if target else "to the best available agent"
    _event(session, ticket, agent, "reassigned",
           f"{agent.name} reassigned the ticket {wanted}" + (f": {why}" if why else ""), now, data)
    assignment.release(session, ticket, now, why="reassigned", actor=actor_of(agent))
    if target is not None:
        chosen = f"chosen by {agent.name}" + (" over the skills check" if force else "") + (f": {why}" if why else "")
        result = assignment.offer_to(session, ticket, target.id, config, now, actor=actor_of(agent), reason=chosen)
    else:
        exclude = frozenset({holder}) if holder is not None else frozenset()
        result = assignment.assign(session, ticket, config, now, actor=actor_of(agent), exclude=exclude)
    extra = {"warning": data["warning"]} if "warning" in data else {}
    return _outcome(session, ticket, "reassign", f"{ticket.number}: {_where_now(session, ticket)}",
                    {"assignment": _result_dict(result), **extra})


def _check_target(ticket: Ticket, target: Agent, config: RouterConfig, *, force: bool) -> None:
    missing = missing_skills(ticket, target, config)
    if missing and not force:
        raise ActionRefused(
            f"{target.name} lacks the skill(s) {', '.join(missing)} that {ticket.number} needs; choose another agent, "
            f"add the skill (`paidan agents set {target.name} --skills ...`), or, as a supervisor, use --force"
        )
    if (target.load or 0) >= target.capacity:
        raise ActionRefused(
            f"{target.name} is at capacity ({target.load}/{target.capacity} open tickets); choose another agent or "
            f"raise their capacity (`paidan agents set {target.name} --capacity N`)"
        )


def label_sets(config: RouterConfig) -> dict[str, tuple[str, ...]]:
    return getattr(config, "labels", None) or DEFAULT_LABELS


def relabel(session: Session, ticket_number: str, actor: Agent | str | int, head: str, new_label: str,
            config: RouterConfig, now: datetime) -> Outcome:
    """Correct one label of the ticket; stored as a LabelCorrection the classifier retrains from."""
    from router import sla
    from router.routing import opening_text

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    if ticket.state == states.MERGED:
        _refuse_if_finished(session, ticket, "relabel")
    _require_holder_or_supervisor(session, ticket, agent, "relabel")
    sets = label_sets(config)
    head_key = (head or "").strip().lower()
    if head_key not in sets:
        raise ActionRefused(f"there is no label head {head!r}; choose one of {', '.join(sets)}")
    label = _known_label(new_label, sets[head_key])
    if label is None:
        raise ActionRefused(f"{new_label!r} is not a {head_key} label; choose one of {', '.join(sets[head_key])}")
    old = getattr(ticket, head_key)
    if old == label:
        raise ActionRefused(f"{ticket.number} is already labelled {head_key}={label}; nothing changed")

    # The text the classifier read when it labelled the new ticket, so retraining learns from the very
    # input it got wrong.
    first, text = opening_text(session, ticket)
    correction = LabelCorrection(
        message_id=first.id if first else None, text=text,
        head=head_key, old_label=old, new_label=label, corrected_by=actor_of(agent), corrected_at=now,
    )
    session.add(correction)
    setattr(ticket, head_key, label)
    states.touch(ticket, now)
    session.flush()
    data = {"action": "relabel", "head": head_key, "from": old, "to": label, "correction_id": correction.id}
    if head_key == "category" and _holder_id(ticket) is not None:
        missing = missing_skills(ticket, session.get(Agent, _holder_id(ticket)), config)
        if missing:
            data["holder_lacks"] = missing
    _event(session, ticket, agent, "relabelled", f"{agent.name} corrected {head_key}: {old or '-'} → {label}", now, data)
    if head_key == "priority" and ticket.state in states.OPEN_STATES:
        sla.reprioritise(session, ticket, config, now)
    summary = f"{ticket.number}: {head_key} {old or '-'} → {label} (stored as a label correction)"
    if data.get("holder_lacks"):
        summary += f"; the holder lacks {', '.join(data['holder_lacks'])}, consider reassigning"
    return _outcome(session, ticket, "relabel", summary, data)


# ---------------------------------------------------------------- files

FILES_PER_REQUEST = 10  # the newest; a chat flooded with fifty documents helps nobody


@_written_together
def send_files(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
               now: datetime) -> Outcome:
    """The customer's files on the ticket (screenshots, logs, invoices, from any channel) to the
    agent's own Telegram chat, newest first, so an agent working from the console sees what the
    customer sent. The holder or a supervisor, as for replying."""
    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    if ticket.state == states.MERGED:
        _refuse_if_finished(session, ticket, "see the files of")
    _require_holder_or_supervisor(session, ticket, agent, "see the files of")
    if not agent.telegram_id:
        raise ActionRefused(f"{agent.name} has no Telegram id to send the files to: "
                            f"`paidan agents set {agent.name} --telegram-id ID`")
    files = session.execute(
        select(AttachmentRow.id, AttachmentRow.filename, AttachmentRow.size, Message.received_at)
        .join(Message, Message.id == AttachmentRow.message_id)
        .where(Message.ticket_id == ticket.id, Message.direction == "in", AttachmentRow.filename != ERASED)
        .order_by(AttachmentRow.id.desc())
    ).all()
    if not files:
        raise ActionRefused(f"the customer sent no files on {ticket.number}")
    chosen = files[:FILES_PER_REQUEST]
    enqueue_many(session, [
        outbox.item(kind="file", channel=STAFF_CHANNEL, recipient=agent_address(agent), ticket_id=ticket.id, now=now,
                    payload={"ticket": ticket.number, "attachment_id": f.id, "filename": f.filename, "size": f.size,
                             "received_at": _iso(f.received_at)})
        for f in reversed(chosen)  # oldest of them first, so the chat reads in order
    ])
    summary = f"{len(chosen)} file(s) of {ticket.number} on their way: " + ", ".join(f.filename for f in chosen)
    if len(files) > len(chosen):
        summary += f"; {len(files) - len(chosen)} older one(s) not sent (`paidan tickets show {ticket.number}`)"
    return _outcome(session, ticket, "files", summary, {"files": [f.id for f in chosen], "total": len(files)})


# ---------------------------------------------------------------- availability


@dataclass(frozen=True, slots=True)
class Availability:
    """What going online or offline did, for the edge to show to the agent."""

    agent: str
    online: bool
    handed_on: tuple[str, ...] = ()  # given to others (or the queue): offers not yet accepted, or all with hand_on
    kept: tuple[str, ...] = ()  # accepted tickets the agent still holds
    assigned: int = 0  # queued tickets assigned once the agent came online (to anyone with room)

    @property
    def summary(self) -> str:
        if self.online:
            return f"{self.agent} is online" + (f"; assigned {self.assigned} waiting ticket(s) from the queue"
                                                if self.assigned else "; no ticket is waiting")
        said = f"{self.agent} is offline: no new tickets are offered"
        if self.handed_on:
            said += f"; handed on to others: {', '.join(self.handed_on)}"
        if self.kept:
            said += (f"; still yours: {', '.join(self.kept)} (hand them on with /assign or "
                     f"`paidan tickets assign`)")
        return said


@_written_together
def set_availability(session: Session, actor: Agent | str | int, online: bool, config: RouterConfig,
                     now: datetime, *, agent: Agent | str | int | None = None, hand_on: bool = False) -> Availability:
    """An agent starts or ends their working time (`agent`, default the actor; another's only by a
    supervisor). Going offline hands on at once the offers not yet accepted (rather than letting each
    wait out the accept timeout while the customer waits too); the tickets they accepted stay theirs,
    and they are told which, unless `hand_on` (someone gone home ill: a supervisor hands on all of
    it). Coming online gives the queue to whoever has room, them included."""
    from router import assignment

    acting = resolve_agent(session, actor)
    who = resolve_agent(session, agent) if agent is not None else acting
    if who.id != acting.id and not is_supervisor(acting):
        raise ActionRefused(f"only a supervisor can set another agent online or offline; {acting.name} is an "
                            f"{acting.role}")
    who.online = online
    session.flush()  # assignment reads who is online in SQL
    if online:
        return Availability(who.name, True, assigned=assignment.drain_queue(session, config, now))
    held = select(Ticket, Assignment.accepted_at).join(Assignment, Assignment.ticket_id == Ticket.id).where(
        Assignment.agent_id == who.id, Assignment.ended_at.is_(None), Ticket.state.in_(sorted(states.OPEN_STATES)))
    if not hand_on:
        held = held.where(Assignment.accepted_at.is_(None))
    rows = session.execute(held.order_by(Ticket.id).with_for_update()).all()
    by = "" if who.id == acting.id else f" (set offline by {acting.name})"
    for ticket, accepted_at in rows:
        what = f"{by}; handed on with their other tickets" if accepted_at else f" before accepting it{by}"
        _event(session, ticket, acting, "agent_offline", f"{who.name} went offline{what}", now)
        assignment.release(session, ticket, now, why="agent offline", actor=actor_of(acting))
    leaving = [ticket for ticket, _ in rows]
    if leaving:
        session.flush()  # the releases, before assignment looks for someone with room
        assignment.assign_many(session, leaving, config, now)
    kept = session.scalars(
        select(Ticket.number).where(Ticket.assigned_agent_id == who.id, Ticket.queue.is_(None),
                                    Ticket.state.in_(sorted(states.OPEN_STATES)))
        .order_by(Ticket.id)
    ).all()
    return Availability(who.name, False, tuple(t.number for t in leaving), tuple(kept))


# ---------------------------------------------------------------- merge


@_written_together
def merge(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
          now: datetime, *, into: str, reason: str = "") -> Outcome:
    """Ticket `ticket_number` and ticket `into` are one request (the customer wrote by mail and by
    Telegram before we knew it was them, or twice by mistake): its messages move to `into`, which
    carries on, and it ends as merged, leading on to `into` (a reply to its mail or its number
    continues `into`). Only one customer's tickets are merged: if two customers are one person,
    merge the customers first. `into` keeps the more urgent priority of the two, so merging never
    slows the SLA of what the customer is waiting for.
    """
    from router import assignment, sla
    from router.queries import same_customer

    agent = resolve_agent(session, actor)
    source = _ticket(session, ticket_number)
    target = _ticket(session, into)
    if source.id == target.id:
        raise ActionRefused(f"{source.number} cannot be merged into itself; name the ticket it repeats")
    _refuse_if_finished(session, source, "merge")
    _refuse_if_finished(session, target, "merge into")
    for ticket in (source, target):
        if ticket.state == states.RESOLVED:
            raise ActionRefused(f"ticket {ticket.number} is resolved; reopen it first (`paidan tickets reopen "
                                f"{ticket.number}`), or leave it be if the other ticket carries on alone")
    if not same_customer(session, source.customer_id, target.customer_id):
        raise ActionRefused(f"{source.number} and {target.number} belong to different customers (#{source.customer_id} "
                            f"and #{target.customer_id}); if they are one person, merge the customers first "
                            f"(`paidan customers merge`), then the tickets")
    if not is_supervisor(agent) and agent.id not in (_holder_id(source), _holder_id(target)):
        raise ActionRefused(f"only a supervisor or the holder of {source.number} or {target.number} can merge them")

    moved = session.execute(
        update(Message).where(Message.ticket_id == source.id).values(ticket_id=target.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    why = reason.strip()
    said = f": {why}" if why else ""
    source.merged_into_id = target.id
    source.queue = source.queue_reason = None
    _move(session, source, agent, states.MERGED, f"merged into {target.number} by {agent.name}{said}", now,
          {"action": "merge", "into": target.number, "messages_moved": moved, "reason": why})
    sla.stop_clocks(session, source, ("first_response", "resolution"), now)
    freed = assignment.release(session, source, now, why="merged", actor=actor_of(agent))

    raised_from = None  # the priority `into` had, when the merged ticket's was more urgent
    if _more_urgent(source.priority, target.priority):
        raised_from, target.priority = target.priority or "-", source.priority
        if target.state in states.OPEN_STATES:
            sla.reprioritise(session, target, config, now)
    states.touch(target, now)
    raised = f"; priority {raised_from} → {target.priority}" if raised_from else ""
    _event(session, target, agent, "merged_in", f"{source.number} merged in by {agent.name} ({moved} message(s)){raised}{said}",
           now, {"from": source.number, "messages_moved": moved, "priority_from": raised_from, "reason": why})
    holder = _holder_id(target)
    if holder is not None and holder != agent.id:
        notify_agent(session, session.get(Agent, holder), kind="customer_message", ticket=target, now=now,
                     text=f"{target.number}: {source.number} was merged into it by {agent.name}, with {moved} "
                          f"message(s) from the customer")
    drained = assignment.drain_queue(session, config, now, freed_by=freed) if freed is not None else 0
    return _outcome(session, target, "merge", f"{source.number} merged into {target.number}: {moved} message(s) moved{raised}",
                    {"merged": source.number, "messages_moved": moved, "priority_from": raised_from, "drained": drained})


SPLIT_AT_MOST = 20  # customer messages one split moves: a second matter is a message or a few


@_written_together
def split(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
          now: datetime, *, last: int = 1, reason: str = "") -> Outcome:
    """The customer's latest `last` messages on the ticket are about something else (threaded here by
    topic, or a second matter raised in the same conversation): they move, with their files, to a new
    ticket of the same customer, which the router labels, acknowledges with its own number and
    assigns like any new one. What the customer wrote before stays. Merging the new ticket back
    (`merge`) undoes it. The holder or a supervisor."""
    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    _refuse_if_finished(session, ticket, "split")
    _require_holder_or_supervisor(session, ticket, agent, "split")
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= SPLIT_AT_MOST:
        raise InvalidInput("last", f"split moves the customer's latest 1 to {SPLIT_AT_MOST} messages, not {last!r}")
    written = session.scalars(select(Message).where(Message.ticket_id == ticket.id, Message.direction == "in")
                              .order_by(Message.id)).all()
    if len(written) <= last:
        raise ActionRefused(f"{ticket.number} has {len(written)} message(s) from the customer; moving {last} would "
                            f"leave it none: correct its labels (/relabel) or hand it on (/assign) instead")
    moving = written[-last:]
    first = moving[0]
    number = new_ticket_number(session, now, config.calendar.timezone)
    title = " ".join((first.subject or next(iter((first.text or "").splitlines()), "")).split())
    # Created when the customer wrote it: their wait, and the SLA, count from then, not from the split.
    new = Ticket(number=number, customer_id=ticket.customer_id, channel=first.channel, subject=title[:500],
                 state=states.NEW, language=ticket.language, flags=[], created_at=first.received_at, updated_at=now)
    session.add(new)
    session.flush()
    for message in moving:
        # The router reads them again for the new ticket: labels, clocks, acknowledgement, an agent.
        message.ticket_id, message.model_version = new.id, None
    why = reason.strip()
    said = f": {why}" if why else ""
    data = {"action": "split", "into": number, "message_ids": [m.id for m in moving], "reason": why}
    states.touch(ticket, now)
    _event(session, ticket, agent, "split", f"{agent.name} moved the customer's latest {last} message(s) to "
                                            f"{number}{said}", now, data)
    _event(session, new, agent, "created", f"split off {ticket.number} by {agent.name}{said}", now,
           {"how": "split", "from": ticket.number, "message_ids": data["message_ids"]})
    return _outcome(session, ticket, "split", f"{last} message(s) moved from {ticket.number} to the new ticket "
                                              f"{number}, which the router labels, acknowledges and assigns",
                    {"into": number, "messages_moved": last, "reason": why})


# ---------------------------------------------------------------- spam


@_written_together
def mark_spam(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
              now: datetime, *, reason: str = "") -> Outcome:
    """The ticket is spam or abuse: its sender is blocked (router/blocking.py: what they send later is
    kept, closed, and never routed or answered), and the ticket closes, with every other open ticket of
    theirs that nobody has answered yet; agents get their capacity back. `not_spam` undoes all of it.
    """
    from router import blocking
    from router.identity import root_customer

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    if ticket.state == states.MERGED:
        _refuse_if_finished(session, ticket, "mark as spam")
    if blocking.SPAM_FLAG in ticket.flags:
        raise ActionRefused(f"ticket {ticket.number} is already marked as spam; /notspam {ticket.number} undoes it")
    if _holder_id(ticket) not in (None, agent.id) and not is_supervisor(agent):
        raise _not_yours(session, ticket, agent, "mark as spam")
    why = reason.strip()
    customer = session.get(Customer, root_customer(session, ticket.customer_id))
    newly_blocked = blocking.block(session, customer, by=agent.name, reason=why or f"{ticket.number} marked as spam",
                                   now=now)
    closed = blocking.close_unanswered(session, customer, first=ticket, actor=actor_of(agent), config=config, now=now,
                                       reason=f"marked by {agent.name}" + (f": {why}" if why else ""))
    others = [t.number for t in closed[1:]]
    also = f"; also closed {', '.join(others)} (nobody had answered them)" if others else ""
    blocked = (f"customer #{customer.id} blocked: what they send now is kept closed and never answered"
               if newly_blocked else f"customer #{customer.id} was already blocked")
    return _outcome(session, ticket, "spam", f"{ticket.number} closed as spam; {blocked}{also} "
                    f"(/notspam {ticket.number} undoes it)",
                    {"customer_id": customer.id, "closed": [t.number for t in closed], "newly_blocked": newly_blocked})


@_written_together
def not_spam(session: Session, ticket_number: str, actor: Agent | str | int, config: RouterConfig,
             now: datetime, *, reason: str = "") -> Outcome:
    """Marked as spam by mistake: the customer is unblocked, and everything kept while they were
    blocked goes back to the router (`blocking.release_kept`)."""
    from router import blocking
    from router.identity import root_customer

    agent = resolve_agent(session, actor)
    ticket = _ticket(session, ticket_number)
    customer = session.get(Customer, root_customer(session, ticket.customer_id))
    if blocking.SPAM_FLAG not in ticket.flags and customer.blocked_at is None:
        raise ActionRefused(f"ticket {ticket.number} is not marked as spam and its customer is not blocked; "
                            f"nothing to undo")
    marked_by = session.scalar(
        select(TicketEvent.actor).where(TicketEvent.ticket_id == ticket.id, TicketEvent.kind == "transition",
                                        TicketEvent.to_state == states.CLOSED)
        .order_by(TicketEvent.id.desc()).limit(1))
    if not is_supervisor(agent) and marked_by != actor_of(agent):
        raise ActionRefused(f"only a supervisor or the agent who marked {ticket.number} as spam can undo it")
    why = reason.strip()
    blocking.unblock(session, customer)
    reopened, rerouted = blocking.release_kept(session, customer, actor=actor_of(agent), now=now,
                                               reason=f"said {agent.name}" + (f": {why}" if why else ""))
    return _outcome(session, ticket, "not_spam", blocking.released(customer.id, reopened, rerouted),
                    {"customer_id": customer.id, "reopened": reopened, "rerouted": rerouted})


def _more_urgent(priority: str | None, than: str | None) -> bool:
    return priority in PRIORITIES and (than not in PRIORITIES or PRIORITIES.index(priority) < PRIORITIES.index(than))


def _known_label(value: str, allowed: tuple[str, ...]) -> str | None:
    wanted = (value or "").strip().lower()
    return next((label for label in allowed if label.lower() == wanted), None)


# ---------------------------------------------------------------- the queue

# Orders tickets most urgent first (P0 … P3, then unclassified), for every listing of them.
URGENCY = case({p: i for i, p in enumerate(PRIORITIES)}, value=Ticket.priority, else_=len(PRIORITIES))


def waiting(session: Session, now: datetime, *, queue: str | None = None, priority: str | None = None,
            category: str | None = None, limit: int = 100) -> list[dict]:
    """Unassigned tickets waiting for an agent or a supervisor: most urgent, then oldest, first."""
    if queue is not None and queue not in QUEUES:
        raise ActionRefused(f"there is no queue {queue!r}; choose {' or '.join(QUEUES)}")
    query = (
        select(Ticket)
        .where(Ticket.queue.in_([queue] if queue else QUEUES), Ticket.state.in_(states.OPEN_STATES))
        .order_by(URGENCY, Ticket.created_at, Ticket.id)
        .limit(limit)
    )
    if priority:
        query = query.where(Ticket.priority == priority.strip().upper())
    if category:
        query = query.where(Ticket.category == category.strip().lower())
    return [
        {"number": t.number, "queue": t.queue, "priority": t.priority, "type": t.type, "category": t.category,
         "language": t.language, "channel": t.channel, "state": t.state, "subject": t.subject,
         "created_at": t.created_at.isoformat(), "age_seconds": max(0, int((now - t.created_at).total_seconds())),
         "reason": t.queue_reason or ""}
        for t in session.scalars(query)
    ]


# ---------------------------------------------------------------- helpers


def _where_now(session: Session, ticket: Ticket) -> str:
    if ticket.queue:
        return f"waiting in the {ticket.queue} queue ({ticket.queue_reason or 'no reason recorded'})"
    holder = _name(session, _holder_id(ticket))
    return f"offered to {holder}" if holder else f"now {ticket.state}"


def _result_dict(result) -> dict:
    """An AssignmentResult as plain data, whatever its exact shape."""
    if result is None:
        return {}
    if hasattr(result, "as_dict"):
        return result.as_dict()
    fields = getattr(result, "__dataclass_fields__", None) or getattr(result, "__slots__", ())
    out = {}
    for name in fields:
        value = getattr(result, name, None)
        out[name] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
