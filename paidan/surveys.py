"""Satisfaction surveys inside `paidan serve`: the web page's store, the mail's signed link, and the
customer's answers in Telegram (a rating button, a reply that is a comment). router.surveys has the
rules; this module runs them, one transaction each, and hands the outcome to the channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from connectors.telegram.survey import (
    LOW_RATINGS,
    comment_thanks,
    refusal,
    survey_button,
    survey_replied_to,
    thanks,
)
from connectors.webform.surveys import SurveyStore, SurveyTokens
from models.errors import ActionRefused, InvalidInput, StorageUnavailable, SurveyClosed
from models.message import Identity, IdentityKind, SurveyView
from models.tables import Survey, Ticket
from paidan.db import transaction
from paidan.settings import Settings
from router import surveys
from router.cursors import claim_once

if TYPE_CHECKING:  # only the Telegram side needs aiogram
    from aiogram import Bot

    from connectors.telegram.updates import Incoming

log = logging.getLogger("paidan.surveys")


def survey_link(settings: Settings) -> Callable[[int, str], str]:
    """(survey id, ticket number) -> the page's signed URL under `public_url`, for the survey mail."""
    tokens, base = SurveyTokens(settings.secret), settings.public_url.rstrip("/")
    return lambda survey_id, number: f"{base}/survey/{tokens.issue(survey_id, number)}"


class SurveyDesk:
    """The web page's side: read a survey, record an answer (each in its own thread and transaction)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.engine, self.clock = engine, clock

    def store(self) -> SurveyStore:
        return SurveyStore(view=self.view, answer=self.answer)

    async def view(self, survey_id: int) -> SurveyView | None:
        return await asyncio.to_thread(self._view, survey_id)

    async def answer(self, survey_id: int, rating: int, comment: str) -> SurveyView:
        return await asyncio.to_thread(self._answer, survey_id, rating, comment)

    def _view(self, survey_id: int) -> SurveyView | None:
        with _storage(), Session(self.engine) as session:
            return surveys.view(session, survey_id, self.clock())

    def _answer(self, survey_id: int, rating: int, comment: str) -> SurveyView:
        now = self.clock()
        with _storage(), transaction(self.engine) as session:
            surveys.answer(session, survey_id, rating=rating, comment=comment, now=now, via="web")
            return surveys.view(session, survey_id, now)


class _storage:
    """The database failing (down, locked past its timeout) is StorageUnavailable: nothing was written."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if isinstance(error, DBAPIError):
            raise StorageUnavailable(f"the database failed: {type(error.orig).__name__}") from error
        return False


# ---------------------------------------------------------------- Telegram


@dataclass(frozen=True, slots=True)
class TelegramOutcome:
    """What became of a customer's survey answer in Telegram, for the bot to say."""

    status: str  # "recorded" | "not_yours" | "closed" | "unknown"
    ticket: str = ""
    rating: int | None = None
    language: str | None = None


def press_button(engine: Engine, telegram_id: int, survey_id: int, rating: int, *, now: datetime,
                 once: str | None = None) -> TelegramOutcome:
    """A rating button pressed by `telegram_id`: recorded when they are the ticket's customer. A
    redelivered update (the same `once` key) changes nothing and is answered the same way."""
    sender = Identity(IdentityKind.TELEGRAM, str(telegram_id))
    with _storage(), transaction(engine) as session:
        survey = session.get(Survey, survey_id)
        if survey is None:
            return TelegramOutcome("unknown")
        ticket = session.get(Ticket, survey.ticket_id)
        about = {"ticket": ticket.number, "language": ticket.language}
        if once is not None and claim_once(session, once, now) is not None:
            return TelegramOutcome("recorded", rating=survey.rating, **about)
        try:
            result = surveys.answer(session, survey_id, rating=rating, comment=None, now=now, sender=sender,
                                    via="telegram")
        except SurveyClosed:
            return TelegramOutcome("closed", **about)
        except ActionRefused:
            return TelegramOutcome("not_yours", **about)
        return TelegramOutcome("recorded", rating=result.rating, **about)


def reply_to_survey(engine: Engine, telegram_id: int, number: str, text: str, *, now: datetime,
                    once: str | None = None) -> TelegramOutcome | None:
    """A customer's reply to our survey message about ticket `number`: their comment. None when it is
    not one to keep as such (no survey, or it closed): the caller then takes it as a message."""
    sender = Identity(IdentityKind.TELEGRAM, str(telegram_id))
    with _storage(), transaction(engine) as session:
        survey = surveys.survey_for_ticket(session, number)
        if survey is None or now >= surveys.closes_at(survey):
            return None
        ticket = session.get(Ticket, survey.ticket_id)
        about = {"ticket": ticket.number, "language": ticket.language}
        if once is not None and claim_once(session, once, now) is not None:
            return TelegramOutcome("recorded", rating=survey.rating, **about)
        try:
            result = surveys.answer(session, survey.id, rating=None, comment=text, now=now, sender=sender,
                                    via="telegram")
        except (ActionRefused, InvalidInput):
            # Not their survey (a quoted message), or a comment longer than a survey keeps: the words
            # are not lost, they go to intake as a message like any other.
            return None
        return TelegramOutcome("recorded", rating=result.rating, **about)


async def survey_button_pressed(bot: Bot, engine: Engine, incoming: Incoming) -> None:
    """A customer tapped a rating: recorded (thanks; after 1 or 2, "what went wrong?" as a message to
    reply to) or refused with a pop-up that says why. Returns once the answer is committed."""
    parsed = survey_button(incoming.callback_data)
    callback = incoming.callback_id or ""
    if parsed is None:
        await _quietly(bot.answer_callback_query(callback, text="—"))
        return
    outcome = await asyncio.to_thread(press_button, engine, incoming.from_id, *parsed, now=datetime.now(UTC),
                                      once=_once(incoming))
    if outcome.status != "recorded" or outcome.rating is None:
        await _quietly(bot.answer_callback_query(callback, text=refusal(outcome.status, _language(incoming)),
                                                 show_alert=True))
        return
    await _quietly(bot.answer_callback_query(callback, text="✓"))
    markup = None
    if outcome.rating in LOW_RATINGS:
        from aiogram.types import ForceReply

        markup = ForceReply(force_reply=True)  # the customer's app opens a reply to the question at once
    await _quietly(bot.send_message(incoming.chat_id or incoming.from_id,
                                    thanks(outcome.rating, outcome.ticket, outcome.language),
                                    parse_mode=None, reply_markup=markup))


async def survey_reply(bot: Bot, engine: Engine, incoming: Incoming) -> bool:
    """A customer's text replying to our survey message: kept as the survey's comment (True), never
    as a ticket message. False: not such a reply (or one to take as a message after all)."""
    number = survey_replied_to(incoming.reply_to_text)
    if number is None or incoming.files or not incoming.text.strip():
        return False  # photos and files are kept on the ticket, where attachments live
    outcome = await asyncio.to_thread(reply_to_survey, engine, incoming.from_id, number, incoming.text,
                                      now=datetime.now(UTC), once=_once(incoming))
    if outcome is None:
        return False
    await _quietly(bot.send_message(incoming.chat_id, comment_thanks(outcome.language or _language(incoming)),
                                    parse_mode=None))
    return True


def _once(incoming: Incoming) -> str | None:
    return f"telegram-update:{incoming.update_id}" if incoming.update_id is not None else None


def _language(incoming: Incoming) -> str | None:
    from connectors.telegram.updates import language_of

    return language_of(incoming.language_code)


async def _quietly(call: Awaitable) -> None:
    try:
        await call
    except Exception as exc:  # noqa: BLE001 — a lost courtesy message must not undo a committed answer
        log.warning("telegram: could not answer a survey: %s", exc)
