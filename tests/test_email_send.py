"""Delivering the outbox's email (router.delivery + connectors.email.send) to a real SMTP relay.

The relay is aiosmtpd on 127.0.0.1, port 0, in its own thread; it records what it is handed and can
be told to answer 451 or 550. Outbox rows come from the real code paths: intake and routing queue
the acknowledgement, `actions.reply` queues an agent's reply, `outbox.enqueue` the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import partial

import pytest
from aiosmtpd.smtp import SMTP
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.email.send import RelayConfig, SmtpSender, build_email, build_outbox_email
from connectors.outbox import DeliveryReport, PermanentFailure, TemporaryFailure, deliver_due
from factories import KeywordClassifier, make_message
from models import Attachment, Channel
from models.errors import ActionRefused
from models.tables import OutboxItem, Ticket, TicketEvent
from paidan.db import transaction
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.delivery import attachment_file, claim_due, mark_failed, mark_sent, retry_delay
from router.intake import Intake
from router.outbox import enqueue
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
CONFIG = RouterConfig()
LEASE = timedelta(minutes=5)
CUSTOMER = "kehu@example.com"


# ---------------------------------------------------------------- the relay


@dataclass
class Handed:
    """One message the relay was handed, and what it answered."""

    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    answer: str


@dataclass
class RecordingRelay:
    """aiosmtpd handler: records every message; answers a given reply line for given recipients."""

    port: int = 0
    handed: list[Handed] = field(default_factory=list)
    refuse_at_rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> reply line
    refuse_at_data: dict[str, str] = field(default_factory=dict)  # after the whole message came: "uncertain"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_at_rcpt:
            return self.refuse_at_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        answer = next((self.refuse_at_data[r] for r in envelope.rcpt_tos if r in self.refuse_at_data), "250 OK queued")
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        self.handed.append(Handed(tuple(envelope.rcpt_tos), message, answer))
        return answer

    @property
    def accepted(self) -> list[EmailMessage]:
        return [h.message for h in self.handed if h.answer.startswith("250")]


@pytest.fixture
def relay():
    handler = RecordingRelay()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-relay", daemon=True)
    thread.start()
    # Not aiosmtpd's Controller: Controller(port=0) cannot start (aio-libs/aiosmtpd#388).
    server = asyncio.run_coroutine_threadsafe(
        loop.create_server(lambda: SMTP(handler, hostname="relay.test"), "127.0.0.1", 0), loop).result(5)
    handler.port = server.sockets[0].getsockname()[1]
    yield handler
    server.close()
    asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def unsigned(mail: EmailMessage) -> str:
    """A reply's words, without the agent's signature (from the "-- " line on)."""
    return mail.get_body(("plain",)).get_content().replace("\r\n", "\n").split("\n-- \n")[0].strip()


def relay_config(port: int) -> RelayConfig:
    return RelayConfig(host="127.0.0.1", port=port, from_address="support@example.com", from_name="客服中心",
                       starttls=False, timeout=5)


def deliver(engine, port: int, at: datetime) -> DeliveryReport:
    """One pass of the email sender, wired as the service wires it."""
    config = relay_config(port)
    return deliver_due(claim=partial(claim_due, engine, "email", lease=LEASE),
                       build=partial(build_outbox_email, config=config, load_file=partial(attachment_file, engine)),
                       send=SmtpSender(config).send,
                       mark_sent=partial(mark_sent, engine), mark_failed=partial(mark_failed, engine), now=at)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- outbox rows


def new_email_ticket(engine, *, email: str = CUSTOMER, subject: str = "退款申请", message_id: str = "<q1@kehu.example.com>",
                     text: str = "我要退款，订单 20261103884512") -> str:
    """A ticket from an email, routed: its acknowledgement is in the outbox."""
    receipt = Intake(engine, clock=lambda: NOW).accept_now(make_message(
        channel=Channel.EMAIL, email=email, subject=subject, text=text, message_id=message_id, received_at=NOW))
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
    return receipt.ticket_number


def queue(engine, *, channel: str = "email", kind: str = "ack", at: datetime = NOW, key: str | None = None) -> int:
    with transaction(engine) as session:
        return enqueue(session, kind=kind, channel=channel, recipient=CUSTOMER, now=at, dedupe_key=key,
                       payload={"ticket": "GD20261124001", "subject": "退款", "language": "zh"}).id


def row(engine, item_id: int) -> OutboxItem:
    with Session(engine) as session:
        return session.get(OutboxItem, item_id)


def outbox(engine, kind: str) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == kind).order_by(OutboxItem.id)).all()


def events(engine, number: str, kind: str) -> list[TicketEvent]:
    with Session(engine) as session:
        return session.scalars(select(TicketEvent).join(Ticket).where(Ticket.number == number, TicketEvent.kind == kind)
                               ).all()


# ---------------------------------------------------------------- end to end through the relay


def test_an_agents_reply_reaches_the_relay_threaded_with_its_chinese_subject_and_body_intact(engine, relay):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction"], capacity=5).online = True
    number = new_email_ticket(engine, message_id="<abc@kehu.example.com>")
    with Session(engine) as session:
        holder = session.scalar(select(Ticket).where(Ticket.number == number)).assigned_agent.name
    text = "您好，退款已提交，3 个工作日内到账。\n如有疑问请直接回复。"
    with transaction(engine) as session:
        actions.reply(session, number, holder, text, CONFIG, NOW + timedelta(minutes=20))
    [item] = outbox(engine, "reply")

    report = deliver(engine, relay.port, NOW + timedelta(minutes=21))

    assert report == DeliveryReport(sent=2)  # the acknowledgement and the reply
    reply = next(m for m in relay.accepted if m["Message-ID"] == item.payload["message_id"])
    assert reply["In-Reply-To"] == "<abc@kehu.example.com>"
    assert reply["References"] == "<abc@kehu.example.com>"
    assert str(reply["Subject"]) == item.payload["subject"] == f"Re: 退款申请 [{number}]"
    # On the wire, lines end in CRLF and MIME ends the text with a line break; the words are untouched,
    # then the agent's signature after the "-- " line mail clients know.
    assert reply.get_content().replace("\r\n", "\n") == text + "\n\n-- \nAnn\n客服中心\n"
    assert reply.get_content_charset() == "utf-8"
    assert (reply["To"], reply["From"].addresses[0].display_name) == (CUSTOMER, "客服中心")
    assert reply["Auto-Submitted"] is None  # a human wrote it
    assert reply["Date"].datetime == item.created_at
    sent = row(engine, item.id)
    assert (sent.status, sent.sent_at, sent.attempts, sent.last_error) == ("sent", NOW + timedelta(minutes=21), 1, None)
    assert deliver(engine, relay.port, NOW + timedelta(hours=2)) == DeliveryReport()  # nothing twice


def test_an_agents_reply_copies_whom_the_customer_wrote_to_but_never_our_own_addresses(engine, relay):
    from connectors.email.parse import parse_email

    raw = (f"From: 王芳 <{CUSTOMER}>\r\nTo: support@example.com, 同事 <tongshi@kehu.example.com>\r\n"
           f"Cc: 财务 <caiwu@kehu.example.com>, {CUSTOMER.upper()}, help@example.com,\r\n"
           f" Boss <boss@kehu.example.com>, not-an-address\r\n"
           f"Subject: 发票\r\nMessage-ID: <cc1@kehu.example.com>\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n发票抬头写错了\r\n").encode()
    parsed = parse_email(raw, received_at=NOW)
    # To, then Cc, each once, not the sender; our own addresses are left out when the reply is built
    assert parsed.cc == ("support@example.com", "tongshi@kehu.example.com", "caiwu@kehu.example.com",
                         "help@example.com", "boss@kehu.example.com")
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction"], capacity=5).online = True
    number = Intake(engine, clock=lambda: NOW).accept_now(parsed).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
    with transaction(engine) as session:
        holder = session.scalar(select(Ticket).where(Ticket.number == number)).assigned_agent.name
        actions.reply(session, number, holder, "已重开发票", CONFIG, NOW + timedelta(minutes=5))

    deliver(engine, relay.port, NOW + timedelta(minutes=6))
    [reply] = [h for h in relay.handed if h.message["Subject"].startswith("Re:")]
    # help@example.com is at our own domain (an alias of ours): copying it would feed the reply back to us.
    assert reply.message["Cc"] == "tongshi@kehu.example.com, caiwu@kehu.example.com, boss@kehu.example.com"
    assert sorted(reply.rcpt_tos) == sorted([CUSTOMER, "tongshi@kehu.example.com", "caiwu@kehu.example.com",
                                             "boss@kehu.example.com"])
    [ack] = [h for h in relay.handed if h is not reply]
    assert ack.message["Cc"] is None and ack.rcpt_tos == (CUSTOMER,)  # acknowledgements go to the customer only


def test_a_reply_never_copies_a_mailing_list_nor_any_of_our_domains():
    from connectors.email.parse import parse_email
    from connectors.email.send import copied

    raw = (b"From: Gao <gao@kernel.example.org>\r\nTo: linux-erofs@lists.example.org\r\n"
           b"Cc: support@brand-b.example.net, Yue <yue@kernel.example.org>\r\n"
           b"List-Id: <linux-erofs.lists.example.org>\r\n"
           b"List-Post: <mailto:Linux-Erofs@lists.example.org>\r\n"
           b"Subject: mount fails\r\nMessage-ID: <l1@kernel.example.org>\r\n\r\nmount fails since 6.1\r\n")
    parsed = parse_email(raw, received_at=NOW)
    # Answering the author must not post to the public list (its List-Post address, any case).
    assert parsed.cc == ("support@brand-b.example.net", "yue@kernel.example.org")
    # brand-b is one of the domains our SMTP server takes mail for: copying it would mail ourselves.
    assert copied(parsed.cc, "gao@kernel.example.org", "support@example.com", ("brand-b.example.net",)) == [
        "yue@kernel.example.org"]
    assert copied(parsed.cc, "gao@kernel.example.org", "support@example.com") == [
        "support@brand-b.example.net", "yue@kernel.example.org"]


def test_a_desk_may_leave_its_agents_names_out_of_replies(engine):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction"], capacity=5).online = True
    number = new_email_ticket(engine)
    with transaction(engine) as session:
        actions.reply(session, number, "Ann", "已处理", CONFIG, NOW)
    [item] = outbox(engine, "reply")
    signed = build_outbox_email(item, relay_config(25)).get_content()
    assert signed.replace("\r\n", "\n").endswith("已处理\n\n-- \nAnn\n客服中心\n")
    unsigned = build_outbox_email(item, dataclasses.replace(relay_config(25), sign_replies=False)).get_content()
    assert unsigned.replace("\r\n", "\n") == "已处理\n"


def test_an_agents_files_reach_the_customer_attached_to_the_reply_and_a_file_alone_says_so(engine, relay):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction"], capacity=5).online = True
    number = new_email_ticket(engine)
    guide = Attachment("退款步骤.pdf", "application/pdf", b"%PDF-1.4 steps" * 100)
    shot = Attachment("screen.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(300))
    with transaction(engine) as session:
        actions.reply(session, number, "Ann", "请按附件操作。", CONFIG, NOW, attachments=(guide, shot))
        actions.reply(session, number, "Ann", "", CONFIG, NOW, attachments=(shot,))
        with pytest.raises(ActionRefused, match="the reply is empty"):
            actions.reply(session, number, "Ann", " ", CONFIG, NOW)
    assert deliver(engine, relay.port, NOW + timedelta(minutes=1)) == DeliveryReport(sent=3)

    with_text, alone = [m for m in relay.accepted if m["Auto-Submitted"] is None]
    assert unsigned(with_text) == "请按附件操作。"
    files = [(a.get_filename(), a.get_content_type(), a.get_content()) for a in with_text.iter_attachments()]
    assert files == [("退款步骤.pdf", "application/pdf", guide.data), ("screen.png", "image/png", shot.data)]
    assert unsigned(alone) == "请查看附件。"  # a Chinese ticket: Chinese
    assert [a.get_filename() for a in alone.iter_attachments()] == ["screen.png"]


def test_an_acknowledgement_is_auto_submitted_and_names_the_ticket_in_its_subject(engine, relay):
    number = new_email_ticket(engine)
    [item] = outbox(engine, "ack")

    assert deliver(engine, relay.port, NOW) == DeliveryReport(sent=1)

    [ack] = relay.accepted
    assert ack["Auto-Submitted"] == "auto-replied"
    assert f"[{number}]" in ack["Subject"] and "退款申请" in ack["Subject"]
    # The acknowledgement's own Message-ID names the ticket (intake threads a reply to it even without the tag)
    assert ack["Message-ID"] == item.payload["message_id"] and ack["Message-ID"].endswith(f".{number.lower()}@paidan>")
    assert number in ack.get_content()
    assert row(engine, item.id).status == "sent"


def test_an_acknowledgement_links_to_the_status_page_with_its_number_filled_in(engine):
    number = new_email_ticket(engine)
    [item] = outbox(engine, "ack")
    config = dataclasses.replace(relay_config(25), status_url="https://support.example.com/status")
    body = build_outbox_email(item, config).get_content()
    assert f"随时查看进度（输入本邮箱即可）：https://support.example.com/status?number={number}" in body
    assert "status?number=" not in build_outbox_email(item, relay_config(25)).get_content()  # none set: no line


def test_a_451_keeps_the_item_pending_with_backoff_and_a_retry_carries_the_same_message_id(engine, relay):
    new_email_ticket(engine)
    [item] = outbox(engine, "ack")
    relay.refuse_at_data[CUSTOMER] = "451 4.3.0 Mailbox busy, try later"

    assert deliver(engine, relay.port, NOW) == DeliveryReport(retried=1)
    waiting = row(engine, item.id)
    assert (waiting.status, waiting.attempts, waiting.next_attempt_at) == ("pending", 1, NOW + timedelta(minutes=1))
    assert "451" in waiting.last_error and "Mailbox busy" in waiting.last_error
    assert deliver(engine, relay.port, NOW + timedelta(seconds=30)) == DeliveryReport()  # not due yet

    del relay.refuse_at_data[CUSTOMER]
    assert deliver(engine, relay.port, NOW + timedelta(minutes=1)) == DeliveryReport(sent=1)
    first, second = relay.handed
    assert first.answer.startswith("451") and second.answer.startswith("250")
    assert first.message["Message-ID"] == second.message["Message-ID"]
    assert first.message.as_bytes() == second.message.as_bytes()  # the same mail, byte for byte
    assert row(engine, item.id).status == "sent"


def test_a_550_fails_the_item_and_tells_the_ticket_that_the_customer_never_got_it(engine, relay):
    number = new_email_ticket(engine, email="nobody@example.com")
    [item] = outbox(engine, "ack")
    relay.refuse_at_rcpt["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: unknown mailbox"

    assert deliver(engine, relay.port, NOW) == DeliveryReport(failed=1)

    failed = row(engine, item.id)
    assert failed.status == "failed" and "550" in failed.last_error and failed.sent_at is None
    [event] = events(engine, number, "delivery_failed")
    assert event.actor == "system" and "nobody@example.com" in event.reason and "unknown mailbox" in event.reason
    assert event.data["outbox_id"] == item.id
    assert deliver(engine, relay.port, NOW + timedelta(days=1)) == DeliveryReport()  # given up for good


def test_one_failing_item_never_stops_the_others(engine, relay):
    new_email_ticket(engine, email="nobody@example.com", message_id="<n1@example.com>")
    new_email_ticket(engine, email="busy@example.com", message_id="<b1@example.com>")
    new_email_ticket(engine, message_id="<k1@kehu.example.com>")
    relay.refuse_at_rcpt["nobody@example.com"] = "550 5.1.1 unknown mailbox"
    relay.refuse_at_rcpt["busy@example.com"] = "451 4.2.1 mailbox busy"

    assert deliver(engine, relay.port, NOW) == DeliveryReport(sent=1, retried=1, failed=1)
    assert [m["To"] for m in relay.accepted] == [CUSTOMER]
    assert {a.recipient: a.status for a in outbox(engine, "ack")} == {
        "nobody@example.com": "failed", "busy@example.com": "pending", CUSTOMER: "sent"}


def test_a_bug_with_one_item_is_retried_and_the_batch_goes_on():
    @dataclass(frozen=True)
    class Item:
        id: int
        kind: str = "ack"

    def build(item):
        if item.id == 1:
            raise KeyError("subject")
        return f"mail {item.id}"

    handed, marked = [], []

    def failed(item_id, error, *, now, permanent):
        marked.append((item_id, error, permanent))
        return "pending"

    report = deliver_due(claim=lambda now: [Item(1), Item(2)], build=build, send=handed.append,
                         mark_sent=lambda item_id, now: marked.append((item_id, "sent")), mark_failed=failed, now=NOW)
    assert report == DeliveryReport(sent=1, retried=1)
    assert handed == ["mail 2"]
    assert marked == [(1, "unexpected error: KeyError('subject')", False), (2, "sent")]


def test_a_relay_that_is_down_is_a_temporary_failure(engine):
    item_id = queue(engine)
    port = closed_port()
    message = build_email("ack", CUSTOMER, {"ticket": "GD20261124001"}, from_address="support@example.com",
                          from_name="", fallback_message_id="<x@example.com>")
    with pytest.raises(TemporaryFailure, match=f"127.0.0.1:{port} could not be reached"):
        SmtpSender(relay_config(port)).send(message)

    assert deliver(engine, port, NOW) == DeliveryReport(retried=1)
    waiting = row(engine, item_id)
    assert waiting.status == "pending" and "could not be reached" in waiting.last_error


def test_an_item_is_given_up_after_its_last_attempt(engine):
    number = new_email_ticket(engine)
    [item] = outbox(engine, "ack")
    at = NOW
    for attempt in (1, 2):
        [claimed] = claim_due(engine, "email", now=at, lease=LEASE)
        assert claimed.attempts == attempt
        status = mark_failed(engine, item.id, "451 busy", now=at, permanent=False, max_attempts=2)
        at += retry_delay(attempt)
    assert status == "failed"
    [event] = events(engine, number, "delivery_failed")
    assert "after 2 attempts" in event.reason and CUSTOMER in event.reason


def test_retries_wait_longer_each_time_up_to_an_hour():
    assert [retry_delay(n) / timedelta(minutes=1) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


# ---------------------------------------------------------------- claiming


def test_a_claimed_item_is_not_claimed_again_until_its_lease_runs_out(engine):
    item_id = queue(engine)
    [first] = claim_due(engine, "email", now=NOW, lease=LEASE)
    assert (first.id, first.kind, first.recipient, first.attempts) == (item_id, "ack", CUSTOMER, 1)
    assert first.payload["subject"] == "退款" and first.created_at == NOW

    assert claim_due(engine, "email", now=NOW + LEASE - timedelta(seconds=1), lease=LEASE) == []
    [again] = claim_due(engine, "email", now=NOW + LEASE, lease=LEASE)  # the first sender must have died
    assert (again.id, again.attempts) == (item_id, 2)


def test_two_senders_claiming_at_once_never_get_the_same_item(engine):
    ids = {queue(engine, key=f"k{n}") for n in range(40)}
    barrier = threading.Barrier(2)
    claimed: list[list[int]] = [[], []]

    def sender(slot: int) -> None:
        barrier.wait()
        claimed[slot] = [c.id for c in claim_due(engine, "email", now=NOW, limit=25, lease=LEASE)]

    threads = [threading.Thread(target=sender, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)

    assert not set(claimed[0]) & set(claimed[1])
    assert set(claimed[0]) | set(claimed[1]) == ids
    assert sorted(map(len, claimed)) == [15, 25]


def test_claiming_email_leaves_other_channels_alone(engine):
    telegram_id = queue(engine, channel="telegram", kind="agent_notify")
    email_id = queue(engine)
    assert [c.id for c in claim_due(engine, "email", now=NOW, lease=LEASE)] == [email_id]
    untouched = row(engine, telegram_id)
    assert (untouched.status, untouched.attempts, untouched.next_attempt_at) == ("pending", 0, NOW)


def test_items_not_yet_due_are_not_claimed(engine):
    queue(engine, at=NOW + timedelta(minutes=1))
    assert claim_due(engine, "email", now=NOW, lease=LEASE) == []


# ---------------------------------------------------------------- building (pure)


@pytest.mark.parametrize("subject, text, language, says, not_says", [
    ("退款申请", "我要退款，订单 20261103884512", "zh", "工单号", "your ticket number"),
    ("Refund", "Hi, I want a refund for order 20261103884512. Thanks, 王芳", "en", "your ticket number", "工单号"),
    ("", "😀 20261103", None, "工单号", None),  # nothing to tell by: both languages
])
def test_an_email_is_acknowledged_in_the_language_it_was_written_in(engine, relay, subject, text, language, says,
                                                                    not_says):
    number = new_email_ticket(engine, subject=subject, text=text)
    with Session(engine) as session:
        assert session.scalar(select(Ticket.language).where(Ticket.number == number)) == language
    assert deliver(engine, relay.port, NOW) == DeliveryReport(sent=1)
    body = relay.accepted[0].get_content()
    assert says in body and (not_says is None or not_says not in body)


def test_an_acknowledgement_in_an_unknown_language_speaks_both():
    message = build_email("ack", CUSTOMER, {"ticket": "GD20261124007", "subject": "", "language": None,
                                            "first_response_due": "2026-11-24T05:00:00+00:00"},
                          from_address="support@example.com", from_name="Support", fallback_message_id="<a@b.c>",
                          date=NOW)
    assert message["Subject"] == "已收到您的来信 / We received your message [GD20261124007]"
    body = message.get_content()
    assert "工单号：GD20261124007" in body and "your ticket number is GD20261124007" in body
    assert "2026-11-24 05:00 UTC" in body
    assert message["Message-ID"] == "<a@b.c>" and message["In-Reply-To"] is None


def test_an_item_that_cannot_become_an_email_is_a_permanent_failure():
    with pytest.raises(PermanentFailure, match="no text"):
        build_email("reply", CUSTOMER, {"ticket": "GD1", "text": ""}, from_address="s@example.com", from_name="",
                    fallback_message_id="<a@b.c>")
    with pytest.raises(PermanentFailure, match="not an email address"):
        build_email("reply", "telegram:42", {"text": "hi"}, from_address="s@example.com", from_name="",
                    fallback_message_id="<a@b.c>")
