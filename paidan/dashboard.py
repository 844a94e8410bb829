"""The supervisor dashboard (/dashboard) and the report as JSON (/api/v1/report).

Who may look: supervisors and admins, with no passwords to keep. A supervisor asks for a sign-in link
(`/dashboard` to the bot in Telegram, or `paidan dashboard --as NAME`); the link carries a token signed
with the deployment's secret that names the agent, expires, and holds a random nonce. Opening the link (a
GET) only shows whom it signs in and a "Sign in" button, and writes nothing: chat apps, mail scanners and
link previewers fetch a link when it is pasted, and must not use it up before its owner clicks. The button
POSTs the token; that records the link as used (a hash of the nonce) and opens a session: a new random id,
kept in an HttpOnly cookie and stored only hashed, so the token leaves the address bar and a forwarded or
leftover link lets nobody else in. Every request checks the session (there, not signed out, not expired)
and the agent's role, so demoting a supervisor ends their access at once and signing out ends the session
for whoever holds the cookie.

The API takes the same bearer tokens as POST /api/v1/messages, for BI tools and scripts.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from fastapi import FastAPI
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from connectors.webform.i18n import pick_language
from connectors.webform.site import LANG_COOKIE
from models.tables import Agent, DashboardSession
from paidan import charts
from paidan.cli_router import age_text
from paidan.db import transaction
from router.config import SUPERVISOR_ROLES
from router.dialects import PerDialect
from router.reports import PRIORITIES, SLA_KINDS, Report, build_report, last_days

log = logging.getLogger(__name__)

COOKIE = "paidan_dashboard"
# The browser that was shown a sign-in page: a random id, no privilege of its own, to which the page's
# form is bound (Dashboard.sign_in_page says why).
BROWSER_COOKIE = "paidan_sign_in"
SIGN_IN_PATH = "/dashboard/sign-in"
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# How long an unused link stays good. The bot's and the CLI's wording promise 12 hours; once used (its
# sign-in page's button pressed), a link is spent, so its lifetime only bounds how long a link nobody used
# is worth stealing.
LINK_LIFETIME = timedelta(hours=12)
# How long a sign-in lasts, from the moment the link is used: a working day, as the link-token cookie did.
SESSION_LIFETIME = timedelta(hours=12)
# Sign-ins are kept this long after both their session and their link ended, then purged: a week of
# "who looked at the dashboard", and a spent link's record outlives any chance of presenting it again.
KEEP_SIGN_INS = timedelta(days=7)
MAX_DAYS = 366
SLA_GOAL = 0.9  # the dashed line on the SLA chart: the share of clocks a desk usually promises to meet
TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                        autoescape=select_autoescape(default=True))
# The pages' styles, served as files: the site's Content-Security-Policy (style-src 'self') blocks
# inline <style>, and so left the pages unstyled in every real browser.
STYLESHEETS = {name: (Path(__file__).with_name("templates") / f"{name}.css").read_text(encoding="utf-8")
               for name in ("dashboard", "notice")}

ReportQuery = Callable[[int], Awaitable[Report]]  # days → the report of the last `days` local days


@dataclass(frozen=True, slots=True)
class SignInLink:
    """What a genuine, unexpired sign-in token says."""

    agent_id: int
    expires: datetime
    nonce: str  # random per link: two links issued in the same second differ, and each is used once


class SignInLinks:
    """Tokens `d2.<agent id>.<expiry, unix seconds>.<nonce>.<signature>`; the key is derived for this use only.

    `d1` tokens (no nonce, issued before links worked once) are recognised only to tell their holder to
    ask for a new link."""

    VERSION = "d2"

    def __init__(self, secret: bytes):
        self._key = hmac.new(secret, b"paidan dashboard sign-in", hashlib.sha256).digest()
        self._confirm_key = hmac.new(secret, b"paidan dashboard sign-in confirmation", hashlib.sha256).digest()

    def issue(self, agent_id: int, expires: datetime) -> str:
        body = f"{self.VERSION}.{agent_id}.{int(expires.timestamp())}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def read(self, token: str, now: datetime) -> SignInLink | None:
        """The link a genuine, unexpired token stands for; None for anything else."""
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != self.VERSION or not self._genuine(".".join(parts[:4]), parts[4]):
            return None
        _, agent_id, expires, nonce, _ = parts
        try:  # signed by us, so numbers; checked all the same
            agent, until = int(agent_id), int(expires)
        except ValueError:
            return None
        if until <= now.timestamp() or not nonce:
            return None
        return SignInLink(agent, datetime.fromtimestamp(until, UTC), nonce)

    def check(self, token: str, now: datetime) -> int | None:
        """The agent id of a genuine, unexpired token; None for anything else."""
        link = self.read(token, now)
        return None if link is None else link.agent_id

    def outdated(self, token: str) -> bool:
        """A genuine token of the old format (`d1`, which could be used again and again); forgeries are not."""
        parts = token.split(".")
        return len(parts) == 4 and parts[0] == "d1" and self._genuine(".".join(parts[:3]), parts[3])

    def confirmation(self, token: str, browser_id: str) -> str:
        """The sign-in form's check field: `token` as shown to the browser whose BROWSER_COOKIE is `browser_id`."""
        digest = hmac.new(self._confirm_key, f"{browser_id}|{token}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def confirmed(self, token: str, browser_id: str, check: str) -> bool:
        if not _BROWSER_ID.fullmatch(browser_id):  # no cookie (a cross-site post sends none), or not ours
            return False
        return hmac.compare_digest(check.encode(), self.confirmation(token, browser_id).encode())

    def _genuine(self, body: str, signature: str) -> bool:
        # As bytes: compare_digest refuses str with non-ASCII characters, and a query string can hold any.
        return hmac.compare_digest(signature.encode(), self._sign(body).encode())

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_in_url(base_url: str, links: SignInLinks, agent_id: int, now: datetime) -> str:
    return f"{base_url.rstrip('/')}{SIGN_IN_PATH}?token={links.issue(agent_id, now + LINK_LIFETIME)}"


# ---------------------------------------------------------------- sign-ins in the database


class Staff(NamedTuple):
    agent_id: int
    name: str
    role: str


class SignIn(enum.Enum):
    OPENED = "opened"  # the session was stored; set its cookie
    USED = "used"  # the link was used before (or at the same moment, by another request)
    REFUSED = "refused"  # the link's agent is gone or no longer a supervisor or admin


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


_SESSIONS = DashboardSession.__table__
# One session per link, even when two requests bring it at once: the loser inserts nothing.
_INSERT_SESSION = PerDialect(lambda insert: insert(_SESSIONS).on_conflict_do_nothing(index_elements=["link_sha256"])
                             .returning(_SESSIONS.c.id))


def open_session(session: Session, link: SignInLink, session_id: str, now: datetime) -> SignIn:
    """Spend `link` and store the session `session_id` opens, in the caller's transaction."""
    role = session.scalar(select(Agent.role).where(Agent.id == link.agent_id))
    if role not in SUPERVISOR_ROLES:
        return SignIn.REFUSED  # the link is not spent: it was no use to anyone
    stored = session.execute(_INSERT_SESSION.for_session(session), {
        "link_sha256": _sha256(link.nonce), "session_sha256": _sha256(session_id), "agent_id": link.agent_id,
        "created_at": now, "expires_at": now + SESSION_LIFETIME, "link_expires_at": link.expires,
    }).scalar()
    return SignIn.OPENED if stored is not None else SignIn.USED


class LinkLook(NamedTuple):
    staff: Staff | None  # whom the link signs in; None when they are gone or not a supervisor or admin now
    used: bool


def look_at_link(session: Session, link: SignInLink) -> LinkLook:
    """Whom `link` would sign in and whether it was used; reads only, so showing a link spends nothing."""
    row = session.execute(select(Agent.id, Agent.name, Agent.role).where(Agent.id == link.agent_id)).first()
    staff = Staff(*row) if row and row.role in SUPERVISOR_ROLES else None
    used = session.scalar(select(DashboardSession.id).where(DashboardSession.link_sha256 == _sha256(link.nonce)))
    return LinkLook(staff, used is not None)


def session_staff(session: Session, session_id: str, now: datetime) -> Staff | None:
    """Who holds the live session `session_id` (not signed out, not expired), whatever their role now."""
    row = session.execute(
        select(Agent.id, Agent.name, Agent.role).join(DashboardSession, DashboardSession.agent_id == Agent.id)
        .where(DashboardSession.session_sha256 == _sha256(session_id), DashboardSession.signed_out_at.is_(None),
               DashboardSession.expires_at > now)).first()
    return Staff(*row) if row else None


def end_session(session: Session, session_id: str, now: datetime) -> bool:
    """Sign the session out; False if there was no live one."""
    result = session.execute(update(DashboardSession)
                             .where(DashboardSession.session_sha256 == _sha256(session_id),
                                    DashboardSession.signed_out_at.is_(None))
                             .values(signed_out_at=now))
    return result.rowcount > 0


def purge_dashboard_sessions(session: Session, now: datetime) -> int:
    """Delete sign-ins whose session and link both ended more than KEEP_SIGN_INS ago; how many went.

    Shaped as a scheduler job (router.scheduler.Job.run), to run hourly or daily."""
    cutoff = now - KEEP_SIGN_INS
    result = session.execute(delete(DashboardSession).where(DashboardSession.expires_at < cutoff,
                                                            DashboardSession.link_expires_at < cutoff))
    return result.rowcount


@dataclass(frozen=True)
class Sessions:
    """The sign-in store as the web app awaits it: each call one transaction, in a worker thread."""

    look: Callable[[SignInLink], Awaitable[LinkLook]]  # look_at_link, in a transaction that writes nothing
    open: Callable[[SignInLink, str, datetime], Awaitable[SignIn]]  # open_session
    staff: Callable[[str, datetime], Awaitable[Staff | None]]  # session_staff
    end: Callable[[str, datetime], Awaitable[bool]]  # end_session


# ---------------------------------------------------------------- the web app


@dataclass(frozen=True)
class Dashboard:
    report: ReportQuery
    sessions: Sessions
    links: SignInLinks
    api_tokens: tuple[str, ...]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def mount(self, app: FastAPI) -> None:
        app.add_api_route("/dashboard", self.page, methods=["GET"], include_in_schema=False)
        app.add_api_route(SIGN_IN_PATH, self.sign_in_page, methods=["GET"], include_in_schema=False)
        app.add_api_route(SIGN_IN_PATH, self.sign_in, methods=["POST"], include_in_schema=False)
        app.add_api_route("/dashboard/sign-out", self.sign_out, methods=["POST"], include_in_schema=False)
        app.add_api_route("/dashboard/report.json", self.page_json, methods=["GET"], include_in_schema=False)
        app.add_api_route("/dashboard/{name}.css", self.stylesheet, methods=["GET"], include_in_schema=False)
        app.add_api_route("/api/v1/report", self.api, methods=["GET"], tags=["reports"],
                          summary="The help desk's report for the last `days` days (bearer token)")

    async def sign_in_page(self, request: Request) -> Response:
        """GET of a sign-in link: whom it signs in and a button that POSTs it. Spends nothing.

        Login CSRF (another site posting its owner's token from the victim's browser, to sign the victim in
        as someone else) is stopped by binding the form to this browser: the page sets BROWSER_COOKIE
        (SameSite=Strict, so no other site's post carries it) and its check field is an HMAC of the token
        and that cookie, which only the deployment's secret makes. An HMAC of the token alone would not do:
        whoever holds a link can read the field off this page. Nor an Origin check: with Referrer-Policy
        no-referrer, which keeps the token in this page's address from leaking, browsers send `Origin: null`
        on the form's post (Chromium does), and behind a reverse proxy the Host seen here is often not the
        browser's."""
        token, now, lang = request.query_params.get("token", ""), self.clock(), _lang(request)
        link = self.links.read(token, now)
        if link is None:
            return self._unusable(token, lang)
        look = await self.sessions.look(link)
        if look.staff is None:
            return _sign_in_notice(401, "sign_in_failed", lang)
        if look.used:
            return await self._used(request, link, lang, posted=False)
        browser_id = request.cookies.get(BROWSER_COOKIE, "")
        if not _BROWSER_ID.fullmatch(browser_id):  # an id already set is kept: pages open in other tabs stay good
            browser_id = secrets.token_urlsafe(18)
        html = TEMPLATES.get_template("dashboard_sign_in.html").render(
            lang=lang, t=lambda key: TEXTS[key][lang == "zh"], who=look.staff.name,
            action=f"{SIGN_IN_PATH}?lang={lang}", token=token, check=self.links.confirmation(token, browser_id))
        response = _private(HTMLResponse(html))
        response.set_cookie(BROWSER_COOKIE, browser_id, max_age=int(LINK_LIFETIME.total_seconds()), httponly=True,
                            samesite="strict", path=SIGN_IN_PATH, secure=request.url.scheme == "https")
        return response

    async def sign_in(self, request: Request) -> Response:
        """POST from the sign-in page: spends the link and opens the session."""
        now, lang = self.clock(), _lang(request)
        form = await request.form(max_files=0, max_fields=10)
        token, check = _text_field(form, "token"), _text_field(form, "check")
        link = self.links.read(token, now)
        if link is None:
            return self._unusable(token, lang)
        if not self.links.confirmed(token, request.cookies.get(BROWSER_COOKIE, ""), check):
            log.warning("dashboard: a sign-in post for agent %d did not come from the sign-in page in the same "
                        "browser (another site's form, or cookies refused); the link was not used", link.agent_id)
            return _sign_in_notice(403, "sign_in_unconfirmed", lang)
        session_id = secrets.token_urlsafe(32)
        outcome = await self.sessions.open(link, session_id, now)
        if outcome is SignIn.REFUSED:
            return _sign_in_notice(401, "sign_in_failed", lang)
        if outcome is SignIn.USED:
            return await self._used(request, link, lang, posted=True)
        response = _private(RedirectResponse("/dashboard", status_code=303))
        response.set_cookie(COOKIE, session_id, max_age=int(SESSION_LIFETIME.total_seconds()),
                            httponly=True, samesite="lax", path="/dashboard",
                            secure=request.url.scheme == "https")
        return response

    def _unusable(self, token: str, lang: str) -> Response:
        """The answer to a token that is not a genuine, unexpired link."""
        return _sign_in_notice(410, "link_outdated", lang) if self.links.outdated(token) else \
            _sign_in_notice(401, "sign_in_failed", lang)

    async def _used(self, request: Request, link: SignInLink, lang: str, *, posted: bool) -> Response:
        already = await self._supervisor(request)
        if already is not None and already.agent_id == link.agent_id:
            return _private(RedirectResponse("/dashboard", status_code=303))  # its owner, clicking it again
        # A post is someone trying to sign in with it; a GET may be a previewer fetching an old chat again.
        log.log(logging.WARNING if posted else logging.INFO,
                "dashboard: a used sign-in link of agent %d was presented again", link.agent_id)
        return _sign_in_notice(410, "link_used", lang)

    async def stylesheet(self, name: str) -> Response:
        css = STYLESHEETS.get(name)
        if css is None:
            return Response("no such stylesheet", status_code=404, media_type="text/plain")
        return Response(css, media_type="text/css; charset=utf-8", headers={"Cache-Control": "public, max-age=3600"})

    async def sign_out(self, request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        if session_id:
            await self.sessions.end(session_id, self.clock())
        response = RedirectResponse(f"/dashboard?lang={_lang(request)}", status_code=303)
        response.delete_cookie(COOKIE, path="/dashboard")
        return response

    async def page(self, request: Request) -> Response:
        lang = _lang(request)
        who = await self._supervisor(request)
        if who is None:
            return _page_error(401, "signed_out", lang)
        days = _days(request)
        if days is None:
            return _page_error(400, "bad_days", lang)
        report = await self.report(days)
        html = TEMPLATES.get_template("dashboard.html").render(
            **view(report, days=days, lang=lang), who=who.name, t=lambda key: TEXTS[key][lang == "zh"])
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def page_json(self, request: Request) -> Response:
        if await self._supervisor(request) is None:
            return _json_error(401, "unauthorized", "sign in at /dashboard/sign-in with a link from the bot")
        return await self._json(request)

    async def api(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), t.encode())
                                                 for t in self.api_tokens):
            return _json_error(401, "unauthorized", "send Authorization: Bearer <one of api_tokens>",
                               headers={"WWW-Authenticate": "Bearer"})
        return await self._json(request)

    async def _json(self, request: Request) -> Response:
        days = _days(request)
        if days is None:
            return _json_error(400, "invalid_days", f"days must be a whole number from 1 to {MAX_DAYS}",
                               field="days")
        report = await self.report(days)
        return Response(json.dumps(report.as_dict(), ensure_ascii=False), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def _supervisor(self, request: Request) -> Staff | None:
        """The supervisor or admin whose live session the request's cookie carries; None otherwise."""
        session_id = request.cookies.get(COOKIE, "")
        if not session_id:
            return None
        staff = await self.sessions.staff(session_id, self.clock())
        return staff if staff is not None and staff.role in SUPERVISOR_ROLES else None


def view(report: Report, *, days: int, lang: str) -> dict:
    """What the template shows, the charts drawn: numbers formatted here so the template only places them."""
    zh = lang == "zh"
    t = lambda key: TEXTS[key][zh]  # noqa: E731
    sla_rows = []
    for kind in SLA_KINDS:
        for line in (x for x in report.sla if x.kind == kind):
            sla_rows.append((f"{line.priority} {t(kind)}", line.met_share,
                             share_text(line.met_share) + f" ({line.met}/{line.met + line.breached})"))
    open_states = [(t(state), n) for state, n in report.now.tickets.items()]
    csat = report.satisfaction
    return {
        "lang": lang, "other_lang": "en" if zh else "zh", "days": days, "report": report,
        "period": f"{report.days[0]} – {report.days[-1]} ({report.timezone})",
        "tiles": [
            (t("created"), f"{report.created:,}", t("machine_note").format(n=report.machine) if report.machine else ""),
            (t("resolved"), f"{report.resolved:,}", t("reopened_note").format(share=share_text(report.reopen_share))),
            (t("first_response_met"), share_text(report.sla_share("first_response")), ""),
            (t("resolution_met"), share_text(report.sla_share("resolution")), ""),
            (t("open_now"), f"{sum(report.now.tickets.values()):,}",
             t("waiting_note").format(n=sum(report.now.waiting.values()),
                                      age=duration_text(report.oldest_waiting_seconds))),
            (t("sla_now"), f"{sum(report.now.sla_overdue.values()):,}", t("at_risk_note").format(n=report.at_risk)),
            (t("csat"), f"{csat.average:.2f} / 5" if csat.average is not None else "–",
             t("csat_note").format(answered=csat.answered, sent=csat.sent, share=share_text(csat.satisfied_share))),
        ],
        "volume_chart": Markup(charts.stacked_bars(
            report.days, {t(c) if c in TEXTS else c: v for c, v in report.created_by_day.items()},
            line=report.resolved_by_day, line_name=t("resolved"), title=t("volume_title"))),
        "sla_chart": Markup(charts.share_bars(sla_rows, title=t("sla_title"), goal=SLA_GOAL)) if sla_rows else None,
        "open_chart": Markup(charts.count_bars(open_states, title=t("open_title"))),
        "label_charts": [(t(head), Markup(charts.count_bars([(_label(x, zh), n) for x, n in counts.items()],
                                                            title=t(head))))
                         for head, counts in report.labels.items() if counts],
        "csat_chart": Markup(charts.count_bars(
            [("★" * r, n) for r, n in sorted(csat.distribution.items(), reverse=True)], title=t("csat_title"),
            colours=[charts.GOOD, "#6aa84f", charts.MUTED, charts.WARN, charts.BAD])) if csat.sent else None,
        "times": [(p, report.first_response.get(p), report.resolution.get(p))
                  for p in [*PRIORITIES, *(k for k in report.first_response if k not in PRIORITIES)]
                  if p in report.first_response or p in report.resolution],
        "age": duration_text,
        "staff": [a for a in report.agents if a.role == "agent" or a.offered or a.resolved],
    }


def _label(label: str, zh: bool) -> str:
    """A label as the reader knows it: the default taxonomy's Chinese names beside its own (DESIGN.md)."""
    return f"{label} {LABEL_NAMES_ZH[label]}" if zh and label in LABEL_NAMES_ZH else label


def _days(request: Request) -> int | None:
    raw = request.query_params.get("days", "7")
    return int(raw) if raw.isdigit() and 1 <= int(raw) <= MAX_DAYS else None


def _text_field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""  # absent, or a file where text belongs


def _lang(request: Request) -> str:
    """As the web form decides (?lang=, its remembered choice, then the browser's preference), else English."""
    return pick_language(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                         request.headers.get("accept-language"), "en")


def share_text(value: float | None) -> str:
    """50%, 99.6%: one decimal only where it says something."""
    if value is None:
        return "–"
    percent = value * 100
    return f"{percent:.0f}%" if abs(percent - round(percent)) < 0.05 else f"{percent:.1f}%"


def duration_text(seconds: float | None) -> str:
    return "–" if seconds is None else age_text(int(seconds))


def _page_error(status: int, key: str, lang: str) -> HTMLResponse:
    html = TEMPLATES.get_template("dashboard_notice.html").render(
        lang=lang, status=status, t=lambda k: TEXTS[k][lang == "zh"], key=key)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _private(response: Response) -> Response:
    """For the sign-in pages, whose address holds a live token: never stored, never sent on as a Referer."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _sign_in_notice(status: int, key: str, lang: str) -> Response:
    return _private(_page_error(status, key, lang))


def _json_error(status: int, code: str, message: str, *, field: str | None = None,
                headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, **({"field": field} if field else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


LABEL_NAMES_ZH = {
    "inquiry": "咨询", "incident": "报障", "complaint": "投诉", "suggestion": "建议", "request": "需求",
    "technical": "技术类", "service": "服务类", "transaction": "交易类", "product": "产品建议类",
    "P0": "紧急", "P1": "高", "P2": "中", "P3": "低", "unlabelled": "未分类",
}

# (English, 中文) for every word the dashboard shows.
TEXTS: dict[str, tuple[str, str]] = {
    "title": ("Help desk", "客服看板"),
    "signed_in_as": ("Signed in as", "当前用户"),
    "sign_out": ("Sign out", "退出"),
    "switch_lang": ("中文", "English"),
    "today": ("Today", "今天"),
    "last_days": ("{n} days", "{n} 天"),
    "created": ("Contacts", "新工单"),
    "machine_note": ("+{n} auto-replies and bounces set aside", "另有 {n} 封自动回复/退信已忽略"),
    "resolved": ("Resolved", "已解决"),
    "reopened_note": ("{share} reopened", "重开率 {share}"),
    "first_response_met": ("First response on time", "首次响应达标"),
    "resolution_met": ("Resolved on time", "解决时效达标"),
    "open_now": ("Open now", "当前未结"),
    "waiting_note": ("{n} waiting for an agent, oldest {age}", "{n} 个待分配，最久 {age}"),
    "sla_now": ("SLA clocks overdue now", "当前超时的 SLA 计时"),
    "at_risk_note": ("{n} more past their warning", "另有 {n} 个已过预警线"),
    "csat": ("Satisfaction", "满意度"),
    "csat_note": ("{answered} of {sent} answered, {share} satisfied", "回复 {answered}/{sent}，满意 {share}"),
    "volume_title": ("Contacts per day by channel, and resolutions", "每日新工单（按渠道）与解决数"),
    "sla_title": ("SLA met, by priority", "SLA 达标率（按优先级）"),
    "open_title": ("Open tickets by state", "未结工单（按状态）"),
    "csat_title": ("Survey answers", "满意度评分分布"),
    "labels_title": ("What came in", "工单构成"),
    "times_title": ("Wall-clock times, by priority", "处理时长（按优先级，自然时间）"),
    "agents_title": ("Agents", "坐席"),
    "priority": ("Priority", "优先级"),
    "type": ("Type", "类型"),
    "category": ("Category", "类别"),
    "first_response": ("first response", "首次响应"),
    "resolution": ("resolution", "解决"),
    "median": ("median", "中位数"),
    "p90": ("90th pct", "90 分位"),
    "tickets": ("tickets", "工单数"),
    "agent": ("Agent", "坐席"),
    "online": ("Online", "在线"),
    "load": ("Load", "负载"),
    "offers": ("Offers: accepted / declined / expired", "派单：接受 / 拒绝 / 超时"),
    "rating": ("Rating", "评分"),
    "yes": ("yes", "是"),
    "no": ("no", "否"),
    "deliveries_failed": ("Messages we could not deliver", "发送失败的消息"),
    "corrections": ("Labels corrected by people", "人工修正的标签"),
    "download": ("Download as JSON", "下载 JSON"),
    "generated": ("Counted at", "统计时间"),
    "email": ("email", "邮件"),
    "telegram": ("Telegram", "Telegram"),
    "web": ("web form", "网页表单"),
    "api": ("API", "API"),
    "new": ("new", "新建"),
    "assigned": ("assigned", "已派单"),
    "in_progress": ("in progress", "处理中"),
    "awaiting_customer": ("awaiting customer", "等待客户"),
    "reopened": ("reopened", "已重开"),
    "signed_out": ("Sign in to see the dashboard", "请先登录看板"),
    "signed_out_hint": (
        "Send /dashboard to the paidan bot in Telegram, or run `paidan dashboard --as YOUR-NAME`, and open the "
        "link it gives you. Only supervisors and admins can see the dashboard.",
        "在 Telegram 中向 paidan 机器人发送 /dashboard，或运行 `paidan dashboard --as 你的名字`，然后打开得到的链接。"
        "只有主管和管理员可以查看看板。"),
    "confirm_title": ("Sign in to the dashboard", "登录客服看板"),
    "confirm_as": ("You are signing in as {name}.", "你将以 {name} 的身份登录。"),
    "sign_in": ("Sign in", "登录"),
    "confirm_hint": (
        "The link works once: the button uses it up and starts a session of 12 hours in this browser. If this "
        "is not your name, or you did not ask for a link, do not press it.",
        "此链接只能使用一次：点击按钮即用掉此链接，并在此浏览器中开始 12 小时的会话。"
        "如果这不是你的名字，或你没有申请过登录链接，请不要点击。"),
    "sign_in_unconfirmed": ("This sign-in could not be confirmed", "无法确认此次登录"),
    "sign_in_unconfirmed_hint": (
        "Sign-ins are only accepted from the page the link opens, in the same browser, with cookies allowed for "
        "this site. Open your link again and press Sign in there.",
        "只接受从登录链接打开的页面、在同一浏览器中提交的登录，且浏览器需允许本网站的 Cookie。"
        "请重新打开你的链接，并在该页面上点击“登录”。"),
    "sign_in_failed": ("This sign-in link does not work", "此登录链接无效"),
    "sign_in_failed_hint": (
        "It has expired (links last 12 hours), was changed on the way, or belongs to someone who is no longer a "
        "supervisor. Ask for a new one: /dashboard to the bot, or `paidan dashboard --as YOUR-NAME`.",
        "链接已过期（有效期 12 小时）、被改动，或所属用户已不是主管。请重新获取：向机器人发送 /dashboard，"
        "或运行 `paidan dashboard --as 你的名字`。"),
    "link_used": ("This sign-in link has already been used", "此登录链接已被使用"),
    "link_used_hint": (
        "Each link signs in once. Ask for a new one: send /dashboard to the bot, or run "
        "`paidan dashboard --as YOUR-NAME`. If you did not open this link before, someone else may have: "
        "tell an admin.",
        "每个登录链接只能使用一次。请重新获取：向机器人发送 /dashboard，或运行 `paidan dashboard --as 你的名字`。"
        "如果你之前没有打开过此链接，可能已被他人使用，请告知管理员。"),
    "link_outdated": ("This sign-in link is no longer accepted", "此登录链接已不再有效"),
    "link_outdated_hint": (
        "It was issued before paidan made sign-in links work once. Ask for a new one: send /dashboard to the "
        "bot, or run `paidan dashboard --as YOUR-NAME`.",
        "该链接是在登录链接改为一次性之前签发的。请重新获取：向机器人发送 /dashboard，"
        "或运行 `paidan dashboard --as 你的名字`。"),
    "bad_days": ("That period cannot be shown", "无法显示该时间段"),
    "bad_days_hint": (f"days must be a whole number from 1 to {MAX_DAYS}, e.g. /dashboard?days=30.",
                      f"days 必须是 1 到 {MAX_DAYS} 之间的整数，例如 /dashboard?days=30。"),
}


def dashboard_for(engine: Engine, *, secret: bytes, timezone: str, api_tokens: tuple[str, ...],
                  clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Dashboard:
    """The dashboard over one database; its queries run in worker threads, off the event loop.
    `clock` is its now: when links and sessions expire, and which days the report counts."""

    def report_sync(days: int) -> Report:
        now = clock()
        since, until = last_days(days, now, timezone)
        with Session(engine) as session:
            return build_report(session, since=since, until=until, now=now, timezone=timezone)

    def in_transaction(work: Callable[..., object]) -> Callable[..., Awaitable]:
        def sync(*args):
            with transaction(engine) as session:
                return work(session, *args)

        async def run(*args):
            return await asyncio.to_thread(sync, *args)

        return run

    async def report(days: int) -> Report:
        return await asyncio.to_thread(report_sync, days)

    sessions = Sessions(look=in_transaction(look_at_link), open=in_transaction(open_session),
                        staff=in_transaction(session_staff), end=in_transaction(end_session))
    return Dashboard(report=report, sessions=sessions, links=SignInLinks(secret), api_tokens=api_tokens, clock=clock)
