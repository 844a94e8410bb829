"""Agent actions (router.actions) and their command line (paidan.cli_router), on a real database.

Tickets come in through intake and are routed by the real router (classifier stand-in from
factories), so every action is tried on tickets in the state the router really leaves them in.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import KeywordClassifier, cli_invoker, make_message
from models import Attachment, Channel, ThreadRefs
from models.errors import ActionRefused, IllegalTransition, NotFound
from models.tables import (
    Agent,
    Assignment,
    LabelCorrection,
    Message,
    OutboxItem,
    SlaClock,
    Ticket,
    TicketEvent,
)
from paidan.db import transaction
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake, our_message_id

MISSING = [m for m in ("router.sla", "router.assignment") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (another helper's module, not landed)")

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
CONFIG = RouterConfig()
REFUND = "我要退款，订单 20261103884512"  # request/service/P2 for the keyword classifier


# ---------------------------------------------------------------- set-up


@pytest.fixture
def staff(engine):
    """Ann and Bo do service tickets, Cy only technical ones; Sue supervises."""
    with transaction(engine) as session:
        for name, skills, seniority in [("Ann", ["service"], 2), ("Bo", ["service", "transaction"], 1),
                                        ("Cy", ["technical"], 1)]:
            add_agent(session, name, skills=skills, capacity=5, seniority=seniority).online = True
        add_agent(session, "Sue", skills=["service", "technical", "transaction"], role="supervisor").on_call = True
    return engine


def new_ticket(engine, text: str = REFUND, *, at: datetime = NOW, route: bool = True, **extra) -> str:
    receipt = Intake(engine, clock=lambda: at).accept_now(make_message(text=text, received_at=at, **extra))
    if route:
        from router.routing import route_pending

        with transaction(engine) as session:
            route_pending(session, KeywordClassifier(), CONFIG, at)
    return receipt.ticket_number


def act(engine, action, number, actor, *, at: datetime = NOW, config: RouterConfig = CONFIG, **kwargs):
    with transaction(engine) as session:
        return action(session, number, actor, config=config, now=at, **kwargs)


def ticket(engine, number) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def holder(engine, number) -> str | None:
    with Session(engine) as session:
        t = session.scalar(select(Ticket).where(Ticket.number == number))
        return session.get(Agent, t.assigned_agent_id).name if t.assigned_agent_id else None


def agent(engine, name) -> Agent:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Agent).where(Agent.name == name))


def events(engine, number, kind=None) -> list[TicketEvent]:
    with Session(engine) as session:
        query = select(TicketEvent).join(Ticket).where(Ticket.number == number).order_by(TicketEvent.id)
        if kind:
            query = query.where(TicketEvent.kind == kind)
        return session.scalars(query).all()


def clocks(engine, number) -> dict[str, SlaClock]:
    with Session(engine) as session:
        rows = session.scalars(select(SlaClock).join(Ticket, Ticket.id == SlaClock.ticket_id)
                               .where(Ticket.number == number)).all()
        return {c.kind: c for c in rows}


def outbox(engine, kind) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == kind).order_by(OutboxItem.id)).all()


def offers(engine, number) -> list[Assignment]:
    with Session(engine) as session:
        return session.scalars(select(Assignment).join(Ticket, Ticket.id == Assignment.ticket_id)
                               .where(Ticket.number == number).order_by(Assignment.id)).all()


def accepted(engine, text: str = REFUND, **extra) -> tuple[str, str]:
    """A routed ticket its agent has accepted: (number, the agent's name)."""
    number = new_ticket(engine, text, **extra)
    name = holder(engine, number)
    assert name is not None, "the router should have offered the ticket to someone"
    act(engine, actions.accept, number, name)
    return number, name


def other_service_agent(name: str) -> str:
    return "Bo" if name == "Ann" else "Ann"


# ---------------------------------------------------------------- who is acting


def test_someone_who_is_not_an_agent_is_refused_clearly(staff):
    number = new_ticket(staff)
    with pytest.raises(NotFound, match=r"no agent called 'mallory' \(see `paidan agents list`\)"):
        act(staff, actions.accept, number, "mallory")
    with pytest.raises(ActionRefused, match="say which agent"):
        act(staff, actions.accept, number, "  ")
    with Session(staff) as session:
        with pytest.raises(ActionRefused, match="not registered as an agent.*--telegram-id 999"):
            actions.agent_for_telegram(session, 999)
    assert ticket(staff, number).state == "assigned"  # nothing changed


def test_agents_are_found_by_row_name_or_id(staff):
    with Session(staff) as session:
        ann = session.scalar(select(Agent).where(Agent.name == "Ann"))
        assert actions.resolve_agent(session, ann) is ann
        assert actions.resolve_agent(session, "Ann").id == ann.id
        assert actions.resolve_agent(session, str(ann.id)).id == ann.id
        assert actions.resolve_agent(session, ann.id).id == ann.id
        with pytest.raises(NotFound, match="paidan agents list"):
            actions.resolve_agent(session, 4242)


def test_an_unknown_ticket_is_not_found(staff):
    with pytest.raises(NotFound, match="no ticket 'GD20990101001'"):
        act(staff, actions.accept, "GD20990101001", "Ann")


# ---------------------------------------------------------------- accept and decline


def test_accept_starts_work_and_is_audited(staff):
    number = new_ticket(staff)
    name = holder(staff, number)
    later = NOW + timedelta(minutes=3)
    outcome = act(staff, actions.accept, number, name, at=later)
    assert (outcome.state, outcome.agent, outcome.action) == ("in_progress", name, "accept")
    t = ticket(staff, number)
    assert t.state == "in_progress" and t.accepted_at == later
    [offer] = offers(staff, number)
    assert offer.accepted_at == later and offer.ended_at is None
    [move] = [e for e in events(staff, number, "transition") if e.to_state == "in_progress"]
    assert move.actor == f"agent:{agent(staff, name).id}" and f"{name} accepted" in move.reason
    assert move.from_state == "assigned"


def test_only_the_offered_agent_can_accept_and_only_once(staff):
    number = new_ticket(staff)
    name = holder(staff, number)
    other = other_service_agent(name)
    with pytest.raises(ActionRefused, match=f"held by {name}, not by {other}"):
        act(staff, actions.accept, number, other)
    with pytest.raises(ActionRefused, match="held by"):
        act(staff, actions.accept, number, "Sue")  # supervisors reassign; they do not accept for others
    act(staff, actions.accept, number, name)
    with pytest.raises(ActionRefused, match="already accepted"):
        act(staff, actions.accept, number, name)


def test_a_queued_ticket_cannot_be_accepted_by_anyone(staff):
    number = new_ticket(staff, "嗯 lowconf")  # low confidence: triage, no agent
    with pytest.raises(ActionRefused, match="not assigned to anyone.*triage queue.*paidan tickets assign"):
        act(staff, actions.accept, number, "Ann")


def test_an_offer_that_ended_cannot_be_accepted(staff):
    number = new_ticket(staff)
    name = holder(staff, number)
    with transaction(staff) as session:  # expired, and the expiry timer has not moved the ticket on yet
        offer = session.scalar(select(Assignment).join(Ticket, Ticket.id == Assignment.ticket_id)
                               .where(Ticket.number == number))
        offer.ended_at, offer.end_reason = NOW, "expired"
    with pytest.raises(ActionRefused, match=f"the offer of {number} to {name} ended at .* UTC \\(expired\\)"):
        act(staff, actions.accept, number, name)


def test_an_accept_that_loses_the_race_with_expiry_is_refused_and_changes_nothing(staff, monkeypatch):
    number = new_ticket(staff)
    name = holder(staff, number)
    read_ticket = actions._ticket

    def expiry_wins_meanwhile(session, wanted):
        ticket = read_ticket(session, wanted)
        # what another process's expire_offers does between our read and our claim
        session.execute(Assignment.__table__.update().where(Assignment.__table__.c.ticket_id == ticket.id)
                        .values(ended_at=NOW, end_reason="expired"))
        return ticket

    monkeypatch.setattr(actions, "_ticket", expiry_wins_meanwhile)
    with pytest.raises(ActionRefused, match=r"offer of .* ended at .*\(expired\)"):
        act(staff, actions.accept, number, name)
    t = ticket(staff, number)
    assert t.state == "assigned" and t.accepted_at is None  # the refusal rolled everything back


def test_a_late_accept_of_a_still_open_offer_is_taken_and_noted(staff):
    number = new_ticket(staff)
    name = holder(staff, number)
    late = NOW + CONFIG.accept_timeout + timedelta(minutes=2)
    act(staff, actions.accept, number, name, at=late)
    [move] = [e for e in events(staff, number, "transition") if e.to_state == "in_progress"]
    assert move.data["late_by_seconds"] == 120


def test_decline_hands_the_ticket_to_someone_else_with_the_reason(staff):
    number = new_ticket(staff)
    first = holder(staff, number)
    load_before = agent(staff, first).load
    outcome = act(staff, actions.decline, number, first, reason="on leave this afternoon")
    second = holder(staff, number)
    assert second not in (None, first) and outcome.agent == second
    assert agent(staff, first).load == load_before - 1
    old, new = offers(staff, number)
    assert (old.agent_id, old.end_reason) == (agent(staff, first).id, "declined") and old.ended_at == NOW
    assert new.agent_id == agent(staff, second).id and new.ended_at is None
    [declined] = events(staff, number, "declined")
    assert "on leave this afternoon" in declined.reason and declined.actor == f"agent:{agent(staff, first).id}"


def test_decline_with_nobody_else_queues_the_ticket_with_its_reason(staff):
    with transaction(staff) as session:
        for name in ("Bo", "Sue"):
            session.scalar(select(Agent).where(Agent.name == name)).online = False
    number = new_ticket(staff)
    assert holder(staff, number) == "Ann"
    act(staff, actions.decline, number, "Ann")
    t = ticket(staff, number)
    assert t.assigned_agent_id is None and t.queue == "assignment" and t.queue_reason
    with Session(staff) as session:
        assert [r["number"] for r in actions.waiting(session, NOW)] == [number]


def test_decline_is_only_for_an_offer_not_yet_accepted(staff):
    number, name = accepted(staff)
    with pytest.raises(ActionRefused, match="accepted .* already; hand it on with `paidan tickets assign"):
        act(staff, actions.decline, number, name)
    with pytest.raises(ActionRefused, match="held by"):
        act(staff, actions.decline, number, other_service_agent(name))


# ---------------------------------------------------------------- replies and notes


def test_a_reply_goes_to_the_customer_by_email_threaded_and_stops_the_first_response_clock(staff):
    number = new_ticket(staff, channel=Channel.EMAIL, message_id="<abc@kehu.example.com>", subject="退款")
    name = holder(staff, number)
    at = NOW + timedelta(minutes=20)
    outcome = act(staff, actions.reply, number, name, text="您好，退款已提交，3 个工作日内到账。", at=at)
    t = ticket(staff, number)
    # replying to an offer not yet accepted accepts it first
    assert t.state == "in_progress" and t.accepted_at == at and t.first_response_at == at
    with Session(staff) as session:
        out = session.scalar(select(Message).where(Message.ticket_id == t.id, Message.direction == "out"))
    assert out.channel == "email" and out.author_agent_id == agent(staff, name).id and out.public
    assert out.external_id.startswith("out:") and out.text.startswith("您好")
    assert out.in_reply_to == "<abc@kehu.example.com>" and out.email_message_id.endswith("@paidan>")
    [item] = outbox(staff, "reply")
    assert (item.channel, item.recipient, item.ticket_id) == ("email", "kehu@example.com", t.id)
    assert item.payload["ticket"] == number and item.payload["text"] == out.text
    assert item.payload["in_reply_to"] == "<abc@kehu.example.com>"
    assert item.payload["message_id"] == out.email_message_id and f"[{number}]" in item.payload["subject"]
    assert clocks(staff, number)["first_response"].stopped_at == at
    assert clocks(staff, number)["resolution"].stopped_at is None
    assert outcome.data["first_response"] is True and outcome.data["outbox_id"] == item.id

    act(staff, actions.reply, number, name, text="补充：请留意银行短信。", at=at + timedelta(hours=1))
    assert ticket(staff, number).first_response_at == at  # only the first reply counts
    assert len(outbox(staff, "reply")) == 2


def test_a_customers_answer_to_our_email_reply_comes_back_to_the_ticket(staff):
    number = new_ticket(staff, channel=Channel.EMAIL, message_id="<q1@kehu.example.com>")
    name = holder(staff, number)
    act(staff, actions.reply, number, name, text="请提供订单截图")
    [item] = outbox(staff, "reply")
    answer = Intake(staff).accept_now(make_message(channel=Channel.EMAIL, text="截图见附件", received_at=NOW,
                                                   thread_refs=ThreadRefs(in_reply_to=item.payload["message_id"])))
    assert answer.ticket_number == number and not answer.new_ticket


def test_a_telegram_reply_goes_to_the_customers_telegram(staff):
    from models import Identity, IdentityKind, InboundMessage, Sender

    msg = InboundMessage(channel=Channel.TELEGRAM, external_id="555:1", text=REFUND, received_at=NOW, raw=b"{}",
                         sender=Sender((Identity(IdentityKind.TELEGRAM, "555"),), "王"))
    number = Intake(staff, clock=lambda: NOW).accept_now(msg).ticket_number
    from router.routing import route_pending

    with transaction(staff) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
    act(staff, actions.reply, number, holder(staff, number), text="收到，正在处理")
    [item] = outbox(staff, "reply")
    assert (item.channel, item.recipient) == ("telegram", "555") and item.payload["in_reply_to"] is None


def test_an_internal_note_is_stored_but_never_sent(staff):
    number = new_ticket(staff, channel=Channel.EMAIL)
    name = holder(staff, number)
    outcome = act(staff, actions.reply, number, name, text="客户上次也退过一次", public=False)
    assert outcome.action == "note"
    t = ticket(staff, number)
    assert t.first_response_at is None and t.state == "assigned"  # a note neither answers nor accepts
    with Session(staff) as session:
        note = session.scalar(select(Message).where(Message.ticket_id == t.id, Message.direction == "out"))
    assert note.public is False and note.text == "客户上次也退过一次"
    assert outbox(staff, "reply") == [] and clocks(staff, number)["first_response"].stopped_at is None
    assert [e.reason for e in events(staff, number, "note")] == [f"internal note by {name}"]


def test_a_supervisor_may_reply_on_someone_elses_ticket_without_taking_it(staff):
    number = new_ticket(staff, channel=Channel.EMAIL)
    name = holder(staff, number)
    act(staff, actions.reply, number, "Sue", text="您好，我们的同事会尽快处理。")
    t = ticket(staff, number)
    assert t.state == "assigned" and holder(staff, number) == name and t.accepted_at is None
    assert t.first_response_at == NOW and len(outbox(staff, "reply")) == 1


@pytest.mark.parametrize("text", ["", "   \n\t", "\x00"])
def test_an_empty_reply_is_refused_and_nothing_is_sent(staff, text):
    number = new_ticket(staff, channel=Channel.EMAIL)
    with pytest.raises(ActionRefused, match="the reply is empty"):
        act(staff, actions.reply, number, holder(staff, number), text=text)
    assert outbox(staff, "reply") == [] and ticket(staff, number).first_response_at is None


def test_a_reply_by_someone_who_does_not_hold_the_ticket_is_refused(staff):
    number = new_ticket(staff, channel=Channel.EMAIL)
    name = holder(staff, number)
    with pytest.raises(ActionRefused, match=f"you cannot reply to ticket {number}: it is held by {name}"):
        act(staff, actions.reply, number, "Cy", text="hello")
    with pytest.raises(ActionRefused, match="you cannot add a note to"):
        act(staff, actions.reply, number, "Cy", text="hello", public=False)


def test_a_reply_with_no_way_to_reach_the_customer_is_kept_for_the_status_page(staff):
    from models import Identity, IdentityKind, InboundMessage, Sender

    msg = InboundMessage(channel=Channel.WEB, external_id="w1", text=REFUND, received_at=NOW, raw=b"x",
                         sender=Sender((Identity(IdentityKind.WEB_SESSION, "sess-1"),), ""))
    number = Intake(staff, clock=lambda: NOW).accept_now(msg).ticket_number
    from router.routing import route_pending

    with transaction(staff) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
    outcome = act(staff, actions.reply, number, holder(staff, number), text="已处理")
    assert outcome.data["outbox_id"] is None and "status page" in outcome.summary
    assert outbox(staff, "reply") == [] and ticket(staff, number).first_response_at == NOW


# ---------------------------------------------------------------- waiting, resolving, reopening


def test_waiting_for_the_customer_pauses_the_clocks(staff):
    number, name = accepted(staff)
    at = NOW + timedelta(minutes=30)
    act(staff, actions.wait_for_customer, number, name, note="asked for the order screenshot", at=at)
    assert ticket(staff, number).state == "awaiting_customer"
    assert all(c.paused_since == at for c in clocks(staff, number).values())
    [move] = [e for e in events(staff, number, "transition") if e.to_state == "awaiting_customer"]
    assert "asked for the order screenshot" in move.reason and move.actor == f"agent:{agent(staff, name).id}"
    with pytest.raises(ActionRefused, match="already waits for the customer"):
        act(staff, actions.wait_for_customer, number, name, at=at)


def test_resolving_stops_the_clock_frees_capacity_and_drains_the_queue(staff):
    with transaction(staff) as session:
        for a in session.scalars(select(Agent)):
            a.online = a.name == "Ann"
        session.scalar(select(Agent).where(Agent.name == "Ann")).capacity = 1
    first = new_ticket(staff)
    second = new_ticket(staff, "另一个退款 请处理", email="other@example.com", at=NOW + timedelta(minutes=1))
    assert holder(staff, first) == "Ann" and ticket(staff, second).queue == "assignment"
    act(staff, actions.accept, first, "Ann")
    at = NOW + timedelta(hours=1)
    outcome = act(staff, actions.resolve, first, "Ann", note="refund sent", at=at)
    t = ticket(staff, first)
    assert t.state == "resolved" and t.resolved_at == at and outcome.data["drained"] == 1
    assert clocks(staff, first)["resolution"].stopped_at == at
    assert clocks(staff, first)["first_response"].stopped_at == at  # no reply was needed any more
    assert t.first_response_at is None  # …and reports can still tell it was never answered
    assert holder(staff, second) == "Ann" and ticket(staff, second).queue is None  # freed capacity used at once
    assert agent(staff, "Ann").load == 1
    [old] = offers(staff, first)
    assert old.end_reason == "resolved" and old.ended_at == at
    [move] = [e for e in events(staff, first, "transition") if e.to_state == "resolved"]
    assert "refund sent" in move.reason
    with pytest.raises(ActionRefused, match="already resolved"):
        act(staff, actions.resolve, first, "Ann", at=at)


def test_resolving_an_offer_not_yet_accepted_accepts_it_first(staff):
    number = new_ticket(staff)
    name = holder(staff, number)
    act(staff, actions.resolve, number, name)
    moves = [(e.from_state, e.to_state) for e in events(staff, number, "transition")]
    assert moves[-2:] == [("assigned", "in_progress"), ("in_progress", "resolved")]


def test_reopen_by_the_last_holder_restarts_the_clocks_and_assigns_again(staff):
    number, name = accepted(staff)
    act(staff, actions.resolve, number, name, at=NOW + timedelta(hours=1))
    with pytest.raises(ActionRefused, match=f"only a supervisor or the ticket's last holder \\({name}\\)"):
        act(staff, actions.reopen, number, "Cy", at=NOW + timedelta(hours=2))
    at = NOW + timedelta(hours=2)
    outcome = act(staff, actions.reopen, number, name, reason="refund bounced", at=at)
    t = ticket(staff, number)
    assert t.resolved_at is None and t.state == "assigned"
    assert outcome.agent == name  # the customer's previous agent first
    running = [c for c in clocks(staff, number).values() if c.stopped_at is None]
    assert running, "a reopened ticket has its clocks running again"
    kinds = [(e.from_state, e.to_state) for e in events(staff, number, "transition")]
    assert ("resolved", "reopened") in kinds


def test_a_supervisor_may_reopen_a_closed_ticket_but_an_open_one_cannot_be_reopened(staff):
    number, name = accepted(staff)
    with pytest.raises(IllegalTransition, match="cannot go from 'in_progress' to 'reopened'"):
        act(staff, actions.reopen, number, "Sue")
    act(staff, actions.resolve, number, name)
    with transaction(staff) as session:
        from router import states

        states.transition(session, session.scalar(select(Ticket).where(Ticket.number == number)), states.CLOSED,
                          actor="system", reason="closed after 7 days", at=NOW + timedelta(days=7))
    with pytest.raises(ActionRefused, match="is closed; reopen it first"):
        act(staff, actions.reply, number, "Sue", text="hi")
    act(staff, actions.reopen, number, "Sue", at=NOW + timedelta(days=8))
    assert ticket(staff, number).closed_at is None


def test_a_state_change_the_machine_forbids_surfaces_as_illegal_transition(staff):
    number, name = accepted(staff)
    act(staff, actions.resolve, number, name)
    for who in (name, "Sue"):  # the last holder stays on record, but the machine says no
        with pytest.raises(IllegalTransition, match="'resolved' to 'awaiting_customer'"):
            act(staff, actions.wait_for_customer, number, who)
    with pytest.raises(ActionRefused, match="you cannot put on hold"):
        act(staff, actions.wait_for_customer, number, "Cy")
    with pytest.raises(ActionRefused, match="is resolved; reopen it first"):
        act(staff, actions.reply, number, "Sue", text="one more thing")
    act(staff, actions.reply, number, "Sue", text="noted for the record", public=False)  # notes are fine


def test_a_merged_ticket_refuses_every_action_and_names_where_to_go(staff):
    keep = new_ticket(staff)
    gone = new_ticket(staff, "重复的退款请求 退款", email="twin@example.com")
    with transaction(staff) as session:
        t = session.scalar(select(Ticket).where(Ticket.number == gone))
        t.merged_into_id = session.scalar(select(Ticket.id).where(Ticket.number == keep))
        t.state = "merged"
    name = holder(staff, gone)
    for action, kwargs in [(actions.accept, {}), (actions.reply, {"text": "x"}), (actions.resolve, {}),
                           (actions.reassign, {}), (actions.relabel, {"head": "priority", "new_label": "P1"}),
                           (actions.reopen, {})]:
        with pytest.raises(ActionRefused, match=f"was merged; act on {keep} instead"):
            act(staff, action, gone, name or "Sue", **kwargs)


# ---------------------------------------------------------------- files


def test_files_go_to_the_agents_own_chat_newest_ten_and_only_to_who_may_see_them(staff):
    with transaction(staff) as session:
        session.scalar(select(Agent).where(Agent.name == "Sue")).telegram_id = 9001
    shots = tuple(Attachment(f"shot{i:02}.png", "image/png", bytes([i]) * 100) for i in range(12))
    number, name = accepted(staff, attachments=shots)
    with pytest.raises(ActionRefused, match=f"{name} has no Telegram id to send the files to"):
        act(staff, actions.send_files, number, name)
    stranger = other_service_agent(name)
    with pytest.raises(ActionRefused, match=f"you cannot see the files of ticket {number}"):
        act(staff, actions.send_files, number, stranger)

    outcome = act(staff, actions.send_files, number, "Sue")
    assert outcome.data["total"] == 12 and "2 older one(s) not sent" in outcome.summary
    with Session(staff) as session:
        items = session.scalars(select(OutboxItem).where(OutboxItem.kind == "file").order_by(OutboxItem.id)).all()
    assert [i.payload["filename"] for i in items] == [f"shot{i:02}.png" for i in range(2, 12)]  # in order
    assert {i.recipient for i in items} == {"telegram:9001"} and items[0].payload["ticket"] == number

    plain = new_ticket(staff, "退款 没有附件", email="plain@example.com")
    with pytest.raises(ActionRefused, match=f"the customer sent no files on {plain}"):
        act(staff, actions.send_files, plain, "Sue")


# ---------------------------------------------------------------- availability


def test_going_offline_hands_on_unaccepted_offers_at_once_and_names_the_tickets_kept(staff):
    mine, name = accepted(staff)
    offered = new_ticket(staff, "退款 第二单", email="second@example.com")
    if holder(staff, offered) != name:  # make sure the second is offered to the same agent
        act(staff, actions.reassign, offered, "Sue", to=name)
    other = other_service_agent(name)

    gone = act_availability(staff, name, False)
    assert gone.handed_on == (offered,) and gone.kept == (mine,)
    assert f"handed on to others: {offered}" in gone.summary and f"still yours: {mine}" in gone.summary
    assert holder(staff, offered) == other  # not after the accept timeout: now
    assert holder(staff, mine) == name
    assert not agent(staff, name).online
    with Session(staff) as session:
        reasons = [e.reason for e in session.scalars(select(TicketEvent).where(
            TicketEvent.ticket_id == ticket(staff, offered).id, TicketEvent.kind == "agent_offline"))]
    assert reasons == [f"{name} went offline before accepting it"]

    # The colleague leaves too: the offer goes on to the queue, as does a new ticket; back online,
    # the queue drains to them.
    assert act_availability(staff, other, False).handed_on == (offered,)
    waiting = new_ticket(staff, "退款 第三单", email="third@example.com")
    assert holder(staff, waiting) is None and holder(staff, offered) is None
    back = act_availability(staff, name, True, at=NOW + timedelta(minutes=1))
    assert back.assigned == 2 and "assigned 2 waiting ticket" in back.summary
    assert holder(staff, waiting) == holder(staff, offered) == name


def test_a_supervisor_sends_an_agent_home_and_hands_on_everything_they_held(staff):
    mine, name = accepted(staff)
    other = other_service_agent(name)
    with pytest.raises(ActionRefused, match="only a supervisor can set another agent"):
        act_availability(staff, other, False, agent=name)
    gone = act_availability(staff, "Sue", False, agent=name, hand_on=True)
    assert (gone.agent, gone.handed_on, gone.kept) == (name, (mine,), ())
    assert holder(staff, mine) == other and not agent(staff, name).online
    with Session(staff) as session:
        [event] = session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == ticket(staff, mine).id,
                                                            TicketEvent.kind == "agent_offline")).all()
    assert event.reason == f"{name} went offline (set offline by Sue); handed on with their other tickets"


def act_availability(engine, name, online, *, at=NOW, **kwargs):
    with transaction(engine) as session:
        return actions.set_availability(session, name, online, CONFIG, at, **kwargs)


# ---------------------------------------------------------------- merge


def two_tickets_of_one_customer(engine) -> tuple[str, str]:
    """Wang writes about a refund (P2), then, on another topic an hour later, about a double charge
    (P1): two tickets, each offered to an agent; both mails carry Message-IDs."""
    first = new_ticket(engine, REFUND, email="wang@example.cn", channel=Channel.EMAIL, message_id="<refund@example.cn>")
    second = new_ticket(engine, "昨天被扣款两次 charge twice", email="wang@example.cn", channel=Channel.EMAIL,
                        message_id="<charge@example.cn>", at=NOW + timedelta(hours=1))
    assert first != second
    return first, second


def test_merging_moves_the_messages_ends_the_duplicate_and_keeps_the_more_urgent_priority(staff):
    keep, dup = two_tickets_of_one_customer(staff)
    assert (ticket(staff, keep).priority, ticket(staff, dup).priority) == ("P2", "P1")
    at = NOW + timedelta(hours=2)

    outcome = act(staff, actions.merge, dup, "Sue", into=keep, reason="same order", at=at)
    assert outcome.ticket == keep and outcome.data["messages_moved"] == 1
    assert "P2 → P1" in outcome.summary
    kept, gone = ticket(staff, keep), ticket(staff, dup)
    assert (gone.state, gone.merged_into_id) == ("merged", kept.id)
    assert kept.priority == "P1"
    with Session(staff) as session:
        texts = session.scalars(select(Message.text).where(Message.ticket_id == kept.id).order_by(Message.id)).all()
        assert texts == [REFUND, "昨天被扣款两次 charge twice"]
        clocks = session.scalars(select(SlaClock).where(SlaClock.ticket_id == gone.id)).all()
        assert clocks and all(c.stopped_at is not None for c in clocks)
        kinds = [e.kind for e in session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == kept.id))]
        assert "merged_in" in kinds
        open_offers = session.scalars(select(Assignment).where(Assignment.ticket_id == gone.id,
                                                               Assignment.ended_at.is_(None))).all()
        assert open_offers == []  # the duplicate's agent has the capacity back

    # The customer answers the duplicate's mail: it continues the ticket that lives on (topic
    # threading off, so only the reference can lead there).
    by_reference = Intake(staff, clock=lambda: at, config=RouterConfig(topic_window=timedelta(0)))
    answer = by_reference.accept_now(make_message(
        text="发票抬头开错了，请重开发票 invoice title wrong", email="wang@example.cn", channel=Channel.EMAIL, received_at=at,
        thread_refs=ThreadRefs(in_reply_to="<charge@example.cn>")))
    assert answer.ticket_number == keep
    # … and so do answering our acknowledgement of it, and naming its number.
    to_our_ack = by_reference.accept_now(make_message(
        text="快递单号是多少 tracking number", email="wang@example.cn", channel=Channel.EMAIL, received_at=at,
        thread_refs=ThreadRefs(in_reply_to=our_message_id(dup))))
    assert to_our_ack.ticket_number == keep
    named = by_reference.accept_now(make_message(
        text="还有问题", email="wang@example.cn", received_at=at, thread_refs=ThreadRefs(ticket_number=dup)))
    assert named.ticket_number == keep


def test_merging_is_refused_with_a_reason_the_person_can_act_on(staff):
    keep, dup = two_tickets_of_one_customer(staff)
    other = new_ticket(staff, "投诉 快递太慢", email="li@example.com")
    with pytest.raises(ActionRefused, match="into itself"):
        act(staff, actions.merge, keep, "Sue", into=keep)
    with pytest.raises(ActionRefused, match="different customers .* merge the customers first"):
        act(staff, actions.merge, other, "Sue", into=keep)
    with pytest.raises(NotFound):
        act(staff, actions.merge, dup, "Sue", into="GD20990101001")
    stranger = next(name for name in ("Ann", "Bo", "Cy") if name not in (holder(staff, keep), holder(staff, dup)))
    with pytest.raises(ActionRefused, match="only a supervisor or the holder"):
        act(staff, actions.merge, dup, stranger, into=keep)
    act(staff, actions.resolve, keep, "Sue")
    with pytest.raises(ActionRefused, match=f"{keep} is resolved; reopen it first"):
        act(staff, actions.merge, dup, "Sue", into=keep)
    act(staff, actions.reopen, keep, "Sue")
    act(staff, actions.merge, dup, "Sue", into=keep)
    with pytest.raises(ActionRefused, match=f"was merged; act on {keep} instead"):
        act(staff, actions.merge, dup, "Sue", into=keep)
    assert ticket(staff, dup).state == "merged"


# ---------------------------------------------------------------- reassign


def test_the_holder_hands_a_ticket_to_a_named_colleague(staff):
    number, name = accepted(staff)
    other = other_service_agent(name)
    outcome = act(staff, actions.reassign, number, name, to=other, reason="she speaks Cantonese")
    assert holder(staff, number) == other and outcome.agent == other
    t = ticket(staff, number)
    assert t.state == "assigned" and t.accepted_at is None  # the colleague must accept it
    assert agent(staff, name).load == 0 and agent(staff, other).load == 1
    old, new = offers(staff, number)
    assert old.end_reason == "reassigned" and new.agent_id == agent(staff, other).id and new.ended_at is None
    [event] = events(staff, number, "reassigned")
    assert "she speaks Cantonese" in event.reason and event.data["to_agent_id"] == agent(staff, other).id


def test_reassign_without_a_name_picks_the_best_other_agent(staff):
    number, name = accepted(staff)
    act(staff, actions.reassign, number, name)
    assert holder(staff, number) == other_service_agent(name)


def test_a_colleague_without_the_skill_is_refused_unless_a_supervisor_forces_it(staff):
    number, name = accepted(staff)
    with pytest.raises(ActionRefused, match="Cy lacks the skill\\(s\\) service.*--force"):
        act(staff, actions.reassign, number, name, to="Cy")
    with pytest.raises(ActionRefused, match="only a supervisor can force"):
        act(staff, actions.reassign, number, name, to="Cy", force=True)
    assert holder(staff, number) == name  # refused means untouched
    act(staff, actions.reassign, number, "Sue", to="Cy", force=True, reason="Cy knows this customer")
    assert holder(staff, number) == "Cy"
    [event] = events(staff, number, "reassigned")
    assert event.data["forced"] is True and event.actor == f"agent:{agent(staff, 'Sue').id}"


def test_capacity_is_never_forced(staff):
    number, name = accepted(staff)
    other = other_service_agent(name)
    with transaction(staff) as session:
        target = session.scalar(select(Agent).where(Agent.name == other))
        target.capacity, target.load = 1, 1
    with pytest.raises(ActionRefused, match=f"{other} is at capacity \\(1/1.*--capacity N"):
        act(staff, actions.reassign, number, "Sue", to=other, force=True)
    assert holder(staff, number) == name


def test_only_the_holder_or_a_supervisor_reassigns(staff):
    number, name = accepted(staff)
    with pytest.raises(ActionRefused, match="you cannot reassign"):
        act(staff, actions.reassign, number, "Cy", to="Cy", force=True)
    with pytest.raises(ActionRefused, match=f"{name} already holds"):
        act(staff, actions.reassign, number, "Sue", to=name)


def test_a_supervisor_assigns_a_ticket_out_of_triage(staff):
    number = new_ticket(staff, "嗯 lowconf")
    assert ticket(staff, number).queue == "triage"
    act(staff, actions.reassign, number, "Sue", to="Bo")
    t = ticket(staff, number)
    assert holder(staff, number) == "Bo" and t.state == "assigned" and t.queue is None


# ---------------------------------------------------------------- relabel


def test_relabel_stores_a_correction_and_retargets_the_sla(staff):
    number, name = accepted(staff)
    due_before = clocks(staff, number)["first_response"].due_at
    outcome = act(staff, actions.relabel, number, name, head="priority", new_label="p1")
    t = ticket(staff, number)
    assert t.priority == "P1" and (outcome.data["from"], outcome.data["to"]) == ("P2", "P1")
    with Session(staff) as session:
        [c] = session.scalars(select(LabelCorrection)).all()
        first = session.scalar(select(Message).where(Message.ticket_id == t.id).order_by(Message.id))
    assert (c.head, c.old_label, c.new_label, c.message_id, c.text) == ("priority", "P2", "P1", first.id, REFUND)
    assert c.corrected_by == f"agent:{agent(staff, name).id}" and c.corrected_at == NOW
    fr = clocks(staff, number)["first_response"]
    assert fr.priority == "P1" and fr.due_at != due_before  # P1: 1 h around the clock instead of 4 business hours
    [event] = events(staff, number, "relabelled")
    assert "P2 → P1" in event.reason


def test_a_correction_keeps_the_text_the_classifier_read_subject_included(staff):
    number, name = accepted(staff, subject="收银机故障")
    act(staff, actions.relabel, number, name, head="category", new_label="technical")
    with Session(staff) as session:
        [c] = session.scalars(select(LabelCorrection)).all()
    assert c.text == f"收银机故障\n{REFUND}"  # as routing classified the new ticket: subject, then the message


def test_relabel_category_warns_when_the_holder_lacks_the_new_skill(staff):
    number, name = accepted(staff)
    outcome = act(staff, actions.relabel, number, "Sue", head="category", new_label="Technical")
    assert ticket(staff, number).category == "technical"
    assert outcome.data["holder_lacks"] == ["technical"] and "consider reassigning" in outcome.summary


@pytest.mark.parametrize("head,label,message", [
    ("priority", "P9", "'P9' is not a priority label; choose one of P0, P1, P2, P3"),
    ("mood", "angry", "there is no label head 'mood'; choose one of type, category, priority"),
    ("category", "service", "already labelled category=service; nothing changed"),
    ("type", "", "'' is not a type label"),
])
def test_relabel_refuses_unknown_or_unchanged_labels(staff, head, label, message):
    number, name = accepted(staff)
    with pytest.raises(ActionRefused, match=message.replace("(", "\\(").replace(")", "\\)")):
        act(staff, actions.relabel, number, name, head=head, new_label=label)
    with Session(staff) as session:
        assert session.scalar(select(func.count()).select_from(LabelCorrection)) == 0


def test_deployment_label_sets_are_honoured(staff):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithLabels:  # what RouterConfig looks like once it carries the model's label sets
        labels: dict
        category_skills: dict
        language_skills: bool = False

    number, name = accepted(staff)
    config = WithLabels({"type": ("ask", "fix"), "category": ("service",), "priority": ("P2", "P3")}, {})
    act(staff, actions.relabel, number, name, head="type", new_label="fix", config=config)
    assert ticket(staff, number).type == "fix"
    with pytest.raises(ActionRefused, match="choose one of ask, fix"):
        act(staff, actions.relabel, number, name, head="type", new_label="incident", config=config)


# ---------------------------------------------------------------- the queue


def test_the_queue_lists_waiting_tickets_most_urgent_then_oldest(staff):
    with transaction(staff) as session:
        session.scalar(select(Agent).where(Agent.name == "Cy")).online = False
    low = new_ticket(staff, "建议加个夜间模式 category:technical", email="a@example.com")  # P3, nobody for technical
    triage = new_ticket(staff, "嗯 lowconf", email="b@example.com", at=NOW + timedelta(minutes=5))
    urgent = new_ticket(staff, "服务器宕机了", email="c@example.com", at=NOW + timedelta(minutes=10))  # P0 technical
    assigned = new_ticket(staff, email="d@example.com")
    with Session(staff) as session:
        rows = actions.waiting(session, NOW + timedelta(hours=1))
        assert [r["number"] for r in rows] == [urgent, low, triage]  # P0, then the two P3s oldest first
        assert assigned not in [r["number"] for r in rows]
        by_number = {r["number"]: r for r in rows}
        assert by_number[triage]["queue"] == "triage" and "low classifier confidence" in by_number[triage]["reason"]
        assert by_number[urgent]["priority"] == "P0" and by_number[urgent]["age_seconds"] == 50 * 60
        assert [r["number"] for r in actions.waiting(session, NOW, queue="triage")] == [triage]
        assert [r["number"] for r in actions.waiting(session, NOW, priority="p0")] == [urgent]
        assert [r["number"] for r in actions.waiting(session, NOW, category="technical")] == [urgent, low]
        with pytest.raises(ActionRefused, match="there is no queue 'later'"):
            actions.waiting(session, NOW, queue="later")


# ---------------------------------------------------------------- the command line


@pytest.fixture
def app():
    """The root command with the router commands in it, as the lead wires them (built afresh so no
    test changes the shared `cli` object)."""
    from paidan.cli import PaidanGroup, cli
    from paidan.cli_router import TICKET_COMMANDS, queue

    tickets = click.Group("tickets", commands={**cli.commands["tickets"].commands,
                                               **{c.name: c for c in TICKET_COMMANDS}})
    return PaidanGroup("paidan", commands={**cli.commands, "tickets": tickets, "queue": queue})


@pytest.fixture
def run(app, database_url, monkeypatch, tmp_path):
    return cli_invoker(app, database_url, monkeypatch, tmp_path, unset=("PAIDAN_AGENT",))


def test_every_router_command_has_help(app):
    for path in (["queue"], *[["tickets", c] for c in ("accept", "decline", "reply", "wait", "resolve", "reopen",
                                                     "assign", "relabel", "merge", "spam", "not-spam", "find", "remind",
                                                     "explain")]):
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output and len(result.output.splitlines()) > 3, path


def test_the_cli_works_a_ticket_from_offer_to_resolution(staff, run):
    now = datetime.now(UTC)
    number = new_ticket(staff, channel=Channel.EMAIL, at=now)
    name = holder(staff, number)
    out = run("tickets", "accept", number.lower(), "--as", name).output
    assert f"{name} accepted {number}" in out and "in_progress" in out
    out = run("tickets", "reply", number, "您好，已为您提交退款。", "--as", name).output
    assert "queued to the customer on email" in out
    run("tickets", "reply", number, "--note", "--as", name, input="客户很着急\n")
    data = json.loads(run("tickets", "relabel", number, "priority", "P1", "--as", name, "--json").output)
    assert data["data"]["to"] == "P1" and data["state"] == "in_progress"
    run("tickets", "wait", number, "--as", name, "--note", "bank details")
    out = run("tickets", "resolve", number, "--as", name, "--note", "refunded").output
    assert f"{number} resolved" in out
    out = run("tickets", "reopen", number, "--as", "Sue", "--reason", "refund bounced").output
    assert "reopened" in out
    texts = [m.text for m in _messages(staff, number) if m.direction == "out"]
    assert texts == ["您好，已为您提交退款。", "客户很着急"]


def test_the_cli_replies_with_files(staff, run, tmp_path):
    number, name = accepted(staff, channel=Channel.EMAIL)
    (tmp_path / "步骤.pdf").write_bytes(b"%PDF steps")
    out = run("tickets", "reply", number, "请看附件", "--file", str(tmp_path / "步骤.pdf"), "--as", name).output
    assert "queued to the customer on email" in out
    with Session(staff) as session:
        [item] = session.scalars(select(OutboxItem).where(OutboxItem.kind == "reply")).all()
    assert item.payload["attachments"][0] | {"id": 0} == {"id": 0, "filename": "步骤.pdf",
                                                          "content_type": "application/pdf", "size": 10}
    missing = run("tickets", "reply", number, "x", "--file", str(tmp_path / "nope.pdf"), "--as", name, ok=False)
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_the_cli_merges_one_customers_tickets(staff, run):
    keep, dup = two_tickets_of_one_customer(staff)
    out = run("tickets", "merge", dup, keep, "--as", "Sue", "--reason", "same order").output
    assert f"{dup} merged into {keep}: 1 message(s) moved; priority P2 → P1" in out
    assert f"act on {keep} instead" in run("tickets", "merge", dup, keep, "--as", "Sue", ok=False).output


def test_the_cli_assigns_and_declines(staff, run):
    number = new_ticket(staff, at=datetime.now(UTC))
    name = holder(staff, number)
    other = other_service_agent(name)
    out = run("tickets", "decline", number, "--as", name, "--reason", "busy").output
    assert f"{name} declined {number}; offered to {other}" in out
    out = run("tickets", "assign", number, name, "--as", "Sue", "--json").output
    assert json.loads(out)["agent"] == name
    assert "Cy lacks the skill" in run("tickets", "assign", number, "Cy", "--as", name, ok=False).output


def test_the_cli_queue_lists_waiting_tickets(staff, run):
    assert "the queue is empty" in run("queue").output
    number = new_ticket(staff, "嗯 lowconf", at=datetime.now(UTC))
    out = run("queue").output
    assert number in out and "triage" in out and "low classifier" in out
    assert [r["number"] for r in json.loads(run("queue", "--queue", "triage", "--json").output)] == [number]
    assert json.loads(run("queue", "--queue", "assignment", "--json").output) == []


@pytest.mark.parametrize("args,message", [
    (("tickets", "accept", "{number}", "--as", "mallory"), "no agent called 'mallory' (see `paidan agents list`)"),
    (("tickets", "resolve", "{number}", "--as", "Cy"), "you cannot resolve ticket {number}: it is held by"),
    (("tickets", "reply", "{number}", "", "--as", "{holder}"), "the reply is empty"),
    (("tickets", "relabel", "{number}", "priority", "P7", "--as", "{holder}"), "'P7' is not a priority label"),
    (("tickets", "accept", "GD20990101001", "--as", "Ann"), "no ticket 'GD20990101001'"),
    (("tickets", "explain", "GD20990101001"), "no ticket 'GD20990101001'"),
])
def test_cli_refusals_are_one_readable_line(staff, run, args, message):
    number = new_ticket(staff, at=datetime.now(UTC))
    fill = {"number": number, "holder": holder(staff, number)}
    result = run(*[a.format(**fill) for a in args], ok=False)
    assert result.exit_code == 1 and message.format(**fill) in result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_the_acting_agent_is_required(staff, run, monkeypatch):
    number = new_ticket(staff, at=datetime.now(UTC))
    result = run("tickets", "accept", number, ok=False)
    assert result.exit_code == 2 and "--as" in result.output
    monkeypatch.setenv("PAIDAN_AGENT", holder(staff, number))
    assert "accepted" in run("tickets", "accept", number).output


def _messages(engine, number) -> list[Message]:
    with Session(engine) as session:
        return session.scalars(select(Message).join(Ticket).where(Ticket.number == number).order_by(Message.id)).all()
