"""Assignment: who gets a ticket and why; offers, expiry, the queue and capacity under concurrency."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import make_message
from models.errors import ActionRefused
from models.tables import Agent, Assignment, OutboxItem, Ticket, TicketEvent
from paidan.db import transaction
from router import assignment
from router.agents import add_agent
from router.assignment import AgentState, Shift, TicketFacts, parse_shift, rank
from router.config import RouterConfig
from router.intake import Intake

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
DAY_SHIFT = {"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4], "start": "09:00", "end": "18:00"}


def agent(id: int, name: str | None = None, *, skills=("technical", "zh"), capacity=8, load=0, **kw) -> AgentState:
    return AgentState(id=id, name=name or f"a{id}", skills=frozenset(skills), capacity=capacity, load=load, **kw)


def facts(category="technical", language="zh", *, type="inquiry", priority="P2", previous=None, exclude=()):
    return TicketFacts("GD20261124001", type, category, priority, language, previous, frozenset(exclude))


# --------------------------------------------------------------------------------------------
# The pure core: each ordering rule


def test_the_previous_agent_comes_first_even_when_busier():
    choice = rank(facts(previous=2), [agent(1, load=0), agent(2, "李雷", load=2)], CONFIG, NOW)
    assert choice.agent_id == 2
    assert choice.reason.startswith("李雷: previous agent of this customer; skills technical+zh; load 2/8")
    assert choice.candidates[0]["previous"] is True and [c["id"] for c in choice.candidates] == [2, 1]


def test_a_previous_agent_who_cannot_take_it_is_passed_over_with_the_reason():
    choice = rank(facts(previous=2), [agent(1), agent(2, "李雷", online=False)], CONFIG, NOW)
    assert choice.agent_id == 1 and "previous agent 李雷 is offline" in choice.reason


@pytest.mark.parametrize("ticket", [facts(type="complaint"), facts(priority="P1"), facts(priority="P0")])
def test_complaints_and_urgent_tickets_prefer_senior_agents(ticket):
    junior, senior = agent(1, load=0, seniority=1), agent(2, "老王", load=5, seniority=3)
    choice = rank(ticket, [junior, senior], CONFIG, NOW)
    assert choice.agent_id == 2 and "senior (seniority 3) preferred for" in choice.reason


def test_without_a_free_senior_the_junior_takes_it_and_the_reason_says_so():
    choice = rank(facts(priority="P1"), [agent(1, seniority=1), agent(2, seniority=3, load=8)], CONFIG, NOW)
    assert choice.agent_id == 1 and "no senior agent free (P1 prefers seniority >= 3)" in choice.reason


def test_ordinary_tickets_ignore_seniority():
    choice = rank(facts(), [agent(1, load=1, seniority=3), agent(2, load=0, seniority=1)], CONFIG, NOW)
    assert choice.agent_id == 2 and "least loaded" in choice.reason


def test_least_loaded_is_the_share_of_capacity_then_the_count():
    assert rank(facts(), [agent(1, load=2, capacity=4), agent(2, load=3, capacity=8)], CONFIG, NOW).agent_id == 2
    # the same share (25 %): fewer open tickets first
    assert rank(facts(), [agent(1, load=2, capacity=8), agent(2, load=1, capacity=4)], CONFIG, NOW).agent_id == 2


def test_then_the_longest_idle_never_assigned_first_then_the_lowest_id():
    long_ago, lately = NOW - timedelta(hours=3), NOW - timedelta(minutes=5)
    pair = [agent(1, last_assigned_at=lately), agent(2, last_assigned_at=long_ago)]
    choice = rank(facts(), pair, CONFIG, NOW)
    assert choice.agent_id == 2 and "idle longest (last assigned 2026-11-24 00:00 UTC)" in choice.reason
    choice = rank(facts(), [*pair, agent(3, last_assigned_at=None)], CONFIG, NOW)
    assert choice.agent_id == 3 and "never assigned before" in choice.reason
    choice = rank(facts(), [agent(5), agent(4)], CONFIG, NOW)
    assert choice.agent_id == 4 and "lowest id" in choice.reason


def test_rank_agrees_with_a_brute_force_reading_of_the_rules():
    rnd = random.Random(4)
    for _ in range(300):
        agents = [
            agent(i, skills=rnd.sample(["technical", "service", "zh", "en"], rnd.randint(0, 4)),
                  capacity=rnd.randint(1, 4), load=rnd.randint(0, 4), seniority=rnd.randint(1, 3),
                  online=rnd.random() < 0.8, last_assigned_at=rnd.choice([None, NOW - timedelta(minutes=rnd.randint(1, 9))]))
            for i in range(1, rnd.randint(1, 9))
        ]
        ticket = facts(rnd.choice(["technical", "service", None]), rnd.choice(["zh", "en", None]),
                       type=rnd.choice(["complaint", "inquiry"]), priority=rnd.choice(["P1", "P3"]),
                       previous=rnd.choice([None, 1, 2]), exclude=rnd.sample([1, 2, 3], rnd.randint(0, 1)))
        choice = rank(ticket, agents, CONFIG, NOW)
        able = [a for a in agents if a.online and a.load < a.capacity and a.id not in ticket.exclude
                and (ticket.category is None or ticket.category in a.skills)
                and (ticket.language is None or ticket.language in a.skills or not a.skills & {"zh", "en"})]
        if not able:
            assert choice.agent_id is None and choice.reason.startswith("no agent")
            continue
        senior = ticket.type == "complaint" or ticket.priority == "P1"
        best = min(able, key=lambda a: (a.id != ticket.previous_agent_id, senior and a.seniority < 3,
                                        a.load / a.capacity, a.load, a.last_assigned_at is not None,
                                        a.last_assigned_at or NOW, a.id))
        assert choice.agent_id == best.id


# --------------------------------------------------------------------------------------------
# Skills and bad input: a queued ticket with its reason, never an exception


def test_category_and_language_map_to_skills():
    en_only, zh_only = agent(1, skills=["technical", "en"]), agent(2, skills=["technical", "zh"])
    assert rank(facts(language="en"), [en_only, zh_only], CONFIG, NOW).agent_id == 1
    assert rank(facts(language="zh-CN"), [en_only, zh_only], CONFIG, NOW).agent_id == 2
    choice = rank(facts(category="service"), [en_only, zh_only], CONFIG, NOW)
    assert choice.agent_id is None and choice.reason.startswith("no agent has the skills service+zh")


def test_an_agent_without_language_skills_speaks_both():
    choice = rank(facts(language="en"), [agent(1, skills=["technical"])], CONFIG, NOW)
    assert choice.agent_id == 1 and "lists no language skill, so counts as speaking both" in choice.reason


def test_unknown_or_unused_languages_need_no_language_skill():
    choice = rank(facts(language="fr"), [agent(1, skills=["technical", "zh"])], CONFIG, NOW)
    assert choice.agent_id == 1 and "language 'fr' has no language skill" in choice.reason
    no_languages = replace(CONFIG, language_skills=False)
    assert rank(facts(language="en"), [agent(1, skills=["technical", "zh"])], no_languages, NOW).agent_id == 1


def test_a_ticket_without_category_needs_no_category_skill():
    choice = rank(facts(category=None), [agent(1, skills=["service", "zh"])], CONFIG, NOW)
    assert choice.agent_id == 1 and "no category yet, so no category skill needed" in choice.reason


def test_an_unmapped_category_looks_for_a_skill_of_its_own_name():
    choice = rank(facts(category="billing"), [agent(1), agent(2, skills=["billing"])], CONFIG, NOW)
    assert choice.agent_id == 2 and "'billing' is not in the skills map" in choice.reason
    nobody = rank(facts(category="refunds"), [agent(1)], CONFIG, NOW)
    assert nobody.agent_id is None
    assert nobody.reason.startswith("no agent has the skills refunds+zh (an unknown skill")


def test_the_reason_counts_who_was_ruled_out_and_why():
    agents = [agent(1, online=False), agent(2, load=8), agent(3, shift=parse_shift(DAY_SHIFT)),
              agent(4), agent(5, role="supervisor"), agent(6, skills=["service"])]
    late = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai
    choice = rank(facts(exclude=[4]), agents, CONFIG, late)
    assert choice.agent_id is None
    assert choice.reason == ("no agent available: 4 with the skills technical+zh, but 1 already declined or let "
                             "this ticket expire, 1 at capacity, 1 offline, 1 outside their shift")
    assert choice.facts["ruled_out"]["is a supervisor (not routed to automatically)"] == 1


def test_agents_with_no_shift_or_an_unreadable_one_take_tickets_while_online():
    assert "no shift set: available whenever online" in rank(facts(), [agent(1)], CONFIG, NOW).reason
    for bad in ({"tz": "Mars/Olympus"}, {"start": "9am"}, {"days": "weekdays"}, "not json", ["x"]):
        shift = parse_shift(bad)
        assert shift.problem
        choice = rank(facts(), [agent(1, shift=shift)], CONFIG, NOW)
        assert choice.agent_id == 1 and "unreadable shift" in choice.reason


# --------------------------------------------------------------------------------------------
# Shifts


def at_shanghai(day: int, hhmm: str) -> datetime:
    """2026-11-23 is a Monday: `day` 0 = Monday, local time in Shanghai."""
    hours, minutes = map(int, hhmm.split(":"))
    return datetime(2026, 11, 23 + day, hours, minutes, tzinfo=UTC) - timedelta(hours=8)


@pytest.mark.parametrize("day,hhmm,inside", [
    (0, "08:59", False), (0, "09:00", True), (0, "17:59", True), (0, "18:00", False), (5, "10:00", False),
])
def test_a_day_shift_starts_on_time_and_ends_before_its_end(day, hhmm, inside):
    assert parse_shift(DAY_SHIFT).covers(at_shanghai(day, hhmm), "UTC") is inside


@pytest.mark.parametrize("day,hhmm,inside", [
    (0, "21:59", False), (0, "22:00", True), (0, "23:59", True),
    (1, "00:00", True), (1, "05:59", True), (1, "06:00", False),  # Monday's night, into Tuesday
    (0, "01:00", False),  # the small hours of Monday belong to Sunday's shift: none
    (4, "23:00", True), (5, "03:00", True), (5, "23:00", False),
])
def test_an_overnight_shift_belongs_to_the_day_it_starts(day, hhmm, inside):
    night = parse_shift({"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4], "start": "22:00", "end": "06:00"})
    assert night.covers(at_shanghai(day, hhmm), "UTC") is inside


def test_shift_time_zones_and_defaults():
    london = parse_shift({"tz": "Europe/London", "days": [1], "start": "02:00", "end": "04:00"})
    assert london.covers(NOW, "Asia/Shanghai")  # 03:00 in London (GMT)
    default_tz = parse_shift({"days": [1], "start": "10:00", "end": "12:00"})
    assert default_tz.covers(NOW, "Asia/Shanghai") and not default_tz.covers(NOW, "UTC")
    assert parse_shift(None) is None and parse_shift("null") is None
    assert Shift(None).covers(NOW, "UTC")  # no days/start/end given: round the clock
    assert parse_shift({"start": "00:00", "end": "00:00", "days": [1]}).covers(NOW, "UTC")  # 24 h from midnight


# --------------------------------------------------------------------------------------------
# The database side


@pytest.fixture
def desk(engine):
    """Two online agents and a supervisor on call; returns helpers bound to this database."""
    with transaction(engine) as session:
        for name, skills, capacity, seniority in [("Ann", ["technical", "zh"], 3, 3), ("Bo", ["technical"], 3, 1)]:
            add_agent(session, name, skills=skills, capacity=capacity, seniority=seniority,
                      telegram_id=1000 + len(name) + capacity + seniority).online = True
        add_agent(session, "Sue", skills=[], role="supervisor").on_call = True
    return Desk(engine)


class Desk:
    """Tickets, agents and the assignment calls of one test database, each in its own transaction."""

    def __init__(self, engine):
        self.engine = engine
        self.intake = Intake(engine)
        self.count = 0

    def ticket(self, *, email="kehu@example.com", category="technical", language="zh", type="inquiry",
               priority="P2", at=NOW) -> int:
        # a text of its own, so that no topic match threads it onto the customer's earlier ticket
        self.count += 1
        text = ["打印机坏了", "refund for order 88", "网站打不开", "invoice missing", "密码重置"][self.count % 5]
        receipt = self.intake.accept_now(make_message(email=email, text=f"{text} #{self.count}", received_at=at))
        assert receipt.new_ticket
        with transaction(self.engine) as session:
            ticket = session.get(Ticket, receipt.ticket_id)
            ticket.category, ticket.language, ticket.type, ticket.priority = category, language, type, priority
            ticket.created_at = at
        return receipt.ticket_id

    def assign(self, ticket_id: int, now=NOW, **kw) -> assignment.AssignmentResult:
        with transaction(self.engine) as session:
            return assignment.assign(session, session.get(Ticket, ticket_id), CONFIG, now, **kw)

    def run(self, fn, *args, now=NOW, **kw):
        with transaction(self.engine) as session:
            return fn(session, *args, CONFIG, now, **kw)

    def set_agent(self, name: str, **changes) -> None:
        with transaction(self.engine) as session:
            row = session.scalar(select(Agent).where(Agent.name == name))
            for key, value in changes.items():
                setattr(row, key, value)

    def agent(self, name: str) -> Agent:
        with Session(self.engine) as session:
            return session.scalar(select(Agent).where(Agent.name == name))

    def get(self, ticket_id: int) -> Ticket:
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(Ticket, ticket_id)

    def events(self, ticket_id: int, kind: str) -> list[TicketEvent]:
        with Session(self.engine) as session:
            return session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == ticket_id,
                                                             TicketEvent.kind == kind).order_by(TicketEvent.id)).all()

    def outbox(self, kind: str) -> list[OutboxItem]:
        with Session(self.engine) as session:
            return session.scalars(select(OutboxItem).where(OutboxItem.kind == kind).order_by(OutboxItem.id)).all()

    def check_loads(self) -> None:
        """Every agent's load is exactly their open offers, and never over capacity."""
        with Session(self.engine) as session:
            held = dict(session.execute(select(Assignment.agent_id, func.count()).where(
                Assignment.ended_at.is_(None)).group_by(Assignment.agent_id)).all())
            for row in session.scalars(select(Agent)):
                assert row.load == held.get(row.id, 0) <= row.capacity, row.name


def test_an_assignment_is_an_offer_with_its_reason_events_and_notification(desk):
    ticket_id = desk.ticket()
    result = desk.assign(ticket_id)
    ann = desk.agent("Ann")
    assert (result.agent_id, result.agent_name, result.queued) == (ann.id, "Ann", False)
    assert ann.load == 1 and ann.last_assigned_at == NOW
    ticket = desk.get(ticket_id)
    assert (ticket.state, ticket.assigned_agent_id, ticket.assigned_at, ticket.queue) == ("assigned", ann.id, NOW, None)
    with Session(desk.engine) as session:
        [offer] = session.scalars(select(Assignment)).all()
    assert offer.expires_at == NOW + timedelta(minutes=10) and offer.reason == result.reason
    assert result.reason.startswith("Ann: ")
    [event] = desk.events(ticket_id, "assigned")
    assert event.reason == result.reason and event.data["assignment_id"] == offer.id
    assert [c["name"] for c in event.data["candidates"]] == ["Ann", "Bo"]
    [moved] = desk.events(ticket_id, "transition")[-1:]
    assert (moved.from_state, moved.to_state) == ("new", "assigned")
    [note] = desk.outbox("assigned")
    assert note.recipient == f"telegram:{ann.telegram_id}" and note.payload["assignment_id"] == offer.id
    assert note.ticket_id == ticket_id and note.status == "pending"
    # assigning it again changes nothing: it is with Ann until released
    again = desk.assign(ticket_id)
    assert (again.agent_id, again.changed) == (ann.id, False) and desk.agent("Ann").load == 1
    desk.check_loads()


def test_the_customers_previous_agent_gets_their_next_ticket(desk):
    first = desk.ticket(email="wang@example.com")
    assert desk.assign(first).agent_name == "Ann"
    desk.assign(desk.ticket(email="other@example.com"))  # Bo: now both hold one
    desk.assign(desk.ticket(email="third@example.com"))  # Ann and Bo 2/3 and 1/3 → this one went to Bo
    second = desk.assign(desk.ticket(email="wang@example.com"))
    assert second.agent_name == "Ann" and "previous agent of this customer" in second.reason


def test_a_reopened_ticket_goes_back_to_whoever_resolved_it(desk):
    from router import states

    ticket_id = desk.ticket()
    desk.assign(desk.ticket(email="x@example.com"))  # Ann 1, so Bo is less loaded …
    bo = desk.agent("Bo").id
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, ticket_id)
        assert assignment.assign(session, ticket, CONFIG, NOW).agent_name == "Bo"
        states.transition(session, ticket, states.RESOLVED, actor="agent", reason="fixed", at=NOW)
        assignment.release(session, ticket, NOW, why="resolved")
        assert ticket.assigned_agent_id == bo  # kept: who worked it
        states.transition(session, ticket, states.REOPENED, actor="customer", reason="still broken", at=NOW)
    desk.assign(desk.ticket(email="y@example.com"))  # Bo 1 again
    result = desk.assign(ticket_id)
    assert result.agent_name == "Bo" and "previous agent" in result.reason
    desk.check_loads()


def test_with_nobody_available_the_ticket_waits_with_its_reason_once(desk):
    desk.set_agent("Ann", online=False)
    desk.set_agent("Bo", online=False)
    ticket_id = desk.ticket()
    result = desk.assign(ticket_id)
    assert result.queued and result.reason == "no agent available: 2 with the skills technical+zh, but 2 offline"
    ticket = desk.get(ticket_id)
    assert (ticket.queue, ticket.queue_reason, ticket.state) == ("assignment", result.reason, "new")
    assert not desk.assign(ticket_id).changed
    [queued] = desk.events(ticket_id, "queued")
    assert queued.reason == result.reason and queued.data["ruled_out"] == {"offline": 2}


@pytest.mark.parametrize("category,language,expected", [
    ("refunds", "zh", "no agent has the skills refunds+zh (an unknown skill"),
    ("technical", "en", "Bo: "),  # Bo lists no language: speaks both
    (None, None, "Ann: "),
    ("technical", "tlh", "Ann: "),
])
def test_odd_labels_are_routed_or_queued_with_a_reason(desk, category, language, expected):
    ticket_id = desk.ticket(category=category, language=language)
    result = desk.assign(ticket_id)
    assert result.reason.startswith(expected)
    ticket = desk.get(ticket_id)
    assert ticket.queue_reason == result.reason if result.queued else ticket.state == "assigned"


def test_bad_agent_rows_are_judged_not_fatal(desk):
    desk.set_agent("Ann", shift={"tz": "Nowhere/Land", "start": "25:00"}, skills="technical")
    desk.set_agent("Bo", shift={"days": [6], "start": "01:00", "end": "02:00"})  # Sundays only
    result = desk.assign(desk.ticket())
    # Ann's skills are not a list (she matches nothing); Bo is off shift
    assert result.queued and "outside their shift" in result.reason


def test_the_queue_drains_when_an_agent_comes_online_urgent_first(desk):
    desk.set_agent("Ann", online=False)
    desk.set_agent("Bo", online=False)
    old_p3 = desk.ticket(priority="P3", at=NOW - timedelta(hours=1))
    new_p0 = desk.ticket(priority="P0")
    for ticket_id in (old_p3, new_p0):
        assert desk.assign(ticket_id).queued
    assert desk.run(assignment.drain_queue) == 0  # nobody yet: nothing happens
    desk.set_agent("Bo", online=True, capacity=1)
    assert desk.run(assignment.drain_queue) == 1
    assert desk.get(new_p0).assigned_agent_id == desk.agent("Bo").id and desk.get(new_p0).queue is None
    assert desk.get(old_p3).queue == "assignment"  # Bo is full now: the drain stopped there
    reason = desk.get(old_p3).queue_reason
    desk.set_agent("Ann", online=True, skills=["service"])
    assert desk.run(assignment.drain_queue) == 0  # Ann is free but cannot take it
    assert desk.get(old_p3).queue_reason == reason  # the reason recorded when it was queued
    assert len(desk.events(old_p3, "queued")) == 1  # and no event every time it is looked at
    desk.set_agent("Ann", skills=["technical"])
    assert desk.run(assignment.drain_queue) == 1
    assert desk.get(old_p3).assigned_agent_id == desk.agent("Ann").id
    desk.check_loads()


def test_tickets_nobody_can_take_never_hide_those_behind_them(desk):
    desk.set_agent("Ann", online=False)
    desk.set_agent("Bo", online=False)
    stuck = [desk.ticket(email=f"s{i}@example.com", category="product", priority="P0") for i in range(3)]
    waiting = desk.ticket(email="w@example.com", priority="P3")
    for ticket_id in [*stuck, waiting]:
        assert desk.assign(ticket_id).queued
    desk.set_agent("Ann", online=True)
    assert desk.run(assignment.drain_queue, limit=2) == 1  # three urgent ones first, but nobody has "product"
    assert desk.get(waiting).assigned_agent_id == desk.agent("Ann").id
    assert all(desk.get(t).queue == "assignment" for t in stuck)


def test_a_drain_takes_as_many_per_kind_as_there_are_places(desk):
    desk.set_agent("Ann", online=False, capacity=1)
    desk.set_agent("Bo", online=False, capacity=5, skills=["service"])
    technical = [desk.ticket(email=f"t{i}@example.com", priority="P1") for i in range(4)]
    service = desk.ticket(email="s@example.com", category="service", priority="P3")
    for ticket_id in [*technical, service]:
        assert desk.assign(ticket_id).queued
    desk.set_agent("Ann", online=True)
    desk.set_agent("Bo", online=True)
    assert desk.run(assignment.drain_queue) == 2  # Ann's one place, then Bo's, past the technical ones
    assert desk.get(technical[0]).assigned_agent_id == desk.agent("Ann").id
    assert desk.get(service).assigned_agent_id == desk.agent("Bo").id
    assert [desk.get(t).queue for t in technical[1:]] == ["assignment"] * 3


def test_a_drain_reads_no_more_of_each_kind_than_there_are_free_places(desk):
    desk.set_agent("Ann", online=False)
    desk.set_agent("Bo", online=False)
    technical = [desk.ticket(email=f"t{i}@example.com", priority="P2") for i in range(6)]
    product = [desk.ticket(email=f"p{i}@example.com", category="product", priority="P0") for i in range(4)]
    for ticket_id in [*technical, *product]:
        assert desk.assign(ticket_id).queued
    with transaction(desk.engine) as session:
        read = [row.id for row in session.execute(assignment._QUEUED, {"places": 2})]
    # Two of each kind, in queue order (the P0 product tickets first): not the whole queue.
    assert read == [*product[:2], *technical[:2]]
    desk.set_agent("Bo", online=True, capacity=2)
    assert desk.run(assignment.drain_queue) == 2
    assert [desk.get(t).assigned_agent_id for t in technical[:3]] == [desk.agent("Bo").id] * 2 + [None]


def test_a_ticket_its_agent_refused_does_not_block_the_next_one(desk):
    desk.set_agent("Ann", capacity=1)
    desk.set_agent("Bo", online=False)
    refused, behind = desk.ticket(priority="P0"), desk.ticket(email="b@example.com", priority="P3")
    assert desk.assign(refused).agent_name == "Ann"
    assert desk.assign(behind).queued  # Ann is full
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, refused)
        assignment.release(session, ticket, NOW, why="declined")
        assert assignment.assign(session, ticket, CONFIG, NOW).queued  # only Ann, who declined it
    assert desk.run(assignment.drain_queue) == 1
    assert desk.get(behind).assigned_agent_id == desk.agent("Ann").id
    assert desk.get(refused).queue == "assignment"


def test_the_queue_drains_when_a_ticket_is_resolved(desk):
    desk.set_agent("Ann", capacity=1)
    desk.set_agent("Bo", online=False)
    first, second = desk.ticket(), desk.ticket(email="b@example.com")
    assert not desk.assign(first).queued and desk.assign(second).queued
    ann = desk.agent("Ann").id
    with transaction(desk.engine) as session:
        assert assignment.release(session, session.get(Ticket, first), NOW, why="resolved") == ann
    assert desk.agent("Ann").load == 0
    assert desk.run(assignment.drain_queue) == 1
    assert desk.get(second).assigned_agent_id == desk.agent("Ann").id
    desk.check_loads()


def test_release_gives_capacity_back_once_and_never_below_zero(desk):
    ticket_id = desk.ticket()
    desk.assign(ticket_id)
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, ticket_id)
        assert assignment.release(session, ticket, NOW, why="declined") is not None
        assert assignment.release(session, ticket, NOW, why="declined") is None
        assert ticket.assigned_agent_id is None
    assert desk.agent("Ann").load == 0
    [released] = desk.events(ticket_id, "released")
    assert "declined" in released.reason
    # a decliner is not offered the same ticket again
    assert desk.assign(ticket_id).agent_name == "Bo"
    desk.check_loads()


def test_an_unaccepted_offer_moves_on_and_the_supervisor_hears_once(desk):
    ticket_id = desk.ticket()
    assert desk.assign(ticket_id).agent_name == "Ann"
    assert desk.run(assignment.expire_offers, now=NOW + timedelta(minutes=9, seconds=59)) == 0
    later = NOW + timedelta(minutes=10)
    assert desk.run(assignment.expire_offers, now=later) == 1
    assert desk.run(assignment.expire_offers, now=later) == 0  # once
    ticket = desk.get(ticket_id)
    assert ticket.assigned_agent_id == desk.agent("Bo").id and ticket.state == "assigned"
    assert desk.agent("Ann").load == 0 and desk.agent("Bo").load == 1
    [expired] = desk.events(ticket_id, "offer_expired")
    assert expired.reason == f"Ann did not accept {ticket.number} within 10 min"
    [notice] = desk.outbox("offer_expired")
    assert notice.recipient == f"agent:{desk.agent('Sue').id}" and "now offered to Bo: " in notice.payload["text"]
    # Bo ignores it too: nobody left who has not refused it, so it waits, and the supervisor hears again
    assert desk.run(assignment.expire_offers, now=later + timedelta(minutes=10)) == 1
    ticket = desk.get(ticket_id)
    assert ticket.queue == "assignment" and ticket.state == "new" and ticket.assigned_agent_id is None
    assert "2 already declined or let this ticket expire" in ticket.queue_reason
    assert len(desk.outbox("offer_expired")) == 2
    assert desk.run(assignment.drain_queue, now=later + timedelta(minutes=11)) == 0  # never back to them
    desk.check_loads()


def test_an_accepted_offer_does_not_expire(desk):
    ticket_id = desk.ticket()
    desk.assign(ticket_id)
    with transaction(desk.engine) as session:
        session.scalar(select(Assignment)).accepted_at = NOW + timedelta(minutes=1)
    assert desk.run(assignment.expire_offers, now=NOW + timedelta(hours=1)) == 0
    assert desk.outbox("offer_expired") == []


def test_closed_tickets_are_refused_and_supervisors_assign_by_hand(desk):
    from router import states

    ticket_id = desk.ticket()
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, ticket_id)
        states.transition(session, ticket, states.CLOSED, actor="cli", reason="spam", at=NOW)
    with pytest.raises(ActionRefused, match="is closed: only open tickets are assigned"):
        desk.assign(ticket_id)

    other = desk.ticket(email="o@example.com")
    desk.set_agent("Bo", online=False, capacity=1)
    bo = desk.agent("Bo").id
    with transaction(desk.engine) as session:
        result = assignment.offer_to(session, session.get(Ticket, other), bo, CONFIG, NOW,
                                     actor="agent:3", reason="knows this customer")
    assert result.reason == "Bo: knows this customer" and desk.agent("Bo").load == 1
    third = desk.ticket(email="p@example.com")
    with transaction(desk.engine) as session, pytest.raises(ActionRefused, match="at capacity"):
        assignment.offer_to(session, session.get(Ticket, third), bo, CONFIG, NOW,
                            actor="agent:3", reason="again")


def test_capacity_holds_under_concurrent_routers(desk):
    desk.set_agent("Ann", capacity=4)
    desk.set_agent("Bo", capacity=3)
    tickets = [desk.ticket(email=f"c{i}@example.com") for i in range(24)]
    results, errors = [], []
    barrier = threading.Barrier(6)

    def router(mine: list[int]) -> None:
        try:
            barrier.wait()
            for ticket_id in mine:
                results.append(desk.assign(ticket_id))
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=router, args=(tickets[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(not r.queued for r in results) == 7 and sum(r.queued for r in results) == 17
    assert desk.agent("Ann").load == 4 and desk.agent("Bo").load == 3
    desk.check_loads()


def test_the_top_of_the_list_read_from_the_database_agrees_with_ranking_everyone(engine):
    """assign reads only the first agents in routing order; that must choose as rank over all would."""
    rnd = random.Random(11)
    shifts = [None, DAY_SHIFT, DAY_SHIFT, {"tz": "Asia/Shanghai", "start": "22:00", "end": "06:00"}, {"tz": "Bad/Zone"}]
    with transaction(engine) as session:
        for i in range(40):
            row = add_agent(session, f"agent{i}", capacity=rnd.randint(1, 3), seniority=rnd.randint(1, 3),
                            skills=rnd.sample(["technical", "service", "billing", "zh", "en"], rnd.randint(1, 3)))
            row.online, row.shift = rnd.random() < 0.85, rnd.choice(shifts)
            row.last_assigned_at = rnd.choice([None, NOW - timedelta(minutes=rnd.randint(1, 99))])
    intake = Intake(engine)
    checked = 0
    for i in range(90):
        topic = ["打印机坏了", "refund for order", "网站打不开", "invoice missing", "密码重置", "快递丢了"][i % 6]
        receipt = intake.accept_now(make_message(email=f"c{rnd.randint(1, 15)}@example.com", received_at=NOW,
                                                 text=f"{topic} {i}"))
        if not receipt.new_ticket:
            continue  # threaded onto the customer's open ticket on the same topic
        checked += 1
        now = NOW + timedelta(hours=rnd.choice([0, 9, 13]), seconds=i)  # 11:00, 20:00 and 00:00 in Shanghai
        with transaction(engine) as session:
            ticket = session.get(Ticket, receipt.ticket_id)
            ticket.category = rnd.choice(["technical", "service", "billing", None])
            ticket.language = rnd.choice(["zh", "en", None])
            ticket.type, ticket.priority = rnd.choice(["complaint", "inquiry"]), rnd.choice(["P1", "P2"])
            session.flush()
            expected = rank(assignment.ticket_facts(session, ticket), assignment.load_agents(session), CONFIG, now)
            result = assignment.assign(session, ticket, CONFIG, now)
        assert result.agent_id == expected.agent_id
        assert result.reason == expected.reason or result.queued
    assert checked >= 50


def test_a_batch_decides_exactly_as_one_ticket_at_a_time(engine):
    """assign_many reads the agents once and writes set-based; the decisions must not change."""
    rnd = random.Random(5)
    with transaction(engine) as session:
        for i in range(30):
            row = add_agent(session, f"agent{i}", capacity=rnd.randint(1, 3), seniority=rnd.randint(1, 3),
                            skills=rnd.sample(["technical", "service", "zh", "en"], rnd.randint(1, 3)))
            row.online, row.shift = rnd.random() < 0.8, rnd.choice([None, DAY_SHIFT, {"days": [5, 6]}])
    intake = Intake(engine)
    ids = []
    for i in range(50):
        topic = ["打印机坏了", "refund for order", "网站打不开", "invoice missing", "密码重置"][i % 5]
        receipt = intake.accept_now(make_message(email=f"c{i % 12}@example.com", text=f"{topic} {i}", received_at=NOW))
        if receipt.new_ticket:
            ids.append(receipt.ticket_id)
    with transaction(engine) as session:
        for ticket_id in ids:
            ticket = session.get(Ticket, ticket_id)
            ticket.category, ticket.language = rnd.choice(["technical", "service", None]), rnd.choice(["zh", "en"])
            ticket.type, ticket.priority = rnd.choice(["complaint", "inquiry"]), rnd.choice(["P1", "P3"])
    held = ids[0]
    with transaction(engine) as session:
        assignment.assign(session, session.get(Ticket, held), CONFIG, NOW)

    def decide(batch: bool) -> list[tuple]:
        with Session(engine) as session:
            session.begin()
            tickets = [session.get(Ticket, i) for i in ids]
            if batch:
                results = assignment.assign_many(session, tickets, CONFIG, NOW)
            else:
                results = [assignment.assign(session, t, CONFIG, NOW) for t in tickets]
            offers = session.execute(select(Assignment.ticket_id, Assignment.agent_id, Assignment.data)
                                     .order_by(Assignment.ticket_id)).all()
            session.rollback()
        return [(r.agent_id, r.reason, r.queued, r.changed) for r in results], \
            [(o.ticket_id, o.agent_id, o.data["candidates"]) for o in offers]

    one_by_one, in_a_batch = decide(batch=False), decide(batch=True)
    assert in_a_batch == one_by_one
    results = one_by_one[0]
    assert results[0][3] is False  # already held: left alone
    assert sum(r[2] for r in results) >= 5 and sum(not r[2] for r in results) >= 20  # both outcomes occur
    assert any("previous agent of this customer" in r[1] for r in results[1:])


def test_a_ticket_named_twice_in_a_batch_is_offered_once(desk):
    ticket_id = desk.ticket()
    with transaction(desk.engine) as session:
        ticket = session.get(Ticket, ticket_id)
        first, second = assignment.assign_many(session, [ticket, ticket], CONFIG, NOW)
    assert first == second and first.agent_name == "Ann"
    desk.check_loads()
    assert desk.agent("Ann").load == 1
