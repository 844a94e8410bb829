"""A customer's /status in Telegram: where their tickets stand, answered at once through the real
Dispatcher against the Bot API stand-in, never stored as a message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from connectors.telegram.send import customer_status_text
from factories import KeywordClassifier
from models.message import TicketSummary
from models.tables import Message, Ticket
from paidan.db import transaction
from paidan.telegram import WELCOME
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending
from test_linking import WANG, Chat, run_chats

CONFIG = RouterConfig()


@pytest.fixture
def intake(engine):
    intake = Intake(engine)
    yield intake
    intake.close()


def route(engine) -> None:
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, datetime.now(UTC))


def test_a_customer_sees_where_their_tickets_stand(engine, intake):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction"], capacity=5).online = True
    seen: dict = {}

    async def scenario(wang: Chat):
        seen["before"] = await wang.send("/status")
        await wang.send("我要退款，订单 20261103884512")
        await wang.send("发票抬头写错了")
        route(engine)
        with Session(engine) as session:
            seen["numbers"] = session.scalars(select(Ticket.number).order_by(Ticket.id)).all()
        with transaction(engine) as session:
            actions.reply(session, seen["numbers"][0], "Ann", "您好，退款已在处理", CONFIG, datetime.now(UTC))
        seen["after"] = await wang.send("/status@paidan_test_bot")
        seen["tickets"] = await wang.send("/tickets")

    run_chats(engine, intake, scenario, (WANG, "王芳", "zh-hans"))
    refund, invoice = seen["numbers"]
    assert seen["before"] == "您目前没有进行中的工单。请直接发送您的问题，我们会回复工单号。"
    blocks = seen["after"].split("\n\n")
    # The newest activity first: the refund was just answered.
    assert blocks[0].startswith(f"{refund} · 处理中\n我要退款，订单 20261103884512\n最近答复：")
    assert blocks[1].startswith(f"{invoice} · 已分派\n发票抬头写错了\n首次答复不晚于：")
    assert blocks[-1] == "回复我们关于某个工单的消息，即可补充说明。"
    assert seen["tickets"] == seen["after"]
    with Session(engine) as session:  # questions to the bot, not messages to the help desk
        assert session.scalar(select(func.count()).select_from(Message)) == 3  # two in, one reply out


def test_tickets_finished_long_ago_are_left_out_and_english_is_english(engine, intake):
    async def scenario(wang: Chat):
        await wang.send("Where is my parcel? Tracking SF1234567890")
        route(engine)
        with transaction(engine) as session:  # resolved 40 days ago: out of the list
            session.execute(update(Ticket).values(state="resolved", updated_at=datetime.now(UTC) - timedelta(days=40)))
        return await wang.send("/status")

    answer = run_chats(engine, intake, scenario, (WANG, "Fang", "en"))
    assert answer == "You have no open tickets. Describe your issue here and we will answer with a ticket number."


def test_the_status_text_reads_in_the_customers_language_or_both():
    at = datetime(2026, 12, 7, 8, 30, tzinfo=UTC)
    tickets = [TicketSummary("GD20261207001", "awaiting_customer", "Refund", at, at, None),
               TicketSummary("GD20261207002", "new", "", at, None, at + timedelta(hours=4))]
    english = customer_status_text(tickets, "en")
    assert english == ("GD20261207001 · Waiting for your reply\nRefund\nLast answered: 2026-12-07 08:30 UTC\n\n"
                       "GD20261207002 · Received\nFirst answer by: 2026-12-07 12:30 UTC\n\n"
                       "To add to a ticket, reply to our message about it.")
    both = customer_status_text(tickets, None)
    assert both.startswith("GD20261207001 · 等待您的回复") and both.endswith(english)
    assert "/status" in WELCOME and WELCOME.count("/status") == 2  # told in both languages


def test_new_starts_a_ticket_of_its_own_however_close_to_an_open_one(engine, intake):
    """Topic threading would put a second question about the same order on the open ticket; a customer
    who means another matter says /new. "/new" alone stores nothing and says how."""
    seen: dict = {}

    async def scenario(wang: Chat):
        await wang.send("订单 20261103884512 退款还没到账")
        seen["alone"] = await wang.send("/new")
        await wang.send("/new 订单 20261103884512 的发票抬头写错了")
        await wang.again()  # Telegram delivers it twice: stored once
        await wang.send("订单 20261103884512 退款到账了吗")  # no /new: threads by topic as before
        with Session(engine) as session:
            seen["tickets"] = session.execute(select(Ticket.number, Message.text).join(Message)
                                              .order_by(Message.id)).all()

    run_chats(engine, intake, scenario, (WANG, "王芳", "zh-hans"))
    assert seen["alone"].startswith("请在 /new 后写下新的问题")
    (first, text1), (second, text2), (third, text3) = seen["tickets"]
    assert first != second and text2 == "订单 20261103884512 的发票抬头写错了"  # the command itself is not kept
    assert third in (first, second)
    assert "/new" in WELCOME and WELCOME.count("/new") == 2
