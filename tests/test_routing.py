"""The routing step: classification at intake, priority rules, triage, SLA, assignment, acknowledgement."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import KeywordClassifier, make_message
from models import Channel, ThreadRefs
from models.tables import Agent, Customer, Message, OutboxItem, ReviewItem, SlaClock, Ticket, TicketEvent
from paidan.db import transaction
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.routing import first_priority, raise_priority, route_pending, second_contact_priority

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
CONFIG = RouterConfig()


@pytest.mark.parametrize("priority,levels,ceiling,expected", [
    ("P3", 1, "P0", "P2"), ("P1", 1, "P0", "P0"), ("P0", 1, "P0", "P0"), ("P2", 1, "P1", "P1"),
    ("P1", 1, "P1", "P1"), ("P0", 1, "P1", "P0"), ("P3", 2, "P0", "P1"),
])
def test_raise_priority(priority, levels, ceiling, expected):
    assert raise_priority(priority, levels, ceiling=ceiling) == expected


def test_priority_rules_are_recorded_with_their_reasons():
    assert first_priority("P2", vip=True).bumps == ("VIP customer: P2 → P1",)
    assert first_priority("P0", vip=True).bumps == ()
    assert second_contact_priority("P3", already_bumped=False).priority == "P2"
    assert second_contact_priority("P2", already_bumped=False).priority == "P1"
    assert second_contact_priority("P1", already_bumped=False).bumps == ()  # never above P1 on this rule alone
    assert second_contact_priority("P3", already_bumped=True).priority == "P3"


@pytest.fixture
def staff(engine):
    with transaction(engine) as session:
        for name, skills, seniority in [("Ann", ["service", "technical"], 3), ("Bo", ["service", "transaction"], 1)]:
            agent = add_agent(session, name, skills=skills, capacity=5, seniority=seniority)
            agent.online = True
        boss = add_agent(session, "Sue", skills=[], role="supervisor")
        boss.on_call = True
    return engine


def route(engine, classifier=KeywordClassifier(), now=NOW, config=CONFIG) -> int:
    with transaction(engine) as session:
        return route_pending(session, classifier, config, now)


def ticket_of(engine, number) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def events(engine, number, kind=None) -> list[TicketEvent]:
    with Session(engine) as session:
        query = select(TicketEvent).join(Ticket).where(Ticket.number == number).order_by(TicketEvent.id)
        if kind:
            query = query.where(TicketEvent.kind == kind)
        return session.scalars(query).all()


def outbox(engine, kind) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == kind).order_by(OutboxItem.id)).all()


def test_a_new_ticket_is_classified_clocked_assigned_and_acknowledged(staff):
    engine = staff
    receipt = Intake(engine).accept_now(make_message(channel=Channel.EMAIL, text="我要退款，订单 20261103884512",
                                                     received_at=NOW))
    assert route(engine) == 1
    ticket = ticket_of(engine, receipt.ticket_number)
    assert (ticket.type, ticket.category, ticket.priority) == ("request", "service", "P2")
    assert ticket.model_version == KeywordClassifier.version and ticket.routed_at == NOW
    assert ticket.state == "assigned" and ticket.assigned_agent_id is not None
    [classified] = events(engine, receipt.ticket_number, "classified")
    assert "request/service/P2" in classified.reason
    with Session(engine) as session:
        assert session.get(Message, receipt.message_id).type == "request"
        kinds = set(session.scalars(select(SlaClock.kind).where(SlaClock.ticket_id == ticket.id)))
    assert kinds == {"first_response", "resolution"}
    [ack] = outbox(engine, "ack")
    assert ack.channel == "email" and ack.recipient == "kehu@example.com"
    assert ack.payload["ticket"] == receipt.ticket_number and ack.payload["first_response_due"]
    assert route(engine) == 0  # nothing left: routing is idempotent


def test_web_and_api_tickets_are_not_acknowledged_twice(staff):
    Intake(staff).accept_now(make_message(channel=Channel.WEB, received_at=NOW))
    route(staff)
    assert outbox(staff, "ack") == []  # the confirmation page already told them


def test_a_vip_gets_one_level_up_with_the_reason(staff):
    receipt = Intake(staff).accept_now(make_message(text="我要退款", received_at=NOW))
    with transaction(staff) as session:
        session.get(Customer, ticket_of(staff, receipt.ticket_number).customer_id).vip = True
    route(staff)
    ticket = ticket_of(staff, receipt.ticket_number)
    assert ticket.priority == "P1"
    assert "VIP customer: P2 → P1" in events(staff, receipt.ticket_number, "classified")[0].reason


def test_low_confidence_goes_to_triage_not_to_an_agent(staff):
    receipt = Intake(staff).accept_now(make_message(text="嗯 lowconf", received_at=NOW))
    route(staff)
    ticket = ticket_of(staff, receipt.ticket_number)
    assert ticket.queue == "triage" and "low classifier confidence" in ticket.queue_reason
    assert ticket.assigned_agent_id is None and ticket.state == "new"
    assert [o.recipient for o in outbox(staff, "triage")] == ["agent:3"]


def test_without_a_model_tickets_wait_in_triage_and_the_clock_still_runs(staff):
    receipt = Intake(staff).accept_now(make_message(received_at=NOW))
    route(staff, classifier=None)
    ticket = ticket_of(staff, receipt.ticket_number)
    assert ticket.queue == "triage" and "paidan model ensure" in ticket.queue_reason and ticket.priority == "P2"
    with Session(staff) as session:
        assert session.scalar(select(func.count()).select_from(SlaClock).where(SlaClock.ticket_id == ticket.id)) == 2


def test_p0_tells_the_on_call_supervisor_at_creation(staff):
    receipt = Intake(staff).accept_now(make_message(text="支付系统宕机，所有门店无法收款", received_at=NOW))
    route(staff)
    assert ticket_of(staff, receipt.ticket_number).priority == "P0"
    [notice] = [o for o in outbox(staff, "on_call") if o.ticket_id == receipt.ticket_id]
    assert notice.recipient == "agent:3"  # Sue, the supervisor on call


def test_a_second_contact_within_a_day_raises_priority_once_and_never_above_p1(staff):
    intake = Intake(staff)
    first = intake.accept_now(make_message(text="建议加个夜间模式", received_at=NOW))
    route(staff)
    assert ticket_of(staff, first.ticket_number).priority == "P3"
    for hours, expected in ((2, "P2"), (3, "P2")):
        intake.accept_now(make_message(text="还没人回？", received_at=NOW + timedelta(hours=hours),
                                       thread_refs=ThreadRefs(ticket_number=first.ticket_number)))
        route(staff, now=NOW + timedelta(hours=hours))
        assert ticket_of(staff, first.ticket_number).priority == expected
    [raised] = events(staff, first.ticket_number, "priority_raised")
    assert "second contact" in raised.reason


def test_a_rejected_ticket_reference_is_put_before_a_supervisor(staff):
    intake = Intake(staff)
    first = intake.accept_now(make_message(email="wang@example.com", received_at=NOW))
    other = intake.accept_now(make_message(email="mallory@example.com", received_at=NOW,
                                           thread_refs=ThreadRefs(ticket_number=first.ticket_number)))
    route(staff)
    with Session(staff) as session:
        [item] = session.scalars(select(ReviewItem)).all()
    assert item.kind == "ticket_ref_rejected" and item.ticket_id == other.ticket_id


def test_with_nobody_online_the_ticket_waits_with_its_reason(engine):
    receipt = Intake(engine).accept_now(make_message(received_at=NOW))
    route(engine)
    ticket = ticket_of(engine, receipt.ticket_number)
    assert ticket.queue == "assignment" and ticket.queue_reason and ticket.routed_at == NOW
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Agent)) == 0
