"""Read one Telegram Bot API update (the JSON dict) into plain facts, and turn a customer's message
into an InboundMessage. Pure: no I/O, and it never raises on any update Telegram may send; missing
or oddly typed fields read as None / "" instead.

Only `to_inbound` refuses input, and only an Incoming without a sender or a message (a callback
query, a channel post): those are not customer messages, and the caller checks `kind` first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.telegram.console import TICKET_NUMBER
from models.message import Attachment, Channel, Identity, IdentityKind, InboundMessage, Sender, ThreadRefs

# (file_id, file_name, mime_type, file_size)
FileRef = tuple[str, str, str, int | None]

_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{3,64}))?(?:\s|$)")

# Update keys that carry a message, and the kind we report for each. A channel post is read like a
# message (chat and text are filled) but its kind is "other": a channel is not a customer.
_MESSAGE_KINDS = {
    "message": "message",
    "edited_message": "edited_message",
    "channel_post": "other",
    "edited_channel_post": "other",
}


@dataclass(frozen=True)
class Incoming:
    """What one update says, in the terms the support bot cares about."""

    update_id: int | None
    kind: str  # "message" | "edited_message" | "callback_query" | "other"
    from_id: int | None
    chat_id: int | None
    chat_type: str  # "private" | "group" | "supergroup" | "channel" | ""
    message_id: int | None
    text: str  # text or caption; a sticker, location, dice... as a short description; "" if none
    reply_to_text: str | None  # the replied-to message's text; for a button press, the button's message
    reply_to_message_id: int | None
    callback_id: str | None
    callback_data: str | None
    display_name: str
    username: str | None
    language_code: str | None
    contact_phone: str | None  # only the sender's own number (a shared contact whose user_id is theirs)
    files: tuple[FileRef, ...]
    date: datetime | None  # when the message was sent (UTC); None when the update has no date
    raw: bytes  # the update as compact UTF-8 JSON, kept as received
    edit_date: int | None = None  # unix time of an edit; part of an edited message's external_id
    # Photos and documents sent together arrive as one update each, sharing this id; only the first
    # carries the caption (a command), so the others are read as going where it went.
    media_group_id: str | None = None


# ---- small tolerant readers: Telegram's JSON is trusted for shape, not for presence ----------------


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    # bool is an int subclass; an id is never a boolean.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _date(value: Any) -> datetime | None:
    seconds = _int(value)
    if seconds is None or seconds <= 0:
        return None  # 0 is what Telegram sends for an inaccessible message
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _raw_bytes(update: Any) -> bytes:
    try:
        return json.dumps(update, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    except (TypeError, ValueError):  # a circular structure: only possible for hand-made dicts
        return repr(update).encode("utf-8", "replace")


def _display_name(user: dict, chat: dict) -> str:
    name = " ".join(part for part in (_str(user.get("first_name")), _str(user.get("last_name"))) if part)
    return name.strip() or _str(user.get("username")) or _str(chat.get("title")) or ""


def _message_text(message: dict) -> str:
    return _str(message.get("text")) or _str(message.get("caption")) or ""


def _described(message: dict) -> str:
    """A short line for content that has no text and is not a file worth keeping."""
    if sticker := _dict(message.get("sticker")):
        return f"[sticker {_str(sticker.get('emoji')) or ''}]".replace(" ]", "]")
    if venue := _dict(message.get("venue")):
        title = _str(venue.get("title")) or ""
        address = _str(venue.get("address")) or ""
        return f"[venue {', '.join(p for p in (title, address) if p)}]"
    if location := _dict(message.get("location")):
        latitude, longitude = location.get("latitude"), location.get("longitude")
        if isinstance(latitude, (int, float)) and isinstance(longitude, (int, float)):
            return f"[location {latitude:.5g},{longitude:.5g}]"
        return "[location]"
    if dice := _dict(message.get("dice")):
        emoji = _str(dice.get("emoji")) or "🎲"
        value = _int(dice.get("value"))
        return f"[dice {emoji} {value}]" if value is not None else f"[dice {emoji}]"
    if contact := _dict(message.get("contact")):
        name = " ".join(p for p in (_str(contact.get("first_name")), _str(contact.get("last_name"))) if p)
        phone = _str(contact.get("phone_number")) or ""
        return f"[contact {' '.join(p for p in (name, phone) if p)}]"
    if poll := _dict(message.get("poll")):
        return f"[poll {_str(poll.get('question')) or ''}]".replace(" ]", "]")
    return ""


def _file(item: dict, default_name: str, default_mime: str) -> FileRef | None:
    file_id = _str(item.get("file_id"))
    if not file_id:
        return None
    return (
        file_id,
        _str(item.get("file_name")) or default_name,
        _str(item.get("mime_type")) or default_mime,
        _int(item.get("file_size")),
    )


def _photo_size_rank(size: dict) -> tuple[int, int]:
    width, height = _int(size.get("width")) or 0, _int(size.get("height")) or 0
    return (width * height, _int(size.get("file_size")) or 0)


def _files(message: dict) -> tuple[FileRef, ...]:
    """The files a customer sent, each once. A sticker is not one (it is described in the text)."""
    found: list[FileRef | None] = []
    sizes = [s for s in _list(message.get("photo")) if isinstance(s, dict)]
    if sizes:
        # Telegram lists one photo in several sizes; the largest is the one the customer sent.
        found.append(_file(max(sizes, key=_photo_size_rank), "photo.jpg", "image/jpeg"))
    # An animation (GIF) also arrives as "document" with the same file_id; the dedup below keeps one.
    for key, default_name, default_mime in (
        ("animation", "animation.mp4", "video/mp4"),
        ("document", "document", "application/octet-stream"),
        ("video", "video.mp4", "video/mp4"),
        ("video_note", "video_note.mp4", "video/mp4"),
        ("voice", "voice.ogg", "audio/ogg"),
        ("audio", "audio.mp3", "audio/mpeg"),
    ):
        if item := _dict(message.get(key)):
            found.append(_file(item, default_name, default_mime))
    unique: dict[str, FileRef] = {}
    for ref in found:
        if ref is not None and ref[0] not in unique:
            unique[ref[0]] = ref
    return tuple(unique.values())


def _own_contact_phone(message: dict, from_id: int | None) -> str | None:
    contact = _dict(message.get("contact"))
    phone = _str(contact.get("phone_number"))
    # Anyone can share anyone's contact card; only the sender's own card proves their number.
    if phone and from_id is not None and _int(contact.get("user_id")) == from_id:
        return phone
    return None


# ---- reading ------------------------------------------------------------------------------------


def read_update(update: dict) -> Incoming:
    """The facts of one update. Never raises; an update we do not handle has kind "other"."""
    update = _dict(update)
    raw = _raw_bytes(update)
    update_id = _int(update.get("update_id"))

    for key, kind in _MESSAGE_KINDS.items():
        message = _dict(update.get(key))
        if message:
            return _from_message(update_id, kind, message, raw)

    callback = _dict(update.get("callback_query"))
    if callback:
        return _from_callback(update_id, callback, raw)

    return _empty(update_id, raw)


def _empty(update_id: int | None, raw: bytes) -> Incoming:
    return Incoming(
        update_id=update_id, kind="other", from_id=None, chat_id=None, chat_type="", message_id=None,
        text="", reply_to_text=None, reply_to_message_id=None, callback_id=None, callback_data=None,
        display_name="", username=None, language_code=None, contact_phone=None, files=(), date=None,
        raw=raw,
    )


def _from_message(update_id: int | None, kind: str, message: dict, raw: bytes) -> Incoming:
    user = _dict(message.get("from"))
    chat = _dict(message.get("chat"))
    from_id = _int(user.get("id"))
    replied = _dict(message.get("reply_to_message"))
    reply_to_text = (_message_text(replied) or None) if replied else None
    # A reply can also quote a message from another chat ("external_reply"); only its quote has text.
    if not replied and (quote := _dict(message.get("quote"))):
        reply_to_text = _str(quote.get("text"))
    files = _files(message)
    text = _message_text(message) or _described(message)
    return Incoming(
        update_id=update_id,
        kind=kind,
        from_id=from_id,
        chat_id=_int(chat.get("id")),
        chat_type=_str(chat.get("type")) or "",
        message_id=_int(message.get("message_id")),
        text=text,
        reply_to_text=reply_to_text,
        reply_to_message_id=_int(replied.get("message_id")),
        callback_id=None,
        callback_data=None,
        display_name=_display_name(user, chat),
        username=_str(user.get("username")),
        language_code=_str(user.get("language_code")),
        contact_phone=_own_contact_phone(message, from_id),
        files=files,
        date=_date(message.get("date")),
        raw=raw,
        edit_date=_int(message.get("edit_date")),
        media_group_id=_str(message.get("media_group_id")),
    )


def _from_callback(update_id: int | None, callback: dict, raw: bytes) -> Incoming:
    user = _dict(callback.get("from"))
    message = _dict(callback.get("message"))  # the message carrying the button; may be inaccessible
    chat = _dict(message.get("chat"))
    return Incoming(
        update_id=update_id,
        kind="callback_query",
        from_id=_int(user.get("id")),
        chat_id=_int(chat.get("id")),
        chat_type=_str(chat.get("type")) or "",
        message_id=_int(message.get("message_id")),
        text="",
        # The button sits on one of our messages (an acknowledgement, an agent notification) that
        # names the ticket: reading it like a reply lets the same ticket-number rule apply.
        reply_to_text=_message_text(message) or None,
        reply_to_message_id=_int(message.get("message_id")),
        callback_id=_str(callback.get("id")),
        callback_data=_str(callback.get("data")),
        display_name=_display_name(user, chat),
        username=_str(user.get("username")),
        language_code=_str(user.get("language_code")),
        contact_phone=None,
        files=(),
        date=None,  # Telegram does not say when the button was pressed
        raw=raw,
    )


# ---- questions the bot asks -----------------------------------------------------------------------


def is_private(incoming: Incoming) -> bool:
    """A one-to-one chat with the bot: the only place customers write to us."""
    return incoming.chat_type == "private"


def is_command(incoming: Incoming, bot_username: str | None = None) -> str | None:
    """"/start" for "/start@paidan_bot payload"; None when the text is not a command (or, given
    `bot_username`, a command addressed to another bot in a group)."""
    if incoming.kind not in ("message", "edited_message"):
        return None
    found = _COMMAND.match(incoming.text)
    if not found:
        return None
    addressee = found.group(2)
    if addressee and bot_username and addressee.lower() != bot_username.lstrip("@").lower():
        return None
    return "/" + found.group(1).lower()


# Linking an email address to the chat: "/link you@example.com", then "/link 123456". Telegram
# commands are Latin letters only, so the Chinese form is the text "绑定邮箱 …": taken as a link
# request only when one address or one number follows, so "绑定邮箱失败怎么办" stays a question.
_LINK_WORDS = re.compile(r"^\s*绑定邮箱[\s:：]+(\S+)\s*$")


def link_argument(incoming: Incoming, bot_username: str | None = None) -> str | None:
    """What follows /link ("" when nothing does), or None when the message is no link request."""
    if is_command(incoming, bot_username) == "/link":
        parts = incoming.text.split(maxsplit=1)
        return parts[1].strip() if len(parts) > 1 else ""
    found = _LINK_WORDS.match(incoming.text) if incoming.kind in ("message", "edited_message") else None
    if found and ("@" in found.group(1) or found.group(1).isdigit()):
        return found.group(1)
    return None


def new_ticket_text(incoming: Incoming, bot_username: str | None = None) -> str | None:
    """What follows /new ("" when nothing does): a customer starting a conversation of its own, however
    close to an open one; None when the message is not /new."""
    if is_command(incoming, bot_username) != "/new":
        return None
    parts = incoming.text.split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


def ticket_number_in(text: str | None) -> str | None:
    found = TICKET_NUMBER.search(text or "")
    return found.group(0).upper() if found else None


def language_of(language_code: str | None) -> str | None:
    """The primary language subtag: "zh-hans" -> "zh", "en-US" -> "en"."""
    primary = (language_code or "").strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary.isalpha() and 2 <= len(primary) <= 3 else None


def external_id_of(incoming: Incoming) -> str:
    """Intake's deduplication key: an edit is a new text of the same message, kept as its own row."""
    base = f"{incoming.chat_id}:{incoming.message_id}"
    if incoming.kind == "edited_message":
        return f"{base}:edit:{incoming.edit_date or 0}"
    return base


def e164(phone: str) -> str:
    """Telegram sends a contact's phone with or without "+", sometimes with spaces: "+digits"."""
    return "+" + "".join(ch for ch in phone if ch.isdigit())


def to_inbound(
    incoming: Incoming, *, received_at: datetime, attachments: tuple[Attachment, ...] = ()
) -> InboundMessage:
    """The customer message as intake stores it. Raises ValueError for an Incoming that is not a
    message from a user (no sender, chat or message id)."""
    if incoming.from_id is None or incoming.chat_id is None or incoming.message_id is None:
        raise ValueError(f"update {incoming.update_id} ({incoming.kind}) is not a message from a user")
    identities = [Identity(IdentityKind.TELEGRAM, str(incoming.from_id))]
    if incoming.contact_phone and any(ch.isdigit() for ch in incoming.contact_phone):
        identities.append(Identity(IdentityKind.PHONE, e164(incoming.contact_phone)))
    flags: list[str] = []
    if incoming.kind == "edited_message":
        flags.append("edited")
    if len(attachments) < len(incoming.files):
        flags.append("attachment_missing")
    fresh = new_ticket_text(incoming)
    if fresh is not None:  # "/new …": a ticket of its own, whatever it names or answers
        # An edit of it corrects that message (kept beside it, as edits are), not another new ticket.
        text, refs = fresh, ThreadRefs(new_ticket=incoming.kind == "message")
    else:  # the customer typed the number, or replied to our acknowledgement that names it
        text = incoming.text
        refs = ThreadRefs(ticket_number=ticket_number_in(incoming.text) or ticket_number_in(incoming.reply_to_text))
    return InboundMessage(
        channel=Channel.TELEGRAM,
        external_id=external_id_of(incoming),
        sender=Sender(tuple(identities), display_name=incoming.display_name),
        text=text,
        received_at=received_at,
        raw=incoming.raw,
        attachments=tuple(attachments),
        thread_refs=refs,
        language=language_of(incoming.language_code),
        flags=tuple(flags),
    )
