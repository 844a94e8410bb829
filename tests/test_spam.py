"""Spam: an agent closes a ticket as spam and its sender is blocked; what the sender writes next is
kept (stored once, on closed tickets) but never routed, acknowledged or assigned; "not spam" hands
everything kept back to the router. Through the Telegram console and the CLI, on a real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import KeywordClassifier, make_message
from models import Channel, Identity, IdentityKind, InboundMessage, Sender
from models.tables import Agent, Assignment, Customer, CustomerMerge, Message, OutboxItem, SlaClock, Ticket, TicketEvent
from paidan.db import transaction
from paidan.telegram_console import answer_agent
from router import actions, blocking
from router.agents import add_agent
from router.identity import merge_customers, unmerge
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
ANN, BO, SUE = 7001, 7002, 9001
SPAMMER, HONEST = 555, 556
AD = "加微信 spam88 领取优惠券 http://spam.example"  # inquiry/service/P3 for the keyword classifier


@pytest.fixture
def staff(engine):
    """Ann and Bo do service tickets (one place each, so who holds what is plain); Sue supervises."""
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], seniority=2, capacity=3, telegram_id=ANN).online = True
        add_agent(session, "Bo", skills=["service"], capacity=3, telegram_id=BO).online = True
        add_agent(session, "Sue", skills=["service"], role="supervisor", telegram_id=SUE)
    return engine


def write(engine, text: str = AD, *, who: int = SPAMMER, at: datetime = NOW, external_id: str | None = None,
          route: bool = True) -> str:
    msg = InboundMessage(channel=Channel.TELEGRAM, external_id=external_id or f"{who}:{uuid.uuid4().hex[:8]}",
                         text=text, received_at=at, raw=b"{}",
                         sender=Sender((Identity(IdentityKind.TELEGRAM, str(who)),), "王"))
    number = Intake(engine, clock=lambda: at).accept_now(msg).ticket_number
    if route:
        route_all(engine, at)
    return number


def route_all(engine, at: datetime = NOW) -> int:
    with transaction(engine) as session:
        return route_pending(session, KeywordClassifier(), CONFIG, at)


def say(engine, telegram_id: int, text: str, at: datetime = NOW) -> str:
    return answer_agent(engine, CONFIG, telegram_id, text, None, None, now=at).text


def ticket(engine, number: str) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def holder(engine, number: str) -> int | None:
    with Session(engine) as session:
        t = session.scalar(select(Ticket).where(Ticket.number == number))
        return session.get(Agent, t.assigned_agent_id).telegram_id if t.assigned_agent_id and not t.queue else None


def loads(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {a.name: a.load for a in session.scalars(select(Agent))}


def outbox(engine, kind: str, number: str) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).join(Ticket, Ticket.id == OutboxItem.ticket_id)
                               .where(OutboxItem.kind == kind, Ticket.number == number)).all()


def customer(engine, telegram_id: int = SPAMMER) -> Customer:
    from models.tables import Identity as IdentityRow

    with Session(engine, expire_on_commit=False) as session:
        owner = session.scalar(select(IdentityRow.customer_id).where(IdentityRow.value == str(telegram_id)))
        return session.get(Customer, owner)


def test_an_agent_closes_spam_and_the_sender_is_blocked_with_their_unanswered_tickets(staff):
    first = write(staff)
    second = write(staff, "转发本条消息抽奖赢手机，代理招募")
    answered = write(staff, "我要退款，订单 20261103884512")  # a real question, already answered below
    agent = holder(staff, answered)
    assert say(staff, agent, f"/accept {answered}").startswith(f"Ann accepted {answered}" if agent == ANN else f"Bo accepted {answered}")
    assert say(staff, agent, f"/reply {answered} 您好，已在处理").startswith(f"reply to {answered} queued")
    other = write(staff, "我要退款，订单 20261103884513", who=HONEST)
    assert {holder(staff, n) for n in (first, second, answered)} <= {ANN, BO}
    before = loads(staff)

    marker = holder(staff, first)  # offered to them, not yet accepted: theirs to judge
    said = say(staff, marker, f"/spam {first} 广告")
    assert said.startswith(f"{first} closed as spam; customer #{customer(staff).id} blocked: what they send now is "
                           f"kept closed and never answered; also closed {second} (nobody had answered them) "
                           f"(/notspam {first} undoes it)"), said
    for number in (first, second):
        t = ticket(staff, number)
        assert (t.state, "spam" in t.flags, t.queue, t.assigned_agent_id) == ("closed", True, None, None)
    assert ticket(staff, answered).state == "in_progress" and "spam" not in ticket(staff, answered).flags
    assert ticket(staff, other).state != "closed"
    blocked = customer(staff)
    assert (blocked.blocked_by, blocked.blocked_reason) == (("Ann" if marker == ANN else "Bo"), "广告")
    assert sum(loads(staff).values()) == sum(before.values()) - 2  # both spam tickets' places are free again
    with Session(staff) as session:
        running = session.scalar(select(func.count()).select_from(SlaClock).join(Ticket)
                                 .where(Ticket.number.in_((first, second)), SlaClock.stopped_at.is_(None)))
        reasons = session.scalars(select(TicketEvent.reason).join(Ticket).where(
            Ticket.number == second, TicketEvent.to_state == "closed")).all()
    assert running == 0
    assert reasons == [f"closed as spam with {first}: marked by {'Ann' if marker == ANN else 'Bo'}: 广告"]

    shown = say(staff, SUE, f"/show {second}")
    assert "🚫 customer blocked by" in shown and f"广告 (/notspam {second} lifts it)" in shown
    assert say(staff, SUE, f"/spam {second}").startswith(f"ticket {second} is already marked as spam")


def test_a_blocked_senders_messages_are_kept_once_and_never_routed_answered_or_assigned(staff):
    first = write(staff)
    answered = write(staff, "我要退款，订单 20261103884512")
    agent = holder(staff, answered)
    say(staff, agent, f"/accept {answered}")
    say(staff, agent, f"/reply {answered} 您好")
    say(staff, SUE, f"/spam {first}")
    outbox_before = _outbox_count(staff)

    later = NOW + timedelta(hours=2)
    again = write(staff, "加微信 spam88，新活动", at=later, external_id="555:again", route=False)
    assert write(staff, "加微信 spam88，新活动", at=later, external_id="555:again", route=False) == again  # once
    assert route_all(staff, later) == 0  # nothing for the router: the ticket opened closed
    t = ticket(staff, again)
    assert (t.state, t.flags, t.assigned_agent_id, t.priority) == ("closed", ["spam"], None, None)
    with Session(staff) as session:
        [kept] = session.scalars(select(Message).where(Message.ticket_id == t.id)).all()
        clocks = session.scalar(select(func.count()).select_from(SlaClock).where(SlaClock.ticket_id == t.id))
        offers = session.scalar(select(func.count()).select_from(Assignment).where(Assignment.ticket_id == t.id))
        [created] = session.scalars(select(TicketEvent.reason).where(TicketEvent.ticket_id == t.id)).all()
    assert (kept.text, kept.flags, clocks, offers) == ("加微信 spam88，新活动", ["blocked"], 0, 0)
    assert created == "message from a blocked customer on telegram: kept closed, nothing sent"
    assert _outbox_count(staff) == outbox_before  # no acknowledgement, no offer, no notice

    # On the answered ticket (a reply by topic): stored there, the ticket and its agent left alone.
    routed_at = ticket(staff, answered).routed_at
    write(staff, "我要退款，订单 20261103884512 还没到", at=later, route=False)
    assert route_all(staff, later) == 0
    assert ticket(staff, answered).routed_at == routed_at and ticket(staff, answered).state == "in_progress"
    assert _outbox_count(staff) == outbox_before


def test_not_spam_unblocks_and_hands_everything_kept_to_the_router(staff):
    first = write(staff)
    answered = write(staff, "我要退款，订单 20261103884512")
    agent = holder(staff, answered)
    say(staff, agent, f"/accept {answered}")
    say(staff, agent, f"/reply {answered} 您好")
    marker = holder(staff, first)
    say(staff, marker, f"/spam {first}")
    later = NOW + timedelta(minutes=30)
    kept = write(staff, "你好，我想咨询会员卡积分怎么兑换", at=later, route=False)
    write(staff, "我要退款，订单 20261103884512 还没到", at=later, route=False)  # onto the answered ticket

    other = next(a for a in (ANN, BO) if a != marker)
    assert say(staff, other, f"/notspam {first}", at=later) == (
        f"only a supervisor or the agent who marked {first} as spam can undo it")
    said = say(staff, marker, f"/notspam {first} 客户来电说明", at=later)
    assert said.startswith(f"customer #{customer(staff).id} unblocked; reopened {first}, {kept} for the router to "
                           f"assign; messages kept meanwhile on {answered} go to their agents"), said
    assert customer(staff).blocked_at is None

    assert route_all(staff, later) == 3
    for number in (first, kept):
        t = ticket(staff, number)
        assert "spam" not in t.flags and t.state in ("assigned", "reopened") and t.priority == "P3", (number, t.state)
        assert holder(staff, number) in (ANN, BO) or t.queue == "assignment"
    assert len(outbox(staff, "ack", kept)) == 1  # acknowledged now, as if it had just arrived
    assert len(outbox(staff, "ack", first)) == 1  # the first acknowledgement only: not twice
    with Session(staff) as session:
        notices = session.scalars(select(OutboxItem).join(Ticket, Ticket.id == OutboxItem.ticket_id).where(
            Ticket.number == answered, OutboxItem.kind == "customer_message")).all()
    assert any("the customer wrote again" in (n.payload.get("text") or "") for n in notices)

    assert say(staff, SUE, f"/notspam {answered}", at=later).startswith(
        f"ticket {answered} is not marked as spam and its customer is not blocked")


def test_who_may_mark_spam(staff):
    first = write(staff)
    marker = holder(staff, first)
    other = next(a for a in (ANN, BO) if a != marker)
    refused = say(staff, other, f"/spam {first}")
    assert refused.startswith(f"you cannot mark as spam ticket {first}: it is held by"), refused
    assert ticket(staff, first).state == "assigned" and customer(staff).blocked_at is None
    assert say(staff, SUE, f"/spam {first}").startswith(f"{first} closed as spam")
    assert "/spam GD… [原因] 垃圾信息" in say(staff, ANN, "/help")
    assert say(staff, ANN, "/spam").startswith("/spam needs a ticket number: /spam GD20261123001")


def test_a_merge_with_a_blocked_customer_keeps_the_block(staff):
    """A spammer writing from a new address that also names a blocked one cannot shed the block: the
    block belongs to the person, and the customer the two merge into carries it."""
    clean = Intake(staff, clock=lambda: NOW).accept_now(make_message(email="clean@example.com", text="在吗"))
    spam = Intake(staff, clock=lambda: NOW).accept_now(make_message(email=None, phone="+8613800138000", text=AD))
    route_all(staff)
    with transaction(staff) as session:
        actions.mark_spam(session, spam.ticket_number, "Sue", CONFIG, NOW)
    both = Intake(staff, clock=lambda: NOW).accept_now(
        make_message(email="clean@example.com", phone="+8613800138000", text=AD + " again"))
    assert route_all(staff) == 0  # held back, though it continues the clean customer's open ticket
    assert both.ticket_number == clean.ticket_number and ticket(staff, clean.ticket_number).state == "assigned"
    owner = ticket(staff, both.ticket_number).customer_id
    with Session(staff) as session:
        kept = session.get(Message, both.message_id)
        survivor = session.get(Customer, owner)
        assert kept.flags == ["blocked"] and kept.model_version is None
        assert survivor.blocked_at is not None and survivor.merged_into_id is None
        assert survivor.blocked_reason == "merged with blocked customer #2: GD20261124002 marked as spam"
        merge_id = session.scalar(select(CustomerMerge.id).where(CustomerMerge.target_id == owner))

    # Undoing the merge says they were two people after all: the block the merge copied goes with it,
    # and what the clean customer sent meanwhile reaches their ticket's agent; the spammer stays blocked.
    later = NOW + timedelta(hours=1)
    with transaction(staff) as session:
        unmerge(session, merge_id, actor="Sue", now=later)
    assert route_all(staff, later) == 1
    with Session(staff) as session:
        survivor, spammer = session.get(Customer, owner), session.get(Customer, 2)
        assert survivor.blocked_at is None and survivor.blocked_reason is None
        assert spammer.blocked_at is not None and spammer.merged_into_id is None
        assert session.get(Message, both.message_id).model_version is not None  # read by the router now
        event = session.scalars(select(TicketEvent).where(TicketEvent.kind == "not_spam")).one()
        assert event.reason.startswith(f"customer #{owner} unblocked: merge #{merge_id} of customer #2 into "
                                       f"#{owner} undone; the block came with it")


def test_undoing_a_merge_keeps_a_block_set_on_the_customer_itself(staff):
    one = Intake(staff, clock=lambda: NOW).accept_now(make_message(email="one@example.com", text="在吗"))
    two = Intake(staff, clock=lambda: NOW).accept_now(make_message(email="two@example.com", text=AD))
    route_all(staff)
    with transaction(staff) as session:
        source, target = (session.scalar(select(Ticket.customer_id).where(Ticket.number == n))
                          for n in (two.ticket_number, one.ticket_number))
        blocking.block(session, session.get(Customer, source), by="Sue", reason="ads", now=NOW)
        merge = merge_customers(session, source, target, evidence="same shop", actor="Sue", now=NOW, force=True)
        target_row = session.get(Customer, target)
        assert target_row.blocked_reason == f"merged with blocked customer #{source}: ads"
        # Blocked anew on its own account after the merge: that block is the target's, not the merge's.
        blocking.unblock(session, target_row)
        blocking.block(session, target_row, by="Ann", reason="abuse", now=NOW)
        unmerge(session, merge.id, actor="Sue", now=NOW)
        assert session.get(Customer, target).blocked_reason == "abuse"


def test_the_cli_says_when_undoing_a_merge_lifts_the_block_it_brought(staff, database_url, monkeypatch, tmp_path):
    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    one = Intake(staff, clock=lambda: NOW).accept_now(make_message(email="one@example.com", text="在吗"))
    two = Intake(staff, clock=lambda: NOW).accept_now(make_message(email="two@example.com", text=AD))
    with transaction(staff) as session:
        source, target = (session.scalar(select(Ticket.customer_id).where(Ticket.number == n))
                          for n in (two.ticket_number, one.ticket_number))
        blocking.block(session, session.get(Customer, source), by="Sue", reason="ads", now=NOW)
        merge = merge_customers(session, source, target, evidence="same shop", actor="Sue", now=NOW, force=True)
    result = CliRunner().invoke(cli, ["customers", "unmerge", str(merge.id), "--actor", "Sue"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"; #{target} was blocked only by the merge and is unblocked")
    with Session(staff) as session:
        assert session.get(Customer, target).blocked_at is None and session.get(Customer, source).blocked_at is not None


def test_the_cli_blocks_and_unblocks_customers_and_marks_tickets(staff, database_url, monkeypatch, tmp_path):
    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.delenv("PAIDAN_AGENT", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    for path in (["tickets", "spam"], ["tickets", "not-spam"], ["customers", "block"], ["customers", "unblock"]):
        assert "Usage:" in run(*path, "--help")
    first = write(staff)
    number = write(staff, "转发本条消息抽奖赢手机，代理招募")
    out = run("customers", "block", "telegram:555", "--reason", "每小时发广告", "--as", "Sue")
    assert out.startswith(f"customer #{customer(staff).id} blocked: what they send now is kept closed and never "
                          f"answered; closed {first}, {number} (nobody had answered them)"), out
    assert "already blocked" in run("customers", "block", "telegram:555", "--reason", "x", ok=False)
    shown = run("customers", "show", "telegram:555")
    assert "🚫 blocked by Sue at" in shown and "每小时发广告" in shown
    out = run("customers", "unblock", "telegram:555", "--as", "Sue")
    assert out.startswith(f"customer #{customer(staff).id} unblocked; reopened {first}, {number} for the router"), out
    assert "is not blocked" in run("customers", "unblock", "telegram:555", ok=False)
    assert route_all(staff) == 2

    out = run("tickets", "spam", first, "--as", "Sue", "--reason", "广告")
    assert out.startswith(f"{first} closed as spam;") and "state: closed" in out
    out = run("tickets", "not-spam", first, "--as", "Ann", ok=False)
    assert "only a supervisor or the agent who marked" in out
    out = run("tickets", "not-spam", first, "--as", "Sue")
    assert out.startswith(f"customer #{customer(staff).id} unblocked; reopened {first}"), out


def _outbox_count(engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(OutboxItem))


def test_nothing_automatic_goes_back_to_a_blocked_sender(staff):
    """Agents may still write to them; but no survey when their answered ticket is resolved, and no
    reminder when it waits on them."""
    from router.waiting import remind

    answered = write(staff, "我要退款，订单 20261103884512")
    agent = holder(staff, answered)
    say(staff, agent, f"/accept {answered}")
    say(staff, agent, f"/reply {answered} 您好")
    say(staff, agent, f"/wait {answered}")
    say(staff, SUE, f"/spam {write(staff)}")  # a second ticket of theirs: spam, and they are blocked
    with transaction(staff) as session:
        assert remind(session, CONFIG, NOW + timedelta(days=4)) == 0
    assert say(staff, agent, f"/resolve {answered}").startswith(f"{answered} resolved")
    assert outbox(staff, "survey", answered) == [] and outbox(staff, "reminder", answered) == []


def test_a_block_is_in_the_persons_export_and_its_reason_goes_with_a_forget(staff):
    from router.privacy import export_customer, forget_customer

    first = write(staff)
    say(staff, SUE, f"/spam {first} 每小时发广告 spam88")
    person = customer(staff).id
    with Session(staff) as session:
        exported = export_customer(session, person, now=NOW)["customers"][0]
    assert exported["blocked_at"] == NOW.isoformat() and exported["blocked_reason"] == "每小时发广告 spam88"
    with transaction(staff) as session:
        forget_customer(session, person, actor="cli", reason="erasure request", now=NOW)
    with Session(staff) as session:
        forgotten = session.get(Customer, person)
        assert (forgotten.blocked_reason, forgotten.blocked_at is not None) == ("[erased]", True)
