"""Personal data on request (router.privacy, `paidan customers export | forget`, retention), on a real
database: messages come in through intake, are routed, answered, relabelled and resolved with the actions
agents use, and one person writes on two channels as two customers that a supervisor merges."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import KeywordClassifier, cli_invoker, make_message
from models import Attachment, Channel, Identity, IdentityKind, InboundMessage, Sender
from models.errors import ActionRefused, InvalidInput, NotFound
from models.message import ThreadRefs
from models.tables import (
    AttachmentRow,
    Base,
    Customer,
    Identity as IdentityRow,
    LabelCorrection,
    LinkCode,
    Message,
    OutboxItem,
    Survey,
    Ticket,
    TicketEvent,
)
from paidan.cli import cli
from paidan.db import transaction
from router import actions, surveys
from router.agents import add_agent
from router.config import RouterConfig
from router.delivery import claim_due
from router.identity import find_customer, merge_customers
from router.intake import Intake
from router.linking import request_code
from router.privacy import (
    CANCELLED,
    ERASED,
    ERASED_BYTES,
    ERASURE_EVENT,
    RETENTION_EVENT,
    export_customer,
    forget_customer,
    purge_expired,
)
from router.reports import build_report, last_days
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
ZONE = "Asia/Shanghai"
CONFIG = RouterConfig()
EMAIL, SECOND_EMAIL, TELEGRAM_ID = "a@example.com", "a.second@example.com", 555001
ANN, SUE = 7001, 9001
LINK_KEY = b"k" * 32
# What the person wrote or is called: none of it may be left anywhere in the database after `forget`.
PERSONAL = (EMAIL, SECOND_EMAIL, str(TELEGRAM_ID), "张三", "王芳", "发票抬头", "身份证", "20261103884512",
            "88990011", "态度很差")


# ---------------------------------------------------------------- set-up


@pytest.fixture
def desk(engine):
    """Ann works service tickets; Sue supervises."""
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], seniority=2, telegram_id=ANN).online = True
        add_agent(session, "Sue", skills=["service", "transaction"], role="supervisor", telegram_id=SUE)
    return engine


def arrive(engine, message: InboundMessage, at: datetime = NOW) -> str:
    """The message through the real intake, then routed (and offered to Ann)."""
    number = Intake(engine, clock=lambda: at).accept_now(message).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, at)
    return number


def act(engine, action, number, actor, at: datetime = NOW, **kwargs):
    with transaction(engine) as session:
        return action(session, number, actor, config=CONFIG, now=at, **kwargs)


def email_from_the_person(**extra) -> InboundMessage:
    return make_message(channel=Channel.EMAIL, email=EMAIL, subject="发票抬头错了",
                        text="我要退款，订单 20261103884512，发票抬头也错了", message_id="<m1@mail.example.com>",
                        attachments=(Attachment("身份证.jpg", "image/jpeg", b"\xff\xd8 a photo of an id card"),),
                        received_at=NOW, **extra)


def telegram_from_the_person(text: str = "退款还没到账，电话 88990011") -> InboundMessage:
    return InboundMessage(channel=Channel.TELEGRAM, external_id=f"{TELEGRAM_ID}:{abs(hash(text)) % 10**6}",
                          text=text, received_at=NOW, raw=b'{"from": {"first_name": "\\u738b\\u82b3"}}',
                          language="zh", sender=Sender((Identity(IdentityKind.TELEGRAM, str(TELEGRAM_ID)),), "王芳"))


def customer_of(engine, number: str) -> int:
    with Session(engine) as session:
        return session.scalar(select(Ticket.customer_id).where(Ticket.number == number))


@pytest.fixture
def person(desk):
    """One person as two customers (email, then Telegram), merged by a supervisor; both tickets answered,
    relabelled and resolved; a low survey rating with a comment; a link code mailed to a second address.
    The acknowledgements, replies, surveys and the code mail are still pending in the outbox."""
    engine = desk
    by_mail = arrive(engine, email_from_the_person())
    by_telegram = arrive(engine, telegram_from_the_person(), NOW + timedelta(minutes=1))
    email_customer, telegram_customer = customer_of(engine, by_mail), customer_of(engine, by_telegram)
    assert email_customer != telegram_customer
    with transaction(engine) as session:
        merge_customers(session, telegram_customer, email_customer, actor="cli:sue", now=NOW + timedelta(minutes=2),
                        evidence=f"phoned: {EMAIL} and telegram {TELEGRAM_ID} are 王芳 张三's")
        request_code(session, telegram_id=TELEGRAM_ID, address=SECOND_EMAIL, key=LINK_KEY, now=NOW,
                     display_name="王芳")
    for n, number in enumerate((by_mail, by_telegram)):
        at = NOW + timedelta(minutes=10 * (n + 1))
        act(engine, actions.accept, number, "Ann", at)
        act(engine, actions.reply, number, "Ann", at + timedelta(minutes=1), text="您好张三，发票抬头已更正")
        act(engine, actions.relabel, number, "Sue", at + timedelta(minutes=2), head="category",
            new_label="transaction")
        act(engine, actions.resolve, number, "Ann", at + timedelta(minutes=3))
    with transaction(engine) as session:
        survey = session.scalar(select(Survey).join(Ticket).where(Ticket.number == by_mail))
        surveys.answer(session, survey.id, rating=2, comment="态度很差", now=NOW + timedelta(hours=1))
    return {"engine": engine, "mail": by_mail, "telegram": by_telegram, "customer": email_customer,
            "merged": telegram_customer}


def everything_stored(engine) -> str:
    """Every value of every table as text (bytes decoded), to search the whole database at once."""
    parts = []
    with Session(engine) as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                for value in row:
                    parts.append(value.decode("utf-8", "replace") if isinstance(value, bytes)
                                 else json.dumps(value, ensure_ascii=False, default=str))
    return "\n".join(parts)


def forget(engine, customer_id: int, **kwargs):
    with transaction(engine) as session:
        return forget_customer(session, customer_id, actor="cli:dpo", reason="erasure request ref 118",
                               now=NOW + timedelta(days=1), **kwargs)


def report(engine) -> dict:
    since, until = last_days(7, NOW + timedelta(days=1), ZONE)
    with Session(engine) as session:
        return build_report(session, since=since, until=until, now=NOW + timedelta(days=1), timezone=ZONE).as_dict()


# ---------------------------------------------------------------- export


def test_export_holds_the_whole_person_across_the_merge_and_both_channels(person):
    engine = person["engine"]
    with Session(engine) as session:
        data = export_customer(session, person["merged"], now=NOW)  # the merged-away customer is the same person
    json.dumps(data)  # plain JSON, times as ISO text
    assert data["customer_id"] == person["customer"]
    assert [c["id"] for c in data["customers"]] == [person["customer"], person["merged"]]
    assert {(i["kind"], i["value"]) for i in data["identities"]} == {("email", EMAIL), ("telegram", str(TELEGRAM_ID))}
    assert [t["number"] for t in data["tickets"]] == [person["mail"], person["telegram"]]
    mail_ticket = data["tickets"][0]
    assert mail_ticket["labels"] == {"type": "request", "category": "transaction", "priority": "P2"}
    assert mail_ticket["state"] == "resolved" and mail_ticket["resolved_at"].startswith("2026-11-24T03:13")
    by_channel = {(m["channel"], m["direction"]): m for m in data["messages"]}
    assert by_channel[("email", "in")]["subject"] == "发票抬头错了"
    assert "20261103884512" in by_channel[("email", "in")]["text"]
    assert "88990011" in by_channel[("telegram", "in")]["text"]
    assert any(m["direction"] == "out" and m["agent"] == "Ann" for m in data["messages"])
    [attachment] = by_channel[("email", "in")]["attachments"]
    assert (attachment["filename"], attachment["content_type"], attachment["size"]) == ("身份证.jpg", "image/jpeg", 24)
    assert "data" not in attachment and f"row id {attachment['id']}" in attachment["stored"]
    assert [(s["ticket"], s["channel"], s["rating"], s["comment"]) for s in data["surveys"]] == [
        (person["mail"], "email", 2, "态度很差"), (person["telegram"], "telegram", None, "")]
    [code] = data["link_codes"]
    assert code["value"] == SECOND_EMAIL
    assert {c["head"] for c in data["label_corrections"]} == {"category"}
    assert any("20261103884512" in c["text"] for c in data["label_corrections"])
    assert [m["evidence"] for m in data["merges"]] == [f"phoned: {EMAIL} and telegram {TELEGRAM_ID} are 王芳 张三's"]
    kinds = {(o["kind"], o["recipient"]) for o in data["outbox"]}
    assert {("ack", EMAIL), ("reply", EMAIL), ("survey", EMAIL), ("link_code", SECOND_EMAIL),
            ("ack", str(TELEGRAM_ID))} <= kinds
    assert all("sealed_code" not in o["payload"] for o in data["outbox"])
    assert all(not o["recipient"].startswith("telegram:") for o in data["outbox"])  # staff notices are not theirs


def test_export_of_someone_unknown_is_not_found(engine):
    with Session(engine) as session, pytest.raises(NotFound, match="no customer #42"):
        export_customer(session, 42)


# ---------------------------------------------------------------- forget


def test_forget_erases_what_they_wrote_and_who_they_are_everywhere(person):
    engine = person["engine"]
    stored = everything_stored(engine)
    assert all(value in stored for value in PERSONAL)  # the search below would find them
    with Session(engine) as session:
        attachment_size = session.scalar(select(AttachmentRow.size))

    done = forget(engine, person["merged"])

    assert (done.customer_id, done.customers) == (person["customer"], (person["customer"], person["merged"]))
    assert done.tickets == (person["mail"], person["telegram"]) and done.open_tickets == ()
    assert (done.messages, done.attachments, done.identities, done.link_codes) == (4, 1, 2, 1)
    assert (done.surveys, done.corrections, done.email_messages) == (1, 2, 1)
    assert done.outbox_cancelled == 7  # 2 acknowledgements, 2 replies, 2 surveys, the code mail
    left = everything_stored(engine)
    assert [value for value in PERSONAL if value in left] == []
    with Session(engine) as session:
        messages = session.scalars(select(Message)).all()
        assert {(m.text, m.raw) for m in messages} == {(ERASED, ERASED_BYTES)}
        assert {m.subject for m in messages if m.direction == "in"} == {ERASED, ""}  # Telegram has no subject
        attachment = session.scalar(select(AttachmentRow))
        assert (attachment.filename, attachment.data, attachment.size) == (ERASED, ERASED_BYTES, attachment_size)
        assert session.scalar(select(func.count()).select_from(IdentityRow)) == 0
        assert set(session.scalars(select(Customer.display_name))) == {ERASED}
        assert set(session.scalars(select(LabelCorrection.text))) == {ERASED}
        assert session.scalar(select(LinkCode.used_at)) is not None  # spent: the code cannot link anything now
        to_them = session.scalars(select(OutboxItem).where(OutboxItem.recipient == ERASED)).all()
        assert {o.status for o in to_them} == {CANCELLED} and len(to_them) == 7
        assert all(o.payload.get("erased") for o in to_them)
        tickets = session.scalars(select(Ticket).order_by(Ticket.id)).all()
        assert [(t.state, t.category, t.subject) for t in tickets] == [("resolved", "transaction", ERASED)] * 2
        events = session.scalars(select(TicketEvent).where(TicketEvent.kind == ERASURE_EVENT)
                                 .order_by(TicketEvent.ticket_id, TicketEvent.id)).all()
        assert [(e.ticket_id, e.actor) for e in events] == [(t.id, "cli:dpo") for t in tickets]
        assert "erasure request ref 118" in events[0].reason
    # Nothing of theirs is sent any more: the senders claim pending rows only.
    for channel in ("email", "telegram"):
        claimed = claim_due(engine, channel, now=NOW + timedelta(days=2), lease=timedelta(minutes=5))
        assert all(item.recipient != ERASED for item in claimed)
        assert all(not item.recipient.isdigit() for item in claimed)


def test_reports_count_the_same_after_forget(person):
    engine = person["engine"]
    before = report(engine)
    forget(engine, person["customer"])
    after = report(engine)
    assert before["created"] == 2 and before["satisfaction"]["answered"] == 1
    # Only the pending outbox changes: messages to the forgotten person will never be sent.
    assert before["now"]["outbox_pending"] != after["now"]["outbox_pending"]
    for r in (before, after):
        r.pop("generated_at")
        r["now"].pop("outbox_pending"), r["now"].pop("outbox_oldest_seconds")
    assert after == before


def test_new_mail_from_the_same_address_after_forget_is_a_new_customer(person):
    engine = person["engine"]
    forget(engine, person["customer"])
    later = NOW + timedelta(days=2)
    # A reply naming the old ticket, and a fresh message by Telegram: neither reaches the erased person.
    reply = email_from_the_person(thread_refs=ThreadRefs(ticket_number=person["mail"],
                                                         in_reply_to="<m1@mail.example.com>"))
    reply = replace(reply, external_id="<m2@mail.example.com>", message_id="<m2@mail.example.com>", received_at=later)
    by_mail = Intake(engine, clock=lambda: later).accept_now(reply)
    by_telegram = Intake(engine, clock=lambda: later).accept_now(telegram_from_the_person("又是我"))
    assert by_mail.new_ticket and by_mail.ticket_number != person["mail"]
    assert by_telegram.new_ticket
    with Session(engine) as session:
        new_ids = {session.get(Ticket, r.ticket_id).customer_id for r in (by_mail, by_telegram)}
        assert not new_ids & {person["customer"], person["merged"]}
        assert find_customer(session, EMAIL).id in new_ids
        assert session.get(Customer, find_customer(session, EMAIL).id).display_name == "张三"
        old = session.scalar(select(Ticket).where(Ticket.number == person["mail"]))
        assert old.state == "resolved" and old.customer_id == person["customer"]  # not reopened by them


def test_forget_refuses_open_tickets_unless_forced(desk):
    engine = desk
    number = arrive(engine, email_from_the_person())
    customer = customer_of(engine, number)
    with pytest.raises(ActionRefused, match=rf"open ticket.*{number}.*--force"):
        forget(engine, customer)
    with Session(engine) as session:
        assert session.scalar(select(Message.text)) != ERASED  # nothing happened
    with pytest.raises(InvalidInput, match="reason"):
        with transaction(engine) as session:
            forget_customer(session, customer, actor="x", reason="  ", now=NOW, force=True)
    done = forget(engine, customer, force=True)
    assert done.open_tickets == (number,) and done.messages == 1
    with Session(engine) as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == number))
        assert ticket.state == "assigned"  # still the desk's work; the agent sees erased messages
        assert session.scalar(select(TicketEvent.data).where(TicketEvent.kind == ERASURE_EVENT))["forced"] is True


def test_forgetting_twice_erases_nothing_more_and_says_so(person):
    engine = person["engine"]
    first = forget(engine, person["customer"])
    second = forget(engine, person["customer"])
    assert first.changed and not second.changed
    assert (second.messages, second.identities, second.outbox_cancelled) == (0, 0, 0)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(TicketEvent)
                              .where(TicketEvent.kind == ERASURE_EVENT)) == 2
        data = export_customer(session, person["customer"], now=NOW)
    assert data["identities"] == [] and {m["text"] for m in data["messages"]} == {ERASED}


def test_erased_corrections_never_become_training_data(person):
    from classifier.corrections import load_corrections, merge_corrections

    forget(person["engine"], person["customer"])
    with Session(person["engine"]) as session:
        corrections = load_corrections(session)
    merged, _ = merge_corrections([], corrections)
    assert [e.text for e in merged] == []


# ---------------------------------------------------------------- retention


def finished_ticket(engine, text: str, created: datetime, *, finish: str | None, email: str) -> str:
    number = arrive(engine, make_message(text=text, email=email, received_at=created), created)
    if finish:
        act(engine, actions.accept, number, "Ann", created + timedelta(minutes=5))
        act(engine, actions.resolve, number, "Ann", created + timedelta(hours=1))
    if finish == "closed":
        with transaction(engine) as session:
            from router import states

            ticket = session.scalar(select(Ticket).where(Ticket.number == number))
            states.transition(session, ticket, states.CLOSED, actor="system", reason="closed after 7 days",
                              at=created + timedelta(days=7))
    return number


def texts_of(engine, number: str) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Message.text).join(Ticket).where(Ticket.number == number)
                                    .order_by(Message.id)))


def test_purge_expired_erases_only_old_finished_tickets_in_batches(desk):
    engine = desk
    now = NOW + timedelta(days=60)
    old_resolved = finished_ticket(engine, "我要退款 旧的一", NOW, finish="resolved", email="old1@example.com")
    old_closed = finished_ticket(engine, "我要退款 旧的二", NOW - timedelta(days=10), finish="closed",
                                 email="old2@example.com")
    recent = finished_ticket(engine, "我要退款 新的", now - timedelta(days=5), finish="resolved",
                             email="new@example.com")
    still_open = finished_ticket(engine, "我要退款 还开着", NOW, finish=None, email="open@example.com")
    with Session(engine) as session:
        expected = session.scalar(select(func.count()).select_from(Message).join(Ticket)
                                  .where(Ticket.number.in_((old_resolved, old_closed))))
    before = report_between(engine, now)

    with transaction(engine) as session:
        assert purge_expired(session, retain_days=0, now=now, limit=10) == 0
        assert purge_expired(session, retain_days=None, now=now, limit=10) == 0
    assert ERASED not in texts_of(engine, old_resolved)
    erased, rounds = 0, 0
    while True:
        with transaction(engine) as session:
            batch = purge_expired(session, retain_days=30, now=now, limit=1)
        if not batch:
            break
        erased, rounds = erased + batch, rounds + 1
    assert (erased, rounds) == (expected, 2)

    assert set(texts_of(engine, old_resolved)) == set(texts_of(engine, old_closed)) == {ERASED}
    assert ERASED not in texts_of(engine, recent) and ERASED not in texts_of(engine, still_open)
    with Session(engine) as session:
        events = session.execute(select(Ticket.number, TicketEvent.actor).join(Ticket)
                                 .where(TicketEvent.kind == RETENTION_EVENT)).all()
        assert sorted(events) == sorted([(old_resolved, "retention"), (old_closed, "retention")])
        # Customers and their identities stay: a returning customer is still recognised.
        assert find_customer(session, "old1@example.com").display_name == "张三"
    after = report_between(engine, now)
    assert after == before
    with transaction(engine) as session:
        assert purge_expired(session, retain_days=30, now=now, limit=10) == 0


def report_between(engine, now: datetime) -> dict:
    with Session(engine) as session:
        data = build_report(session, since=NOW - timedelta(days=30), until=now, now=now, timezone=ZONE).as_dict()
    data.pop("generated_at")
    return data


def test_serve_purges_hourly_when_retention_is_set(desk, monkeypatch):
    from paidan.service import purge_expired_forever
    from paidan.settings import Settings

    engine = desk
    long_ago = datetime.now(UTC) - timedelta(days=90)
    number = finished_ticket(engine, "我要退款 很久以前", long_ago, finish="resolved", email="old@example.com")

    async def one_round():
        stop = asyncio.Event()
        task = asyncio.create_task(purge_expired_forever(engine, 30, stop, every=3600))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # the first round runs at once; a loaded machine may take seconds
        while loop.time() < deadline:
            await asyncio.sleep(0.02)
            if set(texts_of(engine, number)) == {ERASED}:
                break
        stop.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(one_round())
    assert set(texts_of(engine, number)) == {ERASED}
    monkeypatch.setenv("PAIDAN_CONFIG", "/nonexistent/paidan.toml")
    monkeypatch.setenv("PAIDAN_PRIVACY__RETAIN_DAYS", "30")
    assert Settings().privacy.retain_days == 30
    monkeypatch.delenv("PAIDAN_PRIVACY__RETAIN_DAYS")
    assert Settings().privacy.retain_days == 0  # keep forever unless told


# ---------------------------------------------------------------- the commands


@pytest.fixture
def run(database_url, monkeypatch, tmp_path):
    return cli_invoker(cli, database_url, monkeypatch, tmp_path)


def test_customers_export_writes_json_readable_by_its_owner_only(person, run, tmp_path):
    printed = json.loads(run("customers", "export", f"telegram:{TELEGRAM_ID}").output)
    assert printed["customer_id"] == person["customer"] and len(printed["messages"]) == 4
    out = run("customers", "export", f"#{person['merged']}", "--out", "person.json").output
    assert "2 tickets, 4 messages" in out and "person.json" in out
    written = tmp_path / "person.json"
    assert json.loads(written.read_text())["identities"] == printed["identities"]
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600


@pytest.mark.parametrize("command", ["export", "forget"])
@pytest.mark.parametrize("argument,message", [
    ("nobody@example.com", "no customer is known by email:nobody@example.com"),
    ("#4242", "no customer #4242"),
    ("not a customer!", "neither a customer id nor an identity"),
])
def test_a_bad_customer_gets_one_readable_line(run, command, argument, message):
    extra = ("--reason", "request", "--yes") if command == "forget" else ()
    result = run("customers", command, argument, *extra, ok=False)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_customers_forget_asks_first_then_erases_and_prints_what(person, run):
    engine = person["engine"]
    asked = run("customers", "forget", EMAIL, "--reason", "erasure request ref 118", input="n\n", ok=False)
    assert asked.exit_code == 1 and "2 identities, 2 tickets, 4 messages" in asked.output
    assert EMAIL in everything_stored(engine)  # nothing happened
    assert run("customers", "forget", EMAIL, ok=False).exit_code == 2  # --reason is required

    out = run("customers", "forget", EMAIL, "--reason", "erasure request ref 118", "--as", "dpo:li",
              input="y\n").output
    assert "4 messages, 1 attachments, 2 identities" in out and "7 pending outgoing messages cancelled" in out
    assert person["mail"] in out and "delete them there too" in out
    assert EMAIL not in everything_stored(engine)
    with Session(engine) as session:
        assert set(session.scalars(select(TicketEvent.actor).where(TicketEvent.kind == ERASURE_EVENT))) == {"dpo:li"}
    # Known by id only now (the address is gone); a second time changes nothing.
    assert "nothing left to erase" in run("customers", "forget", str(person["customer"]), "--reason", "again",
                                          "--yes").output
    gone = run("customers", "forget", EMAIL, "--reason", "again", "--yes", ok=False)
    assert gone.exit_code == 1 and "no customer is known by email:a@example.com" in gone.output


def test_customers_forget_refuses_open_tickets_unless_forced(desk, run):
    number = arrive(desk, email_from_the_person())
    refused = run("customers", "forget", EMAIL, "--reason", "request", "--yes", ok=False)
    assert refused.exit_code == 1 and number in refused.output and "--force" in refused.output
    assert "Traceback" not in refused.output
    out = run("customers", "forget", EMAIL, "--reason", "request", "--yes", "--force").output
    assert f"forced: {number} still open" in out
