"""Sending the outbox on Telegram: building each kind (pure), the sender against a loopback Bot API
(FakeBotAPI, with a real aiogram Bot), and `deliver_due` over outbox rows the real router wrote."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import socket
import threading
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.outbox import DeliveryReport, PermanentFailure, TemporaryFailure, deliver_due
from connectors.telegram.send import (
    CUSTOMER_KINDS,
    KNOWN_KINDS,
    STAFF_KINDS,
    TEXT_LIMIT,
    TelegramSend,
    TelegramSender,
    build_telegram,
    sync_send,
)
from factories import KeywordClassifier
from models import Attachment, Channel, Identity, IdentityKind, InboundMessage, Sender, ThreadRefs
from models.errors import ActionRefused
from models.tables import OutboxItem, TicketEvent
from telegram_api import FakeBotAPI

ROOT = Path(__file__).resolve().parent.parent
NUMBER = "GD20261124001"
NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours


@dataclass
class Item:
    """An outbox row as a channel sees it (the OutboxItem protocol)."""

    kind: str
    recipient: str
    payload: dict = field(default_factory=dict)
    id: int = 1
    dedupe_key: str | None = None
    created_at: datetime = NOW


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


# ---------------------------------------------------------------- every kind the router queues


OUTBOX_CALLS = {"enqueue", "notify_agent", "notify_supervisors", "supervisor_items", "staff_item", "item"}


def router_outbox_kinds() -> dict[str, str]:
    """kind → the router file that queues it, read from the code: each call of an outbox function
    with `kind="..."`. A kind passed as a variable (outside router/outbox.py itself) is reported,
    so that no kind can hide from this test."""
    kinds: dict[str, str] = {}
    for path in sorted((ROOT / "router").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            kind = next((k.value for k in node.keywords if k.arg == "kind"), None)
            if name not in OUTBOX_CALLS or kind is None:
                continue
            channel = next((k.value for k in node.keywords if k.arg == "channel"), None)
            if isinstance(channel, ast.Constant) and channel.value == "email":
                continue  # only ever mailed (link_code): connectors/email/send.py builds it, Telegram never sees it
            if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                kinds[kind.value] = path.name
            elif path.name != "outbox.py":
                kinds[f"<not a literal at {path.name}:{node.lineno}>"] = path.name
    return kinds


def test_the_router_queues_no_kind_without_a_telegram_text():
    kinds = router_outbox_kinds()
    assert {"ack", "reply", "assigned", "escalation"} <= kinds.keys()  # the reading itself works
    unknown = {kind: where for kind, where in kinds.items() if kind not in KNOWN_KINDS}
    assert not unknown, f"give these kinds a text in connectors/telegram/send.py: {unknown}"


@pytest.mark.parametrize("kind", sorted(STAFF_KINDS))
def test_each_staff_notice_starts_with_the_ticket_and_keeps_the_routers_words(kind):
    text = f"{NUMBER}: something the router said"
    message = build_telegram(Item(kind, "telegram:7001", {"ticket": NUMBER, "text": text, "agent_id": 3}))
    first, *rest = message.text.splitlines()
    icon, title, _hint = STAFF_KINDS[kind]
    assert first.startswith(f"{icon} {NUMBER} · {title}")
    assert "something the router said" in rest[0]  # the number is not repeated
    assert message.chat_id == 7001 and message.parse_mode is None


def test_an_offer_has_accept_and_decline_buttons_and_what_the_agent_needs_to_decide():
    payload = {"ticket": NUMBER, "text": f"{NUMBER}: 退款没到账 — accept within 10 min", "agent_id": 3,
               "reason": "least loaded of 2 with skill service", "priority": "P1", "type": "request",
               "category": "service", "preview": "我要退款\n订单 20261103884512\n\n第三行\n第四行\n第五行", "files": 2}
    message = build_telegram(Item("assigned", "telegram:7001", payload))
    assert message.buttons == ((("✅ Accept", f"accept:{NUMBER}"), ("❌ Decline", f"decline:{NUMBER}")),)
    lines = message.text.splitlines()
    assert lines[0] == f"🆕 {NUMBER} · new ticket for you · P1 request/service"
    assert lines[1] == "退款没到账 — accept within 10 min"
    assert "› 我要退款" in lines and "› 订单 20261103884512" in lines and "› 第五行" not in message.text
    assert "why you: least loaded of 2 with skill service" in lines
    assert f"📎 2 file(s) from the customer: /files {NUMBER}" in lines
    # Only offers have buttons.
    assert build_telegram(Item("triage", "telegram:9001", {"ticket": NUMBER, "text": "x"})).buttons == ()


def test_a_kind_nobody_wrote_a_text_for_still_reaches_its_reader():
    said = build_telegram(Item("survey_due", "telegram:9001", {"ticket": NUMBER, "text": "ask the customer"}))
    assert said.text.splitlines()[:2] == [f"🔔 {NUMBER} · survey due", "ask the customer"]
    facts = build_telegram(Item("merge_suggested", "telegram:9001", {"ticket": NUMBER, "customer_id": 12,
                                                                     "agent_id": 3}))
    assert facts.text.splitlines() == [f"🔔 {NUMBER} · merge suggested", "customer_id: 12"]
    assert build_telegram(Item("ping", "telegram:9001", {})).text == "🔔 · ping"


# ---------------------------------------------------------------- what the customer reads


@pytest.mark.parametrize("language, chinese, english", [("zh", True, False), ("zh-CN", True, False),
                                                       ("en", False, True), (None, True, True)])
def test_the_acknowledgement_tells_the_ticket_number_the_promise_and_how_to_add_details(language, chinese, english):
    payload = {"ticket": NUMBER, "subject": "退款", "language": language,
               "first_response_due": "2026-11-24T07:00:00+00:00"}
    text = build_telegram(Item("ack", "555", payload)).text
    assert ("工单号：" + NUMBER in text) is chinese and ("请直接回复这条消息" in text) is chinese
    assert (f"your ticket number is {NUMBER}" in text) is english and ("reply to this message" in text) is english
    assert "2026-11-24 07:00 UTC" in text
    if chinese and english:
        assert text.index("工单号") < text.index("ticket number")  # Chinese first


def test_an_acknowledgement_without_a_due_time_makes_no_promise():
    text = build_telegram(Item("ack", "555", {"ticket": NUMBER, "language": "en"})).text
    assert "get back to you by" not in text and NUMBER in text


def test_a_reply_reaches_the_customer_as_written_under_a_short_header():
    written = "您好，<b>退款</b> 已处理 *明天* 到账 [链接](http://x) & _ok_\n第二行"
    message = build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": written, "language": "zh",
                                                  "agent": "Ann", "in_reply_to": None}))
    # Under it, the customer's way to say it is solved (tests/test_solved.py).
    assert message == TelegramSend(555, f"工单 {NUMBER}\n\n{written}", ((("✅ 问题已解决", f"solved:{NUMBER}"),),))
    english = build_telegram(Item("reply", "telegram:555", {"ticket": NUMBER, "text": "Hi", "language": "en"}))
    assert english.text == f"Ticket {NUMBER}\n\nHi"
    both = build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": "Hi", "language": None}))
    assert both.text.startswith(f"工单 / Ticket {NUMBER}\n")


def test_a_reply_without_text_cannot_be_sent():
    with pytest.raises(PermanentFailure, match="the reply has no text"):
        build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": "  "}))


def test_long_texts_are_cut_within_telegrams_limit_and_say_so():
    reply = build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": "字" * 5000, "language": "zh"})).text
    assert utf16_units(reply) <= TEXT_LIMIT and reply.startswith(f"工单 {NUMBER}\n\n字")
    assert reply.endswith("字…\n（消息过长，后面的内容已省略。）")
    # Emoji take two UTF-16 units; a cut never leaves half of one.
    notice = build_telegram(Item("escalation", "telegram:9001", {"ticket": NUMBER, "text": "😀" * 3000})).text
    assert utf16_units(notice) <= TEXT_LIMIT and utf16_units(notice) > TEXT_LIMIT - 80
    notice.encode("utf-8")  # no lone surrogate
    assert notice.endswith(f"😀…\n(cut here: the rest is in `paidan tickets show {NUMBER}`)")
    exactly = "a" * (TEXT_LIMIT - len(f"Ticket {NUMBER}\n\n"))
    assert build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": exactly, "language": "en"})).text.endswith("a")


# ---------------------------------------------------------------- who can be reached


def test_a_file_item_becomes_a_document_captioned_with_its_ticket_unless_the_file_is_gone_or_too_big(monkeypatch):
    from connectors.telegram import send as send_module

    item = Item("file", "telegram:7001", {"ticket": NUMBER, "attachment_id": 5, "filename": "log.txt",
                                          "received_at": "2026-11-24T03:00:00+00:00"})
    stored = {5: ("log.txt", b"ERROR 502 at checkout")}
    message = build_telegram(item, load_file=stored.get)
    assert message.chat_id == 7001 and message.documents[0].data == b"ERROR 502 at checkout"
    assert message.text == f"📎 {NUMBER} · log.txt · 2026-11-24 03:00 UTC"
    with pytest.raises(PermanentFailure, match="attachment #5 is no longer stored"):
        build_telegram(item, load_file={}.get)
    with pytest.raises(PermanentFailure, match="names no attachment"):
        build_telegram(item)
    monkeypatch.setattr(send_module, "UPLOAD_LIMIT", 10)
    with pytest.raises(PermanentFailure, match="Telegram takes files up to 50 MB"):
        build_telegram(item, load_file=stored.get)


@pytest.mark.parametrize("recipient, chat_id", [("telegram:7001", 7001), ("555", 555), ("telegram:-100123", -100123)])
def test_telegram_recipients_become_chats(recipient, chat_id):
    assert build_telegram(Item("triage", recipient, {"ticket": NUMBER, "text": "x"})).chat_id == chat_id


@pytest.mark.parametrize("recipient, says", [
    ("agent:3", r"agent #3 has no Telegram id.*`paidan agents set NAME --telegram-id ID`"),
    ("role:supervisor", r"nobody in 'role:supervisor'.*`paidan agents add NAME --role supervisor --telegram-id ID`"),
    ("kehu@example.com", "is an email address, not a Telegram chat"),
    ("telegram:@someone", "is not a Telegram chat id"),
])
def test_recipients_telegram_cannot_reach_fail_for_good_with_what_to_do(recipient, says):
    with pytest.raises(PermanentFailure, match=says):
        build_telegram(Item("escalation", recipient, {"ticket": NUMBER, "text": "x"}))


# ---------------------------------------------------------------- the sender, against a loopback Bot API


@pytest.fixture
def bot_loop():
    """An event loop in its own thread, as `paidan serve` runs the bot while deliver_due works in another."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bot-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def fake():
    with FakeBotAPI(token="123456:TEST") as api:
        yield api


def make_send(base: str, token: str, loop: asyncio.AbstractEventLoop, request=None, timeout: float = 5):
    bot = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(base)))
    if request is not None:
        request.addfinalizer(lambda: asyncio.run_coroutine_threadsafe(bot.session.close(), loop).result(5))
    return sync_send(TelegramSender(bot), loop, timeout=timeout)


@pytest.fixture
def send(fake, bot_loop, request):
    return make_send(fake.base, fake.token, bot_loop, request)


def test_the_text_and_the_buttons_arrive_as_plain_text(fake, send):
    text = "🆕 GD20261124001 · <b>not bold</b> *not bold* _x_ [a](b)"
    send(TelegramSend(7001, text, ((("✅ Accept", "accept:GD20261124001"), ("❌ Decline", "decline:GD20261124001")),)))
    [call] = fake.requests("sendMessage")
    assert call["chat_id"] == 7001 and call["text"] == text
    assert call.get("parse_mode") in (None, "")
    assert call["link_preview_options"] == {"is_disabled": True}  # Telegram fetches no link we pass on
    assert call["reply_markup"]["inline_keyboard"] == [[
        {"text": "✅ Accept", "callback_data": "accept:GD20261124001"},
        {"text": "❌ Decline", "callback_data": "decline:GD20261124001"},
    ]]
    send(TelegramSend(555, "您好"))
    assert "reply_markup" not in fake.requests("sendMessage")[1]


def test_an_agents_files_reach_a_telegram_customer_as_one_message_captioned_with_the_reply(fake, send):
    stored = {1: ("步骤.pdf", b"%PDF steps"), 2: ("screen.png", b"\x89PNG shot")}
    files = [{"id": 1, "filename": "步骤.pdf", "size": 10}, {"id": 2, "filename": "screen.png", "size": 9}]
    two = build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": "请按附件操作", "language": "zh",
                                               "attachments": files}), load_file=stored.get)
    send(two)
    [first, second] = fake.requests("sendMediaGroup")[0]["media"]
    assert first["caption"] == f"工单 {NUMBER}\n\n请按附件操作" and "caption" not in second
    assert [first["media"]["filename"], second["media"]["filename"]] == ["步骤.pdf", "screen.png"]
    assert first["media"]["sha256"] == hashlib.sha256(b"%PDF steps").hexdigest()
    one = build_telegram(Item("reply", "555", {"ticket": NUMBER, "text": "", "language": "en",
                                               "attachments": files[1:]}), load_file=stored.get)
    send(one)
    [document] = fake.requests("sendDocument")
    assert (document["caption"], document["document"]["filename"]) == (f"Ticket {NUMBER}", "screen.png")
    assert fake.requests("sendMessage") == []


def test_a_telegram_reply_with_files_keeps_its_text_within_a_caption(engine):
    from paidan.db import transaction
    from router import actions
    from router.agents import add_agent
    from router.config import RouterConfig
    from router.intake import Intake

    with transaction(engine) as session:
        add_agent(session, "Sue", skills=[], role="supervisor", telegram_id=9001)
    number = Intake(engine, clock=lambda: NOW).accept_now(telegram_message(555, "退款")).ticket_number
    shot = Attachment("screen.png", "image/png", b"\x89PNG")
    with transaction(engine) as session, pytest.raises(ActionRefused, match="at most 1000 characters"):
        actions.reply(session, number, "Sue", "长" * 1001, RouterConfig(), NOW, attachments=(shot,))
    with transaction(engine) as session, pytest.raises(ActionRefused, match="11 files is more than one reply"):
        actions.reply(session, number, "Sue", "x", RouterConfig(), NOW, attachments=(shot,) * 11)
    with transaction(engine) as session:
        outcome = actions.reply(session, number, "Sue", "长" * 1000, RouterConfig(), NOW, attachments=(shot,))
    assert [f["filename"] for f in outcome.data["attachments"]] == ["screen.png"]


@pytest.mark.parametrize("code, description, retry_after, failure, says", [
    (429, "Too Many Requests: retry after 7", 7, TemporaryFailure, "retry after 7 s"),
    (403, "Forbidden: bot was blocked by the user", None, PermanentFailure, "chat 7001 cannot be written to.*blocked"),
    (400, "Bad Request: chat not found", None, PermanentFailure, "refused the message to chat 7001.*chat not found"),
    (502, "Bad Gateway", None, TemporaryFailure, "server error"),
])
def test_telegrams_errors_become_temporary_or_permanent_failures(fake, send, code, description, retry_after,
                                                                  failure, says):
    fake.fail_next("sendMessage", code, description, retry_after=retry_after)
    with pytest.raises(failure, match=says):
        send(TelegramSend(7001, "hello"))
    send(TelegramSend(7001, "hello"))  # the next one goes through


def test_a_refused_token_is_a_setting_to_fix_so_the_queue_waits(fake, bot_loop, request):
    send = make_send(fake.base, "654321:WRONG", bot_loop, request)
    with pytest.raises(TemporaryFailure, match="refused the bot token.*401"):
        send(TelegramSend(7001, "hello"))


def test_an_unreachable_bot_api_is_temporary(bot_loop, request):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    send = make_send(f"http://127.0.0.1:{port}", "123456:TEST", bot_loop, request)
    with pytest.raises(TemporaryFailure, match="could not be reached"):
        send(TelegramSend(7001, "hello"))


def test_a_bot_api_that_does_not_answer_in_time_is_temporary(bot_loop):
    class Hanging:
        async def send(self, message):
            await asyncio.sleep(5)

    with pytest.raises(TemporaryFailure, match="did not answer within 0.1 s"):
        sync_send(Hanging(), bot_loop, timeout=0.1)(TelegramSend(1, "x"))


# ---------------------------------------------------------------- deliver_due over the real outbox


SCREENSHOT = Attachment("截图.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)


def telegram_message(user: int, text: str, *, at: datetime = NOW, ticket: str | None = None,
                     attachments: tuple[Attachment, ...] = ()) -> InboundMessage:
    return InboundMessage(channel=Channel.TELEGRAM, external_id=f"{user}:{uuid.uuid4().hex[:8]}", text=text,
                          received_at=at, raw=b"{}", thread_refs=ThreadRefs(ticket_number=ticket),
                          sender=Sender((Identity(IdentityKind.TELEGRAM, str(user)),), "王"), attachments=attachments)


def make_every_kind(engine) -> dict[str, str]:
    """Tickets and actions that make the router queue each of its kinds, through its real code."""
    from paidan.db import transaction
    from router import actions, surveys, waiting
    from router.agents import add_agent
    from router.assignment import expire_offers
    from router.config import RouterConfig
    from router.intake import Intake
    from router.routing import route_pending
    from router.sla import sweep

    config = RouterConfig()

    def arrive(msg: InboundMessage, at: datetime = NOW) -> str:
        number = Intake(engine, clock=lambda: at).accept_now(msg).ticket_number
        with transaction(engine) as session:
            route_pending(session, KeywordClassifier(), config, at)
        return number

    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], telegram_id=7001).online = True
        add_agent(session, "Sue", skills=[], role="supervisor", telegram_id=9001).on_call = True
        add_agent(session, "Zed", skills=[], role="supervisor")  # no Telegram id: cannot be told there
    refund = arrive(telegram_message(555, "我要退款，订单 20261103884512", attachments=(SCREENSHOT,)))  # ack + offer
    arrive(telegram_message(556, "系统宕机了，全部下单失败"))  # P0 nobody can take: on call, then SLA
    arrive(telegram_message(557, "lowconf 你好"))  # unsure: triage
    late = arrive(telegram_message(558, "我要退款 第二单"))  # offered to Ann, never accepted
    with transaction(engine) as session:
        actions.accept(session, refund, "Ann", config, NOW)
        actions.reply(session, refund, "Ann", "<b>收到</b>，正在处理 *退款*", config, NOW)
        actions.send_files(session, refund, "Ann", config, NOW)  # the customer's screenshot, to Ann's chat
        actions.reply(session, refund, "Ann", "@Sue 这单退款需要你批准", config, NOW, public=False)  # asks Sue
    arrive(telegram_message(555, "还没到账", at=NOW + timedelta(minutes=2), ticket=refund), NOW + timedelta(minutes=2))
    waits = arrive(telegram_message(559, "发票抬头写错了"))  # waits on its customer, who is reminded
    with transaction(engine) as session:
        actions.accept(session, waits, "Ann", config, NOW)
        actions.wait_for_customer(session, waits, "Ann", config, NOW)
        actions.follow_up(session, waits, "Ann", config, NOW, after=timedelta(minutes=30), note="催客户")
    solved = arrive(telegram_message(560, "我要退款 第三单"))  # its customer says it is solved: Ann hears
    with transaction(engine) as session:
        actions.accept(session, solved, "Ann", config, NOW)
        actions.customer_resolves(session, solved, ("telegram", "560"), config, NOW)
    with transaction(engine) as session:
        waiting.remind(session, replace(config, remind_waiting_after=timedelta(minutes=30)), NOW + timedelta(hours=1))
    with transaction(engine) as session:
        expire_offers(session, config, NOW + timedelta(minutes=11))
    with transaction(engine) as session:
        sweep(session, config, NOW + timedelta(hours=5))
    with transaction(engine) as session:  # resolved: a survey to the customer, whose low rating the supervisors hear of
        actions.resolve(session, refund, "Sue", config, NOW + timedelta(hours=5))
        survey = surveys.survey_for_ticket(session, refund)
        surveys.answer(session, survey.id, rating=1, comment="太慢", now=NOW + timedelta(hours=5))
    return {"refund": refund, "late": late}


def deliver(engine, send, now: datetime):
    from router import delivery

    build = partial(build_telegram, load_file=partial(delivery.attachment_file, engine))
    return deliver_due(partial(delivery.claim_due, engine, "telegram", lease=timedelta(minutes=5)), build,
                       send, partial(delivery.mark_sent, engine), partial(delivery.mark_failed, engine), now=now)


def test_deliver_due_sends_every_kind_the_router_queued_and_records_what_became_of_each(engine, fake, send):
    tickets = make_every_kind(engine)
    with Session(engine) as session:
        rows = session.scalars(select(OutboxItem).where(OutboxItem.channel == "telegram")).all()
    assert {row.kind for row in rows} == set(router_outbox_kinds()), "a kind was not made; extend make_every_kind"
    unreachable = [row.id for row in rows if row.recipient.startswith("agent:")]
    assert unreachable  # Zed, who has no Telegram id

    # Flood control on the first send: the whole round waits the 3 s Telegram asked for, no sooner
    # and not the minute of an ordinary retry, and no item loses one of its attempts to it.
    fake.fail_next("sendMessage", 429, "Too Many Requests: retry after 3", retry_after=3)
    later = NOW + timedelta(hours=6)
    first = deliver(engine, send, later)
    assert first.sent == 0 and first.retried + first.failed == len(rows)
    assert len(fake.requests("sendMessage")) == 1
    assert deliver(engine, send, later + timedelta(seconds=2)) == DeliveryReport()
    again = deliver(engine, send, later + timedelta(seconds=4))
    assert (again.sent, again.failed) == (len(rows) - len(unreachable), len(unreachable) - first.failed)
    with Session(engine) as session:
        attempts = {row.attempts for row in session.scalars(select(OutboxItem)) if row.status == "sent"}
    assert attempts == {1}

    with Session(engine) as session:
        status = {row.id: (row.status, row.last_error) for row in session.scalars(select(OutboxItem))
                  if row.channel == "telegram"}
        failed_events = session.scalars(select(TicketEvent).where(TicketEvent.kind == "delivery_failed")).all()
    assert all(status[i][0] == "failed" and "agent #" in status[i][1] for i in unreachable)
    assert [s for s, _ in status.values()].count("sent") == len(rows) - len(unreachable)
    assert len(failed_events) == len(unreachable) and "paidan agents set" in failed_events[0].reason

    sent = fake.requests("sendMessage")
    to_customer = [call["text"] for call in sent if call["chat_id"] == 555]
    assert any(f"{tickets['refund']}" in text and "回复这条消息" in text for text in to_customer)  # the ack
    assert "<b>收到</b>，正在处理 *退款*" in "\n".join(to_customer)  # the reply, kept literal
    offers = [call for call in sent if call["chat_id"] == 7001 and "reply_markup" in call]
    assert {button["callback_data"] for call in offers for row in call["reply_markup"]["inline_keyboard"]
            for button in row} >= {f"accept:{tickets['late']}", f"decline:{tickets['late']}"}
    to_ann = "\n".join(call["text"] for call in sent if call["chat_id"] == 7001)
    assert f"💬 {tickets['refund']} · the customer wrote again" in to_ann
    assert f"📎 1 file(s) from the customer: /files {tickets['refund']}" in to_ann  # the offer says so
    [document] = fake.requests("sendDocument")
    assert document["chat_id"] == 7001 and document["caption"].startswith(f"📎 {tickets['refund']} · 截图.png")
    assert document["document"] == {"filename": "截图.png", "size": len(SCREENSHOT.data),
                                    "sha256": hashlib.sha256(SCREENSHOT.data).hexdigest()}
    to_sue = "\n".join(call["text"] for call in sent if call["chat_id"] == 9001)
    for kind in ("triage", "on_call", "escalation", "offer_expired"):
        icon, title, _ = STAFF_KINDS[kind]
        assert f" · {title}" in to_sue and icon in to_sue, kind


def test_customer_kinds_are_the_ones_the_router_sends_to_customers():
    # ack, reply, survey and reminder carry the customer's own Telegram id; every other kind goes to staff.
    assert CUSTOMER_KINDS == {"ack", "reply", "survey", "reminder"} and not CUSTOMER_KINDS & STAFF_KINDS.keys()
