"""The satisfaction survey in Telegram, as texts and buttons (pure): the question with five buttons,
what a button's callback data says, and the answers the bot gives.

The question and the "what went wrong?" follow-up both start with SURVEY_MARK and name the ticket,
so a customer's reply to either is recognised (`survey_replied_to`) and kept as the survey's
comment instead of becoming a message on the ticket.
"""

from __future__ import annotations

import re

from connectors.outbox import PermanentFailure, by_language
from connectors.telegram.console import TICKET_NUMBER

SURVEY_MARK = "⭐"
BUTTON_PREFIX = "survey:"
_BUTTON = re.compile(r"survey:([0-9]{1,12}):([1-5])")
_FACES = {1: "😞", 2: "🙁", 3: "😐", 4: "🙂", 5: "😄"}
LOW_RATINGS = frozenset({1, 2})

Buttons = tuple[tuple[tuple[str, str], ...], ...]  # rows of (label, callback_data), as send.Buttons


def survey_question(payload: dict) -> tuple[str, Buttons]:
    """The outbox item's question and its five buttons (callback data `survey:<id>:<rating>`)."""
    survey_id, number = payload.get("survey_id"), payload.get("ticket")
    if not isinstance(survey_id, int) or isinstance(survey_id, bool) or not number:
        raise PermanentFailure("the survey item names no survey or ticket")
    zh = (f"{SURVEY_MARK} 满意度调查 · 工单 {number}\n您的问题已处理完毕。您对本次服务满意吗？"
          f"请点 1–5 分（5 = 非常满意）。如还有话想说，回复这条消息即可。")
    en = (f"{SURVEY_MARK} Satisfaction survey · Ticket {number}\nYour ticket has been resolved. How did we do? "
          f"Tap 1 to 5 (5 = very satisfied). To tell us more, reply to this message.")
    buttons = (tuple((f"{r} {_FACES[r]}", f"{BUTTON_PREFIX}{survey_id}:{r}") for r in sorted(_FACES)),)
    return by_language(payload.get("language"), zh=zh, en=en, joiner="\n\n"), buttons


def survey_button(callback_data: str | None) -> tuple[int, int] | None:
    """(survey id, rating) of a survey button's callback data; None for any other data."""
    found = _BUTTON.fullmatch(callback_data or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def is_survey_button(callback_data: str | None) -> bool:
    """Any data in the survey's namespace, well-formed or not (a malformed one is answered, not
    taken for a staff button)."""
    return (callback_data or "").startswith(BUTTON_PREFIX)


def survey_replied_to(reply_to_text: str | None) -> str | None:
    """The ticket number of our survey message (question or follow-up) that a customer replied to."""
    text = (reply_to_text or "").lstrip()
    if not text.startswith(SURVEY_MARK):
        return None
    found = TICKET_NUMBER.search(text.split("\n", 1)[0])
    return found.group(0).upper() if found else None


def thanks(rating: int, number: str, language: str | None) -> str:
    """The answer to a pressed button; after a low rating it asks what went wrong, marked so that a
    reply to it is taken as the comment."""
    if rating in LOW_RATINGS:
        zh = (f"{SURVEY_MARK} 工单 {number} · 感谢您的评价（{rating} 分）。很抱歉没有让您满意：哪里做得不好？"
              f"请回复这条消息告诉我们，主管会亲自查看。")
        en = (f"{SURVEY_MARK} Ticket {number} · Thank you for your rating ({rating}/5). We are sorry we let you "
              f"down: what went wrong? Reply to this message to tell us; a supervisor will read it.")
    else:
        zh = f"感谢您的评价（{rating} 分）！如需修改，点另一个分数即可。"
        en = f"Thank you for your rating ({rating}/5)! To change it, tap another number."
    return by_language(language, zh=zh, en=en, joiner="\n\n")


def comment_thanks(language: str | None) -> str:
    return by_language(language, zh="谢谢，您的意见已记录并转达。", en="Thank you: we have noted your comment and passed it on.",
                       joiner="\n")


def refusal(reason: str, language: str | None) -> str:
    """Short enough for a callback's pop-up (200 characters)."""
    texts = {
        "not_yours": ("这份调查不是发给您的，无法代为评价。", "This survey was sent to someone else; only they can answer it."),
        "closed": ("本次调查已结束，不再接受评价。", "This survey has closed and takes no more answers."),
        "unknown": ("找不到这份调查，可能已被删除。", "This survey no longer exists."),
    }
    zh, en = texts.get(reason, texts["unknown"])
    return by_language(language, zh=zh, en=en, joiner="\n")
