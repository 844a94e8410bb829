"""Dashboard sign-ins (paidan/dashboard.py): a link works once and opens a session kept in the database;
signing out, demotion and expiry end it. Over real HTTP on loopback, on a real database (SQLite, or
PostgreSQL with PAIDAN_TEST_DATABASE_URL)."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
    COOKIE, KEEP_SIGN_INS, LINK_LIFETIME, SESSION_LIFETIME, SignIn, SignInLink, SignInLinks, dashboard_for,
    open_session, purge_dashboard_sessions, sign_in_url,
)
from paidan.db import transaction
from router.agents import add_agent
from webfixtures import API_TOKEN, make_settings, serve

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


def sign_in(client: httpx.Client, link: str) -> httpx.Response:
    return client.get(link, follow_redirects=False)


def rows(engine) -> list[DashboardSession]:
    with Session(engine) as session:
        return list(session.scalars(select(DashboardSession).order_by(DashboardSession.id)))


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
    with desk.client() as owner:
        assert sign_in(owner, link).status_code == 303
        # Its owner clicking it again, still signed in, simply lands on the dashboard.
        again = sign_in(owner, link)
        assert again.status_code == 303 and again.headers["location"] == "/dashboard"
        assert "set-cookie" not in again.headers
    with desk.client() as other:
        refused = sign_in(other, link)
        assert refused.status_code == 410 and refused.headers["cache-control"] == "no-store"
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
    with desk.client() as client:
        assert sign_in(client, desk.link()).status_code == 303
        unused = desk.link()
        with transaction(desk.engine) as session:
            session.execute(update(Agent).where(Agent.name == "Sue").values(role="agent"))
        assert client.get("/dashboard").status_code == 401
        assert client.get("/dashboard/report.json").status_code == 401
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
        desk.clock.now = START + SESSION_LIFETIME - timedelta(seconds=1)
        assert client.get("/dashboard").status_code == 200
        desk.clock.now = START + SESSION_LIFETIME
        expired = client.get("/dashboard")
        assert expired.status_code == 401 and "Sign in to see the dashboard" in expired.text
        assert client.get("/dashboard/report.json").status_code == 401
        desk.clock.now = START + LINK_LIFETIME
        gone = sign_in(client, late_link)
        assert gone.status_code == 401 and "has expired" in gone.text
    assert len(rows(desk.engine)) == 1


def test_concurrent_first_uses_of_one_link_open_exactly_one_session(desk):
    link = desk.link()
    start = threading.Barrier(8)
    answers: list[int] = []

    def use() -> None:
        with desk.client() as client:
            start.wait()
            answers.append(sign_in(client, link).status_code)

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
        forged = old.rsplit(".", 1)[0] + ".forged"
        assert sign_in(client, f"/dashboard/sign-in?token={forged}").status_code == 401
        # A link-token cookie from before (the old scheme put the token there) signs nobody in.
        client.cookies.set(COOKIE, old)
        assert client.get("/dashboard").status_code == 401
    assert rows(desk.engine) == []


def test_odd_tokens_and_cookies_get_answers_not_errors(desk):
    with desk.client() as client:
        for token in ("", "d2.1.2.3.%C3%A9", "d1.1.2.%C3%A9", "%00", "." * 500):
            assert sign_in(client, f"/dashboard/sign-in?token={token}").status_code == 401, token
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
