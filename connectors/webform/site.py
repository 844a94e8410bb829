"""What the page and API handlers share: collaborators, config, templates, request helpers."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from connectors.webform import i18n
from connectors.webform.config import WebFormConfig
from connectors.webform.csrf import CsrfTokens, new_session_id
from connectors.webform.ratelimit import RateLimiter
from models.message import Identity, InboundMessage, Receipt, TicketView

log = logging.getLogger("connectors.webform")

Sink = Callable[[InboundMessage], Awaitable[Receipt]]
TicketLookup = Callable[[str, Identity], Awaitable[TicketView | None]]
# (ticket number, the contact that proved it theirs) -> "resolved", "already" or "not_theirs": the customer
# says it is solved.
SolvedHook = Callable[[str, Identity], Awaitable[str]]
# (channel, outcome) -> None; the wiring counts these in Prometheus.
OutcomeHook = Callable[[str, str], None]

SESSION_COOKIE = "paidan_sid"
LANG_COOKIE = "paidan_lang"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
PACKAGE_DIR = Path(__file__).resolve().parent


def _no_outcome(channel: str, outcome: str) -> None:
    pass


@dataclass
class Site:
    config: WebFormConfig
    sink: Sink
    ticket_view: TicketLookup
    on_outcome: OutcomeHook = _no_outcome
    mark_solved: SolvedHook | None = None  # None: the status page offers no "it is solved" button
    csrf: CsrfTokens = field(init=False)
    form_limiter: RateLimiter = field(init=False)
    status_limiter: RateLimiter = field(init=False)
    templates: jinja2.Environment = field(init=False)
    tz: ZoneInfo = field(init=False)

    def __post_init__(self) -> None:
        self.csrf = CsrfTokens(self.config.secret, self.config.csrf_max_age)
        self.form_limiter = RateLimiter(self.config.rate_limit_per_minute)
        self.status_limiter = RateLimiter(self.config.rate_limit_per_minute)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
            autoescape=True,  # every customer-supplied string is shown as text
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.tz = ZoneInfo(self.config.timezone)

    def count(self, channel: str, outcome: str) -> None:
        try:
            self.on_outcome(channel, outcome)
        except Exception:  # noqa: BLE001 — metrics must never fail a customer's request
            log.exception("outcome hook failed")

    # --- request helpers ---------------------------------------------------------------

    def language(self, request: Request) -> str:
        return i18n.pick_language(
            request.query_params.get("lang"),
            request.cookies.get(LANG_COOKIE),
            request.headers.get("accept-language"),
            self.config.default_language,
        )

    @staticmethod
    def session_id(request: Request) -> str | None:
        value = request.cookies.get(SESSION_COOKIE)
        return value if value and _SESSION_ID.fullmatch(value) else None

    @staticmethod
    def client_ip(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def render(self, request: Request, template: str, *, lang: str, status: int = 200,
               session_id: str | None = None, headers: dict[str, str] | None = None, **context: object) -> Response:
        """A page in `lang`; sets the session cookie the CSRF token is bound to, and remembers ?lang=."""
        body = self.templates.get_template(template).render(
            lang=lang,
            t=i18n.translator(lang),
            state_label=lambda state: i18n.state_label(state, lang),
            other_lang="en" if lang == "zh" else "zh",
            config=self.config,
            **context,
        )
        response = HTMLResponse(body, status_code=status, headers=headers)
        secure = request.url.scheme == "https"
        if session_id and session_id != self.session_id(request):
            response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="lax", secure=secure)
        chosen = i18n.normalise_language(request.query_params.get("lang"))
        if chosen and chosen != request.cookies.get(LANG_COOKIE):
            response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 24 * 3600, samesite="lax", secure=secure)
        return response

    def message_page(self, request: Request, *, lang: str, status: int, title_key: str, text: str,
                     back: str = "/contact", headers: dict[str, str] | None = None) -> Response:
        return self.render(request, "notice.html", lang=lang, status=status, headers=headers,
                           title_key=title_key, text=text, back=back, switch_path=back)

    def ensure_session(self, request: Request) -> str:
        return self.session_id(request) or new_session_id()
