"""SLA clocks: DESIGN.md's targets on the business calendar, pauses, retargets, and warnings and
escalations that fire exactly once — under repeated sweeps, two sweepers at once, and a restart."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import make_message
from models.errors import InvalidInput
from models.tables import Agent, OutboxItem, SlaClock, Ticket, TicketEvent
from paidan.db import make_engine, transaction
from router import sla, states
from router.agents import add_agent
from router.config import BusinessCalendar, RouterConfig, SlaTarget
from router.intake import Intake

SHANGHAI = ZoneInfo("Asia/Shanghai")
CFG = RouterConfig()  # DESIGN.md's defaults on a 09:00–18:00 Monday–Friday calendar in Asia/Shanghai
MIN, HOUR = 60, 3600


def sh(*args) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC)


MONDAY_10AM = sh(2024, 3, 18, 10, 0)
FRIDAY_5PM = sh(2024, 3, 15, 17, 0)


def new_ticket(engine, created: datetime, priority: str | None = "P2", *, channel: str | None = None,
               config: RouterConfig = CFG, start: bool = True) -> int:
    """A ticket through the real intake at `created`, given a priority, with its clocks started."""
    receipt = Intake(engine, clock=lambda: created).accept_now(make_message(email=f"{uuid.uuid4().hex[:10]}@example.com"))
    with transaction(engine) as session:
        ticket = session.get(Ticket, receipt.ticket_id)
        ticket.priority = priority
        if channel:
            ticket.channel = channel
        if start:
            sla.start_clocks(session, ticket, config, created)
    return receipt.ticket_id


def clocks(engine, ticket_id: int) -> dict[str, SlaClock]:
    with Session(engine) as session:
        rows = session.scalars(select(SlaClock).where(SlaClock.ticket_id == ticket_id)).all()
        session.expunge_all()
    return {c.kind: c for c in rows}


def events(engine, kind: str, ticket_id: int | None = None) -> list[TicketEvent]:
    with Session(engine) as session:
        stmt = select(TicketEvent).where(TicketEvent.kind == kind).order_by(TicketEvent.id)
        if ticket_id is not None:
            stmt = stmt.where(TicketEvent.ticket_id == ticket_id)
        rows = session.scalars(stmt).all()
        session.expunge_all()
    return list(rows)


def outbox(engine, kind: str) -> list[OutboxItem]:
    with Session(engine) as session:
        rows = session.scalars(select(OutboxItem).where(OutboxItem.kind == kind).order_by(OutboxItem.id)).all()
        session.expunge_all()
    return list(rows)


def run_sweep(engine, now: datetime, config: RouterConfig = CFG, **kw) -> int:
    with transaction(engine) as session:
        return sla.sweep(session, config, now, **kw)


def on_ticket(engine, ticket_id: int, action, now: datetime, config: RouterConfig = CFG) -> None:
    """Apply one clock step to the ticket in its own transaction, as the router would."""
    with transaction(engine) as session:
        action(session, session.get(Ticket, ticket_id), now)


@pytest.fixture
def supervisors(engine) -> dict[str, int]:
    with transaction(engine) as session:
        boss = add_agent(session, "值班主管", skills=[], role="supervisor", telegram_id=9001)
        boss.on_call = True
        other = add_agent(session, "主管二", skills=[], role="supervisor", telegram_id=9002)
        agent = add_agent(session, "小李", skills=["service", "zh"], telegram_id=7001)
        return {"on_call": boss.id, "other": other.id, "agent": agent.id}


# ---------------------------------------------------------------- targets


@pytest.mark.parametrize("priority,created,first_due,resolution_due", [
    # P0 15 min / 4 h and P1 1 h / 24 h around the clock, even on a Saturday night.
    ("P0", sh(2024, 3, 16, 3, 0), sh(2024, 3, 16, 3, 15), sh(2024, 3, 16, 7, 0)),
    ("P1", sh(2024, 3, 16, 3, 0), sh(2024, 3, 16, 4, 0), sh(2024, 3, 17, 3, 0)),
    # P2 4 business hours / 3 business days: Friday 17:00 is due Monday 12:00 and Wednesday 17:00.
    ("P2", FRIDAY_5PM, sh(2024, 3, 18, 12, 0), sh(2024, 3, 20, 17, 0)),
    # P3 24 business hours / 5 business days: Friday 1 h, then 9 h a day.
    ("P3", FRIDAY_5PM, sh(2024, 3, 20, 14, 0), sh(2024, 3, 22, 17, 0)),
    # No priority yet (not classified): P3's targets.
    (None, FRIDAY_5PM, sh(2024, 3, 20, 14, 0), sh(2024, 3, 22, 17, 0)),
])
def test_design_default_targets(engine, priority, created, first_due, resolution_due):
    tid = new_ticket(engine, created, priority)
    got = clocks(engine, tid)
    assert set(got) == {"first_response", "resolution"}
    assert got["first_response"].due_at == first_due
    assert got["resolution"].due_at == resolution_due
    for clock in got.values():
        assert clock.started_at == created and clock.consumed_seconds == 0 and clock.priority == (priority or "P3")
        assert clock.warned_at is clock.breached_at is clock.stopped_at is None
    [started] = events(engine, "sla_started", tid)
    assert f"SLA {priority or 'P3'}" in started.reason and "first response due" in started.reason


def test_warning_at_80_percent_of_the_target(engine):
    tid = new_ticket(engine, FRIDAY_5PM, "P2")
    got = clocks(engine, tid)
    assert got["first_response"].warn_at == sh(2024, 3, 18, 11, 12)  # 3 h 12 min of 4 business hours
    p0 = clocks(engine, new_ticket(engine, sh(2024, 3, 16, 3, 0), "P0"))
    assert p0["first_response"].warn_at == sh(2024, 3, 16, 3, 12)


def test_clocks_start_at_creation_even_when_routed_later(engine):
    receipt = Intake(engine, clock=lambda: MONDAY_10AM).accept_now(make_message())
    with transaction(engine) as session:
        ticket = session.get(Ticket, receipt.ticket_id)
        ticket.priority = "P2"
        sla.start_clocks(session, ticket, CFG, MONDAY_10AM + timedelta(minutes=20))
    assert clocks(engine, receipt.ticket_id)["first_response"].due_at == sh(2024, 3, 18, 14, 0)


def test_holidays_are_skipped(engine):
    monday = date(2024, 3, 18)
    config = RouterConfig(calendar=BusinessCalendar(timezone="Asia/Shanghai", holidays=frozenset({monday})))
    tid = new_ticket(engine, FRIDAY_5PM, "P2", config=config)
    assert clocks(engine, tid)["first_response"].due_at == sh(2024, 3, 19, 12, 0)


def test_channel_overrides(engine):
    config = RouterConfig(sla_by_channel={"telegram": {"P2": SlaTarget(timedelta(hours=1), timedelta(hours=8), "24x7")}})
    on_telegram = clocks(engine, new_ticket(engine, FRIDAY_5PM, "P2", channel="telegram", config=config))
    assert on_telegram["first_response"].due_at == sh(2024, 3, 15, 18, 0)
    assert on_telegram["resolution"].due_at == sh(2024, 3, 16, 1, 0)
    assert on_telegram["first_response"].calendar == "24x7"
    by_email = clocks(engine, new_ticket(engine, FRIDAY_5PM, "P2", channel="email", config=config))
    assert by_email["first_response"].due_at == sh(2024, 3, 18, 12, 0)
    p3_on_telegram = clocks(engine, new_ticket(engine, FRIDAY_5PM, "P3", channel="telegram", config=config))
    assert p3_on_telegram["first_response"].due_at == sh(2024, 3, 20, 14, 0)  # no override for P3


def test_start_clocks_is_idempotent(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    before = clocks(engine, tid)
    on_ticket(engine, tid, lambda s, t, now: sla.start_clocks(s, t, CFG, now), MONDAY_10AM + timedelta(minutes=5))
    after = clocks(engine, tid)
    assert {k: (c.id, c.due_at, c.warn_at, c.consumed_seconds) for k, c in before.items()} == \
           {k: (c.id, c.due_at, c.warn_at, c.consumed_seconds) for k, c in after.items()}
    assert len(events(engine, "sla_started", tid)) == 1 and not events(engine, "sla_retargeted", tid)


# ---------------------------------------------------------------- pause and resume


def test_pause_and_resume_move_the_due_time_by_the_paused_span(engine, supervisors):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    assert clocks(engine, tid)["first_response"].due_at == sh(2024, 3, 18, 14, 0)
    assert clocks(engine, tid)["resolution"].due_at == sh(2024, 3, 21, 10, 0)
    on_ticket(engine, tid, sla.pause_clocks, sh(2024, 3, 18, 11, 0))
    paused = clocks(engine, tid)
    assert all(c.paused_since == sh(2024, 3, 18, 11, 0) and c.due_at is c.warn_at is None for c in paused.values())
    # Long past the old due time, nothing fires while the ticket waits on the customer.
    assert run_sweep(engine, sh(2024, 3, 25, 10, 0)) == 0
    on_ticket(engine, tid, lambda s, t, now: sla.resume_clocks(s, t, CFG, now), sh(2024, 3, 18, 13, 0))
    resumed = clocks(engine, tid)
    assert resumed["first_response"].consumed_seconds == HOUR
    assert resumed["first_response"].due_at == sh(2024, 3, 18, 16, 0)  # 14:00 + the two hours paused
    assert resumed["resolution"].due_at == sh(2024, 3, 21, 12, 0)
    assert resumed["first_response"].paused_since is None
    assert sla.used_seconds(resumed["first_response"], CFG, sh(2024, 3, 18, 14, 0)) == 2 * HOUR


def test_with_the_config_pause_and_stop_bring_the_count_up_to_date_at_once(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    on_ticket(engine, tid, lambda s, t, now: sla.pause_clocks(s, t, now, CFG), sh(2024, 3, 18, 11, 0))
    paused = clocks(engine, tid)["first_response"]
    assert paused.consumed_seconds == HOUR and paused.due_at is None
    assert sla.used_seconds(paused, CFG, sh(2024, 3, 19, 11, 0)) == HOUR
    on_ticket(engine, tid, lambda s, t, now: sla.resume_clocks(s, t, CFG, now), sh(2024, 3, 18, 13, 0))
    assert clocks(engine, tid)["first_response"].due_at == sh(2024, 3, 18, 16, 0)
    on_ticket(engine, tid, lambda s, t, now: sla.stop_clock(s, t, "first_response", now, CFG), sh(2024, 3, 18, 14, 0))
    stopped = clocks(engine, tid)["first_response"]
    assert stopped.consumed_seconds == 2 * HOUR == sla.used_seconds(stopped, CFG, sh(2024, 3, 20, 0, 0))
    assert sla.clock_summary(stopped, CFG, sh(2024, 3, 20, 0, 0))["state"] == "met"


def test_a_pause_over_the_weekend_moves_the_due_time_by_business_time_only(engine):
    tid = new_ticket(engine, sh(2024, 3, 15, 16, 0), "P2")
    assert clocks(engine, tid)["first_response"].due_at == sh(2024, 3, 18, 11, 0)
    on_ticket(engine, tid, sla.pause_clocks, FRIDAY_5PM)
    on_ticket(engine, tid, sla.pause_clocks, sh(2024, 3, 16, 10, 0))  # twice: the first pause counts
    on_ticket(engine, tid, lambda s, t, now: sla.resume_clocks(s, t, CFG, now), sh(2024, 3, 18, 10, 0))
    # Paused Friday 17:00–18:00 and Monday 09:00–10:00: two business hours later.
    assert clocks(engine, tid)["first_response"].due_at == sh(2024, 3, 18, 13, 0)


# ---------------------------------------------------------------- the sweep


def test_warning_to_the_agent_breach_to_the_supervisors(engine, supervisors):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    with transaction(engine) as session:
        session.get(Ticket, tid).assigned_agent_id = supervisors["agent"]
    fr = clocks(engine, tid)["first_response"]
    assert run_sweep(engine, sh(2024, 3, 18, 13, 11)) == 0
    assert run_sweep(engine, sh(2024, 3, 18, 13, 12)) == 1
    [warning] = events(engine, "sla_warning", tid)
    assert warning.reason == "first response due 14:00 CST (P2, 4 business hours): 80 % used"
    assert warning.data["clock"] == "first_response" and warning.actor == "sla"
    [note] = outbox(engine, "sla_warning")
    assert note.recipient == "telegram:7001" and note.dedupe_key == f"sla:{fr.id}:warn" and note.ticket_id == tid

    assert run_sweep(engine, sh(2024, 3, 18, 14, 0)) == 1
    [breach] = events(engine, "sla_breach", tid)
    assert breach.reason.startswith("first response overdue since 14:00 CST (P2, 4 business hours)")
    escalations = outbox(engine, "escalation")
    assert {e.recipient for e in escalations} == {"telegram:9001", "telegram:9002"}
    assert {e.dedupe_key for e in escalations} == {f"sla:{fr.id}:breach:{supervisors['on_call']}",
                                                   f"sla:{fr.id}:breach:{supervisors['other']}"}
    assert run_sweep(engine, sh(2024, 3, 18, 15, 0)) == 0
    stored = clocks(engine, tid)["first_response"]
    assert stored.warned_at == sh(2024, 3, 18, 13, 12) and stored.breached_at == sh(2024, 3, 18, 14, 0)


def test_a_clock_past_both_thresholds_fires_warning_and_breach_once_each(engine, supervisors):
    tid = new_ticket(engine, sh(2024, 3, 16, 3, 0), "P0")  # unassigned
    assert run_sweep(engine, sh(2024, 3, 16, 5, 0)) == 2  # first response: warning and breach
    assert run_sweep(engine, sh(2024, 3, 16, 5, 0)) == 0
    [warning] = events(engine, "sla_warning", tid)
    assert "unassigned, so the supervisors were told" in warning.reason
    assert {o.recipient for o in outbox(engine, "sla_warning")} == {"telegram:9001", "telegram:9002"}
    assert len(events(engine, "sla_breach", tid)) == 1
    assert run_sweep(engine, sh(2024, 3, 16, 7, 0)) == 2  # now the resolution clock, 4 h
    assert [e.data["clock"] for e in events(engine, "sla_breach", tid)] == ["first_response", "resolution"]


def test_nobody_to_tell_the_notice_is_kept_for_the_role(engine):
    tid = new_ticket(engine, sh(2024, 3, 16, 3, 0), "P0")
    run_sweep(engine, sh(2024, 3, 16, 5, 0))
    assert [o.recipient for o in outbox(engine, "escalation")] == ["role:supervisor"]
    assert len(events(engine, "sla_breach", tid)) == 1


def test_repeated_sweeps_fire_each_warning_and_breach_exactly_once_and_on_time(engine, supervisors):
    ids = [new_ticket(engine, MONDAY_10AM + timedelta(minutes=7 * i), f"P{i % 4}") for i in range(8)]
    now, end, fired = MONDAY_10AM, MONDAY_10AM + timedelta(days=8), 0
    while now <= end:
        fired += run_sweep(engine, now)
        now += timedelta(minutes=30)
    n_clocks = 2 * len(ids)
    assert fired == 2 * n_clocks
    for kind, mark in (("sla_warning", "warn_at"), ("sla_breach", "due_at")):
        fired_events = events(engine, kind)
        assert len(fired_events) == n_clocks
        assert len({(e.ticket_id, e.data["clock"]) for e in fired_events}) == n_clocks
        for event in fired_events:  # from the stored projection, at the first sweep after it
            due = datetime.fromisoformat(event.data[mark])
            assert due <= event.at < due + timedelta(minutes=30)


def test_two_sweepers_at_once_fire_each_exactly_once(engine, database_url, supervisors):
    ids = [new_ticket(engine, MONDAY_10AM, "P1", start=False) for _ in range(30)]
    with transaction(engine) as session:
        for ticket in session.scalars(select(Ticket).where(Ticket.id.in_(ids))):
            sla.start_clocks(session, ticket, CFG, MONDAY_10AM)
    later = MONDAY_10AM + timedelta(days=2)  # both clocks of every ticket past warning and breach
    barrier = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def sweeper() -> None:
        try:
            barrier.wait()
            total = 0
            while n := run_sweep(engine, later, limit=7):
                total += n
            counts.append(total)
        except BaseException as exc:  # reported below; a thread's exception would vanish
            errors.append(exc)

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # Anything one sweeper skipped while the other held it is picked up by the next sweep.
    rest = run_sweep(engine, later)
    n_clocks = 2 * len(ids)
    assert sum(counts) + rest == 2 * n_clocks
    for kind in ("sla_warning", "sla_breach"):
        fired = events(engine, kind)
        assert len(fired) == n_clocks
        assert len({(e.ticket_id, e.data["clock"]) for e in fired}) == n_clocks
    with Session(engine) as session:
        keys = session.scalars(select(OutboxItem.dedupe_key).where(OutboxItem.kind == "escalation")).all()
    assert len(keys) == len(set(keys)) == n_clocks * 2  # two supervisors


def test_the_claim_is_won_by_one_transaction_only(engine):
    """The conditional UPDATE alone, without SKIP LOCKED: the loser waits for the winner's commit
    and then finds the row taken."""
    tid = new_ticket(engine, sh(2024, 3, 16, 3, 0), "P0")
    now = sh(2024, 3, 16, 5, 0)
    clock_id = clocks(engine, tid)["first_response"].id
    results: list[bool] = []
    with Session(engine) as first:
        first.begin()
        assert sla._claim(first, first.get(SlaClock, clock_id), SlaClock.breached_at, SlaClock.due_at, now)

        def second() -> None:
            with transaction(engine) as session:
                results.append(sla._claim(session, session.get(SlaClock, clock_id), SlaClock.breached_at,
                                          SlaClock.due_at, now + timedelta(seconds=1)))

        loser = threading.Thread(target=second)
        loser.start()
        loser.join(0.5)
        assert loser.is_alive()  # blocked behind the first transaction's claim
        first.commit()
    loser.join(30)
    assert results == [False]
    assert clocks(engine, tid)["first_response"].breached_at == now


def test_a_restart_fires_nothing_twice_and_misses_nothing(engine, database_url, supervisors):
    early = new_ticket(engine, MONDAY_10AM, "P2")
    late = new_ticket(engine, MONDAY_10AM + timedelta(hours=3), "P2")
    assert run_sweep(engine, sh(2024, 3, 18, 14, 30)) == 2  # early: first response warned and breached
    engine.dispose()

    restarted = make_engine(database_url)
    try:
        assert run_sweep(restarted, sh(2024, 3, 18, 14, 30)) == 0
        # While "down", the late ticket passed its 80 % (16:12): it fires once, at the first sweep.
        assert run_sweep(restarted, sh(2024, 3, 18, 16, 30)) == 1
        assert run_sweep(restarted, sh(2024, 3, 18, 16, 30)) == 0
        assert [e.ticket_id for e in events(restarted, "sla_warning")] == [early, late]
        assert [e.ticket_id for e in events(restarted, "sla_breach")] == [early]
    finally:
        restarted.dispose()


def test_stopped_clocks_and_finished_tickets_never_fire(engine, supervisors):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    on_ticket(engine, tid, lambda s, t, now: sla.stop_clock(s, t, "first_response", now), sh(2024, 3, 18, 11, 0))
    [met] = events(engine, "sla_met", tid)
    assert met.reason.startswith("first response met") and met.data["on_time"] is True
    assert run_sweep(engine, sh(2024, 3, 18, 15, 0)) == 0  # the first response was given in time
    assert run_sweep(engine, sh(2024, 3, 21, 10, 0)) == 2  # the resolution clock runs on
    assert {e.data["clock"] for e in events(engine, "sla_breach", tid)} == {"resolution"}
    other = new_ticket(engine, MONDAY_10AM, "P2")
    with transaction(engine) as session:
        session.get(Ticket, other).state = states.CLOSED  # closed by hand, clocks left running
    assert run_sweep(engine, sh(2024, 3, 30, 10, 0)) == 0
    with pytest.raises(InvalidInput, match="kind"):
        on_ticket(engine, tid, lambda s, t, now: sla.stop_clock(s, t, "lunch", now), MONDAY_10AM)


def test_a_late_stop_is_recorded_as_late(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    on_ticket(engine, tid, lambda s, t, now: sla.stop_clock(s, t, "first_response", now), sh(2024, 3, 18, 15, 0))
    [late] = events(engine, "sla_stopped", tid)
    assert late.data["on_time"] is False and "late" in late.reason


# ---------------------------------------------------------------- priority changes and reopening


def test_reprioritise_keeps_the_time_used(engine, supervisors):
    tid = new_ticket(engine, MONDAY_10AM, "P2")

    def set_priority(priority):
        def step(session, ticket, now):
            ticket.priority = priority
            sla.reprioritise(session, ticket, CFG, now)
        return step

    on_ticket(engine, tid, set_priority("P1"), sh(2024, 3, 18, 10, 30))
    up = clocks(engine, tid)
    assert up["first_response"].priority == "P1" and up["first_response"].calendar == "24x7"
    assert up["first_response"].consumed_seconds == 30 * MIN
    assert up["first_response"].due_at == sh(2024, 3, 18, 11, 0)  # 1 h, of which 30 min are used
    assert up["first_response"].warn_at == sh(2024, 3, 18, 10, 48)
    assert up["resolution"].due_at == sh(2024, 3, 19, 10, 0)  # 24 h − 30 min
    [retarget] = events(engine, "sla_retargeted", tid)
    assert retarget.reason.startswith("SLA P2 → P1")
    assert [o.recipient for o in outbox(engine, "on_call")] == ["telegram:9001"]  # a P1 now: on call hears

    on_ticket(engine, tid, set_priority("P3"), sh(2024, 3, 18, 10, 45))
    down = clocks(engine, tid)
    assert down["first_response"].consumed_seconds == 45 * MIN
    # 24 business hours − 45 min: Monday to 18:00, Tuesday, then seven hours on Wednesday.
    assert down["first_response"].due_at == sh(2024, 3, 20, 16, 0)


def test_a_shorter_target_already_used_up_is_due_at_once(engine, supervisors):
    tid = new_ticket(engine, MONDAY_10AM, "P3")
    tuesday_noon = sh(2024, 3, 19, 12, 0)  # 11 business hours used

    def bump(session, ticket, now):
        ticket.priority = "P1"
        sla.reprioritise(session, ticket, CFG, now)

    on_ticket(engine, tid, bump, tuesday_noon)
    assert clocks(engine, tid)["first_response"].due_at == tuesday_noon
    assert run_sweep(engine, tuesday_noon) == 2
    assert {e.kind for e in events(engine, "sla_warning", tid) + events(engine, "sla_breach", tid)} == \
           {"sla_warning", "sla_breach"}


def test_reprioritise_while_paused_keeps_the_pause(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    on_ticket(engine, tid, sla.pause_clocks, sh(2024, 3, 18, 11, 0))

    def bump(session, ticket, now):
        ticket.priority = "P1"
        sla.reprioritise(session, ticket, CFG, now)

    on_ticket(engine, tid, bump, sh(2024, 3, 18, 12, 0))
    paused = clocks(engine, tid)["first_response"]
    assert paused.due_at is None and paused.consumed_seconds == HOUR and paused.calendar == "24x7"
    on_ticket(engine, tid, lambda s, t, now: sla.resume_clocks(s, t, CFG, now), sh(2024, 3, 18, 20, 0))
    assert clocks(engine, tid)["first_response"].due_at == sh(2024, 3, 18, 20, 0)  # 1 h used of 1 h


def reply(session, ticket, now):
    ticket.first_response_at = now  # as the reply action does
    sla.stop_clock(session, ticket, "first_response", now)


def test_a_reopened_ticket_restarts_its_resolution_clock(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    on_ticket(engine, tid, reply, sh(2024, 3, 18, 11, 0))
    on_ticket(engine, tid, lambda s, t, now: sla.stop_clock(s, t, "resolution", now), sh(2024, 3, 18, 12, 0))
    on_ticket(engine, tid, lambda s, t, now: sla.restart_clocks(s, t, CFG, now), sh(2024, 3, 19, 10, 0))
    got = clocks(engine, tid)
    assert got["first_response"].stopped_at is not None  # answered before: not owed again
    assert got["resolution"].stopped_at is None and got["resolution"].consumed_seconds == 2 * HOUR
    # 25 business hours left from Tuesday 10:00: 8 + 9 + 8.
    assert got["resolution"].due_at == sh(2024, 3, 21, 17, 0)
    assert len(events(engine, "sla_restarted", tid)) == 1


def test_a_reopened_ticket_never_answered_owes_its_first_response_again(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    on_ticket(engine, tid, sla.pause_clocks, sh(2024, 3, 18, 11, 0))  # resolved while waiting on the customer
    for kind in ("resolution", "first_response"):
        on_ticket(engine, tid, lambda s, t, now: sla.stop_clock(s, t, kind, now), sh(2024, 3, 18, 12, 0))
    on_ticket(engine, tid, lambda s, t, now: sla.restart_clocks(s, t, CFG, now), sh(2024, 3, 19, 10, 0))
    got = clocks(engine, tid)
    assert got["first_response"].stopped_at is None and got["first_response"].paused_since is None
    assert got["first_response"].consumed_seconds == HOUR  # the paused hour did not count
    assert got["first_response"].due_at == sh(2024, 3, 19, 13, 0)


# ---------------------------------------------------------------- on call


def test_p0_and_p1_tell_the_on_call_supervisor_once(engine, supervisors):
    p0 = new_ticket(engine, sh(2024, 3, 16, 3, 0), "P0")
    p2 = new_ticket(engine, sh(2024, 3, 16, 3, 0), "P2")
    for tid in (p0, p0, p2):
        with transaction(engine) as session:
            sla.notify_on_call_at_creation(session, session.get(Ticket, tid), sh(2024, 3, 16, 3, 0))
    [notice] = outbox(engine, "on_call")
    assert notice.recipient == "telegram:9001" and notice.ticket_id == p0 and notice.payload["priority"] == "P0"
    [event] = events(engine, "on_call_notified", p0)
    assert "P0" in event.reason and event.data["notified"] == ["telegram:9001"]
    assert not events(engine, "on_call_notified", p2)


def test_with_nobody_on_call_every_supervisor_hears(engine, supervisors):
    with transaction(engine) as session:
        session.get(Agent, supervisors["on_call"]).on_call = False
    tid = new_ticket(engine, sh(2024, 3, 16, 3, 0), "P1")
    with transaction(engine) as session:
        assert sla.notify_on_call_at_creation(session, session.get(Ticket, tid), sh(2024, 3, 16, 3, 0)) == 2
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxItem).where(OutboxItem.kind == "on_call")) == 2


def test_clock_summary_for_explanations(engine):
    tid = new_ticket(engine, MONDAY_10AM, "P2")
    summary = sla.clock_summary(clocks(engine, tid)["first_response"], CFG, sh(2024, 3, 18, 11, 30))
    assert summary["state"] == "running" and summary["used_seconds"] == 90 * MIN
    assert summary["target"] == "4 business hours" and summary["due_at"] == sh(2024, 3, 18, 14, 0).isoformat()
    assert sla.describe_target(27 * HOUR, "business", CFG) == "3 business days"
    assert sla.describe_target(15 * MIN, "24x7", CFG) == "15 min around the clock"
