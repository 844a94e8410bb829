"""Dashboard sign-ins (paidan/dashboard.py): opening a link only asks; pressing "Sign in" uses it, once, and
opens a session kept in the database; signing out, demotion and expiry end it. Over real HTTP on loopback, on
a real database (SQLite, or PostgreSQL with PAIDAN_TEST_DATABASE_URL)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.tables import Agent, DashboardSession
from paidan.dashboard import (
    BROWSER_COOKIE, COOKIE, KEEP_SIGN_INS, LINK_LIFETIME, SESSION_LIFETIME, SignIn, SignInLink, SignInLinks,
    dashboard_for, open_session, purge_dashboard_sessions, sign_in_url,
)
from paidan.db import transaction
from router.agents import add_agent
import webfixtures
from webfixtures import API_TOKEN, chromium_missing, make_settings, serve

browser = webfixtures.browser  # the fixture (assigned, not imported, so that pyflakes sees it used)
SECRET_KEY = "dash-session-secret"
START = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)


@dataclass
class Clock:
    """The dashboard's notion of now, moved by the test."""

    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Desk:
    engine: object
    base: str
    links: SignInLinks
    clock: Clock
    ids: dict[str, int] = field(default_factory=dict)

    def link(self, name: str = "Sue") -> str:
        return sign_in_url(self.base, self.links, self.ids[name], self.clock())

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base, **kwargs)


@pytest.fixture
def desk(engine) -> Iterator[Desk]:
    from paidan.web import build_app

    with transaction(engine) as session:
        for name, role in (("Sue", "supervisor"), ("Al", "admin"), ("Ann", "agent")):
            add_agent(session, name, skills=["service"], role=role)
    with Session(engine) as session:
        ids = dict(session.execute(select(Agent.name, Agent.id)).all())
    settings = make_settings(secret_key=SECRET_KEY)

    async def sink(message):
        raise AssertionError("no intake here")

    async def ticket_view(number, identity):
        return None

    clock = Clock()
    dashboard = dashboard_for(engine, secret=settings.secret, timezone="Asia/Shanghai",
                              api_tokens=tuple(settings.api_tokens), clock=clock)
    with serve(build_app(settings, sink=sink, ticket_view=ticket_view, dashboard=dashboard)) as url:
        yield Desk(engine, url, dashboard.links, clock, ids)


HIDDEN = re.compile(r'<input type="hidden" name="([a-z]+)" value="([^"]*)">')
ACTION = re.compile(r'<form method="post" action="([^"]*)">')


def open_link(client: httpx.Client, link: str) -> httpx.Response:
    """What a person's browser, or a link previewer, does with the link: GET it."""
    return client.get(link, follow_redirects=False)


def press_sign_in(client: httpx.Client, page: httpx.Response, **headers: str) -> httpx.Response:
    """Submit the sign-in page's form, as its button does."""
    assert page.status_code == 200, page.text
    [action] = ACTION.findall(page.text)
    fields = {name: html.unescape(value) for name, value in HIDDEN.findall(page.text)}
    return client.post(html.unescape(action), data=fields, headers=headers, follow_redirects=False)


def sign_in(client: httpx.Client, link: str) -> httpx.Response:
    """Open the link and, when it shows the sign-in page, press the button; the last answer."""
    page = open_link(client, link)
    return press_sign_in(client, page) if page.status_code == 200 else page


def post_token(client: httpx.Client, token: str, check: str = "", **headers: str | bytes) -> httpx.Response:
    return client.post("/dashboard/sign-in", data={"token": token, "check": check}, headers=headers,
                       follow_redirects=False)


def snapshot(engine) -> list[tuple]:
    with Session(engine) as session:
        return [tuple(row) for row in session.execute(select(DashboardSession.__table__).order_by(DashboardSession.id))]


def rows(engine) -> list[DashboardSession]:
    with Session(engine) as session:
        return list(session.scalars(select(DashboardSession).order_by(DashboardSession.id)))


def test_opening_a_link_shows_whom_it_signs_in_and_spends_nothing(desk):
    """Chat apps, mail scanners and link previewers GET a link when it is pasted: that must not use it up."""
    with desk.client() as al:
        assert sign_in(al, desk.link("Al")).status_code == 303  # a sign-in already stored, to compare with
    before = snapshot(desk.engine)
    link = desk.link()
    token = link.split("token=")[1]
    with desk.client(headers={"User-Agent": "Slackbot-LinkExpanding 1.0"}) as previewer:
        for _ in range(2):
            assert open_link(previewer, link).status_code == 200
    assert snapshot(desk.engine) == before

    with desk.client() as person:
        page = open_link(person, link)
        assert page.status_code == 200 and "You are signing in as Sue." in page.text
        assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
        assert '<button type="submit" id="sign-in">Sign in</button>' in page.text
        assert ACTION.findall(page.text) == ["/dashboard/sign-in?lang=en"]  # the token travels in the body
        assert sorted(name for name, _ in HIDDEN.findall(page.text)) == ["check", "token"]
        assert page.text.count(token) == 1  # in the form's field, nowhere else on the page
        browser_cookie = page.headers["set-cookie"]
        assert browser_cookie.startswith(f"{BROWSER_COOKIE}=") and "HttpOnly" in browser_cookie
        assert "samesite=strict" in browser_cookie.lower() and "Path=/dashboard/sign-in" in browser_cookie
        assert token not in browser_cookie
        assert COOKIE not in person.cookies and person.get("/dashboard").status_code == 401
        assert open_link(person, link).status_code == 200  # opened again: still unused
        zh = open_link(person, link + "&lang=zh")
        assert zh.status_code == 200 and "你将以 Sue 的身份登录。" in zh.text and ">登录</button>" in zh.text
        assert ACTION.findall(zh.text) == ["/dashboard/sign-in?lang=zh"]
        assert snapshot(desk.engine) == before

        signed_in = press_sign_in(person, page)  # the first page's form: the browser's cookie was kept
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
        assert signed_in.headers["referrer-policy"] == "no-referrer"
        assert person.get("/dashboard").status_code == 200
    assert len(snapshot(desk.engine)) == len(before) + 1


def test_the_first_use_signs_in_with_a_session_cookie_that_is_not_the_link(desk):
    link = desk.link()
    token = link.split("token=")[1]
    with desk.client() as client:
        first = sign_in(client, link)
        assert first.status_code == 303 and first.headers["location"] == "/dashboard"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Path=/dashboard" in cookie and "samesite=lax" in cookie.lower()
        assert f"Max-Age={int(SESSION_LIFETIME.total_seconds())}" in cookie
        session_id = client.cookies[COOKIE]
        assert session_id and session_id != token and token not in cookie
        page = client.get("/dashboard")
        assert page.status_code == 200 and "Signed in as Sue" in page.text
        assert client.get("/dashboard/report.json").status_code == 200

    [row] = rows(desk.engine)
    stored = f"{row.link_sha256} {row.session_sha256}"
    nonce = token.split(".")[3]
    assert token not in stored and nonce not in stored and session_id not in stored  # hashes only
    assert row.session_sha256 == hashlib.sha256(session_id.encode()).hexdigest()
    assert row.agent_id == desk.ids["Sue"] and row.signed_out_at is None
    assert row.created_at == START and row.expires_at == START + SESSION_LIFETIME
    assert row.link_expires_at == START + LINK_LIFETIME


def test_a_second_use_of_a_link_is_refused_with_a_page_that_says_what_to_do(desk):
    link = desk.link()
    with desk.client() as owner, desk.client() as other:
        forwarded = open_link(other, link)  # shown to someone else too, before its owner pressed
        page = open_link(owner, link)
        assert press_sign_in(owner, page).status_code == 303
        # Its owner pressing again (the back button) or clicking the link again, still signed in, simply lands on
        # the dashboard.
        for again in (press_sign_in(owner, page), open_link(owner, link)):
            assert again.status_code == 303 and again.headers["location"] == "/dashboard"
            assert "set-cookie" not in again.headers
        pressed = press_sign_in(other, forwarded)
        assert pressed.status_code == 410 and "already been used" in pressed.text
        assert pressed.headers["cache-control"] == "no-store" and pressed.headers["referrer-policy"] == "no-referrer"
        assert COOKIE not in other.cookies
    with desk.client() as other:
        refused = sign_in(other, link)
        assert refused.status_code == 410 and refused.headers["cache-control"] == "no-store"
        assert refused.headers["referrer-policy"] == "no-referrer" and "<form" not in refused.text  # no button
        assert "already been used" in refused.text and "/dashboard" in refused.text
        assert "paidan dashboard --as" in refused.text and COOKIE not in refused.headers.get("set-cookie", "")
        zh = sign_in(other, link + "&lang=zh")
        assert zh.status_code == 410 and "此登录链接已被使用" in zh.text and "只能使用一次" in zh.text
        assert other.get("/dashboard").status_code == 401
    with desk.client() as someone_else_signed_in:  # a live session of another supervisor does not help
        assert sign_in(someone_else_signed_in, desk.link("Al")).status_code == 303
        assert sign_in(someone_else_signed_in, link).status_code == 410
    assert len(rows(desk.engine)) == 2


def test_two_links_issued_in_the_same_second_differ_and_each_works_once(desk):
    first, second = desk.link(), desk.link()
    assert first != second and first.split(".")[2] == second.split(".")[2]  # same expiry, different nonce
    with desk.client() as a, desk.client() as b:
        assert sign_in(a, first).status_code == 303
        assert sign_in(b, second).status_code == 303
        assert a.cookies[COOKIE] != b.cookies[COOKIE]
        assert a.get("/dashboard").status_code == 200 and b.get("/dashboard").status_code == 200
    with desk.client() as c:
        assert sign_in(c, first).status_code == 410 and sign_in(c, second).status_code == 410


def test_signing_out_ends_the_session_on_the_server(desk):
    with desk.client() as client:
        assert sign_in(client, desk.link()).status_code == 303
        session_id = client.cookies[COOKIE]
        out = client.post("/dashboard/sign-out", follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/dashboard?lang=en"
        assert f'{COOKIE}=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    [row] = rows(desk.engine)
    assert row.signed_out_at == START

    with desk.client(cookies={COOKIE: session_id}) as replay:  # the cookie kept, or copied, before sign-out
        page = replay.get("/dashboard")
        assert page.status_code == 401 and "Sign in to see the dashboard" in page.text
        assert replay.get("/dashboard/report.json").json()["error"]["code"] == "unauthorized"
        assert replay.post("/dashboard/sign-out", follow_redirects=False).status_code == 303  # harmless twice
    assert rows(desk.engine)[0].signed_out_at == START


def test_a_demoted_supervisors_session_stops_and_their_unused_link_is_not_spent(desk):
    with desk.client() as client, desk.client() as shown:
        assert sign_in(client, desk.link()).status_code == 303
        unused = desk.link()
        page = open_link(shown, unused)  # shown while still a supervisor, pressed after the demotion
        with transaction(desk.engine) as session:
            session.execute(update(Agent).where(Agent.name == "Sue").values(role="agent"))
        assert client.get("/dashboard").status_code == 401
        assert client.get("/dashboard/report.json").status_code == 401
        assert press_sign_in(shown, page).status_code == 401
        with desk.client() as elsewhere:
            refused = sign_in(elsewhere, unused)
            assert refused.status_code == 401 and "does not work" in refused.text
        with transaction(desk.engine) as session:
            session.execute(update(Agent).where(Agent.name == "Sue").values(role="supervisor"))
        assert client.get("/dashboard").status_code == 200  # the role is what is checked, each time
        with desk.client() as elsewhere:
            assert sign_in(elsewhere, unused).status_code == 303  # refused, it was not used up
    with desk.client() as client:
        assert sign_in(client, desk.link("Ann")).status_code == 401  # never a supervisor


def test_a_session_ends_when_it_expires_and_an_expired_link_keeps_its_answer(desk):
    with desk.client() as client:
        assert sign_in(client, desk.link("Al")).status_code == 303  # admins may look too
        late_link = desk.link()
        late_page = open_link(client, late_link)  # shown in time, pressed too late
        desk.clock.now = START + SESSION_LIFETIME - timedelta(seconds=1)
        assert client.get("/dashboard").status_code == 200
        desk.clock.now = START + SESSION_LIFETIME
        expired = client.get("/dashboard")
        assert expired.status_code == 401 and "Sign in to see the dashboard" in expired.text
        assert client.get("/dashboard/report.json").status_code == 401
        desk.clock.now = START + LINK_LIFETIME
        gone = sign_in(client, late_link)
        assert gone.status_code == 401 and "has expired" in gone.text and "<form" not in gone.text
        pressed = press_sign_in(client, late_page)
        assert pressed.status_code == 401 and "has expired" in pressed.text
    assert len(rows(desk.engine)) == 1


def test_concurrent_first_uses_of_one_link_open_exactly_one_session(desk):
    link = desk.link()
    start = threading.Barrier(8)
    answers: list[int] = []

    def use() -> None:
        with desk.client() as client:
            page = open_link(client, link)
            start.wait()
            answers.append(press_sign_in(client, page).status_code)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == [303] + [410] * 7
    assert len(rows(desk.engine)) == 1


def test_the_second_of_two_overlapping_transactions_finds_the_link_spent(desk):
    """The database, not timing, decides: the second insert waits for the first transaction and then finds the
    link taken (PostgreSQL's unique index; SQLite's single writer)."""
    link = SignInLink(desk.ids["Sue"], START + LINK_LIFETIME, "one-nonce")
    second: list[SignIn] = []

    def other() -> None:
        with transaction(desk.engine) as session:
            second.append(open_session(session, link, "session-b", START))

    with transaction(desk.engine) as session:
        assert open_session(session, link, "session-a", START) is SignIn.OPENED
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # waiting on the first transaction, not succeeding beside it
    thread.join(timeout=60)
    assert second == [SignIn.USED]
    with Session(desk.engine) as session:
        assert session.scalar(select(func.count()).select_from(DashboardSession)) == 1


def old_format_token(agent_id: int, expires: datetime, secret: bytes) -> str:
    """A token as links were issued before they worked once: `d1.<agent>.<expiry>.<signature>`."""
    key = hmac.new(secret, b"paidan dashboard sign-in", hashlib.sha256).digest()
    body = f"d1.{agent_id}.{int(expires.timestamp())}"
    signature = base64.urlsafe_b64encode(hmac.new(key, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
    return f"{body}.{signature.decode()}"


def test_old_format_links_are_told_to_ask_for_a_new_one(desk):
    secret = make_settings(secret_key=SECRET_KEY).secret
    old = old_format_token(desk.ids["Sue"], START + timedelta(hours=1), secret)
    with desk.client() as client:
        for _ in range(2):  # no longer reusable, nor usable at all
            answer = sign_in(client, f"/dashboard/sign-in?token={old}")
            assert answer.status_code == 410 and "no longer accepted" in answer.text
            assert "paidan dashboard --as" in answer.text and COOKIE not in client.cookies
        zh = sign_in(client, f"/dashboard/sign-in?token={old}&lang=zh")
        assert "此登录链接已不再有效" in zh.text
        posted = post_token(client, old)
        assert posted.status_code == 410 and "no longer accepted" in posted.text
        forged = old.rsplit(".", 1)[0] + ".forged"
        assert sign_in(client, f"/dashboard/sign-in?token={forged}").status_code == 401
        # A link-token cookie from before (the old scheme put the token there) signs nobody in.
        client.cookies.set(COOKIE, old)
        assert client.get("/dashboard").status_code == 401
    assert rows(desk.engine) == []


def test_forged_and_malformed_tokens_are_refused_on_the_page_and_when_posted(desk):
    good = desk.link().split("token=")[1]
    version, agent, expires, nonce, signature = good.split(".")
    forged = {
        "another agent": f"{version}.{desk.ids['Al']}.{expires}.{nonce}.{signature}",
        "longer life": f"{version}.{agent}.{int(expires) + 3600}.{nonce}.{signature}",
        "another signature": f"{version}.{agent}.{expires}.{nonce}.{signature[::-1]}",
        "non-ASCII nonce": f"{version}.{agent}.{expires}.{nonce}é.{signature}",
        "non-ASCII signature": f"{version}.{agent}.{expires}.{nonce}.{signature[:-1]}签",
        "empty": "",
        "dots": "." * 500,
        "NUL": "\x00",
    }
    with desk.client() as client:
        check = dict(HIDDEN.findall(open_link(client, desk.link()).text))["check"]  # a genuine one, elsewhere
        for why, token in forged.items():
            shown = client.get("/dashboard/sign-in", params={"token": token})
            assert shown.status_code == 401 and "does not work" in shown.text and "<form" not in shown.text, why
            assert shown.headers["referrer-policy"] == "no-referrer" and shown.headers["cache-control"] == "no-store"
            posted = post_token(client, token, check)
            assert posted.status_code == 401 and "does not work" in posted.text, why
            assert posted.headers["referrer-policy"] == "no-referrer"
        assert client.get("/dashboard/sign-in?token=d2.1.2.%FF.%FE").status_code == 401  # not even UTF-8
        raw = client.post("/dashboard/sign-in?lang=zh", content=b"token=%FF%FE&check=%C3",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert raw.status_code == 401 and "此登录链接无效" in raw.text
        assert client.post("/dashboard/sign-in").status_code == 401  # no form at all
        assert COOKIE not in client.cookies
    assert rows(desk.engine) == []


def test_a_sign_in_posted_from_another_site_is_refused_and_spends_nothing(desk):
    """Login CSRF: Al opens his own link, copies its form onto his site and has Sue's browser post it there,
    which would sign her in as Al. Her browser sends no sign-in cookie with another site's post (SameSite=Strict),
    and a check field made for his browser fits no other."""
    with desk.client() as al, desk.client() as sue:
        page = open_link(al, desk.link("Al"))
        fields = dict(HIDDEN.findall(page.text))
        evil = {"Origin": "https://evil.example", "Referer": "https://evil.example/"}
        cross_site = post_token(sue, fields["token"], fields["check"], **evil)
        assert cross_site.status_code == 403 and "could not be confirmed" in cross_site.text
        assert "Open your link again" in cross_site.text and "<form" not in cross_site.text
        assert cross_site.headers["referrer-policy"] == "no-referrer" and cross_site.headers["cache-control"] == "no-store"
        open_link(sue, desk.link())  # now her browser has a sign-in cookie of its own
        assert post_token(sue, fields["token"], fields["check"], **evil).status_code == 403
        assert post_token(sue, fields["token"], "", **evil).status_code == 403
        sue.cookies.set(BROWSER_COOKIE, "made-up-by-someone-else", path="/dashboard/sign-in")
        assert post_token(sue, fields["token"], fields["check"]).status_code == 403
        zh = sue.post("/dashboard/sign-in?lang=zh", data=fields, headers=evil)
        assert zh.status_code == 403 and "无法确认此次登录" in zh.text
        assert COOKIE not in sue.cookies and sue.get("/dashboard").status_code == 401
        assert rows(desk.engine) == []
        assert press_sign_in(al, page).status_code == 303  # his link was not used up by any of that
    assert len(rows(desk.engine)) == 1


@pytest.mark.browser
@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
def test_in_chromium_the_button_signs_in_and_another_sites_form_does_not(desk, browser):
    """A real browser: the page's post carries its SameSite=Strict cookie and no Referer (the page's address holds
    the token); another site's copy of the form (at localhost, another site than 127.0.0.1) is refused."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    with desk.client() as al:
        fields = dict(HIDDEN.findall(open_link(al, desk.link("Al")).text))

    async def trap(request):
        inputs = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in fields.items())
        return HTMLResponse(f'<form method="post" action="{desk.base}/dashboard/sign-in">{inputs}'
                            '<button id="win">Claim your prize</button></form>')

    context = browser.new_context(locale="en-US")
    page = context.new_page()
    with serve(Starlette(routes=[Route("/", trap)])) as elsewhere:
        page.goto(desk.link())  # Sue's own link, shown and not pressed: her browser has its sign-in cookie
        assert page.locator("#who").inner_text() == "You are signing in as Sue."
        page.goto(elsewhere.replace("127.0.0.1", "localhost") + "/")
        page.click("#win")
        page.wait_for_url(desk.base + "/dashboard/sign-in")
        assert page.locator("h1").inner_text() == "This sign-in could not be confirmed"
    assert rows(desk.engine) == [] and not [c for c in context.cookies() if c["name"] == COOKIE]

    page.goto(desk.link())
    with page.expect_request(lambda request: request.method == "POST") as posted:
        page.click("#sign-in")
    page.wait_for_url(desk.base + "/dashboard")
    assert "referer" not in posted.value.all_headers()
    assert "Signed in as Sue" in page.content()
    [row] = rows(desk.engine)
    assert row.agent_id == desk.ids["Sue"]
    context.close()


def test_odd_tokens_and_cookies_get_answers_not_errors(desk):
    with desk.client() as client:
        for token in ("", "d2.1.2.3.%C3%A9", "d1.1.2.%C3%A9", "%00", "." * 500):
            assert sign_in(client, f"/dashboard/sign-in?token={token}").status_code == 401, token
        odd_cookie = {"Cookie": f"{BROWSER_COOKIE}={'é' * 30}".encode()}
        assert post_token(client, desk.link().split("token=")[1], "é", **odd_cookie).status_code == 403
        client.cookies.set(COOKIE, "x" * 4000)
        assert client.get("/dashboard").status_code == 401
        bearer = client.get("/api/v1/report", headers={"Authorization": "Bearer t\u00e9st".encode("latin-1")})
        assert bearer.status_code == 401
        assert client.get("/api/v1/report", headers={"Authorization": f"Bearer {API_TOKEN}"}).status_code == 200


def test_purging_forgets_only_sign_ins_long_over(engine):
    with transaction(engine) as session:
        sue = add_agent(session, "Sue", skills=["service"], role="supervisor")
        session.flush()
        now = START + timedelta(days=30)

        def signed_in(nonce: str, at: datetime) -> None:
            link = SignInLink(sue.id, at + LINK_LIFETIME, nonce)
            assert open_session(session, link, f"session-{nonce}", at) is SignIn.OPENED

        over = now - KEEP_SIGN_INS - SESSION_LIFETIME - timedelta(minutes=1)
        signed_in("long-over", over)
        signed_in("just-inside", now - KEEP_SIGN_INS - SESSION_LIFETIME + timedelta(minutes=1))
        signed_in("today", now - timedelta(hours=1))
        # A session cut short, whose link could still be presented when it was used: kept until the link's
        # end has been over long enough too.
        session.add(DashboardSession(link_sha256="l" * 64, session_sha256="s" * 64, agent_id=sue.id,
                                     created_at=over, expires_at=over,
                                     link_expires_at=now - KEEP_SIGN_INS + timedelta(minutes=1)))
    with transaction(engine) as session:
        assert purge_dashboard_sessions(session, now) == 1
    remaining = {row.session_sha256 for row in rows(engine)}
    expected = {hashlib.sha256(f"session-{n}".encode()).hexdigest() for n in ("just-inside", "today")} | {"s" * 64}
    assert remaining == expected
    with transaction(engine) as session:
        assert purge_dashboard_sessions(session, now) == 0
