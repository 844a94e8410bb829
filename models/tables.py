"""SQLAlchemy 2 tables. Repositories take a Session and never commit: the caller owns the transaction."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Always timezone-aware UTC, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Trigram indexes ticket search uses on PostgreSQL (migration 0006). Not declared on the tables: they
# exist on one dialect only, where the server allows pg_trgm; comparisons of the models with a
# database skip them (`declared`).
SEARCH_INDEXES = frozenset({"ix_messages_text_trgm", "ix_tickets_subject_trgm", "ix_customers_display_name_trgm"})


def declared(obj, name: str | None, type_: str, reflected: bool, compare_to) -> bool:
    """Alembic's include_object: everything but the search indexes the models leave to the migration."""
    return not (type_ == "index" and name in SEARCH_INDEXES)


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    language: Mapped[str | None] = mapped_column(String(16))
    vip: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set when this customer was merged into another; kept so a merge can be undone.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set while the customer is blocked as a spammer or abuser (router/blocking.py): their messages
    # are still stored, on closed tickets, but nobody is assigned and nothing is sent back.
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    blocked_by: Mapped[str | None] = mapped_column(String(200))
    blocked_reason: Mapped[str | None] = mapped_column(Text)

    identities: Mapped[list[Identity]] = relationship(back_populates="customer")


class Identity(Base):
    """One (kind, value) a customer is known by; unique across all customers."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(320))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    customer: Mapped[Customer] = relationship(back_populates="identities")


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="agent")  # agent | supervisor | admin
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)  # e.g. ["technical", "zh"]
    capacity: Mapped[int] = mapped_column(Integer, default=5)  # open tickets at once
    seniority: Mapped[int] = mapped_column(Integer, default=1)  # 1 junior … 3 senior
    telegram_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    # Supervisors on call hear of P0/P1 tickets the moment they are created.
    on_call: Mapped[bool] = mapped_column(Boolean, default=False)
    # Open tickets held, kept in step with every assignment in the same transaction; a
    # conditional `load < capacity` update is what keeps an agent from ever going over capacity.
    load: Mapped[int] = mapped_column(Integer, default=0)
    # Working hours, e.g. {"tz": "Asia/Shanghai", "days": [0,1,2,3,4], "start": "09:00", "end": "18:00"}
    shift: Mapped[dict | None] = mapped_column(JSON)
    last_assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (Index("ix_tickets_customer_state", "customer_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    channel: Mapped[str] = mapped_column(String(20))  # where the customer first wrote
    subject: Mapped[str] = mapped_column(String(500), default="")
    state: Mapped[str] = mapped_column(String(24), default="new", index=True)
    type: Mapped[str | None] = mapped_column(String(32))
    category: Mapped[str | None] = mapped_column(String(32))
    priority: Mapped[str | None] = mapped_column(String(8))
    confidence: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    assigned_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), index=True)
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Routing: NULL until the router has classified and dispatched (or queued) the ticket.
    routed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Where an unassigned ticket waits: "assignment" (no agent free yet) or "triage" (a
    # supervisor must look: low confidence, conflicting identities); with the reason.
    queue: Mapped[str | None] = mapped_column(String(20), index=True)
    queue_reason: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    customer: Mapped[Customer] = relationship()
    assigned_agent: Mapped[Agent | None] = relationship()
    messages: Mapped[list[Message]] = relationship(back_populates="ticket", order_by="Message.id")
    events: Mapped[list[TicketEvent]] = relationship(back_populates="ticket", order_by="TicketEvent.id")


class TicketCounter(Base):
    """Per-day ticket sequence; incremented with an atomic upsert so concurrent writers never collide."""

    __tablename__ = "ticket_counters"

    day: Mapped[str] = mapped_column(String(8), primary_key=True)  # YYYYMMDD in the business time zone
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index("ix_messages_email_message_id", "email_message_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    direction: Mapped[str] = mapped_column(String(4), default="in")  # in | out
    channel: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(String(512))
    author_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    sender: Mapped[str] = mapped_column(String(400), default="")  # display form, e.g. "email:a@b.c"
    subject: Mapped[str] = mapped_column(String(500), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    # Exact bytes received; bytea on PostgreSQL, so NUL bytes in mail are kept as they came.
    raw: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    email_message_id: Mapped[str | None] = mapped_column(String(512))
    in_reply_to: Mapped[str | None] = mapped_column(String(512))
    references: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Email: whom the customer copied (Cc); an agent's email reply copies them too.
    cc: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=sql_text("'[]'"))
    public: Mapped[bool] = mapped_column(Boolean, default=True)  # internal notes are not
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    type: Mapped[str | None] = mapped_column(String(32))
    category: Mapped[str | None] = mapped_column(String(32))
    priority: Mapped[str | None] = mapped_column(String(8))
    confidence: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[AttachmentRow]] = relationship(back_populates="message")


class AttachmentRow(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)

    message: Mapped[Message] = relationship(back_populates="attachments")


class TicketEvent(Base):
    """The audit trail: who did what to a ticket, when, and why."""

    __tablename__ = "ticket_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(120))  # "system", "customer", "agent:7", "cli"
    kind: Mapped[str] = mapped_column(String(40))  # created, transition, message, assigned, …
    from_state: Mapped[str | None] = mapped_column(String(24))
    to_state: Mapped[str | None] = mapped_column(String(24))
    reason: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSON, default=dict)

    ticket: Mapped[Ticket] = relationship(back_populates="events")

    def __init__(self, **fields):
        # Every event carries its time and its data: the ORM writes a flush's events with one
        # multi-row INSERT only while they all set the same columns, and an event left to a Python
        # default (data=dict) split a resolve's or an expiry's events into one INSERT per row.
        fields.setdefault("at", utcnow())
        fields.setdefault("data", {})
        super().__init__(**fields)


class OutboxItem(Base):
    """Everything we send, written in the same transaction as the decision that caused it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))  # ack, agent_notify, reply, escalation, …
    channel: Mapped[str] = mapped_column(String(20))
    recipient: Mapped[str] = mapped_column(String(400))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    # Lets a sender recognise a retry of the same logical send (e.g. Message-ID of a reply).
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LabelCorrection(Base):
    """A human's fix of one predicted label; the classifier retrains from these."""

    __tablename__ = "label_corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    text: Mapped[str] = mapped_column(Text)  # copied so retraining works after message retention
    head: Mapped[str] = mapped_column(String(32))  # type | category | priority
    old_label: Mapped[str | None] = mapped_column(String(32))
    new_label: Mapped[str] = mapped_column(String(32))
    corrected_by: Mapped[str] = mapped_column(String(120))
    corrected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    """A trained classifier directory and whether it is the one in use."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(1000))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SlaClock(Base):
    """One SLA target of one ticket (first response or resolution), on its calendar.

    Warnings and breaches are claimed with a conditional update of `warned_at` / `breached_at`,
    so each fires exactly once, whichever process sees it first and however often it restarts.
    """

    __tablename__ = "sla_clocks"
    __table_args__ = (
        UniqueConstraint("ticket_id", "kind"),
        Index("ix_sla_clocks_due", "stopped_at", "paused_since", "warn_at", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    kind: Mapped[str] = mapped_column(String(20))  # first_response | resolution
    priority: Mapped[str] = mapped_column(String(8))
    calendar: Mapped[str] = mapped_column(String(20))  # "24x7" | "business"
    target_seconds: Mapped[int] = mapped_column(Integer)  # on that calendar
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    consumed_seconds: Mapped[int] = mapped_column(Integer, default=0)  # calendar time used before paused_since
    paused_since: Mapped[datetime | None] = mapped_column(UTCDateTime)  # awaiting the customer
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # start of the running segment
    warn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # 80 % of the target, projected
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # projected while running
    warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # met (responded / resolved)


class Assignment(Base):
    """An offer of a ticket to an agent: accepted, declined, or expired after the accept timeout."""

    __tablename__ = "assignments"
    __table_args__ = (Index("ix_assignments_open", "accepted_at", "ended_at", "expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    offered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # declined, expired, reassigned, resolved
    end_reason: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(Text, default="")  # why this agent was chosen
    data: Mapped[dict] = mapped_column(JSON, default=dict)  # candidates considered and their scores


class CustomerMerge(Base):
    """A merge of one customer into another, with exactly what moved, so it can be undone."""

    __tablename__ = "customer_merges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    identity_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    ticket_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    evidence: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(120))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    undone_by: Mapped[str | None] = mapped_column(String(120))


class ReviewItem(Base):
    """Something a supervisor must decide: conflicting identities, a rejected ticket reference, …"""

    __tablename__ = "review_items"
    __table_args__ = (Index("ix_review_items_open", "resolved_at", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(120))


class ChannelCursor(Base):
    """Where a poller got to (IMAP uidvalidity and last UID, Telegram offset), so a restart resumes."""

    __tablename__ = "channel_cursors"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Survey(Base):
    """The satisfaction question sent once a ticket is resolved, and the customer's answer."""

    __tablename__ = "surveys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One survey per ticket: a ticket resolved again after a reopen is not asked twice.
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(20))  # where the question went
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), index=True)  # who resolved it
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    rating: Mapped[int | None] = mapped_column(Integer)  # 1 (very unhappy) … 5 (very happy)
    comment: Mapped[str] = mapped_column(Text, default="")
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LinkCode(Base):
    """A one-time code that proves a customer owns an address, so two identities become one customer."""

    __tablename__ = "link_codes"
    __table_args__ = (Index("ix_link_codes_customer_open", "customer_id", "used_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))  # who asked to link
    kind: Mapped[str] = mapped_column(String(20))  # the identity to prove, e.g. "email"
    value: Mapped[str] = mapped_column(String(320))
    code_sha256: Mapped[str] = mapped_column(String(64))  # never the code itself
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # wrong guesses; too many and it is spent
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CannedReply(Base):
    """A saved answer agents send by name (`!refund` in the console), in Chinese, English or both.

    `name` is stored folded to lower case, so the unique constraint is also the case-insensitive look-up.
    """

    __tablename__ = "canned_replies"
    __table_args__ = (CheckConstraint("text_zh <> '' OR text_en <> ''", name="some_text"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32), unique=True)  # a short slug: refund, 退款, vip-sla
    text_zh: Mapped[str] = mapped_column(Text, default="")
    text_en: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str | None] = mapped_column(String(32))  # which team's answer (technical, service, …)
    created_by: Mapped[str] = mapped_column(String(120))  # "agent:Sue", "cli:alice"
    updated_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DashboardSession(Base):
    """A supervisor's sign-in to the web dashboard: the one-time link it used and the session it opened.

    Only SHA-256 hashes are kept (of the link's nonce, of the session id in the cookie), so reading the
    table gives no way in. The unique link hash is what makes a link work once, even when two requests
    use it at the same moment: the second insert finds it taken.
    """

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    link_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    session_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # when the link was used
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the session's end
    # Until then the link could still be presented; its record is kept at least that long.
    link_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    signed_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
