"""The agent console: the parser of what agents type or tap (pure), and `answer_agent` / `run_console`
running it against a real database through router.actions, as the Telegram bot will."""

from __future__ import annotations

import uuid
from functools import partial
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.telegram.console import (
    HELP,
    ConsoleCommand,
    ConsoleHelp,
    ConsoleMistake,
    parse_console,
    ticket_numbers,
)
from factories import KeywordClassifier
from models import Channel, Identity, IdentityKind, InboundMessage, Sender
from models.tables import Agent, AttachmentRow, ChannelCursor, Message, OutboxItem, Ticket
from paidan.telegram_console import ConsoleAnswer, answer_agent, run_console

NUMBER = "GD20261123001"
NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
REFUND = "我要退款，订单 20261103884512"  # request/service for the keyword classifier


# ---------------------------------------------------------------- the parser


@pytest.mark.parametrize("text, expected", [
    ("/accept GD20261123001", ConsoleCommand("accept", NUMBER)),
    ("/accept@paidan_bot gd20261123001", ConsoleCommand("accept", NUMBER)),
    ("/ACCEPT GD20261123001 now please", ConsoleCommand("accept", NUMBER)),
    ("/decline GD20261123001", ConsoleCommand("decline", NUMBER)),
    ("/decline GD20261123001 下班了", ConsoleCommand("decline", NUMBER, text="下班了")),
    ("/reply GD20261123001 您好，\n退款已处理。", ConsoleCommand("reply", NUMBER, text="您好，\n退款已处理。")),
    ("/reply GD20261123001\n第一行\n第二行", ConsoleCommand("reply", NUMBER, text="第一行\n第二行")),
    ("/note GD20261123001 客户上次也退过", ConsoleCommand("note", NUMBER, text="客户上次也退过")),
    ("/wait GD20261123001", ConsoleCommand("wait", NUMBER)),
    ("/wait GD20261123001 等截图", ConsoleCommand("wait", NUMBER, text="等截图")),
    ("/resolve GD20261123001 已退款", ConsoleCommand("resolve", NUMBER, text="已退款")),
    ("/reopen GD20261123001 客户说没到账", ConsoleCommand("reopen", NUMBER, text="客户说没到账")),
    ("/relabel GD20261123001 Priority P1", ConsoleCommand("relabel", NUMBER, head="priority", label="P1")),
    ("/assign GD20261123001 Ann Lee", ConsoleCommand("assign", NUMBER, agent="Ann Lee")),
    ("/assign GD20261123001", ConsoleCommand("assign", NUMBER)),
    ("/show GD20261123001", ConsoleCommand("show", NUMBER)),
    ("/queue", ConsoleCommand("queue")),
    ("/mine@paidan_bot", ConsoleCommand("mine")),
    ("/dashboard", ConsoleCommand("dashboard")),
    ("/files gd20261123001", ConsoleCommand("files", NUMBER)),
    ("/merge GD20261123002 gd20261123001 同一笔订单", ConsoleCommand("merge", "GD20261123002", into=NUMBER, text="同一笔订单")),
    ("/merge GD20261123002 GD20261123001", ConsoleCommand("merge", "GD20261123002", into=NUMBER)),
    ("/online", ConsoleCommand("online")),
    ("/offline@paidan_bot", ConsoleCommand("offline")),
    ("/offline Ann Lee", ConsoleCommand("offline", agent="Ann Lee")),
    ("  /help  ", ConsoleHelp()),
    ("/start", ConsoleHelp()),
])
def test_commands(text, expected):
    assert parse_console(text) == expected


NOTICE = f"🆕 {NUMBER} · new ticket for you\n我要退款"


def test_plain_text_answering_a_ticket_message_is_a_reply_to_its_customer():
    assert parse_console("您好，已经在处理了", reply_to_text=NOTICE) == \
        ConsoleCommand("reply", NUMBER, text="您好，已经在处理了", via="reply")
    # Ticket numbers are found inside Chinese text too.
    assert parse_console("ok", reply_to_text=f"工单{NUMBER}已受理").ticket == NUMBER


def test_a_command_answering_a_ticket_message_may_leave_out_the_number():
    assert parse_console("/resolve 已退款", reply_to_text=NOTICE) == ConsoleCommand("resolve", NUMBER, text="已退款")
    assert parse_console("/accept", reply_to_text=NOTICE) == ConsoleCommand("accept", NUMBER)
    # A number given explicitly wins over the message answered.
    assert parse_console("/show GD20261123002", reply_to_text=NOTICE).ticket == "GD20261123002"


def test_buttons():
    assert parse_console(None, callback_data=f"accept:{NUMBER}") == ConsoleCommand("accept", NUMBER, via="button")
    assert parse_console("", callback_data="decline:gd20261123001") == ConsoleCommand("decline", NUMBER, via="button")


@pytest.mark.parametrize("text, reply_to_text, callback_data, says", [
    ("/reply", None, None, "/reply needs a ticket number and text: /reply GD20261123001 您好…"),
    ("/reply GD20261123001", None, None, "/reply needs a ticket number and text: /reply GD20261123001 您好…"),
    ("/reply 您好", None, None,
     "'您好' is not a ticket number (GD, the date and a sequence number, e.g. GD20261123001): /reply GD20261123001 您好…"),
    ("/note GD20261123001", None, None, "/note needs a ticket number and text: /note GD20261123001 客户上次也退过一次款"),
    ("/accept", None, None, "/accept needs a ticket number: /accept GD20261123001"),
    ("/accept GD2026", None, None, "'GD2026' is not a ticket number"),
    ("/reopen GD20261123001", None, None, "/reopen needs a ticket number and a reason: /reopen GD20261123001 "),
    ("/relabel GD20261123001 priority", None, None,
     "/relabel needs a ticket number and a head and a label: /relabel GD20261123001 priority P1"),
    ("/relabel GD20261123001 priority P1 P2", None, None, "/relabel needs a ticket number and a head and a label"),
    ("/merge GD20261123002", None, None, "/merge needs a ticket number and the ticket it repeats: /merge "),
    ("/merge GD20261123002 the other one", None, None, "'the' is not a ticket number; name the ticket GD20261123002"),
    ("/frobnicate", None, None, "there is no command /frobnicate; send /help for the list"),
    ("/", None, None, "'/' is not a command; send /help for the list"),
    ("hello", None, None, "to answer a customer, reply to the ticket's message or send /reply GD20261123001 您好…"),
    ("hello", "good morning", None, "the message you replied to names no ticket; send /reply GD20261123001 您好…"),
    ("ok", f"{NUMBER} · P1 · new\nGD20261123002 · P2 · new", None,
     f"the message you replied to names several tickets ({NUMBER}, GD20261123002); say which: /reply {NUMBER} ok"),
    ("", None, None, "this message has no text; send /help for the commands"),
    (None, None, "resolve:GD20261123001", "this button is not understood ('resolve:GD20261123001')"),
    (None, None, "accept:nonsense", "this button is not understood"),
])
def test_mistakes_say_what_was_wrong_and_the_right_form(text, reply_to_text, callback_data, says):
    parsed = parse_console(text, reply_to_text=reply_to_text, callback_data=callback_data)
    assert isinstance(parsed, ConsoleMistake)
    assert parsed.message.startswith(says)


def test_a_photo_or_document_goes_with_a_reply_or_a_note():
    assert parse_console("", reply_to_text=NOTICE, has_files=True) == ConsoleCommand("reply", NUMBER, via="reply")
    assert parse_console(f"/reply {NUMBER}", has_files=True) == ConsoleCommand("reply", NUMBER)
    assert parse_console(f"/note {NUMBER}", has_files=True) == ConsoleCommand("note", NUMBER)
    assert parse_console(f"/reply {NUMBER}") == ConsoleMistake(f"/reply needs a ticket number and text: "
                                                               f"/reply {NUMBER} 您好…")
    lost = parse_console(None, has_files=True)
    assert isinstance(lost, ConsoleMistake) and lost.message.startswith("to send files to a customer, send them as")


def test_help_is_short_and_chinese_first():
    lines = HELP.splitlines()
    assert len(lines) <= 18 and all(len(line) <= 90 for line in lines)  # one screen of a phone
    assert lines[0].startswith("派单")
    for command in ("/queue", "/mine", "/show", "/accept", "/decline", "/reply", "/note", "/wait", "/resolve",
                    "/reopen", "/relabel", "/assign", "/dashboard"):
        assert command in HELP


def test_ticket_numbers_are_found_once_each_in_order():
    assert ticket_numbers("gd20261123002 and GD20261123001, again GD20261123002; not GD2026 nor XGD20261123003") \
        == ["GD20261123002", "GD20261123001"]


# ---------------------------------------------------------------- running it on a real database

ANN, BO, SUE, STRANGER = 7001, 7002, 9001, 999


@pytest.fixture
def staff(engine):
    """Ann and Bo do service tickets; Sue supervises. Each has a Telegram id."""
    from paidan.db import transaction
    from router.agents import add_agent

    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], seniority=2, telegram_id=ANN).online = True
        add_agent(session, "Bo", skills=["service", "transaction"], telegram_id=BO).online = True
        add_agent(session, "Sue", skills=["service", "technical", "transaction"], role="supervisor",
                  telegram_id=SUE)
    return engine


def new_ticket(engine, text: str = REFUND, *, customer: int = 555) -> str:
    """A ticket from a Telegram customer, routed by the real router."""
    from paidan.db import transaction
    from router.config import RouterConfig
    from router.intake import Intake
    from router.routing import route_pending

    msg = InboundMessage(channel=Channel.TELEGRAM, external_id=f"{customer}:{uuid.uuid4().hex[:8]}", text=text,
                         received_at=NOW, raw=b"{}", sender=Sender((Identity(IdentityKind.TELEGRAM, str(customer)),),
                                                                   "王"))
    number = Intake(engine, clock=lambda: NOW).accept_now(msg).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), RouterConfig(), NOW)
    return number


def ticket(engine, number: str) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def holder_id(engine, number: str) -> int:
    """The Telegram id of the agent the ticket was offered to."""
    with Session(engine) as session:
        t = session.scalar(select(Ticket).where(Ticket.number == number))
        return session.get(Agent, t.assigned_agent_id).telegram_id


def say(engine, telegram_id: int, text: str | None, *, reply_to: str | None = None, button: str | None = None,
        at: datetime = NOW) -> ConsoleAnswer:
    from router.config import RouterConfig

    return answer_agent(engine, RouterConfig(), telegram_id, text, reply_to, button, now=at)


def replies_to_customers(engine) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == "reply").order_by(OutboxItem.id)).all()


def test_an_agent_works_a_ticket_from_telegram(staff):
    number = new_ticket(staff)
    agent = holder_id(staff, number)

    accepted = say(staff, agent, None, button=f"accept:{number}")
    assert accepted.text.splitlines()[0].endswith(f"accepted {number}; it is in progress")
    assert "Reply to this message to write to the customer." in accepted.text
    assert ticket(staff, number).state == "in_progress"

    # Answering the console's own message with plain text writes to the customer on their channel.
    answered = say(staff, agent, "您好，<b>退款</b>已在处理", reply_to=accepted.text)
    assert answered.text.startswith(f"reply to {number} queued to the customer on telegram")
    [item] = replies_to_customers(staff)
    assert (item.channel, item.recipient, item.payload["text"]) == ("telegram", "555", "您好，<b>退款</b>已在处理")

    noted = say(staff, agent, f"/note {number} 客户是老用户")
    assert noted.text.startswith(f"note added to {number} (the customer does not see it)")
    assert len(replies_to_customers(staff)) == 1

    waiting = say(staff, agent, f"/wait {number} 等客户截图")
    assert "waits for the customer" in waiting.text and ticket(staff, number).state == "awaiting_customer"

    relabelled = say(staff, agent, f"/relabel {number} priority P1")
    assert relabelled.text.startswith(f"{number}: priority ") and "→ P1" in relabelled.text
    assert ticket(staff, number).priority == "P1"

    resolved = say(staff, agent, f"/resolve@paidan_bot {number.lower()} 已退款")
    assert resolved.text.startswith(f"{number} resolved") and ticket(staff, number).state == "resolved"

    reopened = say(staff, agent, f"/reopen {number} 客户说没到账")
    assert reopened.text.startswith(f"{number} reopened") and ticket(staff, number).state != "resolved"


def test_declining_an_offer_hands_it_on(staff):
    number = new_ticket(staff)
    first = holder_id(staff, number)
    declined = say(staff, first, None, button=f"decline:{number}")
    assert f"declined {number}" in declined.text
    assert holder_id(staff, number) != first  # the other service agent has it now


def test_refusals_are_answered_with_their_sentence(staff):
    number = new_ticket(staff)
    holder = holder_id(staff, number)
    other = BO if holder == ANN else ANN
    holder_name, other_name = ("Ann", "Bo") if holder == ANN else ("Bo", "Ann")
    refused = say(staff, other, f"/resolve {number}")
    assert refused == ConsoleAnswer(f"you cannot resolve ticket {number}: it is held by {holder_name}, not by "
                                    f"{other_name}; ask {holder_name} or a supervisor to reassign it to you")
    assert ticket(staff, number).state == "assigned"  # nothing changed
    assert say(staff, holder, f"/relabel {number} mood grumpy").text.startswith("there is no label head 'mood'")
    assert say(staff, holder, "/accept GD20990101001").text.startswith("no ticket 'GD20990101001'")


def test_an_agent_gets_the_customers_files_merges_a_duplicate_and_goes_offline_from_telegram(staff):
    from models import Attachment

    number = new_ticket(staff)
    agent = holder_id(staff, number)
    name = "Ann" if agent == ANN else "Bo"
    say(staff, agent, None, button=f"accept:{number}")
    assert say(staff, agent, f"/files {number}").text == f"the customer sent no files on {number}"
    # The customer writes again on another topic with a screenshot: a second ticket, offered to the same agent.
    shot = InboundMessage(channel=Channel.TELEGRAM, external_id="555:shot", text="另外发票也开错了",
                          received_at=NOW, raw=b"{}", sender=Sender((Identity(IdentityKind.TELEGRAM, "555"),), "王"),
                          attachments=(Attachment("发票.jpg", "image/jpeg", b"\xff\xd8 jpeg"),))
    from router.intake import Intake

    second = Intake(staff, clock=lambda: NOW).accept_now(shot).ticket_number
    assert second != number

    merged = say(staff, SUE, f"/merge {second} {number} 同一位客户")
    assert merged.text.startswith(f"{second} merged into {number}: 1 message(s) moved")
    assert ticket(staff, second).state == "merged"
    shown = say(staff, agent, f"/show {number}").text
    assert "📎1: 另外发票也开错了" in shown and f"📎 the customer's files: /files {number}" in shown
    files = say(staff, agent, f"/files {number}")
    assert files.text.startswith(f"1 file(s) of {number} on their way: 发票.jpg")
    with Session(staff) as session:
        [item] = session.scalars(select(OutboxItem).where(OutboxItem.kind == "file")).all()
    assert item.recipient == f"telegram:{agent}" and item.payload["filename"] == "发票.jpg"

    gone = say(staff, agent, "/offline")
    assert gone.text == f"{name} is offline: no new tickets are offered; still yours: {number} (hand them on " \
                        f"with /assign or `paidan tickets assign`)"
    back = say(staff, agent, "/online", at=NOW + timedelta(minutes=1))
    assert back.text == f"{name} is online; no ticket is waiting"
    # A supervisor sends them home: what they still held goes to the colleague.
    colleague = BO if agent == ANN else ANN
    say(staff, colleague, "/online")
    assert say(staff, colleague, f"/offline {name}").text.startswith("only a supervisor can set another agent")
    home = say(staff, SUE, f"/offline {name}", at=NOW + timedelta(minutes=2))
    assert home.text.startswith(f"{name} is offline: no new tickets are offered; handed on to others: {number}")
    assert holder_id(staff, number) != agent


def test_files_with_a_command_that_takes_none_do_nothing_and_say_so(staff):
    from models import Attachment

    number = new_ticket(staff)
    agent = holder_id(staff, number)
    shot = (Attachment("a.png", "image/png", b"png"),)
    from router.config import RouterConfig

    answer = answer_agent(staff, RouterConfig(), agent, f"/accept {number}", attachments=shot, now=NOW)
    assert answer.text.startswith("files go to a customer with /reply") and "nothing was done" in answer.text
    assert ticket(staff, number).state == "assigned"
    sent = answer_agent(staff, RouterConfig(), agent, "", reply_to_text=NOTICE.replace(NUMBER, number),
                        attachments=shot, now=NOW)
    assert sent.text.startswith(f"reply to {number} queued to the customer on telegram"), sent.text
    [item] = replies_to_customers(staff)
    assert [f["filename"] for f in item.payload["attachments"]] == ["a.png"] and item.payload["text"] == ""


def test_every_file_of_an_album_follows_its_captioned_first(staff):
    """Telegram sends photos picked together as one update each; only the first has the caption. The
    rest join the reply or note the first went with, so the customer gets one mail or one album; the
    reply waits a few seconds for them. Once it went out, a late file goes as a reply of its own."""
    from connectors.telegram.send import build_telegram
    from models import Attachment
    from paidan.telegram_console import ALBUM_WAIT
    from router import delivery
    from router.config import RouterConfig

    number = new_ticket(staff)
    agent = holder_id(staff, number)
    say(staff, agent, f"/accept {number}")

    def send(name: str, caption: str, album: str, update: int, at: datetime = NOW):
        return answer_agent(staff, RouterConfig(), agent, caption, attachments=(Attachment(name, "image/png", b"png"),),
                            album=album, once=f"telegram-update:{update}", now=at).text

    assert send("1.png", f"/note {number} 三张截图", "album-1", 1).startswith(f"note added to {number}")
    assert send("2.png", "", "album-1", 2).startswith(f"1 more file(s) go with your note on {number}")
    assert send("2.png", "", "album-1", 2).startswith("already done")  # Telegram delivered it again
    assert send("a.png", f"/reply {number} 请看这两张图", "album-2", 3).startswith(f"reply to {number} queued")
    assert send("b.png", "", "album-2", 4).startswith(f"1 more file(s) go with your reply on {number}")
    # A file alone, or of an album whose first file had no command, is refused as before.
    assert send("c.png", "", "album-3", 5).startswith("to send files to a customer")
    with Session(staff) as session:
        kept = session.execute(select(Message.public, Message.text, func.count(AttachmentRow.id))
                               .join(AttachmentRow, AttachmentRow.message_id == Message.id)
                               .where(Message.direction == "out").group_by(Message.id).order_by(Message.id)).all()
    assert kept == [(False, "三张截图", 2), (True, "请看这两张图", 2)]
    [album] = replies_to_customers(staff)
    assert album.payload["text"] == "请看这两张图" and [f["filename"] for f in album.payload["attachments"]] == [
        "a.png", "b.png"]
    assert album.next_attempt_at == NOW + ALBUM_WAIT  # not sent before the rest could join
    sent = build_telegram(album, load_file=partial(delivery.attachment_file, staff))
    assert [d.filename for d in sent.documents] == ["a.png", "b.png"]  # one album to the customer

    # An album whose reply went out before its second file came: that file goes on its own.
    assert send("x.png", f"/reply {number} 还有一张", "album-4", 6).startswith(f"reply to {number} queued")
    claimed = delivery.claim_due(staff, "telegram", now=NOW + ALBUM_WAIT, lease=timedelta(minutes=5))
    assert any(item.payload.get("text") == "还有一张" for item in claimed)
    assert send("y.png", "", "album-4", 7).startswith(f"reply to {number} queued")
    assert [len(item.payload.get("attachments") or []) for item in replies_to_customers(staff)] == [2, 1, 1]


def test_someone_who_is_not_an_agent_learns_how_to_become_one(staff):
    number = new_ticket(staff)
    answer = say(staff, STRANGER, f"/accept {number}")
    assert "not registered as an agent" in answer.text and "--telegram-id 999" in answer.text
    assert "not registered as an agent" in say(staff, STRANGER, "/queue").text


def test_a_supervisor_assigns_a_ticket_to_a_named_agent(staff):
    number = new_ticket(staff)
    target = "Bo" if holder_id(staff, number) == ANN else "Ann"
    answer = say(staff, SUE, f"/assign {number} {target}")
    assert answer.text.startswith(f"{number}: offered to {target}")
    assert holder_id(staff, number) == (BO if target == "Bo" else ANN)


def test_listings_are_compact(staff):
    numbers = [new_ticket(staff, customer=555 + n) for n in range(3)]
    ann_has = [n for n in numbers if holder_id(staff, n) == ANN]
    mine = say(staff, ANN, "/mine", at=NOW + timedelta(minutes=5))
    assert mine.text.splitlines()[0] == f"Ann's open tickets ({len(ann_has)}):"
    for n in ann_has:
        assert any(line.startswith(f"{n} · ") and "assigned (to accept) · 5m · " in line
                   for line in mine.text.splitlines())

    assert say(staff, ANN, "/queue").text == "the queue is empty: every open ticket has an agent"
    with Session(staff) as session, session.begin():  # give Ann and Bo no room, so a new ticket waits
        for agent in session.scalars(select(Agent).where(Agent.name.in_(["Ann", "Bo"]))):
            agent.online = False
    waiting = new_ticket(staff, customer=600)
    queue = say(staff, SUE, "/queue").text.splitlines()
    assert queue[0] == "waiting for an agent (1):" and queue[1].startswith(f"{waiting} · ")

    shown = say(staff, ANN, f"/show {ann_has[0]}")
    lines = shown.text.splitlines()
    assert lines[0].startswith(f"{ann_has[0]} · ") and lines[0].endswith(" · assigned") and "held by Ann" in lines
    assert any(line.startswith("← customer, 0m ago: 我要退款") for line in lines)
    assert any(line.startswith("SLA first response: due in ") for line in lines) and len(lines) <= 20
    assert "first ticket of this customer" in lines
    # Offered to Ann and not yet accepted: she can answer right there.
    assert shown.buttons == ((("✅ Accept", f"accept:{ann_has[0]}"), ("❌ Decline", f"decline:{ann_has[0]}")),)
    assert say(staff, SUE, f"/show {ann_has[0]}").buttons == ()


def test_show_names_the_customers_other_tickets_newest_first(staff):
    texts = ["发票抬头写错了", "快递 SF1234567890 三天没更新", "登录提示错误 E1023", "想换一个收货地址"]
    earlier = [new_ticket(staff, text, customer=777) for text in texts]
    assert len(set(earlier)) == 4  # four topics, four tickets
    with Session(staff) as session, session.begin():
        for n, number in enumerate(earlier):  # the first is the oldest activity, the last the newest
            session.scalar(select(Ticket).where(Ticket.number == number)).updated_at = NOW - timedelta(days=9 - n)
    number = new_ticket(staff, customer=777)
    lines = say(staff, SUE, f"/show {number}").text.splitlines()
    [history] = [line for line in lines if "other ticket(s)" in line]
    assert history == (f"4 other ticket(s): {earlier[3]} assigned 6d0h ago · {earlier[2]} assigned 7d0h ago · "
                       f"{earlier[1]} assigned 8d0h ago · and 1 older"), history


def test_help_and_mistakes_are_answered_without_the_database():
    # engine=None: touching the database would fail.
    assert answer_agent(None, None, STRANGER, "/help", None, None, now=NOW) == ConsoleAnswer(HELP)
    answer = answer_agent(None, None, STRANGER, "/reply", None, None, now=NOW)
    assert answer.text == "/reply needs a ticket number and text: /reply GD20261123001 您好…"


def test_run_console_takes_a_parsed_command(staff):
    number = new_ticket(staff)
    from router.config import RouterConfig

    answer = run_console(staff, RouterConfig(), holder_id(staff, number), ConsoleCommand("accept", number), now=NOW)
    assert "accepted" in answer.text and ticket(staff, number).state == "in_progress"


def test_a_redelivered_update_acts_only_once(staff):
    from router.config import RouterConfig

    number = new_ticket(staff)
    agent = holder_id(staff, number)

    def reply(once: str) -> ConsoleAnswer:
        return answer_agent(staff, RouterConfig(), agent, f"/reply {number} 您好", now=NOW, once=once)

    assert reply("telegram-update:41").text.startswith(f"reply to {number} queued")
    assert reply("telegram-update:41").text.startswith(f"already done: this reply of {number} arrived twice")
    assert len(replies_to_customers(staff)) == 1
    assert reply("telegram-update:42").text.startswith(f"reply to {number} queued")  # a new message acts again
    # A refusal commits nothing, its key included: the same update, redelivered, is judged afresh.
    refused = answer_agent(staff, RouterConfig(), STRANGER, f"/accept {number}", now=NOW, once="telegram-update:43")
    assert "not registered" in refused.text
    again = answer_agent(staff, RouterConfig(), STRANGER, f"/accept {number}", now=NOW, once="telegram-update:43")
    assert "not registered" in again.text
    # Keys older than any redelivery are dropped as later actions come.
    answer_agent(staff, RouterConfig(), agent, f"/note {number} 备注", now=NOW + timedelta(days=3), once="later")
    with Session(staff) as session:
        assert session.scalars(select(ChannelCursor.name)).all() == ["console-once:later"]


def test_a_reply_too_long_for_one_telegram_message_is_refused_not_cut(staff):
    """Telegram takes 4,096 characters a message; cutting the customer's answer would lose the rest."""
    number = new_ticket(staff)
    agent = holder_id(staff, number)
    refused = say(staff, agent, f"/reply {number} " + "请按以下步骤操作。" * 500)  # 4,500 characters
    assert "4500 characters" in refused.text and "shorter replies (nothing was sent)" in refused.text
    assert replies_to_customers(staff) == []
    assert say(staff, agent, f"/reply {number} " + "请按以下步骤操作。" * 400).text.startswith(f"reply to {number} queued")


def test_a_supervisor_gets_a_dashboard_link_and_an_agent_learns_why_not(staff):
    from paidan.dashboard import SignInLinks, sign_in_url
    from router.config import RouterConfig

    links = SignInLinks(b"console-test-secret")
    link = lambda agent_id: sign_in_url("https://support.example.com", links, agent_id, NOW)  # noqa: E731

    def ask(telegram_id: int, dashboard_link=link) -> str:
        return answer_agent(staff, RouterConfig(), telegram_id, "/dashboard", now=NOW,
                            dashboard_link=dashboard_link).text

    answer = ask(SUE)
    url = answer.split("\n")[-1]
    assert url.startswith("https://support.example.com/dashboard/sign-in?token=") and "do not pass it on" in answer
    with Session(staff) as session:
        sue = session.scalar(select(Agent.id).where(Agent.telegram_id == SUE))
    assert links.check(url.split("token=")[1], NOW) == sue
    assert "for supervisors and admins" in ask(ANN) and "sign-in" not in ask(ANN)
    assert "does not serve the dashboard" in ask(SUE, dashboard_link=None)
    assert "not registered as an agent" in ask(STRANGER)


def test_a_supervisor_reads_the_days_figures_in_telegram(staff):
    numbers = [new_ticket(staff, customer=800 + n) for n in range(3)]
    agent = holder_id(staff, numbers[0])
    say(staff, agent, f"/accept {numbers[0]}")
    say(staff, agent, f"/reply {numbers[0]} 您好，已处理")
    say(staff, agent, f"/resolve {numbers[0]}")
    later = NOW + timedelta(minutes=30)
    lines = say(staff, SUE, "/report", at=later).text.splitlines()
    assert lines[0] == "📊 today (2026-11-24 – 2026-11-24, Asia/Shanghai)"
    assert lines[1] == "contacts 3; resolved 1, reopened 0 (0%); merged 0"
    assert lines[2].startswith("SLA met: first response 100%, resolution 100%")
    assert lines[3].startswith("now: 2 open, 0 waiting for an agent") and lines[-1] == "charts and agents: /dashboard"
    assert say(staff, SUE, "/report 7", at=later).text.startswith("📊 the last 7 days (2026-11-18 – 2026-11-24")
    assert say(staff, ANN, "/report").text.startswith("报表只对主管开放 · the report is for supervisors")
    assert say(staff, SUE, "/report week").text == "/report takes a number of days from 1 to 366, e.g. /report 7 (not 'week')"


def test_an_agent_sets_a_reminder_that_arrives_when_due(staff):
    from router import delivery

    number = new_ticket(staff)
    agent = holder_id(staff, number)
    said = say(staff, agent, f"/remind {number} 2h 客户说下午回电")
    assert said.text.startswith(f"you will be reminded of {number} at 2026-11-24 05:00 UTC"), said.text
    assert say(staff, agent, f"/remind {number} 1m").text.startswith("a reminder is set from 5 minutes to 90 days")
    other = BO if agent == ANN else ANN
    assert say(staff, other, f"/remind {number} 2h").text.startswith(f"you cannot set a reminder on ticket {number}")

    def due_at(at):
        return [i for i in delivery.claim_due(staff, "telegram", lease=timedelta(minutes=5), now=at)
                if i.kind == "follow_up"]

    assert due_at(NOW + timedelta(hours=1, minutes=59)) == []  # waits in the outbox until it is due
    [item] = due_at(NOW + timedelta(hours=2))
    assert item.recipient == f"telegram:{agent}"
    from connectors.telegram.send import build_telegram

    assert build_telegram(item).text.startswith(f"⏰ {number} · the reminder you set\n客户说下午回电 (set 2026-11-24 03:00 UTC)")
