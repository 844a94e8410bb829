"""`/link` in the customer bot: run one link request (router.linking) once per Telegram update, and
say what happened in the customer's language.

A request acts once even when Telegram delivers its update again: the update's key is claimed in the
request's own transaction (channel_cursors, beside the agent console's keys), with the answer the
customer got, so a redelivery gets the same answer and changes nothing. A database failure is not
answered: it propagates, the update stays unacknowledged, and Telegram sends it again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime
from math import ceil

from sqlalchemy import Engine

from connectors.outbox import by_language
from paidan.db import transaction
from paidan.logs import mask
from paidan.settings import Settings
from router import linking
from router.cursors import claim_once, remember_once

log = logging.getLogger(__name__)

COMMAND = "/link"
CHINESE_WORDS = "绑定邮箱"  # Telegram commands are Latin letters only, so the Chinese form is plain text

def link_key(settings: Settings) -> bytes:
    """The key link codes are sealed and hashed with: derived from the settings' kept secret, so every
    process sharing `secret_key` (or the secret file) opens what another sealed."""
    return hmac.new(settings.secret, b"paidan link codes", hashlib.sha256).digest()


def answer_link(engine: Engine, key: bytes | None, *, telegram_id: int, argument: str, now: datetime,
                display_name: str = "", username: str | None = None, language: str | None = None,
                once: str | None = None) -> str:
    """Run the link request `argument` (what followed /link) of Telegram user `telegram_id`; the
    answer for the chat. `once`: the update's key, so that a redelivered update acts only once."""
    request = linking.read_link_argument(argument)
    if isinstance(request, linking.LinkOutcome):  # usage, a malformed address or code: no database
        return link_text(request, language, now)
    if not key:
        return by_language(language, zh="暂时无法绑定邮箱，请稍后再试。",
                           en="Linking an email address is not available right now; please try again later.",
                           joiner="\n\n")
    with transaction(engine) as session:
        if once is not None and (replay := claim_once(session, once, now)) is not None:
            log.info("telegram: link request %s arrived again; answered as the first time, nothing done", once)
            return replay.get("answer") or "✔"
        if isinstance(request, linking.AskCode):
            outcome = linking.request_code(session, telegram_id=telegram_id, address=request.address, key=key,
                                           now=now, display_name=display_name, username=username,
                                           language=language)
        else:
            outcome = linking.confirm_code(session, telegram_id=telegram_id, code=request.code, key=key, now=now)
        text = link_text(outcome, language, now)
        if once is not None:  # what a redelivery of this update is answered
            remember_once(session, once, {"answer": text})
    log.info("telegram: link request %s: %s (%s)", once or "", outcome.status, mask(outcome.reason))
    return text


def link_text(outcome: linking.LinkOutcome, language: str | None, now: datetime) -> str:
    """The customer's answer. Never says whether an address was someone else's: linking it to a new
    customer and merging with the one who had it read the same."""
    address = mask(outcome.address or "")
    minutes = linking.CODE_TTL.seconds // 60
    s = outcome.status
    if s == linking.USAGE:
        zh = (f"绑定邮箱：发送 {COMMAND} 您的邮箱地址（或「{CHINESE_WORDS} you@example.com」），我们会把 6 位验证码"
              f"发到该邮箱；收到后发送 {COMMAND} 加验证码，例如 {COMMAND} 123456。绑定后，您通过邮件和 Telegram "
              "发来的消息会归入同一位客户。")
        en = (f"To link your email address, send {COMMAND} you@example.com. We email you a 6-digit code; then send "
              f"{COMMAND} and the code, like {COMMAND} 123456. Your email and Telegram messages then count as one "
              "customer's.")
    elif s == linking.MALFORMED_ADDRESS:
        zh = f"这不是一个有效的邮箱地址。请发送 {COMMAND} you@example.com（只写一个地址）。"
        en = f"That is not an email address we can use. Send {COMMAND} you@example.com (one address, nothing else)."
    elif s == linking.MALFORMED_CODE:
        zh = f"验证码是 6 位数字。请发送 {COMMAND} 加邮件中的 6 位数字，例如 {COMMAND} 123456。"
        en = f"A code has 6 digits. Send {COMMAND} and the 6 digits from the email, like {COMMAND} 123456."
    elif s == linking.CODE_SENT:
        zh = (f"验证码已发送至 {address}，{minutes} 分钟内有效。收到后请发送 {COMMAND} 加邮件中的 6 位数字，"
              f"例如 {COMMAND} 123456。没收到？请查看垃圾邮件。")
        en = (f"Code sent to {address}; it is valid for {minutes} minutes. Send {COMMAND} and the 6 digits from the "
              f"email, like {COMMAND} 123456. Nothing arrived? Check your spam folder.")
    elif s == linking.ALREADY_LINKED:
        zh = f"{address} 已经绑定在您的账号上，无需再次绑定。"
        en = f"{address} is already linked to you; there is nothing more to do."
    elif s == linking.RATE_LIMITED:
        wait = max(1, ceil(((outcome.retry_at or now) - now).total_seconds() / 60))
        zh = f"最近一小时内申请的验证码太多了，请 {wait} 分钟后再试。"
        en = (f"Too many codes were asked for in the last hour. Please try again in {wait} "
              f"minute{'' if wait == 1 else 's'}.")
    elif s == linking.NO_PENDING:
        zh = f"没有待验证的验证码。请先发送 {COMMAND} you@example.com。"
        en = f"No code is waiting for you. First send {COMMAND} you@example.com."
    elif s == linking.EXPIRED:
        zh = f"验证码已过期（有效期 {minutes} 分钟）。请重新发送 {COMMAND} 您的邮箱 获取新的验证码。"
        en = f"That code has expired (codes last {minutes} minutes). Send {COMMAND} and your address for a new one."
    elif s == linking.TOO_MANY_TRIES:
        zh = f"这个验证码输错次数过多，已失效。请重新发送 {COMMAND} 您的邮箱 获取新的验证码。"
        en = f"Too many wrong tries: that code no longer works. Send {COMMAND} and your address for a new one."
    elif s == linking.WRONG_CODE and outcome.tries_left:
        zh = f"验证码不正确，还可以再试 {outcome.tries_left} 次。"
        en = f"That is not the code; {outcome.tries_left} {'try' if outcome.tries_left == 1 else 'tries'} left."
    elif s == linking.WRONG_CODE:
        zh = f"验证码不正确，这个验证码已失效。请重新发送 {COMMAND} 您的邮箱 获取新的验证码。"
        en = f"That is not the code, and it was the last try. Send {COMMAND} and your address for a new code."
    elif s == linking.LINKED:
        zh = f"绑定成功：{address} 已与本聊天绑定，您通过邮件和 Telegram 发来的消息会归入同一位客户。"
        en = f"Done: {address} is linked to this chat. Your email and Telegram messages now count as one customer's."
    elif s == linking.LINKED_FOR_REVIEW:
        zh = f"{address} 已验证。我们的同事会核对后合并您之前的记录，您无需再做什么。"
        en = f"{address} is verified. A colleague will check and join your earlier conversations; nothing more to do."
    else:
        zh, en = "出了点问题，请稍后再试。", "Something went wrong; please try again later."
    return by_language(language, zh=zh, en=en, joiner="\n\n")
