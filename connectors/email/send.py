"""Sending the outbox's email: build each message (pure) and hand it to an SMTP relay (thin I/O).

`connectors.outbox.deliver_due` ties claiming, building, sending and bookkeeping together; smtplib
is synchronous, so the wiring runs it in a thread.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from urllib.parse import urlencode

from connectors.outbox import (
    DeliveryError,
    FileLoader,
    OutboxItem,
    PermanentFailure,
    TemporaryFailure,
    by_language,
    utc_time,
    waiting_reminder_text,
)
from models.sealing import SealError, unseal

# Mail a machine sends on its own carries RFC 3834's Auto-Submitted, so that other robots (vacation
# responders, other help desks) do not answer it and start a loop: "auto-replied" when the customer's
# own message prompted it (the acknowledgement), "auto-generated" when nothing of theirs did (the survey
# sent on resolving, the code a Telegram user asked us to mail). A human agent's reply carries none: the
# customer's autoresponder may answer it like any mail.
AUTO_SUBMITTED = {"ack": "auto-replied", "survey": "auto-generated", "link_code": "auto-generated",
                  "reminder": "auto-generated"}
# Kinds whose payload holds a sealed secret, opened only while the mail is built (router.linking).
SEALED_KINDS = frozenset({"link_code"})
MAX_SUBJECT_QUOTE = 200  # how much of the customer's subject an acknowledgement repeats
# kind "survey": (survey id, ticket number) -> the survey page's URL, which the wiring signs.
SurveyLink = Callable[[int, str], str]


@dataclass(frozen=True, slots=True)
class RelayConfig:
    host: str
    port: int
    from_address: str  # e.g. support@example.com
    from_name: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # On by default: a login must never cross the network in clear. A relay on the same machine
    # (port 25 on localhost) usually offers no TLS: turn it off there.
    starttls: bool = True
    timeout: float = 30.0  # seconds, for connecting and for each SMTP answer
    code_key: bytes | None = field(default=None, repr=False)  # opens the sealed code of a link_code mail
    # The web status page (`public_url` + "/status"): acknowledgements link to it with their number filled in.
    status_url: str | None = None
    # The domains our SMTP server takes mail for (`[email] smtp_domains`), besides from_address's own:
    # a reply never copies an address at any of them.
    own_domains: tuple[str, ...] = ()
    # Agents' replies end with a signature: the agent's name and from_name (`[email] sign_replies`).
    sign_replies: bool = True


# ---------------------------------------------------------------- building (pure)


def build_outbox_email(item: OutboxItem, config: RelayConfig, survey_link: SurveyLink | None = None,
                       load_file: FileLoader | None = None) -> EmailMessage:
    """`build_email` for a claimed outbox row: the same row always gives the same message. `load_file`
    reads the files an agent's reply carries (paidan's wiring passes the database's)."""
    payload = _with_link_code(item.payload, config.code_key) if item.kind in SEALED_KINDS else item.payload
    if item.kind == "survey":
        payload = {**payload, "link": _survey_url(payload, survey_link)}
    if item.kind == "ack" and config.status_url and payload.get("ticket"):
        payload = {**payload, "status_link": f"{config.status_url}?{urlencode({'number': payload['ticket']})}"}
    message = build_email(
        item.kind, item.recipient, payload, from_address=config.from_address, from_name=config.from_name,
        fallback_message_id=outbox_message_id(item.id, item.dedupe_key, item.created_at, config.from_address),
        # RFC 5322's Date is when the message was ready to go, i.e. when it was queued, not this try.
        date=item.created_at, sign=config.sign_replies,
    )
    if item.kind == "reply" and (cc := copied(payload.get("cc"), item.recipient, config.from_address, config.own_domains)):
        message["Cc"] = ", ".join(cc)  # smtplib's send_message takes Cc as recipients of the envelope too
    for described in payload.get("attachments") or ():
        found = load_file(described.get("id")) if load_file is not None else None
        if found is None:
            raise PermanentFailure(f"the reply's file {described.get('filename')!r} is no longer stored")
        filename, data = found
        maintype, _, subtype = (described.get("content_type") or "application/octet-stream").partition("/")
        message.add_attachment(data, maintype=maintype or "application", subtype=subtype or "octet-stream",
                               filename=filename)
    return message


def copied(cc: Iterable[str] | None, recipient: str, from_address: str, own_domains: Iterable[str] = ()) -> list[str]:
    """Whom a reply copies: the others the customer wrote to, without the customer and without anyone
    at our own domains (our mailboxes and aliases: copying them would feed our reply back into intake)."""
    ours = {from_address.rpartition("@")[2].lower(), *(domain.lower() for domain in own_domains)}
    return [address for address in cc or () if isinstance(address, str) and "@" in address
            and address.lower() != recipient.lower() and address.rpartition("@")[2].lower() not in ours]


def outbox_message_id(item_id: int, dedupe_key: str | None, created_at: datetime, from_address: str) -> str:
    """A Message-ID for an outbox row whose payload has none, the same on every retry: a mail delivered
    twice (the relay took it but the connection dropped before its 250) is then shown once.

    The creation time is mixed in because ids start again from 1 when a database is recreated, and a
    reused id must not look like a message the customer's mail client already has.
    """
    seed = f"{item_id}|{dedupe_key or ''}|{created_at.isoformat()}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:16]
    domain = from_address.rpartition("@")[2] or "paidan"
    return f"<outbox.{item_id}.{digest}@{domain}>"


def build_email(kind: str, recipient: str, payload: dict, *, from_address: str, from_name: str,
                fallback_message_id: str, date: datetime | None = None, sign: bool = False) -> EmailMessage:
    """The email for one outbox item; raises PermanentFailure when the item cannot become one.

    `date` defaults to now; pass the item's creation time to make the result depend on its inputs only.
    `sign`: an agent's reply ends with a signature (their name and `from_name`).
    """
    if "@" not in recipient:
        raise PermanentFailure(f"{recipient!r} is not an email address")
    message = EmailMessage()  # the default policy encodes UTF-8 subjects and names as RFC 2047 words
    message["From"] = Address(display_name=from_name, addr_spec=from_address)
    message["To"] = recipient
    message["Subject"] = _subject(kind, payload)
    message["Date"] = date or datetime.now(UTC)
    message["Message-ID"] = payload.get("message_id") or fallback_message_id
    in_reply_to = payload.get("in_reply_to")
    references = list(payload.get("references") or ([in_reply_to] if in_reply_to else []))
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = " ".join(references)
    if kind in AUTO_SUBMITTED:
        message["Auto-Submitted"] = AUTO_SUBMITTED[kind]
        message["X-Auto-Response-Suppress"] = "All"  # Exchange and Outlook's spelling of the same wish
    body = _body(kind, payload)
    if sign and kind == "reply":
        body = f"{body.rstrip()}\n\n{signature(payload.get('agent'), from_name)}"
    message.set_content(body)  # text/plain; charset="utf-8"
    return message


def signature(agent: str | None, team: str) -> str:
    """Under an agent's reply: who wrote it and for whom, after the "-- " line mail clients know as the
    start of a signature (they grey it out, and leave it out when the customer quotes the reply)."""
    return "\n".join(["-- ", *(line for line in (agent, team) if line)])


def _subject(kind: str, payload: dict) -> str:
    number = payload.get("ticket") or ""
    tag = f"[{number}]" if number else ""
    if kind == "ack":
        # The ticket tag in the subject is what threads the customer's answer back to the ticket.
        said = by_language(payload.get("language"), zh="已收到您的来信", en="We received your message")
        quoted = " ".join((payload.get("subject") or "").split())[:MAX_SUBJECT_QUOTE]
        return " ".join(part for part in (f"{said}:" if quoted else said, quoted, tag) if part)
    if kind == "link_code":  # the code itself stays out of the subject, which previews and logs show
        return by_language(payload.get("language"), zh="邮箱绑定验证码", en="Your code to link this email address")
    if kind == "survey":
        return f"{by_language(payload.get('language'), zh='您对本次服务满意吗？', en='How did we do?')} {tag}".strip()
    if kind == "reminder":  # the tag threads their answer back to the ticket
        return f"{by_language(payload.get('language'), zh='等待您的回复', en='Waiting for your reply')} {tag}".strip()
    return payload.get("subject") or f"Re: {tag}".strip()


def _body(kind: str, payload: dict) -> str:
    if kind == "ack":
        return _acknowledgement_text(payload)
    if kind == "link_code":
        return _link_code_text(payload)
    if kind == "survey":
        return _survey_text(payload)
    if kind == "reminder":
        zh, en = waiting_reminder_text(payload)
        zh += "\n\n如需回复，直接回复本邮件即可。\n（此邮件由系统自动发送。）"
        en += "\n\nTo answer, reply to this email.\n(This message was sent automatically.)"
        return by_language(payload.get("language"), zh=zh, en=en, joiner="\n\n---\n\n") + "\n"
    text = payload.get("text")
    if not text and payload.get("attachments"):  # an agent sent only files
        return by_language(payload.get("language"), zh="请查看附件。", en="Please see the attached file(s).",
                           joiner="\n")
    if not text:
        raise PermanentFailure(f"the {kind} has no text to send")
    return text


def _acknowledgement_text(payload: dict) -> str:
    number = payload.get("ticket") or "?"
    due = utc_time(payload.get("first_response_due"))
    link = payload.get("status_link")
    zh = [
        "您好！", "",
        f"我们已收到您的来信，工单号：{number}。",
        *([f"我们会在 {due} 前给您首次答复。"] if due else []),
        *([f"随时查看进度（输入本邮箱即可）：{link}"] if link else []),
        f"如需补充，直接回复本邮件即可；请保留主题中的 [{number}]，以便归入同一工单。", "",
        "（此邮件由系统自动发送。）",
    ]
    en = [
        "Hello,", "",
        f"We have received your message; your ticket number is {number}.",
        *([f"We will get back to you by {due}."] if due else []),
        *([f"See where it stands at any time (with this email address): {link}"] if link else []),
        f"To add anything, reply to this email and keep [{number}] in the subject so that it joins the same ticket.",
        "", "(This message was sent automatically.)",
    ]
    return by_language(payload.get("language"), zh="\n".join(zh), en="\n".join(en), joiner="\n\n---\n\n") + "\n"


def _with_link_code(payload: dict, key: bytes | None) -> dict:
    """The payload with its sealed code opened (only here, on the way into the mail)."""
    try:
        return {**payload, "code": unseal(payload.get("sealed_code") or "", key or b"")}
    except SealError as error:
        raise PermanentFailure(f"the link code cannot be opened ({error}): every paidan process needs the same "
                               f"secret_key; the customer can ask for a new code") from None


def _link_code_text(payload: dict) -> str:
    code = payload.get("code") or ""
    if not (len(code) == 6 and code.isdigit()):
        raise PermanentFailure("the link_code has no code to send")
    # The name is the Telegram user's own choosing: one line, and short, in a mail we sign.
    name = "".join(ch if ch.isprintable() else " " for ch in str(payload.get("telegram_name") or ""))
    name = " ".join(name.split())[:64]
    username = "".join(ch for ch in str(payload.get("telegram_username") or "") if ch.isalnum() or ch == "_")[:64]
    who = ", ".join(p for p in (f"@{username}" if username else "", f"ID {payload.get('telegram_id')}") if p)
    minutes = payload.get("minutes") or 30
    until = utc_time(payload.get("expires_at"))
    zh = [
        "您好！", "",
        f"Telegram 用户「{name or '未署名'}」（{who}）在我们的客服机器人中申请把本邮箱地址绑定到其 Telegram 账号。", "",
        f"验证码：{code}", "",
        f"请在 {minutes} 分钟内{f'（{until} 前）' if until else ''}在 Telegram 中向客服机器人发送：/link {code}",
        "绑定后，通过本邮箱和该 Telegram 账号发来的消息会归入同一位客户。", "",
        "如果这不是您本人的操作，请忽略本邮件，您的邮箱不会被绑定。请勿把验证码告诉任何人，客服人员也不会向您索要。", "",
        "（此邮件由系统自动发送。）",
    ]
    en = [
        "Hello,", "",
        f"The Telegram user \"{name or 'unnamed'}\" ({who}) asked our support bot to link this email address to "
        "their Telegram account.", "",
        f"Code: {code}", "",
        f"To link it, send this to the support bot in Telegram within {minutes} minutes"
        f"{f' (by {until})' if until else ''}: /link {code}",
        "Messages from this address and from that Telegram account then count as one customer's.", "",
        "If this was not you, ignore this email: the address will not be linked. Never share the code; our staff "
        "will never ask you for it.", "",
        "(This message was sent automatically.)",
    ]
    return by_language(payload.get("language"), zh="\n".join(zh), en="\n".join(en), joiner="\n\n---\n\n") + "\n"


SURVEY_CHOICES = ((1, "非常不满意", "very dissatisfied"), (2, "不满意", "dissatisfied"), (3, "一般", "neither"),
                  (4, "满意", "satisfied"), (5, "非常满意", "very satisfied"))


def _survey_url(payload: dict, survey_link: SurveyLink | None) -> str:
    survey_id, number = payload.get("survey_id"), payload.get("ticket")
    if survey_link is None:
        raise PermanentFailure("no survey link was configured for the email sender")
    if not isinstance(survey_id, int) or isinstance(survey_id, bool) or not number:
        raise PermanentFailure("the survey item names no survey or ticket")
    return survey_link(survey_id, number)


def _survey_text(payload: dict) -> str:
    """The question with the page's link, and one link per rating that opens the page with it ticked
    (opening a link records nothing: the customer still sends the page's form)."""
    number, link = payload.get("ticket") or "?", payload["link"]
    until = utc_time(payload.get("closes_at"))
    zh = [
        "您好！", "",
        f"您的工单 {number} 已处理完毕。您对本次服务满意吗？请点击下面的链接打分（1–5 分），也可以留下意见：", "",
        link, "",
        *(f"  {r} 分 · {zh_word}：{link}?rating={r}" for r, zh_word, _ in SURVEY_CHOICES), "",
        *([f"{until} 之前可以修改您的评价。"] if until else []),
        "如问题仍未解决，直接回复本邮件即可。", "",
        "（此邮件由系统自动发送。）",
    ]
    en = [
        "Hello,", "",
        f"Your ticket {number} has been resolved. How did we do? Rate us from 1 to 5, and tell us more if you like:",
        "", link, "",
        *(f"  {r} - {en_word}: {link}?rating={r}" for r, _, en_word in SURVEY_CHOICES), "",
        *([f"You can change your answer until {until}."] if until else []),
        "If your problem is not solved, simply reply to this email.", "",
        "(This message was sent automatically.)",
    ]
    return by_language(payload.get("language"), zh="\n".join(zh), en="\n".join(en), joiner="\n\n---\n\n") + "\n"


# ---------------------------------------------------------------- sending (thin I/O)


class SmtpSender:
    """Hands one message at a time to the relay over a fresh connection."""

    def __init__(self, config: RelayConfig):
        self.config = config

    def send(self, message: EmailMessage) -> None:
        """Returns once the relay has accepted the message; raises TemporaryFailure or PermanentFailure."""
        smtp = smtplib.SMTP(timeout=self.config.timeout)  # no host given: nothing connects yet
        try:
            self._open(smtp)
            self._hand_over(smtp, message)
        finally:
            _quit_quietly(smtp)

    @property
    def _relay(self) -> str:
        return f"relay {self.config.host}:{self.config.port}"

    def _open(self, smtp: smtplib.SMTP) -> None:
        # Whatever goes wrong before the message is offered concerns the relay or our settings (a
        # wrong password answers 535), not this message: temporary, so that once the relay is back
        # or the settings are fixed, the queue drains. Items still fail visibly after max attempts.
        try:
            smtp.connect(self.config.host, self.config.port)
            smtp.ehlo()
            if self.config.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.config.username:
                smtp.login(self.config.username, self.config.password or "")
        except smtplib.SMTPResponseException as error:
            raise TemporaryFailure(f"{self._relay} answered {_answer(error.smtp_code, error.smtp_error)} "
                                   f"before the message was offered") from error
        except (smtplib.SMTPException, OSError) as error:  # refused, timed out, reset, TLS, no STARTTLS
            raise TemporaryFailure(f"{self._relay} could not be reached: {_said(error)}") from error

    def _hand_over(self, smtp: smtplib.SMTP, message: EmailMessage) -> None:
        try:
            refused = smtp.send_message(message, from_addr=self.config.from_address)
        except smtplib.SMTPRecipientsRefused as error:  # every recipient refused
            raise _rejected(self._relay, error.recipients.items()) from error
        except smtplib.SMTPResponseException as error:  # MAIL FROM or DATA refused
            raise _failure_for(error.smtp_code, f"{self._relay} refused the message: "
                                                f"{_answer(error.smtp_code, error.smtp_error)}") from error
        except (smtplib.SMTPException, OSError) as error:
            # Hung up or timed out mid-way: perhaps delivered, perhaps not. A retry carries the same
            # Message-ID, so a mail client that got both shows it once.
            raise TemporaryFailure(f"{self._relay} hung up: {_said(error)}") from error
        if refused:  # some recipients taken, some refused (we send to one, but say so if it happens)
            raise _rejected(self._relay, refused.items())


def _rejected(relay: str, refusals: Iterable[tuple[str, tuple[int, bytes]]]) -> DeliveryError:
    refusals = list(refusals)
    said = "; ".join(f"{_answer(code, text)} for {address}" for address, (code, text) in refusals)
    worst = max(code for _address, (code, _text) in refusals)
    return _failure_for(worst, f"{relay} refused the recipient: {said}")


def _failure_for(code: int, message: str) -> DeliveryError:
    """5xx means never; anything else (4xx, or smtplib's -1 for a dropped connection) means later."""
    return PermanentFailure(message) if 500 <= code < 600 else TemporaryFailure(message)


def _answer(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}".strip()


def _said(error: Exception) -> str:
    return str(error) or type(error).__name__  # a bare TimeoutError has no text of its own


def _quit_quietly(smtp: smtplib.SMTP) -> None:
    # After the relay's 250 the message is theirs: a QUIT that fails must not turn it into a retry.
    try:
        if smtp.sock is not None:
            smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()
