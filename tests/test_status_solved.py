"""The status page's "this is solved" (POST /status/solved): a real HTTP client against the whole web app,
the ticket opened through the contact form and routed, resolved through actions.customer_resolves."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from factories import KeywordClassifier
from models.tables import Agent, Ticket, TicketEvent
from paidan.db import transaction
from paidan.web import build_app, solved_hook
from router.agents import add_agent
from router.config import RouterConfig
from router.queries import TicketQueries
from router.routing import route_pending
from webfixtures import FormClient, csrf_in, make_settings, serve, ticket_number_in
from webfixtures import *  # noqa: F403 — the fixtures

CONFIG = RouterConfig()
FORM = {"name": "张三", "email": "solved@example.com", "phone": "", "subject": "订单没到",
        "message": "我的订单 12345 还没有到", "website": ""}


def test_a_customer_closes_their_ticket_from_the_status_page(engine, web_intake):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "zh"], capacity=5).online = True
    app = build_app(make_settings(), web_intake.accept, TicketQueries(engine).ticket_view,
                    mark_solved=solved_hook(engine, CONFIG))
    with serve(app) as url:
        client = FormClient(url, **{"Accept-Language": "zh-CN"})
        try:
            number = ticket_number_in(client.submit(FORM).text)
            with transaction(engine) as session:
                route_pending(session, KeywordClassifier(), CONFIG, datetime.now(UTC))
            page = client.lookup(number, FORM["email"])
            assert 'id="mark-solved"' in page.text and "✅ 问题已解决" in page.text
            fields = {"csrf_token": csrf_in(page.text), "number": number, "contact": FORM["email"]}

            wrong = client.http.post("/status/solved", data={**fields, "contact": "someone@example.com"})
            assert wrong.status_code == 404  # the same proof as reading it: number and contact
            forged = client.http.post("/status/solved", data={**fields, "csrf_token": "x"})
            assert forged.status_code == 403
            with Session(engine) as session:
                assert session.scalar(select(Ticket.state).where(Ticket.number == number)) == "assigned"

            done = client.http.post("/status/solved", data=fields)
            assert done.status_code == 200 and "已标记为已解决，谢谢！" in done.text
            assert 'data-state="resolved"' in done.text and 'id="mark-solved"' not in done.text
            again = client.http.post("/status/solved", data=fields)
            assert again.status_code == 200 and "这个工单已经解决了。" in again.text
        finally:
            client.close()
    with Session(engine) as session:
        event = session.scalars(select(TicketEvent).where(TicketEvent.to_state == "resolved")).one()
        assert (event.actor, event.data["identity"]) == ("customer", "email:solved@example.com")
        assert session.scalar(select(Agent.load).where(Agent.name == "Ann")) == 0


def test_without_the_hook_there_is_no_button_and_no_route(live_app, form_client):
    number = ticket_number_in(form_client.submit({**FORM, "email": "plain@example.com"}).text)
    page = form_client.lookup(number, "plain@example.com")
    assert 'id="mark-solved"' not in page.text
    assert form_client.http.post("/status/solved", data={}).status_code in (404, 405)
