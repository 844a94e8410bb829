"""Splitting a ticket (actions.split): a second matter in one conversation moves to a ticket of its own,
which the router labels, acknowledges with its number and assigns; merging it back undoes it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.telegram.console import ConsoleCommand, parse_console
from factories import KeywordClassifier, make_message
from models import Attachment, Channel
from models.message import ThreadRefs
from models.errors import ActionRefused, InvalidInput
from models.tables import AttachmentRow, Message, OutboxItem, SlaClock, Ticket, TicketEvent
from paidan.db import transaction
from paidan.telegram_console import answer_agent
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
ANN_TG, BO_TG = 7101, 7102
CUSTOMER = "kehu@example.com"


@pytest.fixture
def desk(engine):
    with transaction(engine) as session:
        for name, telegram_id in (("Ann", ANN_TG), ("Bo", BO_TG)):
            agent = add_agent(session, name, skills=["service", "transaction", "zh"], capacity=5)
            agent.online, agent.telegram_id = True, telegram_id
    return engine


def write(engine, text: str, at: datetime, *, on: str | None = None, **extra):
    """The customer writes; `on`: the ticket number their message carries (a mail's subject tag)."""
    refs = {"thread_refs": ThreadRefs(ticket_number=on)} if on else {}
    return Intake(engine, clock=lambda: at).accept_now(make_message(email=CUSTOMER, text=text, received_at=at,
                                                                    channel=Channel.EMAIL, **refs, **extra))


def route(engine, at: datetime) -> None:
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, at)


def ticket(engine, number: str) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def holder_name(engine, number: str) -> str:
    with Session(engine) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number)).assigned_agent.name


def conversation(engine) -> tuple[str, int]:
    """A refund request, then (continuing it by its number) a second matter with a screenshot."""
    first = write(engine, "我要退款，订单 1234567890", NOW)
    route(engine, NOW)
    later = NOW + timedelta(minutes=30)
    shot = Attachment("invoice.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    second = write(engine, "另外，发票抬头写错了，请帮忙重开", later, on=first.ticket_number, attachments=(shot,))
    assert second.ticket_number == first.ticket_number
    route(engine, later)
    return first.ticket_number, second.message_id


def test_the_latest_message_moves_to_a_new_ticket_that_is_routed_like_any_new_one(desk):
    number, moved_id = conversation(desk)
    holder = holder_name(desk, number)
    at = NOW + timedelta(hours=1)
    with transaction(desk) as session:
        outcome = actions.split(session, number, holder, CONFIG, at, reason="发票是另一件事")
    new_number = outcome.data["into"]
    assert outcome.summary == (f"1 message(s) moved from {number} to the new ticket {new_number}, which the router "
                               f"labels, acknowledges and assigns")
    new, old = ticket(desk, new_number), ticket(desk, number)
    # It counts from when the customer wrote it, not from the split.
    assert (new.state, new.subject, new.created_at, new.customer_id) == (
        "new", "另外，发票抬头写错了，请帮忙重开", NOW + timedelta(minutes=30), old.customer_id)
    with Session(desk) as session:
        moved = session.get(Message, moved_id)
        assert moved.ticket_id == new.id and moved.model_version is None
        assert session.scalar(select(AttachmentRow.filename).where(AttachmentRow.message_id == moved_id)) == "invoice.png"
        kept = session.scalars(select(Message.text).where(Message.ticket_id == old.id)).all()
        assert kept == ["我要退款，订单 1234567890"]
        event = session.scalars(select(TicketEvent).where(TicketEvent.kind == "split")).one()
        assert event.reason == f"{holder} moved the customer's latest 1 message(s) to {new_number}: 发票是另一件事"

    route(desk, at)
    routed = ticket(desk, new_number)
    assert routed.state == "assigned" and routed.priority is not None and routed.routed_at == at
    with Session(desk) as session:
        acks = session.scalars(select(OutboxItem).where(OutboxItem.kind == "ack", OutboxItem.ticket_id == routed.id)).all()
        assert [(a.channel, a.recipient, a.payload["ticket"]) for a in acks] == [("email", CUSTOMER, new_number)]
        assert {c.kind for c in session.scalars(select(SlaClock).where(SlaClock.ticket_id == routed.id))} == {
            "first_response", "resolution"}

    # Merging it back undoes the split: the message returns.
    with transaction(desk) as session:
        actions.merge(session, new_number, holder, CONFIG, at + timedelta(minutes=5), into=number)
    with Session(desk) as session:
        assert session.get(Message, moved_id).ticket_id == old.id


def test_what_a_split_refuses(desk):
    number, _ = conversation(desk)
    holder = holder_name(desk, number)
    other = "Bo" if holder == "Ann" else "Ann"
    cases = [
        (holder, 2, ActionRefused, f"{number} has 2 message(s) from the customer; moving 2 would leave it none"),
        (holder, 0, InvalidInput, "split moves the customer's latest 1 to 20 messages, not 0"),
        (other, 1, ActionRefused, f"you cannot split ticket {number}: it is held by {holder}, not by {other}"),
    ]
    for actor, last, error, words in cases:
        with pytest.raises(error) as raised, transaction(desk) as session:
            actions.split(session, number, actor, CONFIG, NOW + timedelta(hours=1), last=last)
        assert words in str(raised.value), str(raised.value)
    with Session(desk) as session:
        assert len(session.scalars(select(Ticket)).all()) == 1


def test_the_console_and_the_cli_split(desk, database_url, monkeypatch, tmp_path):
    assert parse_console("/split GD20261124001") == ConsoleCommand("split", "GD20261124001")
    assert parse_console("/split GD20261124001 2 发票的事") == ConsoleCommand("split", "GD20261124001", last=2,
                                                                           text="发票的事")
    assert parse_console("/split GD20261124001 发票的事") == ConsoleCommand("split", "GD20261124001", text="发票的事")
    number, _ = conversation(desk)
    holder = holder_name(desk, number)
    telegram_id = ANN_TG if holder == "Ann" else BO_TG
    answer = answer_agent(desk, CONFIG, telegram_id, f"/split {number}", None, None, now=NOW + timedelta(hours=1),
                          once="update:9").text
    assert answer.startswith(f"1 message(s) moved from {number} to the new ticket GD20261124002"), answer

    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    write(desk, "还有，快递单号也不对", NOW + timedelta(hours=2), on=number)
    write(desk, "快递单号应该是 SF123", NOW + timedelta(hours=2, minutes=1), on=number)
    result = CliRunner().invoke(cli, ["tickets", "split", number, "--last", "2", "--as", holder, "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["action"], data["data"]["messages_moved"]) == ("split", 2)
    assert data["data"]["into"].startswith("GD") and data["data"]["into"] not in (number, "GD20261124002")
    refused = CliRunner().invoke(cli, ["tickets", "split", number, "--last", "0", "--as", holder])
    assert refused.exit_code == 2 and "--last" in refused.output
