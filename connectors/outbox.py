"""Delivering outbox items, whatever the channel: one loop that claims, builds, sends and records.

Each channel brings its own `build` (an item into the channel's message) and `send` (hand it to the
peer: an SMTP relay, the Telegram Bot API), raising TemporaryFailure or PermanentFailure. The
database steps come in as functions (`router.delivery`'s `claim_due`, `mark_sent`, `mark_failed`),
so connectors import no router.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from models.errors import PaidanError

log = logging.getLogger(__name__)


class DeliveryError(PaidanError):
    """An item was not handed over to its peer; the message says what the peer answered."""


class TemporaryFailure(DeliveryError):
    """Try again later: the peer said so (SMTP 4xx, Telegram 429 or 5xx), could not be reached or hung up.

    `retry_after` (seconds) is the peer telling us to pause every send (Telegram's flood control):
    the rest of the round waits that long too, and no item's attempt is counted, since none of them
    was at fault.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentFailure(DeliveryError):
    """Retrying will not help: the peer refused this item for good (SMTP 550 unknown mailbox, a
    Telegram user who blocked the bot), or the item cannot become a message at all."""


# Reads a stored attachment an item sends: (file name, bytes), or None when it is gone (erased on
# request). Channels get it from paidan's wiring (router.delivery.attachment_file over the database).
FileLoader = Callable[[int], "tuple[str, bytes] | None"]


class OutboxItem(Protocol):
    """What a channel reads of a claimed outbox row (router.delivery.Claimed has it)."""

    id: int
    kind: str
    recipient: str
    payload: dict
    dedupe_key: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    sent: int = 0
    retried: int = 0  # failed for now, will be tried again
    failed: int = 0  # given up: the ticket has a delivery_failed event


def deliver_due(
    claim: Callable[..., Iterable[OutboxItem]],
    build: Callable[[OutboxItem], Any],
    send: Callable[[Any], None],
    mark_sent: Callable[..., object],
    mark_failed: Callable[..., str],
    *,
    now: datetime,
) -> DeliveryReport:
    """Send every item `claim(now=now)` hands out; one item's failure never stops the others.

    `mark_sent(item_id, now=now)`; `mark_failed(item_id, error, now=now, permanent=…)` returns the
    row's status afterwards ("pending" or "failed"), as router.delivery's functions do. When the peer
    asks for a pause (TemporaryFailure.retry_after), that item and the rest of the round are put back
    with `mark_failed(…, retry_at=…)`: sending them now would only be refused the same way.
    """
    sent = retried = failed = 0
    items = list(claim(now=now))
    for position, item in enumerate(items):
        problem = _attempt(item, build, send)
        if isinstance(problem, TemporaryFailure) and problem.retry_after is not None:
            retry_at = now + timedelta(seconds=max(problem.retry_after, 1))
            log.warning("outbox: the peer asks to pause %ss; %d item(s) wait until %s", problem.retry_after,
                        len(items) - position, retry_at.isoformat(timespec="seconds"))
            for waiting in items[position:]:
                mark_failed(waiting.id, str(problem), now=now, permanent=False, retry_at=retry_at)
            retried += len(items) - position
            break
        if problem is None:
            mark_sent(item.id, now=now)
            sent += 1
            continue
        status = mark_failed(item.id, str(problem), now=now, permanent=isinstance(problem, PermanentFailure))
        log.warning("outbox item %s (%s) not delivered, %s: %s", item.id, item.kind,
                    "given up" if status == "failed" else "will retry", redact(str(problem)))
        if status == "failed":
            failed += 1
        elif status == "pending":
            retried += 1
        # else another sender delivered it meanwhile: not ours to count
    return DeliveryReport(sent=sent, retried=retried, failed=failed)


def _attempt(item: OutboxItem, build: Callable[[OutboxItem], Any], send: Callable[[Any], None]) -> DeliveryError | None:
    """Build and send one item: what went wrong, or None once the peer has it."""
    try:
        send(build(item))
    except DeliveryError as error:
        return error
    except Exception as error:  # a bug with one item must not stop the batch: retried, on its ticket once given up
        log.exception("outbox item %s (%s): unexpected error while building or sending", item.id, item.kind)
        return TemporaryFailure(f"unexpected error: {error!r}")
    return None


def by_language(language: str | None, *, zh: str, en: str, joiner: str = " / ") -> str:
    """Chinese or English as the ticket's language says; both when it says neither (what customers
    read, on every channel)."""
    language = (language or "").lower()
    if language.startswith("zh"):
        return zh
    if language.startswith("en"):
        return en
    return zh + joiner + en


def waiting_reminder_text(payload: dict) -> tuple[str, str]:
    """(Chinese, English): a ticket waits for the customer's answer, and when it will be resolved without
    one (router/waiting.py); every channel says the same."""
    number = payload.get("ticket") or "?"
    until = utc_time(payload.get("resolve_by"))
    zh = (f"您好！工单 {number} 正在等待您的回复。如果问题已经解决，无需回复"
          + (f"；若 {until} 前未收到您的消息，我们会把工单标记为已解决（之后回复仍可重新打开）。" if until else "。"))
    en = (f"Hello! Ticket {number} is waiting for your reply. If the issue is solved, there is nothing to do"
          + (f"; if we do not hear from you by {until}, we will mark it resolved (a reply after that reopens it)."
             if until else "."))
    return zh, en


def utc_time(iso: str | None) -> str | None:
    """An outbox payload's ISO time for a customer to read. The payload gives UTC and no business time
    zone, so the time is shown in UTC and says so."""
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if iso else None
    except ValueError:
        return None


_EMAIL_ADDRESS = re.compile(r"[\w.+-]+@([\w-]+\.[\w.-]+)")


def redact(text: str) -> str:
    """Customers' addresses stay out of the logs (the outbox row keeps the whole error)."""
    return _EMAIL_ADDRESS.sub(r"…@\1", text)
