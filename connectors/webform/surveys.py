"""The satisfaction survey page: `/survey/<token>`, the link our survey mail carries.

The token is the survey's id and an HMAC over it and its ticket number: unguessable, and nothing
to look up but the survey it names. Mail scanners open every link in a mail, so a GET never
records anything: it shows the question (`?rating=N` ticks choice N, as the mail's five links
do), and only the form's POST, with its CSRF token, records the answer. The answer can be
changed until the survey closes; the store refuses it after that (SurveyClosed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from connectors.webform import i18n
from connectors.webform.csrf import CsrfStatus
from connectors.webform.pages import FormUnreadable, Pages
from connectors.webform.validation import clean_text
from models.errors import InvalidInput, NotFound, StorageUnavailable, SurveyClosed
from models.message import SurveyView

RATINGS = (1, 2, 3, 4, 5)
MAX_COMMENT_CHARS = 4000  # the store checks too; this keeps the page's textarea in step
_SIGNATURE_CHARS = 22  # 16 bytes of HMAC-SHA256, base64url: 128 bits nobody can guess


class SurveyTokens:
    """`<survey id>.<signature>` for the survey link; `survey_id` reads one back, `valid` checks it."""

    def __init__(self, secret: bytes):
        # A key of its own, so the configured secret can safely sign other things too.
        self._key = hmac.new(secret, b"paidan survey link", hashlib.sha256).digest()

    def _sign(self, survey_id: int, ticket_number: str) -> str:
        digest = hmac.new(self._key, f"v1|{survey_id}|{ticket_number}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:_SIGNATURE_CHARS]

    def issue(self, survey_id: int, ticket_number: str) -> str:
        return f"{survey_id}.{self._sign(survey_id, ticket_number)}"

    @staticmethod
    def survey_id(token: str) -> int | None:
        """The id a well-formed token names (not yet proof of anything: see `valid`)."""
        head, dot, signature = (token or "").partition(".")
        if not dot or not head.isascii() or not head.isdigit() or len(head) > 12 or len(signature) != _SIGNATURE_CHARS:
            return None
        return int(head)

    def valid(self, token: str, view: SurveyView) -> bool:
        """The token was issued for this survey of this ticket (the ticket number is signed too, so a
        link from a database that was recreated cannot open another survey with the same id)."""
        if self.survey_id(token) != view.survey_id or not token.isascii():
            return False
        return hmac.compare_digest(token.partition(".")[2], self._sign(view.survey_id, view.ticket_number))


@dataclass(frozen=True, slots=True)
class SurveyStore:
    """What the page needs from the help desk (the wiring gives it): read a survey, record an answer.

    `answer(survey_id, rating, comment)` returns the survey as stored afterwards; it raises
    SurveyClosed once the survey closed, InvalidInput naming a bad field, StorageUnavailable."""

    view: Callable[[int], Awaitable[SurveyView | None]]
    answer: Callable[[int, int, str], Awaitable[SurveyView]]


def rating_label(rating: int, lang: str) -> str:
    return i18n.text(f"survey_rating_{rating}", lang)


class SurveyPages:
    def __init__(self, pages: Pages, store: SurveyStore, tokens: SurveyTokens):
        self.pages, self.site, self.store, self.tokens = pages, pages.site, store, tokens

    async def _find(self, request: Request, token: str, lang: str) -> SurveyView | Response:
        """The survey the token proves, or the page that says why not (404, 503)."""
        survey_id = self.tokens.survey_id(token)
        try:
            view = await self.store.view(survey_id) if survey_id is not None else None
        except StorageUnavailable:
            return self.site.message_page(request, lang=lang, status=503, title_key="error_title",
                                          text=i18n.text("unavailable_plain", lang),
                                          headers=self.pages.unavailable_headers())
        if view is None or not self.tokens.valid(token, view):
            self.site.count("web", "survey_not_found")
            return self.site.message_page(request, lang=lang, status=404, title_key="survey_title",
                                          text=i18n.text("survey_not_found", lang), back="/status")
        return view

    def page(self, request: Request, token: str, view: SurveyView, *, lang: str, status: int = 200,
             chosen: int | None = None, comment: str | None = None, notice: str = "", ok: bool = False,
             errors: dict[str, str] | None = None, submission_id: str | None = None) -> Response:
        session_id = self.site.ensure_session(request)
        return self.site.render(
            request, "survey.html", lang=lang, status=status, session_id=session_id,
            csrf_token=self.site.csrf.issue(session_id, submission_id), view=view,
            action=f"/survey/{token}", chosen=view.rating if chosen is None else chosen,
            comment=view.comment if comment is None else comment, ratings=RATINGS,
            rating_label=lambda r: rating_label(r, lang), closes=self.pages.local_time(view.closes_at),
            notice=notice, ok=ok, errors=errors or {}, max_comment=MAX_COMMENT_CHARS, switch_path=f"/survey/{token}",
        )

    async def show(self, request: Request, token: str) -> Response:
        """GET: the question, with the answer so far; never records anything (mail scanners GET links)."""
        lang = self.site.language(request)
        found = await self._find(request, token, lang)
        if isinstance(found, Response):
            return found
        chosen = _rating(request.query_params.get("rating"))
        notice = ""
        if found.closed:
            notice = i18n.text("survey_closed", lang)
        elif found.rating is not None:
            notice = i18n.text("survey_answered", lang, rating=rating_label(found.rating, lang),
                               closes=self.pages.local_time(found.closes_at))
        return self.page(request, token, found, lang=lang, chosen=chosen, notice=notice, ok=not found.closed)

    async def submit(self, request: Request, token: str) -> Response:
        """POST: record the rating and comment (CSRF checked); the page again with the outcome."""
        site = self.site
        lang = site.language(request)
        back = f"/survey/{token}"
        if limited := self.pages.rate_limited(request, lang, site.status_limiter, back):
            return limited
        try:
            form = await self.pages.read_form(request, max_part_size=MAX_COMMENT_CHARS * 4 + 1024)
        except FormUnreadable as exc:
            return self.pages.unreadable(request, lang, exc, back)
        found = await self._find(request, token, lang)
        if isinstance(found, Response):
            return found
        check = site.csrf.check(_str(form.get("csrf_token")), site.session_id(request))
        if check.status in (CsrfStatus.MISSING, CsrfStatus.INVALID):
            return self.pages.csrf_failed(request, lang, back)
        rating = _rating(_str(form.get("rating")))
        comment = clean_text(_str(form.get("comment")), multiline=True)
        keep = {"lang": lang, "chosen": rating, "comment": comment, "submission_id": check.submission_id}
        if check.status is CsrfStatus.EXPIRED:
            return self.page(request, token, found, status=403, notice=i18n.text("csrf_expired", lang), **keep)
        if found.closed:
            return self.page(request, token, found, status=410, notice=i18n.text("survey_closed", lang), **keep)
        if rating is None:
            return self.page(request, token, found, status=400, notice=i18n.text("form_has_errors", lang),
                             errors={"rating": i18n.text("survey_choose", lang)}, **keep)
        try:
            stored = await self.store.answer(found.survey_id, rating, comment)
        except SurveyClosed:
            return self.page(request, token, found, status=410, notice=i18n.text("survey_closed", lang), **keep)
        except InvalidInput as exc:
            field = exc.field if exc.field in ("rating", "comment") else "comment"
            return self.page(request, token, found, status=400, notice=i18n.text("form_has_errors", lang),
                             errors={field: exc.problem}, **keep)
        except NotFound:
            return self.site.message_page(request, lang=lang, status=404, title_key="survey_title",
                                          text=i18n.text("survey_not_found", lang), back="/status")
        except StorageUnavailable:
            site.count("web", "storage_unavailable")
            return self.page(request, token, found, status=503,
                             notice=i18n.text("unavailable", lang, seconds=self.pages.config.retry_after_seconds),
                             **keep)
        site.count("web", "survey_answered")
        return self.page(request, token, stored, lang=lang, ok=True,
                         notice=i18n.text("survey_thanks", lang, closes=self.pages.local_time(stored.closes_at)))


def _rating(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and int(value) in RATINGS else None


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""

