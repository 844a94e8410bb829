"""Sending the outbox's Telegram messages: build each one (pure) and hand it to the Bot API (thin I/O).

Customers hear from us in their own chat (the acknowledgement, the agents' replies); agents and
supervisors get their notifications in the agent console's chat, with buttons where one tap is the
answer. Everything goes out as plain text: what customers and agents wrote is never read as markup.

`connectors.outbox.deliver_due` claims, builds, sends and records; it is synchronous and runs in a
worker thread, so `sync_send` hands each message to the event loop the aiogram Bot lives on. A
"file" item sends a stored attachment to an agent as a document (`/files` in the console).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiogram import Bot
from aiogram import exceptions as tg
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    LinkPreviewOptions,
)

from connectors.outbox import (
    FileLoader,
    OutboxItem,
    PermanentFailure,
    TemporaryFailure,
    by_language,
    utc_time,
    waiting_reminder_text,
)
from connectors.telegram.console import TICKET_NUMBER
from connectors.telegram.survey import survey_question
from models.message import STATE_WORDS, TicketSummary

TEXT_LIMIT = 4096  # Telegram's limit for one message, counted in UTF-16 code units
SEND_TIMEOUT = 60.0  # seconds `sync_send` waits for the Bot API before calling it a temporary failure

Buttons = tuple[tuple[tuple[str, str], ...], ...]  # rows of (label, callback_data)


@dataclass(frozen=True, slots=True)
class TelegramFile:
    """A stored attachment going out as a Telegram document."""

    filename: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TelegramSend:
    """One message to send. Always plain text: `parse_mode` stays None on purpose. With `documents`,
    the text is their caption (one message: a document, or a group of up to 10)."""

    chat_id: int
    text: str
    buttons: Buttons = ()
    parse_mode: None = None
    documents: tuple[TelegramFile, ...] = ()


# Bots may upload up to 50 MB a file; a caption holds 1,024 characters.
UPLOAD_LIMIT = 50 * 1024 * 1024
CAPTION_LIMIT = 1024  # cut by the sender: the Bot API refuses a longer caption


# ---------------------------------------------------------------- building (pure)

# Kinds that go to the customer; every other kind is a notification for staff.
CUSTOMER_KINDS = frozenset({"ack", "reply", "survey", "reminder"})

# Each staff kind the router queues: (icon, a few words for the first line, what the reader can do).
# A new kind without an entry still gets a generic text (see _staff_text); the tests list the router's
# kinds from its code, so one added there without a line here fails them.
STAFF_KINDS: dict[str, tuple[str, str, str]] = {
    "assigned": ("🆕", "new ticket for you",
                 "Tap ✅ Accept or ❌ Decline. Reply to this message to answer the customer."),
    "customer_message": ("💬", "the customer wrote again",
                         "Reply to this message to answer them; /show {ticket} shows the conversation."),
    "triage": ("🧭", "needs triage",
               "Correct a label (/relabel {ticket} category service) or give it to someone (/assign {ticket} NAME)."),
    "sla_warning": ("⏳", "SLA warning", "/show {ticket} shows where it stands."),
    "escalation": ("🚨", "SLA breached, escalated", "/assign {ticket} NAME hands it on; /show {ticket} shows it."),
    "on_call": ("📟", "urgent ticket, you are on call", "/show {ticket} shows it."),
    "offer_expired": ("⌛", "offer not accepted in time", "/show {ticket} shows where it is now."),
    "follow_up": ("⏰", "the reminder you set", "/show {ticket} shows where it stands."),
    "digest": ("☀️", "the help desk yesterday", "/report 7 for the week; /dashboard for the charts."),
    "customer_resolved": ("✅", "the customer marked it solved",
                          "/show {ticket} shows it; writing again reopens it, or /reopen {ticket} REASON."),
    "mention": ("📝", "a colleague asks you in a note",
                "/show {ticket} shows the ticket; /note {ticket} @name … answers them (the customer sees no note)."),
    "low_rating": ("😞", "low satisfaction rating",
                   "/show {ticket} shows the conversation; /reopen {ticket} REASON if it is not solved."),
}
# A stored attachment sent to an agent as a document (its caption is built by _file_caption).
FILE_KIND = "file"
KNOWN_KINDS = CUSTOMER_KINDS | STAFF_KINDS.keys() | {FILE_KIND}

_CHAT_ID = re.compile(r"-?[0-9]{1,20}")
_EMAIL = re.compile(r"[^@\s:]+@[^@\s]+")
_PREVIEW_LINES, _PREVIEW_CHARS = 4, 400  # how much of the customer's message an offer quotes


def build_telegram(item: OutboxItem, load_file: FileLoader | None = None) -> TelegramSend:
    """The Telegram message for one outbox item; PermanentFailure when it cannot become one.
    `load_file` reads the attachment a "file" item sends (paidan's wiring passes the database's)."""
    chat_id = chat_id_of(item.recipient)
    payload = item.payload or {}
    if item.kind == FILE_KIND:
        return TelegramSend(chat_id, _file_caption(payload),
                            documents=(_stored_file(payload.get("attachment_id"), load_file),))
    if item.kind == "survey":  # the question, with its five rating buttons
        return TelegramSend(chat_id, *survey_question(payload))
    if item.kind == "reply" and payload.get("attachments"):  # the agent's files, the text their caption
        files = tuple(_stored_file(f.get("id"), load_file) for f in payload["attachments"])
        return TelegramSend(chat_id, _customer_text(item.kind, payload, caption=True), documents=files)
    if item.kind in CUSTOMER_KINDS:
        text = _customer_text(item.kind, payload)
        buttons = solved_button(payload) if item.kind == "reply" else ()
        return TelegramSend(chat_id, _fit(text, _customer_cut_note(payload.get("language"))), buttons)
    number = str(payload.get("ticket") or "")
    text = _staff_text(item.kind, payload)
    where = f"`paidan tickets show {number}`" if number else "the outbox row"
    return TelegramSend(chat_id, _fit(text, f"\n(cut here: the rest is in {where})"), _staff_buttons(item.kind, number))


SOLVED_PREFIX = "solved:"


def solved_button(payload: dict) -> Buttons:
    """Under an agent's reply: the customer can say it is solved (callback data `solved:<ticket>`)."""
    number = str(payload.get("ticket") or "")
    if not TICKET_NUMBER.fullmatch(number):
        return ()
    label = by_language(payload.get("language"), zh="✅ 问题已解决", en="✅ Solved", joiner=" · ")
    return (((label, f"{SOLVED_PREFIX}{number}"),),)


def solved_ticket(callback_data: str | None) -> str | None:
    """The ticket a customer's ✅ names; None for any other button."""
    data = callback_data or ""
    number = data.removeprefix(SOLVED_PREFIX)
    return number.upper() if data.startswith(SOLVED_PREFIX) and TICKET_NUMBER.fullmatch(number) else None


def solved_answer(status: str, language: str | None) -> str:
    """The pop-up a customer's ✅ gets."""
    zh, en = {
        "resolved": ("已标记为已解决，谢谢！如还有问题，再发消息即可。", "Marked as solved, thank you! Write again any time."),
        "already": ("这个工单已经解决了。如还有问题，再发消息即可。", "This ticket is already solved. Write again any time."),
    }.get(status, ("—", "—"))
    return by_language(language, zh=zh, en=en, joiner=" · ")


def chat_id_of(recipient: str) -> int:
    """The chat of an outbox recipient: `telegram:<id>` (staff) or the bare Telegram user id a
    customer's identity holds. Anything else cannot be reached on Telegram, and will not become so
    by retrying: the message says what a supervisor can do about it."""
    value = (recipient or "").strip()
    bare = value.removeprefix("telegram:")
    if _CHAT_ID.fullmatch(bare):
        return int(bare)
    if value.startswith("agent:"):
        agent_id = value.removeprefix("agent:")
        raise PermanentFailure(
            f"agent #{agent_id} has no Telegram id, so the console cannot reach them: "
            f"`paidan agents set NAME --telegram-id ID` (their name is in `paidan agents list`)")
    if value.startswith("role:"):
        raise PermanentFailure(
            f"there was nobody in {value!r} to tell: add a supervisor with "
            f"`paidan agents add NAME --role supervisor --telegram-id ID`")
    if _EMAIL.fullmatch(value):
        raise PermanentFailure(f"{value!r} is an email address, not a Telegram chat")
    raise PermanentFailure(f"{value!r} is not a Telegram chat id")


def _file_caption(payload: dict) -> str:
    caption = f"📎 {payload.get('ticket') or ''} · {payload.get('filename') or 'file'}"
    if payload.get("received_at"):
        caption += f" · {utc_time(payload['received_at'])}"
    return caption


def _stored_file(attachment_id: object, load_file: FileLoader | None) -> TelegramFile:
    if load_file is None or not isinstance(attachment_id, int):
        raise PermanentFailure(f"the file item names no attachment this sender can read ({attachment_id!r})")
    found = load_file(attachment_id)
    if found is None:
        raise PermanentFailure(f"attachment #{attachment_id} is no longer stored")
    filename, data = found
    if len(data) > UPLOAD_LIMIT:
        raise PermanentFailure(f"{filename} is {len(data) // (1024 * 1024)} MB; Telegram takes files up to 50 MB")
    return TelegramFile(filename or f"attachment-{attachment_id}", data)


def _customer_text(kind: str, payload: dict, *, caption: bool = False) -> str:
    number = payload.get("ticket") or "?"
    language = payload.get("language")
    if kind == "ack":
        due = utc_time(payload.get("first_response_due"))
        zh = "\n".join([f"您好！我们已收到您的消息，工单号：{number}。",
                        *([f"我们会在 {due} 前首次答复您。"] if due else []),
                        "如需补充，请直接回复这条消息。"])
        en = "\n".join([f"Hello! We have received your message; your ticket number is {number}.",
                        *([f"We will get back to you by {due}."] if due else []),
                        "To add details, reply to this message."])
        return by_language(language, zh=zh, en=en, joiner="\n\n")
    if kind == "reminder":
        zh, en = waiting_reminder_text(payload)
        return by_language(language, zh=zh, en=en, joiner="\n\n")
    text = (payload.get("text") or "").strip()
    if not text and not caption:
        raise PermanentFailure(f"the {kind} has no text to send")
    header = by_language(language, zh="工单", en="Ticket") + f" {number}"
    return f"{header}\n\n{text}" if text else header


def customer_status_text(tickets: Sequence[TicketSummary], language: str | None) -> str:
    """A customer's answer to /status: each ticket's number, state and subject, and when we answered
    last or will answer first (times in UTC, as acknowledgements give them); in their language, or in
    both, Chinese first, when we do not know it."""
    if not tickets:
        return by_language(language, zh="您目前没有进行中的工单。请直接发送您的问题，我们会回复工单号。",
                           en="You have no open tickets. Describe your issue here and we will answer with a ticket "
                              "number.", joiner="\n\n")
    zh, en = [], []
    for t in tickets:
        zh_state, en_state = STATE_WORDS.get(t.state, (t.state, t.state))
        subject = [t.subject[:60]] if t.subject else []
        replied, due = (utc_time(x.isoformat()) if x else None for x in (t.last_reply_at, t.answer_due))
        zh.append("\n".join([f"{t.number} · {zh_state}", *subject, *([f"最近答复：{replied}"] if replied else []),
                             *([f"首次答复不晚于：{due}"] if due else [])]))
        en.append("\n".join([f"{t.number} · {en_state}", *subject, *([f"Last answered: {replied}"] if replied else []),
                             *([f"First answer by: {due}"] if due else [])]))
    zh.append("回复我们关于某个工单的消息，即可补充说明。")
    en.append("To add to a ticket, reply to our message about it.")
    return by_language(language, zh="\n\n".join(zh), en="\n\n".join(en), joiner="\n\n———\n\n")


def _customer_cut_note(language: str | None) -> str:
    zh, en = "（消息过长，后面的内容已省略。）", "(This message was too long; the rest was left out.)"
    return "\n" + by_language(language, zh=zh, en=en, joiner="\n")


def _staff_text(kind: str, payload: dict) -> str:
    """Ticket number first, then what happened, the customer's words if given, and what to do."""
    number = str(payload.get("ticket") or "")
    icon, title, hint = STAFF_KINDS.get(kind, ("🔔", kind.replace("_", " ") or "notification", ""))
    first = " · ".join(part for part in (f"{icon} {number}".strip(), title, _labels(payload)) if part)
    lines = [first]
    body = _without_prefix(_without_prefix(str(payload.get("text") or ""), number), title)
    if body:
        lines.append(body)
    elif kind not in STAFF_KINDS:
        # Nothing written for people: show the facts rather than lose the notification.
        lines += [f"{key}: {value}" for key, value in payload.items()
                  if key not in ("ticket", "agent_id") and isinstance(value, (str, int, float)) and value != ""]
    preview = _preview(payload.get("preview"))
    if preview:
        lines.append(preview)
    if kind == "assigned" and payload.get("reason"):
        lines.append(f"why you: {payload['reason']}")
    if payload.get("files") and number:
        lines.append(f"📎 {payload['files']} file(s) from the customer: /files {number}")
    if hint and (number or "{ticket}" not in hint):  # a hint about a ticket needs its number
        lines.append(hint.format(ticket=number))
    return "\n".join(lines)


def _staff_buttons(kind: str, number: str) -> Buttons:
    if kind != "assigned" or not number:
        return ()
    return ((("✅ Accept", f"accept:{number}"), ("❌ Decline", f"decline:{number}")),)


def _labels(payload: dict) -> str:
    """ "P1 incident/technical" from what the payload has of the ticket's labels."""
    kinds = "/".join(str(payload[k]) for k in ("type", "category") if payload.get(k))
    return " ".join(part for part in (str(payload.get("priority") or ""), kinds) if part)


def _without_prefix(text: str, prefix: str) -> str:
    """The router's texts start with the ticket number (and some with what happened), which the
    first line shows already."""
    text = text.strip()
    if prefix and text.casefold().startswith(prefix.casefold()):
        text = text[len(prefix):].lstrip(" :：-—.")
    return text


def _preview(text: object) -> str:
    """The first lines of the customer's message, quoted, for an agent deciding whether to accept."""
    if not isinstance(text, str) or not text.strip():
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    quoted = "\n".join(f"› {line}" for line in lines[:_PREVIEW_LINES])
    if len(quoted) > _PREVIEW_CHARS or len(lines) > _PREVIEW_LINES:
        quoted = quoted[:_PREVIEW_CHARS].rstrip() + "…"
    return quoted


def _fit(text: str, cut_note: str) -> str:
    """The text within Telegram's limit; a longer one is cut and ends with "…" and `cut_note`."""
    if _utf16_units(text) <= TEXT_LIMIT:
        return text
    room = TEXT_LIMIT - _utf16_units("…" + cut_note)
    # Cutting the UTF-16 bytes may split a surrogate pair (an emoji): "ignore" drops the half.
    kept = text.encode("utf-16-le")[: room * 2].decode("utf-16-le", "ignore")
    return kept.rstrip() + "…" + cut_note


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ---------------------------------------------------------------- sending (thin I/O)


# What the Bot API or the way to it can answer; anything else is a bug of ours and stays itself.
_PEER_ERRORS = (tg.TelegramAPIError, tg.ClientDecodeError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


class TelegramSender:
    """Sends one message through an aiogram Bot; raises TemporaryFailure or PermanentFailure."""

    def __init__(self, bot: Bot):
        self.bot = bot

    async def send(self, message: TelegramSend) -> None:
        """Returns once Telegram has accepted the message."""
        markup = None
        if message.buttons:
            markup = InlineKeyboardMarkup(inline_keyboard=[
                [InlineKeyboardButton(text=label, callback_data=data) for label, data in row]
                for row in message.buttons
            ])
        try:
            if len(message.documents) == 1:
                [document] = message.documents
                await self.bot.send_document(chat_id=message.chat_id, caption=message.text[:CAPTION_LIMIT],
                                             parse_mode=None, document=_upload(document))
                return
            if message.documents:  # one message all the same: the caption rides on the first
                await self.bot.send_media_group(chat_id=message.chat_id, media=[
                    InputMediaDocument(media=_upload(document), caption=message.text[:CAPTION_LIMIT] if n == 0 else None,
                                       parse_mode=None)
                    for n, document in enumerate(message.documents)])
                return
            # parse_mode=None explicitly: a Bot built with a default parse mode must not apply it here.
            # No link previews: Telegram's servers would fetch every link we pass on (a customer's URL in
            # an agent's chat, a dashboard sign-in link) and show whatever they found.
            await self.bot.send_message(chat_id=message.chat_id, text=message.text, parse_mode=None,
                                        reply_markup=markup, link_preview_options=NO_PREVIEW)
        except _PEER_ERRORS as error:
            raise delivery_failure(error, message.chat_id) from error


def _upload(document: TelegramFile) -> BufferedInputFile:
    return BufferedInputFile(document.data, filename=document.filename)


def delivery_failure(error: BaseException, chat_id: int) -> TemporaryFailure | PermanentFailure:
    """What an error from sending to `chat_id` means for the outbox item."""
    said = getattr(error, "message", None) or str(error) or type(error).__name__
    if isinstance(error, tg.TelegramRetryAfter):
        return TemporaryFailure(f"Telegram asked us to slow down (429): retry after {error.retry_after} s",
                                retry_after=float(error.retry_after))
    if isinstance(error, tg.TelegramMigrateToChat):
        return PermanentFailure(f"chat {chat_id} became supergroup {error.migrate_to_chat_id}; "
                                f"use that id for this recipient")
    if isinstance(error, tg.TelegramUnauthorizedError):
        # The token is wrong or revoked: no message can go out until the settings are fixed, so every
        # item waits (and retries) instead of all of them failing for good.
        return TemporaryFailure(f"Telegram refused the bot token (401: {said}); check the bot token setting")
    if isinstance(error, tg.TelegramForbiddenError):
        return PermanentFailure(f"Telegram chat {chat_id} cannot be written to (403: {said}); the user blocked "
                                f"the bot or never started a chat with it")
    if isinstance(error, (tg.TelegramBadRequest, tg.TelegramEntityTooLarge)):
        return PermanentFailure(f"Telegram refused the message to chat {chat_id}: {said}")
    if isinstance(error, tg.TelegramServerError):
        return TemporaryFailure(f"Telegram had a server error: {said}")
    if isinstance(error, tg.TelegramNetworkError):
        return TemporaryFailure(f"Telegram could not be reached: {said}")
    if isinstance(error, (tg.TelegramAPIError, tg.ClientDecodeError)):
        return TemporaryFailure(f"Telegram answered unexpectedly: {said}")
    return TemporaryFailure(f"Telegram could not be reached: {said}")  # aiohttp, a timeout, the socket


def sync_send(sender: TelegramSender, loop: asyncio.AbstractEventLoop, *,
              timeout: float = SEND_TIMEOUT) -> Callable[[TelegramSend], None]:
    """A blocking `send` for `deliver_due`, which runs in a worker thread: each message is sent on
    `loop`, the event loop the Bot's HTTP session belongs to."""

    def send(message: TelegramSend) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("sync_send blocks: call it from a worker thread (asyncio.to_thread), not the loop")
        future = asyncio.run_coroutine_threadsafe(sender.send(message), loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError as error:
            future.cancel()
            raise TemporaryFailure(f"Telegram did not answer within {timeout:g} s") from error
        except concurrent.futures.CancelledError as error:
            raise TemporaryFailure("the Telegram sender stopped before the message went out") from error

    return send
