"""Satisfaction surveys: asked once when a ticket is resolved, answered on the web page or in Telegram.

`create_survey` runs in the transaction that resolves the ticket and queues the question in the
outbox with it; `record_answer` is the rule for one answer (pure: it touches only the row given);
`answer` applies it to a stored survey and tells the supervisors of a low rating. Nothing here
commits: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import ActionRefused, InvalidInput, NotFound, SurveyClosed
from models.message import MACHINE_FLAGS, Identity, SurveyView
from models.tables import Agent, Identity as IdentityRow, Message, Survey, Ticket, TicketEvent
from router import blocking, states
from router.config import RouterConfig
from router.dialects import PerDialect
from router.outbox import customer_address, enqueue, notify_supervisors
from router.queries import same_customer  # follows customer merges either way

ANSWER_WINDOW = timedelta(days=14)  # the answer can be given, and changed, this long after the question
RATINGS = (1, 2, 3, 4, 5)
LOW_RATINGS = frozenset({1, 2})  # the supervisors hear of these
MAX_COMMENT_CHARS = 4000
# Where a survey can go: the channels whose senders build one. A customer reachable only by phone
# (a web visitor who left no email) is not asked.
SURVEY_CHANNELS = frozenset({"email", "telegram"})

_SURVEY = Survey.__table__
# One survey per ticket, even when two processes resolve it at once: the loser inserts nothing.
_INSERT_SURVEY = PerDialect(lambda insert: insert(_SURVEY).on_conflict_do_nothing(index_elements=["ticket_id"])
                            .returning(_SURVEY.c.id))


@dataclass(frozen=True, slots=True)
class Answer:
    """A survey's answer after `record_answer`, and whether this call changed it."""

    rating: int | None
    comment: str
    changed: bool

    @property
    def low(self) -> bool:
        return self.rating in LOW_RATINGS


# ---------------------------------------------------------------- asking


def create_survey(session: Session, ticket: Ticket, *, agent_id: int | None, config: RouterConfig,
                  now: datetime) -> int | None:
    """In the transaction that resolves `ticket`: the Survey row and the outbox item that asks the
    customer, on the channel a reply would take. None (and nothing written) when surveys are off,
    the ticket was merged or written by a machine, the customer never wrote on it, it was asked
    already (a reopened ticket resolved again), or the customer cannot be reached by email or
    Telegram."""
    if not config.surveys or ticket.state == states.MERGED or ticket.merged_into_id is not None:
        return None
    if not MACHINE_FLAGS.isdisjoint(ticket.flags or ()) or blocking.SPAM_FLAG in (ticket.flags or ()):
        return None
    if blocking.blocked_among(session, [ticket.customer_id]):  # nothing goes back to a blocked sender
        return None
    if session.scalar(select(_SURVEY.c.id).where(_SURVEY.c.ticket_id == ticket.id)) is not None:
        return None
    if not _customer_wrote(session, ticket):
        return None
    address = customer_address(session, ticket, ticket.channel)
    if address is None or address[0] not in SURVEY_CHANNELS:
        return None
    channel, recipient = address
    survey_id = session.execute(_INSERT_SURVEY.for_session(session), {
        "ticket_id": ticket.id, "customer_id": ticket.customer_id, "channel": channel, "agent_id": agent_id,
        "sent_at": now, "rating": None, "comment": "", "answered_at": None,
    }).scalar()
    if survey_id is None:
        return None
    enqueue(session, kind="survey", channel=channel, recipient=recipient, ticket_id=ticket.id,
            payload={"ticket": ticket.number, "survey_id": survey_id, "language": ticket.language,
                     "subject": ticket.subject, "closes_at": (now + ANSWER_WINDOW).isoformat()},
            dedupe_key=f"survey:{survey_id}", now=now)
    session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="system", kind="survey_sent",
                            reason=f"satisfaction survey queued to the customer on {channel}",
                            data={"survey_id": survey_id, "channel": channel}))
    return survey_id


def _customer_wrote(session: Session, ticket: Ticket) -> bool:
    """At least one public message from the customer that no machine wrote (auto-replies, bounces)."""
    flags = session.scalars(select(Message.flags).where(Message.ticket_id == ticket.id, Message.direction == "in",
                                                        Message.public.is_(True))).all()
    return any(MACHINE_FLAGS.isdisjoint(f or ()) for f in flags)


# ---------------------------------------------------------------- answering


def closes_at(survey: Survey) -> datetime:
    return survey.sent_at + ANSWER_WINDOW


def record_answer(survey: Survey, rating: int | None, comment: str | None, now: datetime) -> Answer:
    """Apply one answer to `survey`: a rating, a comment, or both (None keeps what is there), each
    replacing the one before while the survey is open. Refuses a closed survey (SurveyClosed), a
    rating outside 1-5 and an over-long comment (InvalidInput naming the field)."""
    if now >= closes_at(survey):
        raise SurveyClosed(f"this survey closed on {closes_at(survey):%Y-%m-%d %H:%M} UTC, "
                           f"{ANSWER_WINDOW.days} days after it was sent; nothing was recorded")
    if rating is None and comment is None:
        raise InvalidInput("rating", "choose a rating from 1 (very unhappy) to 5 (very happy)")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or rating not in RATINGS):
        raise InvalidInput("rating", f"{rating!r} is not a rating: choose a whole number from 1 (very unhappy) "
                                     f"to 5 (very happy)")
    text = (survey.comment or "") if comment is None else clean_comment(comment)
    if len(text) > MAX_COMMENT_CHARS:
        raise InvalidInput("comment", f"the comment is {len(text)} characters long; keep it under "
                                      f"{MAX_COMMENT_CHARS}")
    new_rating = survey.rating if rating is None else rating
    changed = (new_rating, text) != (survey.rating, survey.comment or "")
    if changed:
        survey.rating, survey.comment, survey.answered_at = new_rating, text, now
    return Answer(new_rating, text, changed)


def clean_comment(text: str) -> str:
    return (text or "").replace("\x00", "").strip()


def answer(session: Session, survey_id: int, *, rating: int | None, comment: str | None, now: datetime,
           sender: Identity | None = None, via: str = "web") -> Answer:
    """Record the customer's answer to survey `survey_id`; a low rating (or a new comment on one) is
    told to the supervisors in the same transaction. `sender`: who answered, when the channel says
    (Telegram); refused unless they are the ticket's customer. None: the caller proved it (the web
    page's signed link)."""
    survey = session.scalar(select(Survey).where(Survey.id == survey_id).with_for_update())
    if survey is None:
        raise NotFound(f"there is no survey {survey_id}")
    ticket = session.get(Ticket, survey.ticket_id)
    if sender is not None and not _belongs_to(session, sender, ticket):
        raise ActionRefused(f"survey {survey_id} asks another customer about their ticket; only they can answer it")
    result = record_answer(survey, rating, comment, now)
    if not result.changed:
        return result
    session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="customer", kind="survey_answered",
                            reason=f"satisfaction {result.rating or '-'}/5 via {via}"
                                   + (f": {result.comment}" if result.comment else ""),
                            data={"survey_id": survey.id, "rating": result.rating, "comment": result.comment,
                                  "via": via}))
    if result.low:
        _tell_supervisors(session, survey, ticket, now)
    return result


def _belongs_to(session: Session, sender: Identity, ticket: Ticket) -> bool:
    owner = session.scalar(select(IdentityRow.customer_id).where(IdentityRow.kind == sender.kind.value,
                                                                 IdentityRow.value == sender.value))
    return owner is not None and same_customer(session, owner, ticket.customer_id)


def _tell_supervisors(session: Session, survey: Survey, ticket: Ticket, now: datetime) -> None:
    """Once per distinct (rating, comment): a rating and the comment given after it are two notices,
    a redelivered or resubmitted answer none."""
    agent = session.get(Agent, survey.agent_id) if survey.agent_id else None
    who = agent.name if agent else "nobody recorded"
    said = f"comment: {survey.comment}" if survey.comment else "no comment (yet)"
    text = f"{ticket.number}: the customer rated the service {survey.rating}/5 · resolved by {who}\n{said}"
    digest = hashlib.sha256(f"{survey.rating}|{survey.comment}".encode()).hexdigest()[:16]
    notify_supervisors(session, kind="low_rating", ticket=ticket, text=text, now=now,
                       dedupe_key=f"low_rating:{survey.id}:{digest}", rating=survey.rating,
                       comment=survey.comment, resolved_by=who, survey_id=survey.id)


# ---------------------------------------------------------------- reading


def survey_for_ticket(session: Session, number: str) -> Survey | None:
    return session.scalar(select(Survey).join(Ticket, Ticket.id == Survey.ticket_id)
                          .where(Ticket.number == (number or "").strip().upper()))


def view(session: Session, survey_id: int, now: datetime) -> SurveyView | None:
    """What the survey page shows; None for a survey that does not exist."""
    row = session.execute(select(Survey, Ticket.number, Ticket.subject, Ticket.language)
                          .join(Ticket, Ticket.id == Survey.ticket_id).where(Survey.id == survey_id)).first()
    if row is None:
        return None
    survey = row[0]
    return SurveyView(survey_id=survey.id, ticket_number=row.number, subject=row.subject or "",
                      language=row.language, rating=survey.rating, comment=survey.comment or "",
                      answered_at=survey.answered_at, closes_at=closes_at(survey), closed=now >= closes_at(survey))
