"""Saved replies (canned responses): answers agents send by name instead of typing them again.

A saved reply has a short name (`refund`, `退款`), a Chinese and an English text (either may be empty,
not both) and optionally the category of tickets it answers. `render` picks the text in the
customer's language and fills the placeholders {ticket}, {name} and {agent}. Any other placeholder
is refused when the text is saved, so a reply never fails while an agent is sending it.

Functions take a Session and never commit: the caller owns the transaction. Sending goes through
`router.actions.reply`, like any typed reply; this module only says what the text is.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from models.errors import InvalidInput, NotFound
from models.message import written_language
from models.tables import CannedReply, Customer, Message, Ticket
from router.actions import DEFAULT_LABELS
from router.dialects import PerDialect

# A letter or digit of any script first (so `退款` is a name), then letters, digits, `-` and `_`:
# short enough to type on a phone after a `!`.
NAME_RULE = re.compile(r"[^\W_][\w-]{0,31}")
NAME_EXAMPLES = "refund, 退款 or vip-sla"
# `/replies add NAME …` in the console is the command, so no reply may be called like a sub-command.
RESERVED_NAMES = frozenset({"add", "edit", "remove"})
PLACEHOLDERS = ("ticket", "name", "agent")
# A saved text leaves room for the agent's own words and the filled placeholders within one
# Telegram message (router.actions refuses a reply longer than that, rather than cutting it).
MAX_TEXT_CHARS = 3000
# {name} when the customer gave none: reads well after 尊敬的 / "Dear" and before 您好.
POLITE_NAME = {"zh": "客户", "en": "customer"}
LANGUAGES = ("zh", "en")

# {{ and }} are literal braces (as in str.format); {word} is a placeholder; a lone brace is a mistake.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

_INSERT = PerDialect(lambda insert: insert(CannedReply.__table__)
                     .on_conflict_do_nothing(index_elements=["name"]).returning(CannedReply.__table__.c.id))


class UnknownReply(NotFound):
    """No saved reply has this name. `name` is what was asked for and `close` the names it was likely
    meant to be (a typo on a phone), for each edge to say in its own words."""

    def __init__(self, name: str, close: tuple[str, ...] = ()):
        self.name, self.close = name, close
        guess = f"; did you mean {' or '.join(close)}?" if close else ""
        super().__init__(f"no saved reply called {name!r}{guess} (see `paidan replies list`)")


@dataclass(frozen=True, slots=True)
class Rendered:
    """A saved reply filled in for one ticket: the text to send and the language it is in."""

    name: str
    text: str
    language: str  # "zh", "en", or "zh+en" when the customer's language is not known


# ---------------------------------------------------------------- names and texts


def _lookup_key(name: str | None) -> str:
    # The console's `!refund` (or `！退款` from a Chinese keyboard) names the reply `refund`.
    return (name or "").strip().removeprefix("!").removeprefix("！").casefold()


def normalise_name(name: str | None) -> str:
    """The stored form of a name (folded to lower case); InvalidInput saying the rule otherwise."""
    wanted = _lookup_key(name)
    if not NAME_RULE.fullmatch(wanted):
        raise InvalidInput("name", f"{name!r} is not a saved reply name: use letters (any script), digits, "
                                   f"- and _, up to 32, starting with a letter or digit, e.g. {NAME_EXAMPLES}")
    if wanted in RESERVED_NAMES:
        raise InvalidInput("name", f"{wanted!r} is a word of the /replies command; choose another name")
    return wanted


def check_text(field: str, text: str) -> str:
    """The text as it will be stored (stripped); InvalidInput for an unknown placeholder or a lone brace."""
    text = (text or "").replace("\x00", "").strip()
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(field, f"is {len(text)} characters long; keep a saved reply under {MAX_TEXT_CHARS}")
    known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    for match in _TOKEN.finditer(text):
        token, inside = match.group(0), match.group(1)
        if token in ("{{", "}}"):
            continue
        if inside is None:
            raise InvalidInput(field, f"has a lone {token!r}; write {token * 2} for a brace, or use a placeholder: "
                                      f"{known}")
        if inside.strip().lower() not in PLACEHOLDERS:
            raise InvalidInput(field, f"has an unknown placeholder {token}; the placeholders are {known}")
    return text


def _check_category(category: str | None, categories: tuple[str, ...]) -> str | None:
    wanted = (category or "").strip().lower()
    if not wanted:
        return None
    if wanted not in categories:
        raise InvalidInput("category", f"{category!r} is not a category; choose one of {', '.join(categories)}")
    return wanted


# ---------------------------------------------------------------- the store


def add_reply(session: Session, name: str, *, zh: str = "", en: str = "", category: str | None = None,
              by: str, now: datetime, categories: tuple[str, ...] = DEFAULT_LABELS["category"]) -> CannedReply:
    """Save a new reply; a name already taken is refused (change that one with `update_reply`)."""
    key = normalise_name(name)
    text_zh, text_en = check_text("zh", zh), check_text("en", en)
    if not text_zh and not text_en:
        raise InvalidInput("text", "give the Chinese text, the English text, or both")
    row = {"name": key, "text_zh": text_zh, "text_en": text_en, "category": _check_category(category, categories),
           "created_by": by[:120], "updated_by": by[:120], "created_at": now, "updated_at": now}
    # One INSERT … ON CONFLICT DO NOTHING: two supervisors saving the same name at once get one
    # row and one clear refusal, never a constraint error.
    reply_id = session.execute(_INSERT.for_session(session), row).scalar()
    if reply_id is None:
        raise InvalidInput("name", f"a saved reply called {key!r} already exists; change it with `replies edit "
                                   f"{key}`, or remove it first")
    return session.get_one(CannedReply, reply_id)


def update_reply(session: Session, name: str, *, zh: str | None = None, en: str | None = None,
                 category: str | None = None, by: str, now: datetime,
                 categories: tuple[str, ...] = DEFAULT_LABELS["category"]) -> CannedReply:
    """Change the texts or the category of a saved reply; None leaves a field as it is, "" empties it."""
    reply = get_reply(session, name, lock=True)
    text_zh = reply.text_zh if zh is None else check_text("zh", zh)
    text_en = reply.text_en if en is None else check_text("en", en)
    if not text_zh and not text_en:
        raise InvalidInput("text", f"{reply.name!r} would have no text left; keep one language, or remove the reply")
    reply.text_zh, reply.text_en = text_zh, text_en
    if category is not None:
        reply.category = _check_category(category, categories)
    reply.updated_by, reply.updated_at = by[:120], now
    session.flush()
    return reply


def remove_reply(session: Session, name: str) -> str:
    """Delete a saved reply; returns its name. Tickets it was sent on keep their copy of the text."""
    key = get_reply(session, name).name
    session.execute(delete(CannedReply).where(CannedReply.name == key))
    return key


def find_reply(session: Session, name: str | None) -> CannedReply | None:
    """The saved reply called `name`, whatever its case or a leading `!`; None if there is none."""
    wanted = _lookup_key(name)
    return session.scalar(select(CannedReply).where(CannedReply.name == wanted)) if wanted else None


def get_reply(session: Session, name: str | None, *, lock: bool = False) -> CannedReply:
    """The saved reply called `name`; UnknownReply if there is none."""
    wanted = _lookup_key(name)
    query = select(CannedReply).where(CannedReply.name == wanted)
    reply = session.scalar(query.with_for_update() if lock else query) if wanted else None
    if reply is None:
        names = session.scalars(select(CannedReply.name)).all()
        raise UnknownReply((name or "").strip(), tuple(difflib.get_close_matches(wanted, names, n=2)))
    return reply


def list_replies(session: Session, *, category: str | None = None) -> list[CannedReply]:
    """Every saved reply by name; with `category`, those of that category and those of none."""
    query = select(CannedReply).order_by(CannedReply.name)
    if category:
        query = query.where((CannedReply.category == category.strip().lower()) | CannedReply.category.is_(None))
    return list(session.scalars(query))


def first_line(reply: CannedReply) -> str:
    """What a listing shows of a reply: the first line of its Chinese text, else of its English one."""
    text = reply.text_zh or reply.text_en
    return text.splitlines()[0].strip() if text else ""


# ---------------------------------------------------------------- rendering


def render(reply: CannedReply, language: str | None, *, ticket: str, customer: str = "", agent: str = "") -> str:
    """The reply's text for a customer speaking `language` ("zh…", "en…"; anything else or None: both
    texts, Chinese first, as our other messages to customers do), placeholders filled. A language
    whose text is empty falls back to the other."""
    return "\n\n".join(_fill(text, lang, ticket=ticket, customer=customer, agent=agent)
                       for lang, text in _texts_for(reply, language))


def rendered_language(reply: CannedReply, language: str | None) -> str:
    """Which text `render` uses for `language`: "zh", "en" or "zh+en"."""
    return "+".join(lang for lang, _ in _texts_for(reply, language))


def customer_language(session: Session, ticket: Ticket) -> str | None:
    """The language to answer the ticket's customer in: the ticket's (the channel said so, or intake
    read it off the script), else the customer's, else the script of their first message (tickets
    from before intake read it); None if unclear."""
    customer = session.get(Customer, ticket.customer_id)
    for tag in (ticket.language, customer.language if customer else None):
        if _primary(tag):
            return _primary(tag)
    written = session.scalar(select(Message.text).where(Message.ticket_id == ticket.id, Message.direction == "in")
                             .order_by(Message.id).limit(1)) or ""
    return written_language(f"{ticket.subject}\n{written}")


def for_ticket(session: Session, name: str, ticket_number: str, agent_name: str, *, extra: str = "") -> Rendered:
    """The saved reply called `name` filled in for this ticket, with the agent's `extra` words after it.
    UnknownReply for a name nobody saved; NotFound for a ticket that does not exist."""
    reply = get_reply(session, name)
    ticket = session.scalar(select(Ticket).where(Ticket.number == (ticket_number or "").strip().upper()))
    if ticket is None:
        raise NotFound(f"no ticket {ticket_number!r} (see `paidan tickets list` or `paidan queue`)")
    customer = session.get(Customer, ticket.customer_id)
    language = customer_language(session, ticket)
    text = render(reply, language, ticket=ticket.number, customer=customer.display_name if customer else "",
                  agent=agent_name)
    extra = (extra or "").strip()
    return Rendered(reply.name, f"{text}\n\n{extra}" if extra else text, rendered_language(reply, language))


def _primary(tag: str | None) -> str | None:
    """"zh" or "en" from a language tag ("zh-hans", "en_US"), as connectors' by_language reads it."""
    tag = (tag or "").strip().lower()
    return next((lang for lang in LANGUAGES if tag.startswith(lang)), None)


def _texts_for(reply: CannedReply, language: str | None) -> list[tuple[str, str]]:
    """(language, text) of what `render` sends: the wanted one, else the other; both when unsure."""
    texts = {"zh": reply.text_zh, "en": reply.text_en}
    wanted = _primary(language)
    if wanted is None:
        return [(lang, text) for lang, text in texts.items() if text]
    other = "en" if wanted == "zh" else "zh"
    return [(wanted, texts[wanted])] if texts[wanted] else [(other, texts[other])]


def _fill(text: str, language: str, *, ticket: str, customer: str, agent: str) -> str:
    values = {"ticket": ticket, "name": " ".join(customer.split()) or POLITE_NAME[language], "agent": agent}

    def one(match: re.Match) -> str:
        token, inside = match.group(0), match.group(1)
        if inside is None:
            return token[0]  # {{ or }}: a literal brace (a lone one never passed check_text)
        return values.get(inside.strip().lower(), token)

    return _TOKEN.sub(one, text)
