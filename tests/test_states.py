from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from models.errors import IllegalTransition
from models.tables import Ticket, TicketEvent
from router import states
from router.intake import Intake
from factories import make_message


def _ticket(engine) -> str:
    return Intake(engine).accept_now(make_message()).ticket_number


def test_every_transition_is_an_audit_event(engine):
    number = _ticket(engine)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        ticket = session.query(Ticket).filter_by(number=number).one()
        for target in (states.ASSIGNED, states.IN_PROGRESS, states.AWAITING_CUSTOMER, states.RESOLVED, states.CLOSED):
            states.transition(session, ticket, target, actor="agent:1", reason=f"test → {target}", at=now)
    with Session(engine) as session:
        events = session.query(TicketEvent).join(Ticket).filter(Ticket.number == number).order_by(TicketEvent.id).all()
    moves = [(e.from_state, e.to_state) for e in events if e.kind == "transition"]
    assert moves == [("new", "assigned"), ("assigned", "in_progress"), ("in_progress", "awaiting_customer"),
                     ("awaiting_customer", "resolved"), ("resolved", "closed")]
    assert all(e.actor and e.reason and e.at for e in events)


@pytest.mark.parametrize("start,target", [("new", "reopened"), ("closed", "resolved"), ("merged", "new"),
                                          ("resolved", "in_progress")])
def test_illegal_transitions_are_refused_clearly(engine, start, target):
    number = _ticket(engine)
    with Session(engine) as session, session.begin():
        ticket = session.query(Ticket).filter_by(number=number).one()
        ticket.state = start
    with Session(engine) as session:
        ticket = session.query(Ticket).filter_by(number=number).one()
        with pytest.raises(IllegalTransition) as err:
            states.transition(session, ticket, target, actor="cli", reason="x", at=datetime.now(UTC))
        assert number in str(err.value) and start in str(err.value) and target in str(err.value)
        assert ticket.state == start


def test_the_machine_has_no_dead_ends_but_merged():
    for state in states.STATES:
        assert states.TRANSITIONS[state] or state == states.MERGED
        assert states.TRANSITIONS[state] <= set(states.STATES)


def test_the_events_of_one_flush_are_written_with_one_statement(engine):
    """Events with and without data (a transition, a queued notice) are written together: an event
    left to a Python-side default used to split a flush into one INSERT per event."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite writes rows that need their ids back one statement each, by design")
    from sqlalchemy import event

    number = _ticket(engine)
    inserts: list[str] = []
    listener = lambda _c, _cur, statement, *_rest: inserts.append(statement)  # noqa: E731
    with Session(engine) as session, session.begin():
        ticket = session.query(Ticket).filter_by(number=number).one()
        event.listen(engine, "before_cursor_execute", listener)
        try:
            for i in range(4):
                states.transition(session, ticket, states.ASSIGNED if i % 2 == 0 else states.NEW, actor="router",
                                  reason="test", at=datetime.now(UTC))
                session.add(TicketEvent(ticket_id=ticket.id, actor="router", kind="queued", reason="test",
                                        data={"queue": "assignment"}))
            session.flush()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    assert len([s for s in inserts if s.startswith("INSERT INTO ticket_events")]) == 1


def test_resolved_tickets_are_closed_after_the_quiet_period_by_the_schedulers_close_job(engine):
    from datetime import timedelta

    from sqlalchemy import select

    from router.config import RouterConfig
    from router.scheduler import Scheduler, router_jobs

    now = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    numbers = [Intake(engine).accept_now(make_message(email=f"c{i}@example.com")).ticket_number for i in range(3)]
    with Session(engine) as session, session.begin():
        for number, days_ago in zip(numbers, (8, 6, None)):
            ticket = session.scalar(select(Ticket).where(Ticket.number == number))
            if days_ago is not None:
                states.transition(session, ticket, states.RESOLVED, actor="agent:1", reason="done",
                                  at=now - timedelta(days=days_ago))
    scheduler = Scheduler(engine, router_jobs(lambda: None, RouterConfig(close_resolved_after=timedelta(days=7))))
    assert scheduler.run_once(now, only={"close"}) == {"close": 1}
    with Session(engine) as session:
        state = {t.number: t.state for t in session.scalars(select(Ticket).where(Ticket.number.in_(numbers)))}
        [event] = session.scalars(select(TicketEvent).join(Ticket).where(
            Ticket.number == numbers[0], TicketEvent.to_state == states.CLOSED)).all()
    assert [state[n] for n in numbers] == [states.CLOSED, states.RESOLVED, states.NEW]
    assert event.actor == "router" and "resolved 7 day(s) ago" in event.reason
    assert event.reason == "closed: resolved 7 day(s) ago and the customer did not write again"
    never = Scheduler(engine, router_jobs(lambda: None, RouterConfig(close_resolved_after=timedelta(0))))
    assert never.run_once(now + timedelta(days=30), only={"close"}) == {"close": 0}
