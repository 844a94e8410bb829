"""The one normalised message type that every channel produces.

Plain frozen dataclasses: no ORM, no I/O, so connectors, the router and tests can all build
and compare them freely.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


# Flags a channel sets on mail a machine wrote: an out-of-office reply, a bounce. Such messages are
# stored (nothing is lost) but never open a ticket, reopen one or get an acknowledgement, so two
# robots cannot answer each other forever (DESIGN.md, "No loops").
MACHINE_FLAGS = frozenset({"auto_reply", "bounce"})
# On a ticket an agent opened by writing to the customer first (router/outreach.py): not a contact.
OUTBOUND_FLAG = "outbound"

# Han characters (CJK ideographs and their extensions A and compatibility forms) and Latin words.
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def written_language(text: str) -> str | None:
    """"zh" or "en" by the script a message is written in, for channels that do not say (email, the
    API); None when it shows neither. A Chinese writer mixes in English words (iPhone, error 502) far
    more often than an English writer uses Chinese (a signature, 王芳), so a Han character counts as
    much as two Latin words."""
    sample = text[:4000]
    han = len(HAN.findall(sample))
    words = len(_LATIN_WORD.findall(sample))
    if han >= 2 and han * 2 >= words:
        return "zh"
    if words >= 2:
        return "en"
    return None


# What an erased text reads (a person's data forgotten on request, or past retention): a fixed
# marker, so a reader sees something was there, and so retraining can leave such texts out.
ERASED = "[erased]"


class Channel(StrEnum):
    EMAIL = "email"
    TELEGRAM = "telegram"
    WEB = "web"
    API = "api"


class IdentityKind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    TELEGRAM = "telegram"
    WEB_SESSION = "web_session"


@dataclass(frozen=True, slots=True)
class Identity:
    """One way of reaching a customer: an email address, an E.164 phone, a Telegram user id."""

    kind: IdentityKind
    value: str

    def __post_init__(self) -> None:
        # One spelling per mailbox, whichever channel saw it: trimmed and lower-cased, local part
        # included (mainstream providers ignore its case, and customers type it both ways).
        if self.kind == IdentityKind.EMAIL:
            object.__setattr__(self, "value", self.value.strip().lower())

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@dataclass(frozen=True, slots=True)
class Sender:
    identities: tuple[Identity, ...]
    display_name: str = ""

    def __post_init__(self) -> None:
        if not self.identities:
            raise ValueError("a sender needs at least one identity")

    def of_kind(self, kind: IdentityKind) -> Identity | None:
        return next((i for i in self.identities if i.kind == kind), None)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class ThreadRefs:
    """What the message itself says about which conversation it belongs to."""

    ticket_number: str | None = None  # [GD…] subject tag, form field, Telegram reply
    in_reply_to: str | None = None  # email In-Reply-To
    references: tuple[str, ...] = ()  # email References, oldest first
    new_ticket: bool = False  # the customer asked for a conversation of its own (/new on Telegram)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer message as it arrived, before any routing decision.

    ``external_id`` is the channel's own id (Message-ID, Telegram ``chat:message_id``, an
    idempotency key); ``(channel, external_id)`` is the deduplication key. ``raw`` keeps the
    exact bytes received so nothing is lost to a parser bug.
    """

    channel: Channel
    external_id: str
    sender: Sender
    text: str
    received_at: datetime
    raw: bytes = field(repr=False)
    subject: str = ""
    attachments: tuple[Attachment, ...] = ()
    thread_refs: ThreadRefs = ThreadRefs()
    message_id: str | None = None  # email Message-ID of this message, for later In-Reply-To
    language: str | None = None  # the customer's UI language when the channel knows it
    flags: tuple[str, ...] = ()  # e.g. "auto_reply", "unparseable": stored, shown to humans
    cc: tuple[str, ...] = ()  # email: the others the customer wrote to (To and Cc), whom our answer copies

    @property
    def machine_generated(self) -> bool:
        """An auto-reply or a bounce (see MACHINE_FLAGS)."""
        return not MACHINE_FLAGS.isdisjoint(self.flags)

    def __post_init__(self) -> None:
        if not self.external_id:
            raise ValueError("external_id must not be empty")
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Receipt:
    """What intake answers once the message is committed: enough for the channel to acknowledge."""

    ticket_number: str
    ticket_id: int
    message_id: int
    duplicate: bool  # True when this (channel, external_id) was already stored
    new_ticket: bool
    first_response_due: timedelta | None = None


@dataclass(frozen=True, slots=True)
class PublicMessage:
    direction: str  # "in" from the customer, "out" from an agent
    text: str
    at: datetime
    author: str  # display name of the agent, or "" for the customer
    files: tuple[str, ...] = ()  # the names of the files that came with it


@dataclass(frozen=True, slots=True)
class TicketView:
    """What a customer may see of their own ticket on the status page."""

    number: str
    state: str
    subject: str
    created_at: datetime
    messages: tuple[PublicMessage, ...]


# A ticket's state in the customer's words (Chinese, English), wherever they see it: the status page,
# Telegram's /status.
STATE_WORDS: dict[str, tuple[str, str]] = {
    "new": ("已受理", "Received"),
    "assigned": ("已分派", "Assigned"),
    "in_progress": ("处理中", "In progress"),
    "awaiting_customer": ("等待您的回复", "Waiting for your reply"),
    "resolved": ("已解决", "Resolved"),
    "closed": ("已关闭", "Closed"),
    "reopened": ("已重新打开", "Reopened"),
    "merged": ("已合并到其他工单", "Merged into another ticket"),
}


@dataclass(frozen=True, slots=True)
class TicketSummary:
    """One of a customer's tickets as they may see it in a list (Telegram's /status)."""

    number: str
    state: str
    subject: str
    created_at: datetime
    last_reply_at: datetime | None  # our latest public answer, if any
    answer_due: datetime | None  # when our first answer is due, while it is owed and the clock runs


@dataclass(frozen=True, slots=True)
class SurveyView:
    """What the customer sees of a satisfaction survey: the ticket it asks about and their answer."""

    survey_id: int
    ticket_number: str
    subject: str
    language: str | None
    rating: int | None  # 1 (very unhappy) … 5 (very happy); None until answered
    comment: str
    answered_at: datetime | None
    closes_at: datetime  # the answer can be given or changed until then
    closed: bool
