"""Our SMTP server against a real client (smtplib) on loopback: 250 only after the commit, 451 when
the database cannot take the mail, 550 and 552 for what we refuse, duplicates stored once, and the
auto-replies and bounces that must never start a loop."""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from aiosmtpd.smtp import SMTP

from connectors.email.smtp import PaidanSMTP, SmtpConfig, recipient_refusal, start_smtp_server
from models.errors import StorageUnavailable
from models.tables import Message, OutboxItem, Ticket
from router import states
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "mail"


class Server:
    """The SMTP server on its own event loop in a thread, port 0, delivering to `deliver`."""

    def __init__(self, deliver, config: SmtpConfig):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.server = await start_smtp_server(deliver, config)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(main()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        assert ready.wait(10), "the SMTP server did not start"

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def smtp_server(deliver, **config) -> Iterator[Server]:
    server = Server(deliver, SmtpConfig(port=0, **config))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def intake(engine) -> Iterator[Intake]:
    intake = Intake(engine)
    yield intake
    intake.close()


def mail(text: str = "你好，我们店的收银机从早上开始连不上网络，订单都打不出来。", *, subject: str = "收银机连不上网络",
         sender: str = "王芳 <wangfang@example.cn>", message_id: str | None = "<m1@example.cn>", **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "support@paidan.test", subject
    if message_id:
        msg["Message-ID"] = message_id
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(text)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def send(server: Server, raw: bytes, to: str = "support@paidan.test", sender: str = "wangfang@example.cn") -> tuple[int, str]:
    """The server's answer to DATA (code and text); refusals raise as smtplib does."""
    with server.client() as client:
        client.ehlo("client.example.cn")
        client.mail(sender)
        code, reply = client.rcpt(to)
        assert code == 250, reply
        code, reply = client.data(raw)
        return code, reply.decode()


def messages(engine) -> list[Message]:
    with Session(engine) as session:
        return list(session.scalars(select(Message).order_by(Message.id)))


def test_a_mail_is_answered_250_with_its_ticket_only_once_stored(engine, intake):
    raw = mail()
    with smtp_server(intake.accept) as server:
        code, reply = send(server, raw)
    assert code == 250 and "stored as GD" in reply
    [stored] = messages(engine)
    number = reply.rsplit(" ", 1)[1]
    with Session(engine) as session:
        assert session.scalar(select(Ticket.number).where(Ticket.id == stored.ticket_id)) == number
    assert stored.channel == "email" and stored.external_id == "<m1@example.cn>"
    assert stored.sender == "email:wangfang@example.cn" and stored.subject == "收银机连不上网络"
    assert "收银机从早上开始连不上网络" in stored.text
    assert stored.raw == raw  # the exact bytes, for when a parser is wrong


def test_the_same_mail_delivered_twice_is_stored_once(engine, intake):
    with smtp_server(intake.accept) as server:
        first = send(server, mail())
        again = send(server, mail())
    assert first[0] == again[0] == 250
    assert "already stored as" in again[1] and again[1].rsplit(" ", 1)[1] == first[1].rsplit(" ", 1)[1]
    assert len(messages(engine)) == 1


def test_a_mail_without_message_id_is_keyed_by_its_bytes(engine, intake):
    with smtp_server(intake.accept) as server:
        send(server, mail(message_id=None))
        send(server, mail(message_id=None))  # a retry of the same bytes
        send(server, mail("另一封邮件：发票还没收到。", message_id=None))
    stored = messages(engine)
    assert len(stored) == 2 and all(m.external_id.startswith("sha256:") for m in stored)


def test_recipients_outside_our_domains_are_refused_550(engine, intake):
    assert recipient_refusal("a@support.example.com", ["support.example.com"]) is None
    assert recipient_refusal("A@Support.Example.com", ["@support.example.com"]) is None
    assert recipient_refusal("anyone@anywhere.test", []) is None
    with smtp_server(intake.accept, domains=("paidan.test",)) as server, server.client() as client:
        client.ehlo("client.example.cn")
        client.mail("spammer@example.net")
        code, reply = client.rcpt("victim@elsewhere.example")
        assert code == 550 and b"paidan.test" in reply
        assert client.rcpt("support@paidan.test")[0] == 250
        assert client.data(mail())[0] == 250
    assert len(messages(engine)) == 1


def test_mail_over_the_size_limit_gets_552_and_nothing_is_stored(engine, intake):
    big = mail("很长的附件说明。" * 20_000)  # ~480 KB
    with smtp_server(intake.accept, max_bytes=100_000) as server, server.client() as client:
        client.ehlo("client.example.cn")
        # The server announces SIZE, so an honest client is refused before sending a byte...
        assert client.has_extn("size") and int(client.esmtp_features["size"]) == 100_000
        client.mail("wangfang@example.cn")  # ...and one that does not declare the size, after DATA
        client.rcpt("support@paidan.test")
        code, reply = client.data(big)
    assert code == 552, reply
    assert messages(engine) == []


def test_a_database_that_cannot_commit_gets_451_and_the_retry_is_stored(engine, intake):
    failures = iter([StorageUnavailable("database is locked"), RuntimeError("a bug of ours")])

    async def flaky(message):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await intake.accept(message)

    with smtp_server(flaky) as server:
        # 451 for both: a 5xx would make the sending server give up on mail we never stored
        assert send(server, mail())[0] == 451
        assert messages(engine) == []
        assert send(server, mail())[0] == 451
        assert send(server, mail())[0] == 250  # the sender's retry
    assert len(messages(engine)) == 1


def test_a_reply_with_the_ticket_tag_continues_the_ticket(engine, intake):
    with smtp_server(intake.accept) as server:
        number = send(server, mail())[1].rsplit(" ", 1)[1]
        code, reply = send(server, mail("补充一下：是 3 号收银台。", subject=f"Re: [{number}] 收银机连不上网络",
                                        message_id="<m2@example.cn>", In_Reply_To="<ack-1@paidan>"))
    assert code == 250 and reply.endswith(number)
    assert {m.ticket_id for m in messages(engine)} == {messages(engine)[0].ticket_id}


def _ticket(engine, number: str) -> Ticket:
    with Session(engine) as session:
        return session.scalars(select(Ticket).where(Ticket.number == number)).one()


def test_an_out_of_office_reply_is_kept_on_its_ticket_without_touching_it(engine, intake):
    """FAILURE_MODES 21 and 23: an auto-reply to our acknowledgement neither opens a ticket nor ends
    the wait on the customer (Gmail's vacation reply reopened Zammad tickets)."""
    with smtp_server(intake.accept) as server:
        number = send(server, mail())[1].rsplit(" ", 1)[1]
        with Session(engine) as session, session.begin():
            ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
            ticket.state, ticket.routed_at = states.AWAITING_CUSTOMER, datetime.now(UTC)
        before = _ticket(engine, number)
        vacation = mail("我正在休假，12 月 10 日回来。", subject=f"自动回复: [{number}] 收银机连不上网络",
                        message_id="<ooo-1@example.cn>", Auto_Submitted="auto-replied")
        qq = mail("您的邮件我已收到，会尽快处理。", subject=f"Re: [{number}] 收银机连不上网络",
                  message_id="<ooo-2@example.cn>", X_QQ_AUTO_REPLY="true")  # QQ Mail: no Auto-Submitted
        assert send(server, vacation)[0] == 250 and send(server, qq)[0] == 250
    after = _ticket(engine, number)
    assert (after.state, after.routed_at, after.updated_at) == (before.state, before.routed_at, before.updated_at)
    stored = messages(engine)
    assert len(stored) == 3 and {m.ticket_id for m in stored} == {after.id}
    assert "auto_reply" in stored[1].flags and "auto_reply" in stored[2].flags


def test_machine_mail_naming_no_ticket_is_stored_closed_and_never_acknowledged(engine, intake):
    bounce = mail("Delivery to the following recipient failed permanently: nobody@example.org",
                  subject="Undeliverable: 您的工单已受理", sender="MAILER-DAEMON@mx.example.org",
                  message_id="<bounce-1@mx.example.org>", Auto_Submitted="auto-replied")
    vacation = mail("I am out of the office until Monday.", subject="Out of Office: your ticket",
                    sender="lee@example.com", message_id="<ooo-3@example.com>", Auto_Submitted="auto-replied")
    with smtp_server(intake.accept) as server:
        assert send(server, bounce)[0] == 250 and send(server, vacation)[0] == 250
    with Session(engine) as session:
        tickets = list(session.scalars(select(Ticket)))
        assert len(tickets) == 2 and {t.state for t in tickets} == {states.CLOSED}
        assert all(t.routed_at is not None and "auto_reply" in t.flags for t in tickets)
    with Session(engine) as session, session.begin():
        assert route_pending(session, None, RouterConfig(), datetime.now(UTC)) == 0  # nothing to route
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(OutboxItem)) == 0
        assert {t.state for t in session.scalars(select(Ticket))} == {states.CLOSED}


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus/mail is not here")
def test_every_real_mail_of_the_corpus_is_answered_250_and_stored_once(engine, intake):
    """953 real mails from other help desks' bug reports (broken charsets, no Message-ID, bounces,
    70 attachments, 10,000-deep HTML): each gets 250 over SMTP and is stored; a second delivery
    of all of them adds nothing."""
    files = sorted(CORPUS.glob("*.eml"))
    answers = {}
    with smtp_server(intake.accept) as server, server.client() as client:
        for rounds in range(2):
            for path in files:
                client.ehlo("client.example")
                client.mail("")
                client.rcpt("support@paidan.test")
                # CRLF line ends, as every sending server puts them on the wire (smtplib leaves bytes alone)
                code, reply = client.data(re.sub(rb"\r?\n", b"\r\n", path.read_bytes()))
                assert code == 250, f"{path.name}: {code} {reply!r}"
                answers.setdefault(path.name, []).append(reply.decode())
                client.rset()
    stored = messages(engine)
    assert len(stored) == len({m.external_id for m in stored})
    assert len(stored) <= len(files)
    assert all("already stored" in a[1] for a in answers.values())


@pytest.mark.parametrize("path", [
    "<wangfang@example.cn>", "<wangfang@example.cn> SIZE=1234", "<a@example.cn>   BODY=8BITMIME  SIZE=9", "  <a.b+tag@mx.example.com>", "<>", "<> BODY=8BITMIME",
    "wangfang@example.cn", '<"quoted local"@example.cn>', "<(comment)a@example.cn>", "<王芳@例子.中国>", "<a@b",
    "<@relay.example:a@example.cn>", "<a@[127.0.0.1]>", "<" + "x" * 70 + "@example.cn>",
])
def test_mail_and_rcpt_paths_read_as_aiosmtpd_reads_them(path):
    """The fast path for `<local@domain>` gives exactly aiosmtpd's answer, and leaves the rest to it."""
    ours, theirs = PaidanSMTP(None), SMTP(None)
    assert ours._getaddr(path) == theirs._getaddr(path)


def test_a_mail_with_a_line_over_1000_octets_is_taken(engine, intake):
    """RFC 5321 says 1,000; sloppy mailers send HTML on one line, and Postfix takes it, so we do too."""
    with smtp_server(intake.accept) as server:
        code, _ = send(server, mail("长" * 3000))  # 9,000 octets of UTF-8 on one line
    assert code == 250 and len(messages(engine)[0].text) >= 3000


def test_an_answer_to_our_acknowledgement_finds_its_ticket_by_in_reply_to_alone(engine):
    """Acknowledgements are not stored as messages, but their Message-ID names the ticket: a reply
    whose mail client dropped the [GD…] tag and the References still continues it — for its
    customer only (someone else quoting that Message-ID opens their own ticket)."""
    config = RouterConfig(topic_window=timedelta(0))  # so only the Message-ID can thread it
    intake = Intake(engine, config=config)
    with smtp_server(intake.accept) as server:
        number = send(server, mail())[1].rsplit(" ", 1)[1]
        with Session(engine) as session, session.begin():
            route_pending(session, None, config, datetime.now(UTC))
        with Session(engine) as session:
            [ack] = session.scalars(select(OutboxItem).where(OutboxItem.kind == "ack")).all()
        ours = ack.payload["message_id"]
        assert ack.payload["in_reply_to"] == "<m1@example.cn>" and number.lower() in ours
        answer = mail("我补充一下订单号：20261130-7781", subject="Re: 您的来信已收到", message_id="<m2@example.cn>",
                      In_Reply_To=ours)
        stranger = mail("我也有同样的问题", subject="Re: 您的来信已收到", message_id="<m3@example.org>",
                        sender="someone@example.org", In_Reply_To=ours)
        assert send(server, answer)[1].endswith(number)
        assert not send(server, stranger, sender="someone@example.org")[1].endswith(number)
    intake.close()


def test_the_address_a_mail_reached_us_at_is_never_copied_on_our_answer(engine, intake):
    """The customer wrote To us and a colleague: "reply all" copies the colleague, never the address the
    mail came in at, whatever domain our own mail goes out from (the relay also drops our domains)."""
    raw = mail().replace(b"To: support@paidan.test", "To: help@brand.example, 同事 <colleague@example.cn>".encode())
    with smtp_server(intake.accept) as server:
        assert send(server, raw, to="help@brand.example")[0] == 250
    [stored] = messages(engine)
    assert stored.cc == ["colleague@example.cn"]
