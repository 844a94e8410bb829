"""Reports (router.reports), `paidan report` / `paidan dashboard`, and the dashboard and report API over
real HTTP, on a real database. Tickets come in through intake and are worked with the same actions agents
use, on a fake clock, so every number the report gives can be worked out by hand from the story below."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from factories import KeywordClassifier, make_message
from models import Channel
from models.tables import Agent, OutboxItem, Survey, Ticket
from paidan.dashboard import COOKIE, SignInLinks, dashboard_for, sign_in_url
from paidan.db import transaction
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.reports import Durations, build_report, last_days
from router.routing import route_pending
import webfixtures
from webfixtures import API_TOKEN, chromium_missing, make_settings, serve

browser = webfixtures.browser  # the fixture (assigned, not imported, so that pyflakes sees it used)
ZONE = "Asia/Shanghai"
MONDAY = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
NOW = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)  # Tuesday 14:00
CONFIG = RouterConfig()
REFUND = "我要退款，订单 20261103884512"  # request/service/P2 for the keyword classifier
OUTAGE = "支付系统宕机 all stores down"  # incident/technical/P0


def new_ticket(engine, text: str, at: datetime, channel: Channel = Channel.API, **extra) -> str:
    receipt = Intake(engine, clock=lambda: at).accept_now(
        make_message(text=text, received_at=at, channel=channel, **extra))
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, at)
    return receipt.ticket_number


def act(engine, action, number, actor, at, **kwargs):
    with transaction(engine) as session:
        return action(session, number, actor, config=CONFIG, now=at, **kwargs)


def holder(engine, number) -> str | None:
    with Session(engine) as session:
        return session.scalar(select(Agent.name).join(Ticket, Ticket.assigned_agent_id == Agent.id)
                              .where(Ticket.number == number))


@pytest.fixture
def story(engine):
    """Two days of a small desk, told so that each figure of the report has one obvious answer.

    Monday: a refund by email, answered in 30 minutes and resolved in 2 hours, then reopened by the
    customer's supervisor and resolved again on Tuesday; an outage through the API that Bo declines and
    Cy takes, answered in 10 minutes, still open. Tuesday 00:30 local (Monday 16:30 UTC): a web-form
    refund, counted on Tuesday, never answered. An auto-reply that names no ticket, set aside.
    """
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], capacity=5, seniority=2).online = True
        add_agent(session, "Cy", skills=["technical"], capacity=5, seniority=3).online = True
        add_agent(session, "Bo", skills=["technical"], capacity=5, seniority=3).online = True
        add_agent(session, "Sue", skills=["service"], role="supervisor")
    refund = new_ticket(engine, REFUND, MONDAY, Channel.EMAIL, email="a@example.com")
    ann = holder(engine, refund)
    act(engine, actions.accept, refund, ann, MONDAY + timedelta(minutes=5))
    act(engine, actions.reply, refund, ann, MONDAY + timedelta(minutes=30), text="退款已处理")
    act(engine, actions.resolve, refund, ann, MONDAY + timedelta(hours=2))

    outage = new_ticket(engine, OUTAGE, MONDAY + timedelta(hours=1), email="ops@example.com")
    first = holder(engine, outage)
    act(engine, actions.decline, outage, first, MONDAY + timedelta(hours=1, minutes=2), reason="in a meeting")
    second = holder(engine, outage)
    assert {first, second} == {"Bo", "Cy"}
    act(engine, actions.accept, outage, second, MONDAY + timedelta(hours=1, minutes=3))
    act(engine, actions.reply, outage, second, MONDAY + timedelta(hours=1, minutes=10), text="正在处理")
    act(engine, actions.relabel, outage, "Sue", MONDAY + timedelta(hours=1, minutes=20),
        head="category", new_label="transaction")

    late = datetime(2026, 11, 23, 16, 30, tzinfo=UTC)  # Tuesday 00:30 in Shanghai
    web = new_ticket(engine, REFUND, late, Channel.WEB, email="w@example.com")
    new_ticket(engine, "I am out of the office", late, Channel.EMAIL, email="ooo@example.com",
               flags=("auto_reply",))

    act(engine, actions.reopen, refund, "Sue", NOW - timedelta(hours=3), reason="customer says no money yet")
    act(engine, actions.resolve, refund, "Sue", NOW - timedelta(hours=1))

    with transaction(engine) as session:
        session.add(OutboxItem(kind="reply", channel="email", recipient="x@example.com", payload={},
                               status="failed", created_at=MONDAY + timedelta(hours=3)))
    return {"refund": refund, "outage": outage, "web": web, "ann": ann, "declined_by": first, "took": second}


def report_of(engine, days: int = 2, now: datetime = NOW):
    since, until = last_days(days, now, ZONE)
    with Session(engine) as session:
        return build_report(session, since=since, until=until, now=now, timezone=ZONE)


def test_the_report_counts_the_story(engine, story):
    r = report_of(engine)
    assert r.days == ["2026-11-23", "2026-11-24"]
    # Contacts by the local day they came in: the web form at 00:30 Tuesday is Tuesday's.
    assert r.created_by_day == {"api": [1, 0], "email": [1, 0], "web": [0, 1]}
    assert (r.created, r.machine, r.merged) == (3, 1, 0)
    # Resolutions when they happened: Monday's, then Tuesday's after the reopen.
    assert r.resolved_by_day == [1, 1] and r.reopened == 1 and r.reopen_share == 0.5
    assert r.labels["type"] == {"request": 2, "incident": 1}
    assert r.labels["category"] == {"service": 2, "transaction": 1}  # as corrected by Sue
    assert r.labels["priority"] == {"P2": 2, "P0": 1}
    assert r.first_response["P2"] == Durations(1, 1800.0, 1800.0)  # the web refund is still unanswered
    assert r.first_response["P0"] == Durations(1, 600.0, 600.0)
    assert list(r.first_response) == ["P0", "P2"]  # urgent first
    assert r.resolution["P2"].count == 1 and r.resolution["P2"].median == (NOW - timedelta(hours=1) - MONDAY).total_seconds()
    assert "P0" not in r.resolution
    assert r.corrections == {"category": 1}
    assert r.delivery_failed == {"email": 1}

    sla = {(line.priority, line.kind): line for line in r.sla}
    assert (sla[("P0", "first_response")].met, sla[("P0", "first_response")].breached) == (1, 0)
    assert sla[("P0", "resolution")].running + sla[("P0", "resolution")].breached == 1
    assert sla[("P2", "first_response")].met == 1  # the refund; the web one runs or has breached
    assert sum(line.met + line.breached + line.running for line in r.sla) == 6  # 3 contacts × 2 clocks

    agents = {a.name: a for a in r.agents}
    assert agents[story["declined_by"]].declined == 1 and agents[story["declined_by"]].accepted == 0
    assert agents[story["took"]].accepted == 1 and agents[story["took"]].first_response.median == 600.0
    assert agents[story["took"]].load == 1
    assert agents[story["ann"]].resolved == 1 and agents["Sue"].resolved == 1
    assert r.now.tickets["in_progress"] == 1 and sum(r.now.tickets.values()) == 2  # the outage, the web refund
    assert r.oldest_waiting_seconds is None or r.oldest_waiting_seconds > 0


def test_a_period_holds_only_what_happened_in_it(engine, story):
    monday_only = report_of(engine, days=1, now=MONDAY + timedelta(hours=8))
    assert monday_only.days == ["2026-11-23"]
    assert monday_only.created == 2 and monday_only.created_by_day == {"api": [1], "email": [1]}
    assert monday_only.resolved_by_day == [1] and monday_only.reopened == 0
    assert monday_only.delivery_failed == {"email": 1}
    later = report_of(engine, days=3, now=NOW + timedelta(days=30))
    assert later.created == 0 and later.resolved == 0 and later.sla == [] and later.first_response == {}


def test_the_json_form_is_plain_data(engine, story):
    data = json.loads(json.dumps(report_of(engine).as_dict()))
    assert data["created"] == 3 and data["reopen_share"] == 0.5
    assert data["sla_met_share"]["first_response"] is not None
    assert data["since"].startswith("2026-11-22T16:00") and data["timezone"] == ZONE
    assert {line["kind"] for line in data["sla"]} == {"first_response", "resolution"}
    assert all("met_share" in line for line in data["sla"])
    assert data["satisfaction"]["distribution"].keys() == {"1", "2", "3", "4", "5"}


def test_satisfaction_counts_answers_and_credits_the_agent(engine, story):
    with transaction(engine) as session:
        ids = dict(session.execute(select(Agent.name, Agent.id)).all())
        tickets = dict(session.execute(select(Ticket.number, Ticket.id)).all())
        session.execute(update(Survey).values(sent_at=MONDAY))  # whatever resolve sent, asked on Monday
        existing = {s.ticket_id for s in session.scalars(select(Survey))}
        for number, agent, rating in ((story["refund"], story["ann"], 5), (story["outage"], story["took"], 2),
                                      (story["web"], story["ann"], None)):
            if tickets[number] in existing:
                session.execute(update(Survey).where(Survey.ticket_id == tickets[number])
                                .values(agent_id=ids[agent], rating=rating))
            else:
                session.add(Survey(ticket_id=tickets[number], customer_id=1, channel="email",
                                   agent_id=ids[agent], sent_at=MONDAY, rating=rating))
    s = report_of(engine).satisfaction
    assert (s.sent, s.answered) == (3, 2)
    assert s.distribution == {1: 0, 2: 1, 3: 0, 4: 0, 5: 1} and s.average == 3.5 and s.satisfied_share == 0.5
    agents = {a.name: a for a in report_of(engine).agents}
    assert (agents[story["ann"]].rating_average, agents[story["ann"]].ratings) == (5.0, 1)


# ---------------------------------------------------------------- command line


def cli_env(database_url: str) -> dict[str, str]:
    return {"PAIDAN_DATABASE_URL": database_url, "PAIDAN_SECRET_KEY": "report-test-secret",
            "PAIDAN_PUBLIC_URL": "https://support.example.com", "PAIDAN_TIMEZONE": ZONE}


def test_paidan_report_prints_the_story(engine, story, database_url, monkeypatch):
    from paidan import cli_report
    from paidan.cli import cli

    monkeypatch.setattr(cli_report, "_now", lambda: NOW)
    runner = CliRunner()
    out = runner.invoke(cli, ["report", "--days", "2"], env=cli_env(database_url))
    assert out.exit_code == 0, out.output
    assert "contacts 3  (+1 auto-replies and bounces set aside); resolved 2, reopened 1 (50%)" in out.output
    assert "SLA clocks: 2 overdue" in out.output  # the outage's resolution and the web refund's first reply
    assert re.search(r"│ web\s+│\s+1 │", out.output)
    as_json = runner.invoke(cli, ["report", "--days", "2", "--json"], env=cli_env(database_url))
    assert json.loads(as_json.output)["created"] == 3
    bad = runner.invoke(cli, ["report", "--days", "0"], env=cli_env(database_url))
    assert bad.exit_code == 2 and "--days" in bad.output


def test_paidan_dashboard_gives_supervisors_a_link_and_tells_agents_why_not(engine, story, database_url):
    from paidan.cli import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["dashboard", "--as", "Sue"], env=cli_env(database_url))
    assert out.exit_code == 0, out.output
    url = out.output.strip()
    assert url.startswith("https://support.example.com/dashboard/sign-in?token=d2.")
    links = SignInLinks(make_settings(secret_key="report-test-secret").secret)
    with Session(engine) as session:
        sue = session.scalar(select(Agent.id).where(Agent.name == "Sue"))
    assert links.check(url.split("token=")[1], datetime.now(UTC)) == sue
    refused = runner.invoke(cli, ["dashboard", "--as", "Ann"], env=cli_env(database_url))
    assert refused.exit_code == 1 and "only supervisors and admins" in refused.output


# ---------------------------------------------------------------- sign-in links


def test_sign_in_tokens_are_checked_for_signature_expiry_and_shape():
    links = SignInLinks(b"k" * 32)
    token = links.issue(7, NOW + timedelta(hours=1))
    assert links.check(token, NOW) == 7
    assert links.check(token, NOW + timedelta(hours=2)) is None  # expired
    assert SignInLinks(b"other" * 8).check(token, NOW) is None  # another deployment's
    version, agent, expires, nonce, signature = token.split(".")
    assert links.check(f"{version}.8.{expires}.{nonce}.{signature}", NOW) is None  # someone else's id
    assert links.check(f"{version}.{agent}.{int(expires) + 3600}.{nonce}.{signature}", NOW) is None  # longer life
    assert links.check(f"{version}.{agent}.{expires}.{nonce}x.{signature}", NOW) is None  # another link's nonce
    for junk in ("", "d2", "d2.x.y.z.w", "a.b.c.d.e", "d2.7.notanumber.n.sig", "d2.7.1.n.é", "d1.7.1.sig"):
        assert links.check(junk, NOW) is None


# ---------------------------------------------------------------- over HTTP


@pytest.fixture
def dashboard_app(engine, story):
    from paidan.web import build_app

    settings = make_settings(secret_key="dash-secret")

    async def sink(message):  # the dashboard tests post no messages
        raise AssertionError("no intake here")

    async def ticket_view(number, identity):
        return None

    # The story's clock: the report counts the last `days` days before it (before the wall clock, from
    # 2026-12-23 on, 30 days would no longer reach the story), and links are issued and checked on it.
    dashboard = dashboard_for(engine, secret=settings.secret, timezone=ZONE, api_tokens=tuple(settings.api_tokens),
                              clock=lambda: NOW)
    app = build_app(settings, sink=sink, ticket_view=ticket_view, dashboard=dashboard)
    with serve(app) as url:
        yield url, dashboard.links


def supervisor_link(engine, links: SignInLinks, base: str, name: str = "Sue") -> str:
    with Session(engine) as session:
        agent_id = session.scalar(select(Agent.id).where(Agent.name == name))
    return sign_in_url(base, links, agent_id, NOW)


def sign_in(client: httpx.Client, link: str) -> httpx.Response:
    """Open the link; when it shows the sign-in page, press its button (POST the form). The last answer."""
    page = client.get(link, follow_redirects=False)
    if page.status_code != 200:
        return page
    action = re.search(r'<form method="post" action="([^"]*)">', page.text)
    fields = dict(re.findall(r'<input type="hidden" name="([a-z]+)" value="([^"]*)">', page.text))
    assert action and set(fields) == {"token", "check"}, page.text
    return client.post(html.unescape(action.group(1)), data={k: html.unescape(v) for k, v in fields.items()},
                       follow_redirects=False)


def test_the_dashboard_needs_a_supervisors_link(engine, dashboard_app):
    base, links = dashboard_app
    with httpx.Client(base_url=base) as client:
        signed_out = client.get("/dashboard")
        assert signed_out.status_code == 401 and "/dashboard" in signed_out.text and "paidan dashboard --as" in signed_out.text
        assert client.get("/dashboard/sign-in?token=d1.1.99999999999.forged").status_code == 401
        assert client.get(supervisor_link(engine, links, base, "Ann")).status_code == 401  # an agent, not a supervisor

        signed_in = sign_in(client, supervisor_link(engine, links, base))
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
        cookie = signed_in.headers["set-cookie"]
        assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "Path=/dashboard" in cookie
        assert "samesite=lax" in cookie.lower()

        page = client.get("/dashboard?days=30")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert "Signed in as Sue" in page.text and page.text.count("<svg") >= 3
        assert client.get("/dashboard?days=30&lang=zh").text.count("客服看板") >= 1
        bad = client.get("/dashboard?days=forever")
        assert bad.status_code == 400 and "whole number" in bad.text
        own_json = client.get("/dashboard/report.json?days=30")
        assert own_json.status_code == 200 and own_json.json()["created"] == 3

        with transaction(engine) as session:  # demoted: the cookie stops working at once
            session.execute(update(Agent).where(Agent.name == "Sue").values(role="agent"))
        assert client.get("/dashboard").status_code == 401
        with transaction(engine) as session:
            session.execute(update(Agent).where(Agent.name == "Sue").values(role="supervisor"))
        assert client.get("/dashboard").status_code == 200
        signed_out = client.post("/dashboard/sign-out", follow_redirects=False)
        assert signed_out.status_code == 303 and signed_out.headers["location"] == "/dashboard?lang=en"
        assert client.get("/dashboard").status_code == 401


def test_the_report_api_takes_the_api_tokens(dashboard_app):
    base, _ = dashboard_app
    with httpx.Client(base_url=base) as client:
        anonymous = client.get("/api/v1/report")
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = client.get("/api/v1/report", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        ok = client.get("/api/v1/report?days=30", headers=auth)
        assert ok.status_code == 200 and ok.json()["created"] == 3 and ok.json()["machine"] == 1
        for days in ("0", "367", "x", "-1", "1.5"):
            bad = client.get(f"/api/v1/report?days={days}", headers=auth)
            assert bad.status_code == 400 and bad.json()["error"]["field"] == "days", days


@pytest.mark.browser
@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
def test_a_supervisor_reads_the_dashboard_in_chromium(engine, dashboard_app, browser):
    base, links = dashboard_app
    page = browser.new_context(locale="zh-CN").new_page()
    blocked = []  # what the Content-Security-Policy refused: an inline <style> would be, leaving the page bare
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(supervisor_link(engine, links, base) + "&lang=zh")
    assert page.locator("#who").inner_text() == "你将以 Sue 的身份登录。"  # opening the link only asks
    assert page.eval_on_selector("#sign-in", "b => getComputedStyle(b).backgroundColor") == "rgb(11, 99, 206)"
    page.click("#sign-in")  # a real browser's post: its sign-in cookie (SameSite=Strict) and no Referer
    page.wait_for_url(base + "/dashboard")
    assert page.url == base + "/dashboard"  # the token left the address bar
    assert "客服看板" in page.locator("h1").inner_text()  # Chinese from the browser's language
    # Styled: the tiles are laid out as a grid and drawn as cards.
    assert page.eval_on_selector(".tiles", "t => getComputedStyle(t).display") == "grid"
    assert page.eval_on_selector(".tile", "t => getComputedStyle(t).borderTopLeftRadius") == "8px"
    page.click("text=30 天")
    tiles = dict(zip(page.locator(".tile .label").all_inner_texts(), page.locator(".tile .value").all_inner_texts(),
                     strict=True))
    assert tiles["新工单"] == "3" and tiles["已解决"] == "2"
    charts = page.locator("svg.chart")
    assert charts.count() >= 4
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box and box["width"] > 200 and box["height"] > 40  # drawn, not collapsed
    # Every bar says its value on hover: the volume chart's web-form bar on Tuesday.
    assert page.locator("svg.chart rect title", has_text="2026-11-24 · 网页表单: 1").count() == 1
    page.click("text=English")
    assert page.locator("h1").inner_text() == "paidan · Help desk"
    page.click("text=Sign out")
    assert "Sign in to see the dashboard" in page.locator("h1").inner_text()
    assert page.eval_on_selector("main", "m => getComputedStyle(m).borderTopLeftRadius") == "8px"
    assert blocked == []
