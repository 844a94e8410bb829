"""Tickets waiting on the customer (router/waiting.py): reminded once after 3 quiet days, resolved after 7,
through the scheduler's `waiting` job on a fake clock; the reminder as the customer reads it by email
and on Telegram."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.email.send import RelayConfig, build_outbox_email
from connectors.telegram.send import build_telegram
from factories import KeywordClassifier, make_message
from models import Channel, Identity, IdentityKind, InboundMessage, Sender, ThreadRefs
from models.tables import Agent, OutboxItem, SlaClock, Ticket, TicketEvent
from paidan.db import transaction
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending
from router.scheduler import Scheduler, router_jobs

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
DAY = timedelta(days=1)


@pytest.fixture
def desk(engine):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], capacity=1).online = True
    return engine


def waiting_ticket(engine, msg: InboundMessage) -> str:
    """A ticket Ann accepted, answered and set to wait for the customer, at NOW."""
    number = Intake(engine, clock=lambda: NOW).accept_now(msg).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
        actions.accept(session, number, "Ann", CONFIG, NOW)
        actions.reply(session, number, "Ann", "请发一张订单截图", CONFIG, NOW)
        actions.wait_for_customer(session, number, "Ann", CONFIG, NOW, note="等截图")
    return number


def tick(engine, at: datetime) -> dict[str, int]:
    return Scheduler(engine, router_jobs(lambda: KeywordClassifier(), CONFIG)).run_once(at, only={"waiting"})


def reminders(engine) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == "reminder").order_by(OutboxItem.id)).all()


def ticket(engine, number: str) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def test_a_quiet_customer_is_reminded_once_then_the_ticket_is_resolved(desk):
    number = waiting_ticket(desk, make_message(channel=Channel.EMAIL, email="wang@example.com",
                                               text="我要退款，订单 20261103884512", subject="退款"))
    assert tick(desk, NOW + 3 * DAY - timedelta(minutes=1))["waiting"] == 0
    assert tick(desk, NOW + 3 * DAY)["waiting"] == 1
    assert tick(desk, NOW + 4 * DAY)["waiting"] == 0  # once per wait, not once a tick
    [item] = reminders(desk)
    assert (item.channel, item.recipient) == ("email", "wang@example.com")
    assert item.payload["resolve_by"] == (NOW + 7 * DAY).isoformat()

    mail = build_outbox_email(item, RelayConfig("127.0.0.1", 25, "support@example.com"))
    assert mail["Subject"] == f"等待您的回复 [{number}]" and mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_content().startswith(f"您好！工单 {number} 正在等待您的回复。如果问题已经解决，无需回复；若 "
                                         f"2026-12-01 03:00 UTC 前未收到您的消息，我们会把工单标记为已解决")

    assert ticket(desk, number).state == "awaiting_customer"
    assert tick(desk, NOW + 7 * DAY)["waiting"] == 1
    t = ticket(desk, number)
    assert (t.state, t.resolved_at) == ("resolved", NOW + 7 * DAY)
    with Session(desk) as session:
        assert session.scalar(select(Agent.load).where(Agent.name == "Ann")) == 0  # her place is free again
        running = session.scalar(select(func.count()).select_from(SlaClock)
                                 .where(SlaClock.ticket_id == t.id, SlaClock.stopped_at.is_(None)))
        reasons = session.scalars(select(TicketEvent.reason).where(TicketEvent.ticket_id == t.id,
                                                                   TicketEvent.actor == "router")).all()
        surveys = session.scalar(select(func.count()).select_from(OutboxItem).where(OutboxItem.kind == "survey"))
    assert running == 0 and surveys == 0  # no survey: the customer took no part in the ending
    assert "waiting on the customer for 3 day(s): reminded on email" in reasons
    assert "resolved: waited 7 day(s) for the customer, who did not write again" in reasons

    # A word from them afterwards reopens it, as any resolved ticket.
    Intake(desk, clock=lambda: NOW + 8 * DAY).accept_now(make_message(
        channel=Channel.EMAIL, email="wang@example.com", text="截图在这里", subject=f"Re: [{number}]",
        received_at=NOW + 8 * DAY, thread_refs=ThreadRefs(ticket_number=number)))
    assert ticket(desk, number).state == "reopened"


def test_anything_happening_restarts_the_wait_and_a_customer_answer_ends_it(desk):
    number = waiting_ticket(desk, make_message(channel=Channel.EMAIL, email="li@example.com", text="发票抬头写错了"))
    with transaction(desk) as session:  # day 2: a note is something happening
        actions.reply(session, number, "Ann", "已催财务", CONFIG, NOW + 2 * DAY, public=False)
        session.scalar(select(Ticket).where(Ticket.number == number)).updated_at = NOW + 2 * DAY
    assert tick(desk, NOW + 3 * DAY)["waiting"] == 0
    assert tick(desk, NOW + 5 * DAY)["waiting"] == 1  # three days after the note
    assert tick(desk, NOW + 7 * DAY)["waiting"] == 0  # not resolved before seven days after it either

    Intake(desk, clock=lambda: NOW + 8 * DAY).accept_now(make_message(
        channel=Channel.EMAIL, email="li@example.com", text="抬头是某某公司", subject=f"Re: [{number}]",
        received_at=NOW + 8 * DAY, thread_refs=ThreadRefs(ticket_number=number)))
    assert ticket(desk, number).state == "in_progress"
    assert tick(desk, NOW + 30 * DAY)["waiting"] == 0  # no longer waiting: nothing to do
    assert len(reminders(desk)) == 1


def test_the_telegram_reminder_and_steps_turned_off(desk):
    msg = InboundMessage(channel=Channel.TELEGRAM, external_id=f"555:{uuid.uuid4().hex[:8]}", text="I want a refund",
                         received_at=NOW, raw=b"{}", language="en",
                         sender=Sender((Identity(IdentityKind.TELEGRAM, "555"),), "Fang"))
    number = waiting_ticket(desk, msg)
    off = RouterConfig(remind_waiting_after=timedelta(0), resolve_waiting_after=timedelta(0))
    with transaction(desk) as session:
        from router.waiting import remind_and_resolve

        assert remind_and_resolve(session, off, NOW + 30 * DAY) == 0
    assert tick(desk, NOW + 3 * DAY)["waiting"] == 1
    [item] = reminders(desk)
    assert build_telegram(item).text == (
        f"Hello! Ticket {number} is waiting for your reply. If the issue is solved, there is nothing to do; if we "
        f"do not hear from you by 2026-12-01 03:00 UTC, we will mark it resolved (a reply after that reopens it).")
