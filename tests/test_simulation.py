"""One working day on a fake clock: 2,000+ messages over email, Telegram and the web form, 20 agents
with skills, capacities and shifts (three of whom ignore what they are offered), and the scheduler's
timers. The invariants a support team relies on must hold at every step and at the end."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from factories import KeywordClassifier
from models import Channel, Identity, IdentityKind, InboundMessage, Sender
from models.errors import PaidanError
from models.tables import Agent, Assignment, Customer, Message, SlaClock, Ticket, TicketEvent
from paidan.db import transaction
from router import actions, states
from router.agents import add_agent, open_load
from router.config import RouterConfig
from router.intake import Intake
from router.scheduler import Scheduler, router_jobs

START = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # Tuesday 08:00 Asia/Shanghai
MINUTES = 12 * 60  # until 20:00
CONFIG = RouterConfig()

TOPICS = [  # (words that make the keyword classifier pick labels, a detail that recurs in follow-ups)
    ("我要退款，订单 {n} 的商品有破损", "退款 订单 {n} 破损 照片"),
    ("扣款两次了，订单 {n}，请核实", "扣款 两次 订单 {n} 银行流水"),
    ("投诉：客服 {n} 号态度很差", "投诉 客服 {n} 号 态度"),
    ("建议小程序增加发票抬头保存 #{n}", "建议 发票抬头 保存 #{n}"),
    ("请问订单 {n} 什么时候发货", "订单 {n} 发货 物流"),
    ("My card was charged twice for order {n}", "charged twice order {n} statement"),
    ("I want to complain about courier {n}", "complain courier {n} rude"),
    ("支付系统宕机，所有门店无法收款 {n}", "宕机 门店 收款 {n} 还是不行"),
]


def agents_for_the_day(session: Session) -> dict[str, bool]:
    """20 agents: name → diligent (accepts its offers). Shifts in Asia/Shanghai hours."""
    rng = random.Random(7)
    diligent = {}
    skills = [["service", "zh"], ["service", "en", "zh"], ["transaction", "zh"], ["transaction", "en"],
              ["technical", "zh", "en"], ["product", "zh"], ["service", "transaction", "zh", "en"]]
    shifts = [{"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4], "start": "08:00", "end": "17:00"},
              {"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4], "start": "11:00", "end": "20:00"}, None]
    for i in range(20):
        agent = add_agent(session, f"agent{i:02d}", skills=skills[i % len(skills)], capacity=rng.randint(5, 10),
                          seniority=1 + i % 3)
        agent.online, agent.shift = True, shifts[i % 3]
        diligent[agent.name] = i not in (3, 8, 13)  # these three ignore every offer
    for name, on_call in (("sup-a", True), ("sup-b", False)):
        supervisor = add_agent(session, name, skills=[], role="supervisor")
        supervisor.on_call = on_call
    return diligent


def the_days_messages(rng: random.Random) -> tuple[list[tuple[int, InboundMessage]], list[dict]]:
    """(minute, message) for the day, and the customers who write on several channels."""
    out: list[tuple[int, InboundMessage]] = []
    travellers = []
    serial = 0

    def message(minute, channel, identities, text, name="客户"):
        nonlocal serial
        serial += 1
        return minute, InboundMessage(
            channel=channel, external_id=f"sim-{serial}", sender=Sender(tuple(identities), name), text=text,
            received_at=START + timedelta(minutes=minute, seconds=rng.randint(0, 59)), raw=text.encode(),
            language="en" if text.isascii() else "zh")

    for c in range(1900):
        minute = rng.randrange(MINUTES - 30)
        topic, _ = rng.choice(TOPICS[:7] if rng.random() > 0.01 else TOPICS)
        text = topic.format(n=rng.randint(10**9, 10**10))
        channel = rng.choice([Channel.EMAIL, Channel.TELEGRAM, Channel.WEB])
        if channel == Channel.EMAIL:
            who = [Identity(IdentityKind.EMAIL, f"c{c}@mail.example")]
        elif channel == Channel.TELEGRAM:
            who = [Identity(IdentityKind.TELEGRAM, str(10_000 + c))]
        else:
            who = [Identity(IdentityKind.EMAIL, f"c{c}@mail.example"), Identity(IdentityKind.PHONE, f"+86139{c:08d}")]
        out.append(message(minute, channel, who, text))
    # Travellers: the web form first (email + phone), then details by email, then Telegram sharing the phone.
    for t in range(60):
        email, phone, tg = f"t{t}@mail.example", f"+86138{t:08d}", str(90_000 + t)
        n = rng.randint(10**9, 10**10)
        opening, detail = TOPICS[t % 5]
        first = rng.randrange(0, MINUTES - 200)
        out.append(message(first, Channel.WEB, [Identity(IdentityKind.EMAIL, email), Identity(IdentityKind.PHONE, phone)],
                           opening.format(n=n)))
        out.append(message(first + rng.randint(20, 80), Channel.EMAIL, [Identity(IdentityKind.EMAIL, email)],
                           "补充：" + detail.format(n=n)))
        out.append(message(first + rng.randint(90, 180), Channel.TELEGRAM,
                           [Identity(IdentityKind.TELEGRAM, tg), Identity(IdentityKind.PHONE, phone)],
                           "还有：" + detail.format(n=n)))
        travellers.append({"email": email, "phone": phone, "telegram": tg})
    # An outage at 10:30: 30 customers write within three minutes, more than the technical agents
    # on shift can hold (capacity 15), so some first responses miss P0's 15 minutes by construction
    # and the breach path is exercised every run, not only when the dice fall that way.
    for i in range(30):
        out.append(message(150 + i % 3, Channel.TELEGRAM, [Identity(IdentityKind.TELEGRAM, str(70_000 + i))],
                           TOPICS[7][0].format(n=rng.randint(10**9, 10**10))))
    out.sort(key=lambda pair: pair[1].received_at)
    return out, travellers


# 76 s on SQLite, 151 s on PostgreSQL in a full run on 2 cores: the suite's 300 s a test is too close.
@pytest.mark.timeout(900)
def test_one_working_day(engine):
    started = time.monotonic()
    rng = random.Random(2026)
    with transaction(engine) as session:
        diligent = agents_for_the_day(session)
    arrivals, travellers = the_days_messages(rng)
    assert len(arrivals) >= 2000
    clock = {"now": START}
    intake = Intake(engine, config=CONFIG, clock=lambda: clock["now"])
    classifier = KeywordClassifier()
    scheduler = Scheduler(engine, router_jobs(lambda: classifier, CONFIG))
    plans: dict[str, tuple[int, int, int]] = {}  # ticket → minutes to accept, first reply, resolve
    max_load_seen = Counter()
    by_minute: dict[int, list[InboundMessage]] = {}
    for minute, msg in arrivals:
        by_minute.setdefault(minute, []).append(msg)

    for minute in range(MINUTES + 60):
        now = clock["now"] = START + timedelta(minutes=minute)
        batch = by_minute.get(minute, [])
        if batch:
            results = intake._commit_batch(batch)
            assert not [r for r in results if isinstance(r, Exception)]
        scheduler.run_once(now)
        with transaction(engine) as session:
            work_the_tickets(session, now, diligent, plans, rng)
        if minute % 15 == 0:
            with Session(engine) as session:
                held = open_load(session)  # counted from the tickets, not the agents' load
                for agent in session.scalars(select(Agent)):
                    max_load_seen[agent.name] = max(max_load_seen[agent.name], agent.load)
                    assert agent.load <= agent.capacity or agent.role != "agent", f"{agent.name} over capacity"
                    assert agent.load == held.get(agent.id, 0), f"{agent.name}: load out of step"

    with Session(engine) as session:
        assert_every_message_routed_or_queued_with_a_reason(session)
        assert_every_breach_escalated_exactly_once(session)
        assert_travellers_are_one_customer_with_one_ticket(session, travellers)
        assert_lazy_agents_offers_moved_on(session, diligent)
        assert_the_report_adds_up(session, clock["now"])
        stats = day_statistics(session)
    print(f"\nsimulated day: {stats} in {time.monotonic() - started:.1f} s")


def work_the_tickets(session: Session, now: datetime, diligent: dict[str, bool], plans: dict, rng: random.Random):
    """Diligent agents accept after 1–4 minutes, answer within 3–20, resolve within 10–45."""
    offers = session.execute(
        select(Assignment, Agent.name, Ticket.number).join(Agent, Agent.id == Assignment.agent_id)
        .join(Ticket, Ticket.id == Assignment.ticket_id)
        .where(Assignment.accepted_at.is_(None), Assignment.ended_at.is_(None)).order_by(Assignment.id)
    ).all()
    for offer, name, number in offers:
        if diligent.get(name) and now - offer.offered_at >= timedelta(minutes=rng.randint(1, 4)):
            actions.accept(session, number, name, CONFIG, now)
            plans[number] = (0, rng.randint(3, 20), rng.randint(10, 45))
    held = session.execute(
        select(Ticket.number, Ticket.accepted_at, Ticket.first_response_at, Agent.name)
        .join(Agent, Agent.id == Ticket.assigned_agent_id)
        .where(Ticket.state.in_((states.IN_PROGRESS, states.REOPENED)), Ticket.accepted_at.is_not(None))
        .order_by(Ticket.id)
    ).all()
    for number, accepted_at, first_response_at, name in held:
        _, reply_after, resolve_after = plans.setdefault(number, (0, 10, 60))
        try:
            if first_response_at is None and now - accepted_at >= timedelta(minutes=reply_after):
                actions.reply(session, number, name, "您好，我们正在处理。Thanks, we are on it.", CONFIG, now)
            elif first_response_at is not None and now - accepted_at >= timedelta(minutes=resolve_after):
                actions.resolve(session, number, name, CONFIG, now, note="done")
        except PaidanError as refused:  # e.g. the ticket moved on meanwhile: a refusal, never a crash
            print(f"refused: {refused}")


def assert_every_message_routed_or_queued_with_a_reason(session: Session) -> None:
    unrouted = session.scalar(select(func.count()).select_from(Ticket).where(Ticket.routed_at.is_(None)))
    assert unrouted == 0
    inbound = session.scalar(select(func.count()).select_from(Message).where(Message.direction == "in"))
    assert inbound >= 2000
    for ticket in session.scalars(select(Ticket).options(selectinload(Ticket.events))):
        if ticket.queue is not None:
            assert ticket.queue_reason, ticket.number
        else:
            kinds = {e.kind for e in ticket.events}
            assert "assigned" in kinds or ticket.state == states.MERGED, (ticket.number, kinds)
            assigned = [e for e in ticket.events if e.kind == "assigned"]
            assert all(e.reason for e in assigned)


def assert_every_breach_escalated_exactly_once(session: Session) -> None:
    breached = session.scalars(select(SlaClock).where(SlaClock.breached_at.is_not(None))).all()
    escalations = Counter(
        (e.ticket_id, (e.data or {}).get("kind") or (e.data or {}).get("clock"))
        for e in session.scalars(select(TicketEvent).where(TicketEvent.kind == "sla_breach"))
    )
    assert sum(escalations.values()) == len(breached)
    assert all(count == 1 for count in escalations.values())
    warned = session.scalar(select(func.count()).select_from(SlaClock).where(SlaClock.warned_at.is_not(None)))
    warnings = session.scalar(select(func.count()).select_from(TicketEvent).where(TicketEvent.kind == "sla_warning"))
    assert warned == warnings


def assert_travellers_are_one_customer_with_one_ticket(session: Session, travellers: list[dict]) -> None:
    from models.tables import Identity as IdentityRow

    for t in travellers:
        owners = set(session.scalars(select(IdentityRow.customer_id).where(
            IdentityRow.value.in_([t["email"], t["phone"], t["telegram"]]))))
        roots = {root(session, cid) for cid in owners}
        assert len(roots) == 1, t
        tickets = session.scalars(select(Ticket).where(Ticket.customer_id.in_(owners),
                                                       Ticket.state != states.MERGED)).all()
        assert len(tickets) == 1, (t, [(x.number, x.subject) for x in tickets])
        assert session.scalar(select(func.count()).select_from(Message).where(Message.ticket_id == tickets[0].id)) >= 3


def root(session: Session, customer_id: int) -> int:
    while (merged := session.get(Customer, customer_id).merged_into_id) is not None:
        customer_id = merged
    return customer_id


def assert_lazy_agents_offers_moved_on(session: Session, diligent: dict[str, bool]) -> None:
    lazy = [a.id for a in session.scalars(select(Agent)) if diligent.get(a.name) is False]
    expired = session.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.agent_id.in_(lazy), Assignment.end_reason.is_not(None)))
    still_waiting = session.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.agent_id.in_(lazy), Assignment.ended_at.is_(None)))
    assert expired > 0
    # Offers made in the last accept-timeout window may still be open; nothing older.
    assert still_waiting <= 3 * 8


def assert_the_report_adds_up(session: Session, now: datetime) -> None:
    """The supervisors' report of the day agrees with the rows, counted here the plain way."""
    from router.reports import build_report, last_days

    since, until = last_days(1, now, CONFIG.calendar.timezone)
    report = build_report(session, since=since, until=until, now=now, timezone=CONFIG.calendar.timezone)
    tickets = session.scalars(select(Ticket)).all()
    assert report.days == ["2026-11-24"] and report.created == len(tickets) - report.machine
    assert sum(map(sum, report.created_by_day.values())) == report.created
    assert {c: v[0] for c, v in report.created_by_day.items()} == dict(Counter(t.channel for t in tickets))
    resolutions = session.scalar(select(func.count()).select_from(TicketEvent)
                                 .where(TicketEvent.kind == "transition", TicketEvent.to_state == states.RESOLVED))
    assert report.resolved == resolutions > 1000
    clocks = session.scalars(select(SlaClock)).all()
    assert sum(x.met + x.breached + x.running for x in report.sla) == len(clocks)
    assert sum(x.breached for x in report.sla) == sum(c.breached_at is not None for c in clocks) > 0
    answered = [t for t in tickets if t.first_response_at is not None]
    assert sum(d.count for d in report.first_response.values()) == len(answered)
    accepted = session.scalar(select(func.count()).select_from(Assignment).where(Assignment.accepted_at.is_not(None)))
    assert sum(a.accepted for a in report.agents) == accepted
    assert sum(report.now.tickets.values()) == sum(t.state in states.OPEN_STATES for t in tickets)


def day_statistics(session: Session) -> dict:
    states_count = Counter(session.scalars(select(Ticket.state)))
    return {
        "messages": session.scalar(select(func.count()).select_from(Message).where(Message.direction == "in")),
        "tickets": sum(states_count.values()),
        "states": dict(states_count),
        "breaches": session.scalar(select(func.count()).select_from(SlaClock).where(SlaClock.breached_at.is_not(None))),
    }


@pytest.fixture(autouse=True)
def _quiet_sql(caplog):
    caplog.set_level("WARNING")
