"""An agent writes to a customer first (router/outreach.py): the ticket it opens, the mail a real SMTP
relay is handed, the customer's answer threading back through intake and routing, the report, the
Telegram console and the CLI."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.email.parse import parse_email
from connectors.telegram.console import ConsoleCommand, ConsoleMistake, parse_console
from factories import KeywordClassifier, make_message
from models import Channel, Identity as ModelIdentity, IdentityKind, Sender
from models.errors import ActionRefused, InvalidInput, NotFound
from models.tables import Agent, Assignment, Customer, Identity, OutboxItem, SlaClock, Ticket, TicketEvent
from paidan.db import transaction
from paidan.telegram_console import answer_agent
from router import outreach
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.reports import build_report
from router.routing import route_pending
import test_email_send

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
relay = test_email_send.relay  # the fixture: a recording aiosmtpd relay on 127.0.0.1, port 0
deliver = test_email_send.deliver
ANN_TG = 7001
TEXT = "李先生您好，您 11 月 23 日的订单 1234567890 付款未成功，款项已原路退回。如需重新下单请回复本邮件。"


@pytest.fixture
def desk(engine):
    with transaction(engine) as session:
        ann = add_agent(session, "Ann", skills=["service", "transaction", "zh"], capacity=3)
        ann.online, ann.telegram_id = True, ANN_TG
    return engine


def open_for(engine, to: str, text: str = TEXT, at: datetime = NOW, **kwargs):
    with transaction(engine) as session:
        return outreach.open_ticket(session, to, "Ann", CONFIG, at, text=text, **kwargs)


def ticket(engine, number: str) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def test_writing_first_by_email_opens_a_ticket_that_the_customers_answer_continues(desk, relay):
    outcome = open_for(desk, "Li.Xiansheng@Kehu.example.com", subject="订单付款未成功", name="李先生")

    number = outcome.ticket
    assert (outcome.state, outcome.agent) == ("awaiting_customer", "Ann")
    assert outcome.summary.startswith(f"{number} opened for customer #")
    opened = ticket(desk, number)
    assert (opened.flags, opened.channel, opened.language, opened.subject) == (["outbound"], "email", "zh", "订单付款未成功")
    assert opened.first_response_at == NOW and opened.routed_at == NOW
    with Session(desk) as session:
        customer = session.get(Customer, opened.customer_id)
        assert customer.display_name == "李先生"
        assert [(i.kind, i.value) for i in session.scalars(select(Identity).where(Identity.customer_id == customer.id))] \
            == [("email", "li.xiansheng@kehu.example.com")]
        assert session.scalar(select(Agent.load).where(Agent.name == "Ann")) == 1
        [offer] = session.scalars(select(Assignment).where(Assignment.ticket_id == opened.id)).all()
        assert offer.accepted_at == NOW and offer.ended_at is None
        # The agent is the one acting: no offer notice goes to them. No first-response clock (we wrote
        # first), and the resolution clock waits, paused, for the customer's answer.
        assert [i.kind for i in session.scalars(select(OutboxItem))] == ["reply"]
        [clock] = session.scalars(select(SlaClock)).all()
        assert (clock.kind, clock.started_at, clock.paused_since) == ("resolution", NOW, NOW)

    deliver(desk, relay.port, NOW + timedelta(seconds=5))
    [mail] = relay.accepted
    assert mail["To"] == "li.xiansheng@kehu.example.com"
    assert str(mail["Subject"]) == f"订单付款未成功 [{number}]"  # we wrote first: no "Re:"
    assert mail["In-Reply-To"] is None and mail["Auto-Submitted"] is None
    assert "款项已原路退回" in mail.get_body(("plain",)).get_content()

    answer = (f"From: 李先生 <li.xiansheng@kehu.example.com>\r\nTo: support@example.com\r\n"
              f"Subject: Re: 订单付款未成功 [{number}]\r\nIn-Reply-To: {mail['Message-ID']}\r\n"
              f"Message-ID: <answer1@kehu.example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
              f"钱还没有退回来，退款什么时候到账？\r\n").encode()
    later = NOW + timedelta(hours=3)
    receipt = Intake(desk, clock=lambda: later).accept_now(parse_email(answer, received_at=later))
    assert receipt.ticket_number == number and not receipt.new_ticket
    with transaction(desk) as session:
        route_pending(session, KeywordClassifier(), CONFIG, later)
    answered = ticket(desk, number)
    assert answered.state == "in_progress" and answered.assigned_agent_id is not None
    # Opened without labels: the customer's answer is what the classifier reads first.
    assert (answered.type, answered.category, answered.priority) == ("request", "service", "P2")
    with Session(desk) as session:
        told = session.scalars(select(OutboxItem).where(OutboxItem.kind == "customer_message")).all()
        assert [(i.channel, i.recipient) for i in told] == [("telegram", f"telegram:{ANN_TG}")]
        event = session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == answered.id,
                                                          TicketEvent.kind == "classified")).one()
        assert event.reason.startswith("labelled from the customer's answer: type request")
        # The resolution clock runs from the answer, with the priority the answer gave (P2: 27 business hours).
        [clock] = session.scalars(select(SlaClock)).all()
        assert (clock.priority, clock.paused_since, clock.stopped_at) == ("P2", None, None)
        assert clock.resumed_at == later and clock.consumed_seconds == 0

    # Reports count it apart from the customers' own contacts, and not in the response times.
    with Session(desk) as session:
        report = build_report(session, since=NOW - timedelta(days=1), until=NOW + timedelta(days=1), now=later,
                              timezone="Asia/Shanghai")
    assert (report.created, report.opened_by_agents, report.first_response) == (0, 1, {})


def test_labels_given_when_opening_stay_when_the_customer_answers(desk):
    number = open_for(desk, "buyer@kehu.example.com", labels={"type": "Request", "category": "", "priority": "p1"}).ticket
    opened = ticket(desk, number)
    assert (opened.type, opened.category, opened.priority) == ("request", None, "P1")
    later = NOW + timedelta(hours=1)
    Intake(desk, clock=lambda: later).accept_now(make_message(
        email="buyer@kehu.example.com", text=f"{number} 钱还没有退回来", received_at=later))
    with transaction(desk) as session:
        route_pending(session, KeywordClassifier(), CONFIG, later)
    answered = ticket(desk, number)
    assert (answered.type, answered.category, answered.priority) == ("request", "service", "P1")


def test_writing_first_on_telegram_to_someone_who_wrote_to_the_bot(desk):
    hello = make_message(channel=Channel.TELEGRAM, text="你好")
    Intake(desk, clock=lambda: NOW).accept_now(
        dataclasses.replace(hello, sender=Sender((ModelIdentity(IdentityKind.TELEGRAM, "55501"),), "王五")))
    known = "55501"
    outcome = open_for(desk, f"telegram:{known}", text="您好，您的包裹已到驿站")
    # They still have the ticket their "你好" opened: the agent hears of it.
    assert outcome.data["warning"] == (f"customer #1 also has open ticket(s) GD20261124001; if it is the same "
                                       f"matter, /merge {outcome.ticket} GD20261124001")
    with Session(desk) as session:
        [item] = session.scalars(select(OutboxItem).where(OutboxItem.kind == "reply")).all()
        assert (item.channel, item.recipient, item.payload["text"]) == ("telegram", known, "您好，您的包裹已到驿站")
    assert ticket(desk, outcome.ticket).channel == "telegram"


def test_what_cannot_be_written_to_is_refused_and_nothing_is_kept(desk):
    Intake(desk, clock=lambda: NOW).accept_now(make_message(email=None, phone="+8613800138000", text="回电"))
    cases = [
        ("+8613911112222", "", NotFound, "no customer is known by phone:+8613911112222; we can write first only"),
        ("+8613800138000", "", ActionRefused, "has no email or telegram to write to (they have phone)"),
        ("a@kehu.example.com", "   ", ActionRefused, "the message is empty"),
        ("#999", "", NotFound, "no customer #999"),
    ]
    for to, text, error, words in cases:
        with pytest.raises(error, match=None) as raised:
            open_for(desk, to, text=text or TEXT)
        assert words in str(raised.value), (to, str(raised.value))
    with pytest.raises(InvalidInput, match="'P9' is not a priority"):
        open_for(desk, "a@kehu.example.com", labels={"priority": "P9"})
    with pytest.raises(InvalidInput, match="'sms' is not a channel"):
        open_for(desk, "a@kehu.example.com", via="sms")
    with Session(desk) as session:
        assert session.scalars(select(Ticket).where(Ticket.flags.is_not(None))).all() != []  # the phone call's
        assert session.scalar(select(Identity).where(Identity.value == "a@kehu.example.com")) is None


def test_an_agent_at_capacity_cannot_open_more(desk):
    for n in range(3):
        open_for(desk, f"c{n}@kehu.example.com")
    with pytest.raises(ActionRefused, match=r"Ann is at capacity \(3/3 open tickets\)"):
        open_for(desk, "c3@kehu.example.com")
    with Session(desk) as session:
        assert session.scalar(select(Identity).where(Identity.value == "c3@kehu.example.com")) is None


def test_the_console_reads_and_runs_open(desk):
    assert parse_console("/open kehu@example.com 您好 请查收") == ConsoleCommand(
        "open", to="kehu@example.com", text="您好 请查收")
    assert isinstance(parse_console("/open kehu@example.com"), ConsoleMistake)
    mistake = parse_console("/open GD20261123001 您好")
    assert isinstance(mistake, ConsoleMistake) and "/reply GD20261123001" in mistake.message

    answer = answer_agent(desk, CONFIG, ANN_TG, "/open new@kehu.example.com 您好，发票已开好", None, None, now=NOW,
                          once="update:1").text
    assert " opened for customer #" in answer and "state: awaiting_customer" in answer, answer
    again = answer_agent(desk, CONFIG, ANN_TG, "/open new@kehu.example.com 您好，发票已开好", None, None, now=NOW,
                         once="update:1").text
    assert again.startswith("already done"), again  # Telegram delivered the update twice: one ticket
    with Session(desk) as session:
        assert len(session.scalars(select(Ticket)).all()) == 1
    assert "/open" in answer_agent(desk, CONFIG, ANN_TG, "/help", None, None, now=NOW).text


def test_the_cli_opens_a_ticket(desk, database_url, monkeypatch, tmp_path):
    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tickets", "open", "cli@kehu.example.com", "--as", "Ann", "--priority", "P2",
                                      "--json"], input="您好，\n您申请的发票已寄出。\n", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["action"], data["state"], data["agent"], data["data"]["priority"]) == (
        "open", "awaiting_customer", "Ann", "P2")
    assert ticket(desk, data["ticket"]).subject == "您好，"  # the first line, when no --subject
    refused = CliRunner().invoke(cli, ["tickets", "open", "+8613900000000", "hi", "--as", "Ann"])
    assert refused.exit_code == 1 and "we can write first only to an email address" in refused.output
    assert "Open a ticket by writing to CUSTOMER first" in CliRunner().invoke(cli, ["tickets", "open", "--help"]).output


def test_an_answer_that_names_no_ticket_continues_the_one_we_wrote_first(desk):
    """On Telegram nothing carries a ticket number back: the customer's first words after ours are
    their answer, unless they are plainly about another open ticket of theirs."""
    other = Intake(desk, clock=lambda: NOW).accept_now(make_message(
        email="x@kehu.example.com", text="发票抬头写错了，请帮我重开发票", received_at=NOW))
    number = open_for(desk, "x@kehu.example.com", text="您好，您的退货已签收，退款三天内到账").ticket
    assert number != other.ticket_number
    later = NOW + timedelta(hours=1)
    topical = Intake(desk, clock=lambda: later).accept_now(make_message(
        email="x@kehu.example.com", text="发票抬头应该是 某某科技有限公司", received_at=later))
    assert topical.ticket_number == other.ticket_number  # about the invoice: the invoice's ticket
    answer = Intake(desk, clock=lambda: later).accept_now(make_message(
        email="x@kehu.example.com", text="我的银行卡是工商银行尾号 8899", received_at=later))
    assert answer.ticket_number == number
    with Session(desk) as session:
        event = session.scalars(select(TicketEvent).where(TicketEvent.kind == "message_added")
                                .order_by(TicketEvent.id.desc())).first()
        assert event is None or "first answer" in event.reason


# ---------------------------------------------------------------- asking a colleague in a note


def test_mentioned_reads_names_as_agents_write_them():
    from router.actions import mentioned

    names = ["李雷", "Ann", "Anna", "Bob", "王芳"]
    assert mentioned("@李雷帮忙看看 请@王芳 也看一下", names) == ["李雷", "王芳"]  # Chinese needs no space after
    assert mentioned("@Anna, @Ann: same refund? @Bob_x", names) == ["Anna", "Ann"]  # not Bob: "Bob_x" is longer
    assert mentioned("mail kehu@Ann.example.com or @nobody", names) == []  # an address names no one


def test_a_note_that_asks_a_colleague_reaches_them_in_telegram(desk):
    from connectors.telegram.send import build_telegram

    with transaction(desk) as session:
        add_agent(session, "王芳", skills=["service"], capacity=3).telegram_id = 7002
    number = open_for(desk, "x@kehu.example.com").ticket
    answer = answer_agent(desk, CONFIG, ANN_TG, f"/note {number} @王芳 这位客户上个月也退过款，你经手过吗？", None, None,
                          now=NOW, once="update:31").text
    assert answer.startswith(f"note added to {number} (the customer does not see it); 王芳 told"), answer
    with Session(desk) as session:
        [notice] = session.scalars(select(OutboxItem).where(OutboxItem.kind == "mention")).all()
        assert notice.recipient == "telegram:7002"
        sent = build_telegram(notice)
    assert sent.text.startswith(f"📝 {number} · a colleague asks you in a note")
    assert "Ann: @王芳 这位客户上个月也退过款，你经手过吗？" in sent.text and f"/note {number} @name" in sent.text
    # The author is not told of their own note, and a note naming nobody tells nobody.
    answer_agent(desk, CONFIG, ANN_TG, f"/note {number} @Ann 自己记一下", None, None, now=NOW, once="update:32")
    with Session(desk) as session:
        assert session.scalar(select(func.count()).select_from(OutboxItem).where(OutboxItem.kind == "mention")) == 1


def test_an_answer_after_the_ticket_was_resolved_for_silence_reopens_it_with_a_fresh_clock(desk):
    from router import waiting

    number = open_for(desk, "late@kehu.example.com", labels={"priority": "P1"}).ticket
    with transaction(desk) as session:  # reminded after 3 quiet days, resolved after 7
        waiting.remind_and_resolve(session, CONFIG, NOW + timedelta(days=3, minutes=1))
        waiting.remind_and_resolve(session, CONFIG, NOW + timedelta(days=7, minutes=2))
    assert ticket(desk, number).state == "resolved"
    later = NOW + timedelta(days=9)
    Intake(desk, clock=lambda: later).accept_now(make_message(
        email="late@kehu.example.com", text="抱歉才看到，钱还没到", received_at=later, channel=Channel.EMAIL))
    with transaction(desk) as session:
        route_pending(session, KeywordClassifier(), CONFIG, later)
    assert ticket(desk, number).state == "reopened"
    with Session(desk) as session:
        [clock] = session.scalars(select(SlaClock)).all()
        # Nine days went by, but the clock counts only what followed the customer's answer: not breached.
        assert clock.breached_at is None and clock.stopped_at is None and clock.paused_since is None
        assert clock.due_at == later + timedelta(hours=24)  # P1: 24 hours, around the clock
