"""A customer says it is solved: the ✅ under an agent's reply in Telegram (actions.customer_resolves),
through the real Dispatcher against the Bot API stand-in and the outbox's Telegram sender."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.telegram.send import build_telegram, solved_ticket
from factories import KeywordClassifier
from models.tables import Agent, OutboxItem, Survey, Ticket, TicketEvent
from paidan.db import transaction
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.routing import route_pending
import test_linking
from test_linking import WANG, Chat, run_chats
from test_surveys import callback

CONFIG = RouterConfig()
intake = test_linking.intake  # the fixture: an Intake on the test's database


def test_the_customer_marks_it_solved_under_our_reply(engine, intake):
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction"], capacity=5, telegram_id=7001).online = True
    seen: dict = {}

    async def scenario(wang: Chat):
        await wang.send("我要退款，订单 20261103884512")
        with transaction(engine) as session:
            route_pending(session, KeywordClassifier(), CONFIG, datetime.now(UTC))
        with Session(engine) as session:
            number = seen["number"] = session.scalar(select(Ticket.number))
        with transaction(engine) as session:
            actions.accept(session, number, "Ann", CONFIG, datetime.now(UTC))
            actions.reply(session, number, "Ann", "退款已原路退回，请查收", CONFIG, datetime.now(UTC))
        with Session(engine) as session:
            seen["reply"] = build_telegram(session.scalar(select(OutboxItem).where(OutboxItem.kind == "reply")))
        data = seen["reply"].buttons[0][0][1]
        for update_id, user in ((900, 555), (901, WANG), (901, WANG), (902, WANG)):  # a stranger, Wang, redelivered, again
            await wang.dispatcher.handle(callback(update_id, user, data))
        seen["answers"] = [a["text"] for a in wang.fake.requests("answerCallbackQuery")]
        seen["edits"] = wang.fake.requests("editMessageReplyMarkup")

    run_chats(engine, intake, scenario, (WANG, "王芳", "zh-hans"))
    number, reply = seen["number"], seen["reply"]
    assert reply.buttons == ((("✅ 问题已解决", f"solved:{number}"),),)  # Chinese ticket: Chinese label
    assert solved_ticket(f"solved:{number}") == number and solved_ticket("solved:../x") is None
    stranger, pressed, again, later = seen["answers"]
    assert stranger == "—"  # not their ticket: nothing happens, nothing is told
    assert pressed == "已标记为已解决，谢谢！如还有问题，再发消息即可。"
    assert again == later == "这个工单已经解决了。如还有问题，再发消息即可。"
    # Each press by Wang takes the button off that message (the stranger's does not).
    assert [(e["chat_id"], e.get("reply_markup")) for e in seen["edits"]] == [(WANG, None)] * 3
    with Session(engine) as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == number))
        assert ticket.state == "resolved" and session.scalar(select(Agent.load).where(Agent.name == "Ann")) == 0
        [event] = session.scalars(select(TicketEvent).where(TicketEvent.to_state == "resolved")).all()
        assert (event.actor, event.reason) == ("customer", "the customer marked it solved")
        told = session.scalar(select(OutboxItem).where(OutboxItem.kind == "customer_resolved"))
        assert told.recipient == "telegram:7001"
        assert session.scalar(select(Survey.ticket_id)) == ticket.id  # asked how we did, as after any resolve
    assert build_telegram(told).text.startswith(f"✅ {number} · the customer marked it solved")


def test_only_text_replies_to_customers_carry_the_button(engine):
    from models.tables import OutboxItem as Row

    reply = Row(id=1, kind="reply", channel="telegram", recipient="555",
                payload={"ticket": "GD20261124001", "text": "好的", "language": "en"})
    assert build_telegram(reply).buttons == ((("✅ Solved", "solved:GD20261124001"),),)
    no_number = Row(id=2, kind="reply", channel="telegram", recipient="555", payload={"text": "hi"})
    assert build_telegram(no_number).buttons == ()
    ack = Row(id=3, kind="ack", channel="telegram", recipient="555", payload={"ticket": "GD20261124001"})
    assert build_telegram(ack).buttons == ()
