"""The agent console's language: what an agent types or taps in Telegram, read into a command (pure).

`paidan.telegram_console` runs the commands against the router; this module only reads text, so
every form and every mistake can be tested without a bot or a database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from models.message import HAN, Attachment

# GD + the date (8 digits) + a per-day sequence of at least three digits. Not \b: Chinese text is
# made of word characters too, and "工单GD20261123001" must still name the ticket.
TICKET_NUMBER = re.compile(r"(?<![A-Za-z0-9])GD\d{11,}(?!\d)", re.IGNORECASE)
EXAMPLE = "GD20261123001"

# Commands that act on one ticket: the right form of each, shown when it was typed wrong.
TICKET_COMMANDS: dict[str, str] = {
    "accept": f"/accept {EXAMPLE}",
    "take": f"/take {EXAMPLE} (a ticket from /queue)",
    "decline": f"/decline {EXAMPLE} [reason]",
    "reply": f"/reply {EXAMPLE} 您好…",
    "note": f"/note {EXAMPLE} 客户上次也退过一次款",
    "wait": f"/wait {EXAMPLE} [note]",
    "resolve": f"/resolve {EXAMPLE} [note]",
    "reopen": f"/reopen {EXAMPLE} 客户说问题还在",
    "relabel": f"/relabel {EXAMPLE} priority P1",
    "assign": f"/assign {EXAMPLE} [agent]",
    "show": f"/show {EXAMPLE}",
    "files": f"/files {EXAMPLE}",
    "merge": "/merge GD20261123002 GD20261123001 [原因 reason]",
    "spam": f"/spam {EXAMPLE} [原因 reason]",
    "remind": f"/remind {EXAMPLE} 2h 客户说下午回电 (m, h or d: 30m, 2h, 3d)",
    "notspam": f"/notspam {EXAMPLE} [原因 reason]",
    "split": f"/split {EXAMPLE} [2] [原因 reason] (the customer's latest message, or latest 2, to a new ticket)",
}
LISTING_COMMANDS = frozenset({"queue", "mine", "dashboard"})  # commands that name no ticket
AVAILABILITY_COMMANDS = frozenset({"online", "offline"})  # an agent starts or ends their working time
# `/replies` lists the saved replies, `/replies NAME` shows one; supervisors keep them with these.
SAVED_REPLY_COMMANDS: dict[str, str] = {
    "add": "/replies add refund 您好，退款将在 3-5 个工作日内到账 || Hello, the refund arrives in 3-5 working days",
    "edit": "/replies edit refund || Hello {name}, the refund arrives in 3-5 working days",
    "remove": "/replies remove refund",
}
HELP_COMMANDS = frozenset({"help", "start"})
# `/open CUSTOMER text`: write to a customer first, which opens a ticket (router/outreach.py).
OPEN_FORM = "/open kehu@example.com 您好，您的订单付款未成功… (or #12, telegram:123456)"
DUE_DEFAULT = timedelta(hours=2)  # how far ahead /due looks unless told
FIND_NEEDS = "/find needs what to look for: /find 1234567890, /find kehu@example.com, /find 张三 or /find 发票"
# What must follow the ticket number, for the commands that need more than the number.
_NEEDS = {"reply": "text", "note": "text", "reopen": "a reason", "relabel": "a head and a label",
          "merge": "the ticket it repeats", "remind": "when (30m, 2h, 3d)"}
BUTTON_ACTIONS = frozenset({"accept", "decline"})

HELP = "\n".join([
    "派单客服台 · paidan agent console",
    "",
    "/queue 待分配工单 · waiting tickets   /mine 我的工单 · your tickets   /due [2h] 将超时 · SLA due",
    "/find 订单号/邮箱/电话/文字 查找工单 · find tickets   /open 邮箱或#客户 文字 主动联系 · write first",
    "/report [天数] 报表 · the figures   /dashboard 看板 · charts (supervisors)",
    "/show GD… 查看工单 · show a ticket   /files GD… 客户附件 · the customer's files",
    "/accept GD… 接单 · accept   /decline GD… [原因] 拒单 · decline   /take GD… 领取 · take",
    "/reply GD… 文字 回复客户 · reply to the customer   /note GD… 文字 内部备注 · internal note",
    "  直接回复工单通知（文字或 !名称）即可 · or simply reply to the ticket's notification",
    "/reply GD… !名称 [补充] 发送常用回复 · send a saved reply, your words after it",
    "/wait GD… [说明] 等待客户 · wait (SLA paused)   /remind GD… 2h [说明] 提醒我 · remind me",
    "/resolve GD… [说明] 已解决 · resolve   /reopen GD… 原因 重新打开 · reopen, with a reason",
    "/relabel GD… priority P1 更正标签 · correct a label (type, category, priority)",
    "/assign GD… [坐席] 转派 · hand on (to an agent, or the best available)",
    "/merge GD…2 GD…1 [原因] 合并 · merge the first into the second   /split GD… [条数] 拆分 · split",
    "/spam GD… [原因] 垃圾信息 · close it and block the sender   /notspam GD… 撤销 · undo",
    "/online /offline 上线 / 下线 · start or stop taking tickets (主管 /offline 坐席: hands on all)",
    "/replies 常用回复 · list them   /replies add|edit|remove 名称 中文 || English 主管 · supervisors",
])


@dataclass(frozen=True, slots=True)
class ConsoleCommand:
    """One thing an agent asked for. `ticket` is upper case; the other fields as the action needs."""

    # A key of TICKET_COMMANDS, one of LISTING_COMMANDS, "find", "replies", or add_reply, edit_reply, remove_reply.
    action: str
    ticket: str | None = None
    text: str = ""  # the reply or note; the reason or note of decline, wait, resolve and reopen
    head: str = ""  # relabel: type, category or priority (the action checks the label set)
    label: str = ""
    agent: str = ""  # assign: name or id; "" hands it to the best available agent
    via: str = "command"  # "command", "reply" (a Telegram reply to a ticket's message), "button" or "album"
    into: str = ""  # merge: the ticket that carries on
    to: str = ""  # open: the customer written to (#12, an email address, telegram:ID)
    after: timedelta | None = None  # remind: how long from now
    last: int = 1  # split: how many of the customer's latest messages move
    saved: str = ""  # the name of a saved reply: the one a reply sends (then `text` follows it), or /replies acts on
    zh: str = ""  # /replies add and edit: the Chinese and English texts ("" in edit: keep that one)
    en: str = ""
    attachments: tuple[Attachment, ...] = ()  # reply and note: the photo or document the message carried
    album: str = ""  # Telegram's media group id, when the files came as an album
    joins: int = 0  # a later file of an album: the reply or note (message id) its first file went with


@dataclass(frozen=True, slots=True)
class ConsoleHelp:
    text: str = HELP


@dataclass(frozen=True, slots=True)
class ConsoleMistake:
    """What was wrong, and the right form."""

    message: str


ConsoleInput = ConsoleCommand | ConsoleHelp | ConsoleMistake

_COMMAND = re.compile(r"/(\w+)(?:@\w+)?(?:\s+(.*))?", re.DOTALL)
# A reply that starts with `!name` (or `！name`, as a Chinese keyboard types it) sends the saved reply
# called so; whatever follows the name is the agent's own words, sent after it. "!!!" is just text,
# and `!!word` is the way to send text that really starts with "!word" (one "!" is dropped).
_SAVED_REPLY = re.compile(r"[!！]([^\W_][\w-]*)(.*)", re.DOTALL)


def parse_console(text: str | None, *, reply_to_text: str | None = None,
                  callback_data: str | None = None, has_files: bool = False) -> ConsoleInput:
    """Read a command, a button tap (`callback_data`) or a Telegram reply to a message that names a
    ticket (`reply_to_text`, the text of the message replied to). `has_files`: the message carries a
    photo or document (its caption is `text`), which a reply or a note takes along."""
    if callback_data is not None:
        return _button(callback_data)
    text = (text or "").strip()
    if not text and has_files:  # a screenshot without a caption, answering a ticket's message
        if len(ticket_numbers(reply_to_text)) == 1:
            return ConsoleCommand("reply", ticket_numbers(reply_to_text)[0], via="reply")
        return ConsoleMistake(f"to send files to a customer, send them as a reply to the ticket's message, or "
                              f"with the caption /reply {EXAMPLE} (and your text)")
    if not text:
        return ConsoleMistake("this message has no text; send /help for the commands")
    if text.startswith("/"):
        return _command(text, reply_to_text, has_files)
    return _reply_to_ticket_message(text, reply_to_text)


def ticket_numbers(text: str | None) -> list[str]:
    """The distinct ticket numbers a text names, in order, upper case."""
    return list(dict.fromkeys(n.upper() for n in TICKET_NUMBER.findall(text or "")))


def _button(data: str) -> ConsoleInput:
    action, _, number = data.partition(":")
    if action in BUTTON_ACTIONS and TICKET_NUMBER.fullmatch(number):
        return ConsoleCommand(action, number.upper(), via="button")
    return ConsoleMistake(f"this button is not understood ({data!r}); use /accept {EXAMPLE} or /decline {EXAMPLE}")


def _command(text: str, reply_to_text: str | None, has_files: bool = False) -> ConsoleInput:
    match = _COMMAND.fullmatch(text)
    if match is None:
        return ConsoleMistake(f"{text.split()[0]!r} is not a command; send /help for the list")
    name, rest = match.group(1).lower(), (match.group(2) or "").strip()
    if name in HELP_COMMANDS:
        return ConsoleHelp()
    if name in LISTING_COMMANDS:
        return ConsoleCommand(name)
    if name in AVAILABILITY_COMMANDS:  # `/offline NAME`: a supervisor sends someone home
        return ConsoleCommand(name, agent=rest)
    if name == "replies":
        return _saved_replies(rest)
    if name == "report":  # `/report` is today, `/report 7` the last seven days
        if rest and not (rest.isdigit() and 1 <= int(rest) <= 366):
            return ConsoleMistake(f"/report takes a number of days from 1 to 366, e.g. /report 7 (not {rest!r})")
        return ConsoleCommand(name, text=rest or "1")
    if name == "open":
        to, message = (rest.split(maxsplit=1) + [""])[:2]
        if not to or not message.strip():
            return ConsoleMistake(f"/open needs whom to write to and the message: {OPEN_FORM}")
        if TICKET_NUMBER.fullmatch(to):
            return ConsoleMistake(f"/open writes to a customer first; to answer {to.upper()}, send "
                                  f"/reply {to.upper()} and your text")
        return ConsoleCommand(name, to=to, text=message.strip())
    if name == "due":  # `/due` (the next 2 hours), `/due 30m`, `/due 1d`
        within = read_duration(rest) if rest else DUE_DEFAULT
        if within is None:
            return ConsoleMistake(f"/due takes how far ahead to look, e.g. /due 30m, /due 2h or /due 1d (not {rest!r})")
        return ConsoleCommand(name, after=within)
    if name == "find":  # anything after it is the query, a ticket number included
        return ConsoleCommand(name, text=rest) if rest else ConsoleMistake(FIND_NEEDS)
    if name not in TICKET_COMMANDS:
        return ConsoleMistake(f"there is no command /{name}; send /help for the list")

    number, rest = _ticket_and_rest(rest, reply_to_text)
    if number is None:
        if rest:
            first = rest.split()[0]
            # `/reply !refund` sent on its own: show the form with that saved reply.
            right = f"/reply {EXAMPLE} {first}" if name == "reply" and _SAVED_REPLY.fullmatch(first) \
                else TICKET_COMMANDS[name]
            return ConsoleMistake(f"{first!r} is not a ticket number (GD, the date and a sequence "
                                  f"number, e.g. {EXAMPLE}): {right}")
        return _needs(name)
    if name in _NEEDS and not rest and not (has_files and name in ("reply", "note")):
        return _needs(name)
    if name == "relabel":
        words = rest.split()
        if len(words) != 2:
            return _needs(name)
        return ConsoleCommand(name, number, head=words[0].lower(), label=words[1])
    if name == "assign":
        return ConsoleCommand(name, number, agent=rest)
    if name in ("accept", "take", "show", "files"):
        return ConsoleCommand(name, number)  # anything after the number says nothing more
    if name == "remind":
        when, note = (rest.split(maxsplit=1) + [""])[:2]
        after = read_duration(when)
        if after is None:
            return ConsoleMistake(f"{when!r} is not a time from now: {TICKET_COMMANDS[name]}")
        return ConsoleCommand(name, number, after=after, text=note.strip())
    if name == "merge":
        into, reason = (rest.split(maxsplit=1) + [""])[:2]
        if not TICKET_NUMBER.fullmatch(into):
            return ConsoleMistake(f"{into!r} is not a ticket number; name the ticket {number} repeats: "
                                  f"{TICKET_COMMANDS[name]}")
        return ConsoleCommand(name, number, into=into.upper(), text=reason.strip())
    if name == "reply":
        return _reply(number, rest, via="command")
    if name == "split":  # `/split GD…`, `/split GD… 2`, `/split GD… 2 发票是另一件事`
        count, reason = (rest.split(maxsplit=1) + ["", ""])[:2]
        if count.isascii() and count.isdigit():
            return ConsoleCommand(name, number, last=int(count), text=reason.strip())
        return ConsoleCommand(name, number, text=rest)
    return ConsoleCommand(name, number, text=rest)


_DURATION = re.compile(r"(\d{1,5})\s*(m|min|分钟|h|小时|d|天)", re.IGNORECASE)
_DURATION_UNITS = {"m": 60, "min": 60, "分钟": 60, "h": 3600, "小时": 3600, "d": 86400, "天": 86400}


def read_duration(text: str) -> timedelta | None:
    """ "30m", "2h", "3d" (or 30分钟, 2小时, 3天) as a timedelta; None for anything else."""
    found = _DURATION.fullmatch(text.strip())
    return timedelta(seconds=int(found.group(1)) * _DURATION_UNITS[found.group(2).lower()]) if found else None


def _reply(number: str, text: str, *, via: str) -> ConsoleCommand:
    """A reply to the customer: typed text, or `!name [more words]` for a saved reply."""
    if text[:1] in "!！" and text[1:2] in "!！" and _SAVED_REPLY.fullmatch(text[1:]):
        return ConsoleCommand("reply", number, text=text[1:], via=via)  # `!!word`: the text "!word"
    saved = _SAVED_REPLY.fullmatch(text)
    if saved is None:
        return ConsoleCommand("reply", number, text=text, via=via)
    return ConsoleCommand("reply", number, text=saved.group(2).strip(), via=via, saved=saved.group(1))


def _saved_replies(rest: str) -> ConsoleInput:
    """`/replies`, `/replies NAME`; for supervisors `/replies add|edit NAME 中文 || English`, `/replies remove NAME`."""
    words = rest.split(maxsplit=2)  # the texts keep their own lines
    if not words:
        return ConsoleCommand("replies")
    verb = words[0].lower()
    if verb not in SAVED_REPLY_COMMANDS:
        if len(words) > 1:
            return ConsoleMistake(f"/replies takes add, edit or remove, or one name to show: "
                                  f"/replies refund or {SAVED_REPLY_COMMANDS['add']}")
        return ConsoleCommand("replies", saved=words[0])
    action = f"{verb}_reply"
    if verb == "remove":
        if len(words) != 2:
            return ConsoleMistake(f"/replies remove needs the name of one saved reply: {SAVED_REPLY_COMMANDS[verb]}")
        return ConsoleCommand(action, saved=words[1])
    if len(words) < 3:
        return ConsoleMistake(f"/replies {verb} needs a name and the text, Chinese || English: "
                              f"{SAVED_REPLY_COMMANDS[verb]}")
    zh, en = _texts(words[2])
    return ConsoleCommand(action, saved=words[1], zh=zh, en=en)


def _texts(text: str) -> tuple[str, str]:
    """"中文 || English" as (zh, en); one text alone is Chinese if it has Chinese characters, else English."""
    if "||" in text:
        zh, _, en = text.partition("||")
        return zh.strip(), en.strip()
    text = text.strip()
    return (text, "") if HAN.search(text) else ("", text)


def _ticket_and_rest(rest: str, reply_to_text: str | None) -> tuple[str | None, str]:
    """The ticket named first, else the one the replied-to message names; and the text after it."""
    words = rest.split(maxsplit=1)  # the text after the number keeps its own lines
    if words and TICKET_NUMBER.fullmatch(words[0]):
        return words[0].upper(), words[1].strip() if len(words) > 1 else ""
    named = ticket_numbers(reply_to_text)
    if len(named) == 1:
        return named[0], rest
    return None, rest


def _needs(name: str) -> ConsoleMistake:
    more = f" and {_NEEDS[name]}" if name in _NEEDS else ""
    return ConsoleMistake(f"/{name} needs a ticket number{more}: {TICKET_COMMANDS[name]}")


def _reply_to_ticket_message(text: str, reply_to_text: str | None) -> ConsoleInput:
    """Plain text answering a ticket's message goes to that ticket's customer."""
    if reply_to_text is None:
        return ConsoleMistake("to answer a customer, reply to the ticket's message or send "
                              f"/reply {EXAMPLE} 您好…; send /help for the commands")
    named = ticket_numbers(reply_to_text)
    if not named:
        return ConsoleMistake(f"the message you replied to names no ticket; send /reply {EXAMPLE} 您好… instead")
    if len(named) > 1:
        # A listing names several: guessing which customer is meant could send the text to the wrong one.
        listed = ", ".join(named[:3]) + (", …" if len(named) > 3 else "")
        return ConsoleMistake(f"the message you replied to names several tickets ({listed}); "
                              f"say which: /reply {named[0]} {_clip(text, 20)}")
    return _reply(named[0], text, via="reply")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rstrip() + "…"
