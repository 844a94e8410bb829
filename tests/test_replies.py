"""Saved replies: the store and its rules (router.replies), rendering by language with placeholders, the
`paidan replies` commands, and the agent console sending one through the same path as a typed reply."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.email.send import RelayConfig, build_outbox_email
from connectors.telegram.console import HELP, ConsoleCommand, ConsoleMistake, parse_console
from connectors.telegram.send import build_telegram
from factories import KeywordClassifier
from models import Channel, Identity, IdentityKind, InboundMessage, Sender
from models.errors import InvalidInput
from models.tables import Agent, CannedReply, Customer, Message, OutboxItem, Ticket, TicketEvent
from paidan.cli import cli
from paidan.db import transaction
from paidan.telegram_console import ConsoleAnswer, answer_agent
from router import replies
from router.config import RouterConfig

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
NUMBER = "GD20261123001"
REFUND_ZH = "{name}您好，工单 {ticket} 的退款已提交，3-5 个工作日内到账。—— {agent}"
REFUND_EN = "Hello {name}, the refund for {ticket} is on its way (3-5 working days). – {agent}"


def saved(session: Session, name: str = "refund", *, zh: str = REFUND_ZH, en: str = REFUND_EN, **more) -> CannedReply:
    return replies.add_reply(session, name, zh=zh, en=en, by="test", now=NOW, **more)


# ---------------------------------------------------------------- the store and its rules


def test_a_saved_reply_is_found_by_name_whatever_the_case(engine):
    with transaction(engine) as session:
        assert saved(session, "Refund").name == "refund"
        saved(session, "退款", en="")
    with Session(engine) as session:
        for asked in ("refund", "REFUND", " Refund ", "!refund", "！refund"):
            assert replies.get_reply(session, asked).name == "refund"
        assert replies.find_reply(session, "退款").text_en == ""
        assert replies.find_reply(session, "nothing") is None
        with pytest.raises(replies.UnknownReply) as unknown:
            replies.get_reply(session, "refnd")
        assert unknown.value.name == "refnd" and unknown.value.close == ("refund",)
        assert [r.name for r in replies.list_replies(session)] == ["refund", "退款"]


@pytest.mark.parametrize("name", ["", "!", "-refund", "_x", "two words", "refund!", "a" * 33, "add", "Remove"])
def test_names_are_short_slugs(engine, name):
    with transaction(engine) as session, pytest.raises(InvalidInput) as refused:
        saved(session, name)
    assert refused.value.field == "name"


@pytest.mark.parametrize("name", ["refund", "退款", "vip-sla", "p1_ack", "2fa", "a" * 32])
def test_names_may_be_any_script_with_dashes_and_underscores(engine, name):
    with transaction(engine) as session:
        assert saved(session, name).name == name


def test_a_name_is_taken_once_whatever_the_case(engine):
    with transaction(engine) as session:
        saved(session, "refund")
    with transaction(engine) as session, pytest.raises(InvalidInput, match="already exists; change it with"):
        saved(session, "REFUND")


@pytest.mark.parametrize("zh, en, says", [
    ("", "", "give the Chinese text, the English text, or both"),
    ("  ", "\x00", "give the Chinese text"),
    ("您好 {customer}", "", "zh: has an unknown placeholder {customer}; the placeholders are {ticket}, {name}, {agent}"),
    ("", "Order {order_id} is late", "en: has an unknown placeholder {order_id}"),
    ("", "Hello {0}", "unknown placeholder {0}"),
    ("", "Hello {name.__class__}", "unknown placeholder {name.__class__}"),
    ("", "a lone { brace", "en: has a lone '{'; write {{ for a brace"),
    ("一个 } 括号", "", "zh: has a lone '}'; write }} for a brace"),
    ("长" * 3001, "", "zh: is 3001 characters long; keep a saved reply under 3000"),
])
def test_a_bad_text_is_refused_when_saved_not_when_sent(engine, zh, en, says):
    with transaction(engine) as session, pytest.raises(InvalidInput) as refused:
        saved(session, zh=zh, en=en)
    assert says in str(refused.value)


def test_the_category_is_one_of_the_label_set(engine):
    with transaction(engine) as session:
        assert saved(session, "refund", category=" Service ").category == "service"
        saved(session, "hello")
        saved(session, "api-key", category="technical")
        with pytest.raises(InvalidInput, match="'shipping' is not a category; choose one of technical, service"):
            saved(session, "ship", category="shipping")
        assert [r.name for r in replies.list_replies(session, category="service")] == ["hello", "refund"]


def test_update_changes_what_is_given_and_remove_deletes(engine):
    with transaction(engine) as session:
        saved(session, category="service")
    with transaction(engine) as session:
        reply = replies.update_reply(session, "REFUND", en="Refund sent, {name}.", by="agent:Sue",
                                     now=NOW + timedelta(hours=1))
        assert (reply.text_zh, reply.text_en, reply.category) == (REFUND_ZH, "Refund sent, {name}.", "service")
        assert (reply.created_by, reply.updated_by, reply.updated_at) == ("test", "agent:Sue", NOW + timedelta(hours=1))
        assert replies.update_reply(session, "refund", zh="", category="", by="x", now=NOW).category is None
        with pytest.raises(InvalidInput, match="would have no text left"):
            replies.update_reply(session, "refund", en="", by="x", now=NOW)
        with pytest.raises(InvalidInput, match="unknown placeholder {order}"):
            replies.update_reply(session, "refund", en="{order}", by="x", now=NOW)
    with transaction(engine) as session:
        assert replies.get_reply(session, "refund").text_zh == ""
        assert replies.remove_reply(session, "Refund") == "refund"
        with pytest.raises(replies.UnknownReply):
            replies.remove_reply(session, "refund")
    with Session(engine) as session:
        assert replies.list_replies(session) == []


# ---------------------------------------------------------------- rendering


def reply_of(zh: str = REFUND_ZH, en: str = REFUND_EN) -> CannedReply:
    return CannedReply(name="refund", text_zh=zh, text_en=en)


@pytest.mark.parametrize("language, expected", [
    ("zh", "王芳您好，工单 GD20261123001 的退款已提交，3-5 个工作日内到账。—— Ann"),
    ("zh-hans", "王芳您好，工单 GD20261123001 的退款已提交，3-5 个工作日内到账。—— Ann"),
    ("en-US", "Hello 王芳, the refund for GD20261123001 is on its way (3-5 working days). – Ann"),
    (None, "王芳您好，工单 GD20261123001 的退款已提交，3-5 个工作日内到账。—— Ann\n\n"
           "Hello 王芳, the refund for GD20261123001 is on its way (3-5 working days). – Ann"),
    ("ja", "王芳您好，工单 GD20261123001 的退款已提交，3-5 个工作日内到账。—— Ann\n\n"
           "Hello 王芳, the refund for GD20261123001 is on its way (3-5 working days). – Ann"),
])
def test_render_picks_the_customers_language_and_fills_the_placeholders(language, expected):
    assert replies.render(reply_of(), language, ticket=NUMBER, customer=" 王芳 ", agent="Ann") == expected
    assert replies.rendered_language(reply_of(), language) == {"zh": "zh", "en": "en"}.get((language or "")[:2],
                                                                                           "zh+en")


def test_render_falls_back_to_the_other_language_and_a_polite_name():
    only_en = reply_of(zh="")
    assert replies.render(only_en, "zh", ticket=NUMBER) == \
        "Hello customer, the refund for GD20261123001 is on its way (3-5 working days). – "
    assert replies.rendered_language(only_en, "zh") == "en"
    only_zh = reply_of(en="")
    assert replies.render(only_zh, "en", ticket=NUMBER, agent="Bo").startswith("客户您好，工单 GD20261123001")
    assert replies.render(only_zh, None, ticket=NUMBER, agent="Bo").startswith("客户您好")  # one text, not two


def test_render_keeps_literal_braces_and_reads_placeholders_loosely():
    reply = reply_of(zh="", en='Send {{"order": {Ticket}}} to { agent }')
    assert replies.check_text("en", reply.text_en) == reply.text_en
    assert replies.render(reply, "en", ticket=NUMBER, agent="Ann") == 'Send {"order": GD20261123001} to Ann'


def ticket_from(engine, channel: Channel, text: str, *, language: str | None = None, name: str = "王芳",
                address: str | None = None) -> str:
    """A ticket from a customer on `channel`, routed by the real router (Ann or Bo gets it)."""
    from router.intake import Intake
    from router.routing import route_pending

    kind = IdentityKind.EMAIL if channel == Channel.EMAIL else IdentityKind.TELEGRAM
    address = address or ("wang@example.com" if channel == Channel.EMAIL else "555")
    message = InboundMessage(channel=channel, external_id=uuid.uuid4().hex, text=text, received_at=NOW,
                             raw=text.encode(), sender=Sender((Identity(kind, address),), name), language=language,
                             subject="退款" if channel == Channel.EMAIL and "退款" in text else "")
    number = Intake(engine, clock=lambda: NOW).accept_now(message).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), RouterConfig(), NOW)
    return number


@pytest.mark.parametrize("channel, text, language, expected", [
    (Channel.TELEGRAM, "hello, refund please", "zh-hans", "zh"),  # the channel said so: that wins
    (Channel.TELEGRAM, "我要退款", "en", "en"),
    (Channel.EMAIL, "我要退款，订单 20261103884512", None, "zh"),  # email says no language: the script does
    (Channel.EMAIL, "I want a refund for order 884512", None, "en"),
    (Channel.EMAIL, "20261103884512 ???", None, None),
])
def test_the_customers_language(engine, channel, text, language, expected):
    number = ticket_from(engine, channel, text, language=language)
    with Session(engine) as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == number))
        assert replies.customer_language(session, ticket) == expected


def test_the_customers_own_language_counts_when_the_ticket_has_none(engine):
    number = ticket_from(engine, Channel.EMAIL, "12345")
    with transaction(engine) as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == number))
        session.get(Customer, ticket.customer_id).language = "en-GB"
        assert replies.customer_language(session, ticket) == "en"


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def run(database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result

    return invoke


def test_the_cli_adds_lists_shows_edits_and_removes(run):
    out = run("replies", "add", "Refund", "--zh", REFUND_ZH, "--en", REFUND_EN, "--category", "service",
              "--as", "Sue").output
    assert out == "saved !refund (Chinese and English); agents send it with /reply GD… !refund\n"
    run("replies", "add", "退款", "--zh", "第一行\n第二行")
    listed = json.loads(run("replies", "list", "--json").output)
    assert [(r["name"], r["category"], r["created_by"]) for r in listed] == [("refund", "service", "Sue"),
                                                                          ("退款", None, listed[1]["created_by"])]
    assert listed[1]["created_by"].startswith("cli")
    table = run("replies", "list").output
    assert "!refund" in table and "!退款" in table and "第一行" in table and "第二行" not in table
    shown = run("replies", "show", "REFUND").output
    assert shown.startswith("!refund  category: service") and REFUND_ZH in shown and REFUND_EN in shown
    assert json.loads(run("replies", "show", "refund", "--json").output)["en"] == REFUND_EN

    assert run("replies", "edit", "refund", "--en", "", "--category", "").output == "changed !refund\n"
    shown = json.loads(run("replies", "show", "refund", "--json").output)
    assert (shown["en"], shown["category"], shown["zh"]) == ("", None, REFUND_ZH)

    removed = run("replies", "remove", "refund").output
    assert removed.startswith("removed !refund; it said:") and REFUND_ZH in removed
    assert [r["name"] for r in json.loads(run("replies", "list", "--json").output)] == ["退款"]


@pytest.mark.parametrize("args, says", [
    (("replies", "add", "refund"), "give the Chinese text, the English text, or both"),
    (("replies", "add", "refund", "--en", "Hi {customer}"), "unknown placeholder {customer}"),
    (("replies", "add", "two words", "--en", "Hi"), "is not a saved reply name"),
    (("replies", "add", "refund", "--en", "Hi", "--category", "shipping"), "'shipping' is not a category"),
    (("replies", "show", "nothing"), "no saved reply called 'nothing'"),
    (("replies", "remove", "nothing"), "no saved reply called 'nothing'"),
    (("replies", "edit", "nothing", "--en", "x"), "no saved reply called 'nothing'"),
    (("replies", "edit", "refund"), "say what to change: --zh, --en and/or --category"),
])
def test_cli_mistakes_are_one_readable_line(run, args, says):
    result = run(*args, ok=False)
    assert result.exit_code in (1, 2) and says in result.output and "Traceback" not in result.output


def test_the_cli_says_when_there_are_none(run):
    assert "no saved replies yet" in run("replies", "list").output
    run("replies", "add", "hi", "--en", "Hello!")
    assert "already exists" in run("replies", "add", "HI", "--en", "Hi", ok=False).output


# ---------------------------------------------------------------- the console's language


@pytest.mark.parametrize("text, reply_to, expected", [
    (f"/reply {NUMBER} !refund", None, ConsoleCommand("reply", NUMBER, saved="refund")),
    (f"/reply {NUMBER} !Refund 订单 884512 已查到\n第二行", None,
     ConsoleCommand("reply", NUMBER, text="订单 884512 已查到\n第二行", saved="Refund")),
    (f"/reply {NUMBER} ！退款", None, ConsoleCommand("reply", NUMBER, saved="退款")),
    ("/reply !refund", f"🆕 {NUMBER} · new ticket", ConsoleCommand("reply", NUMBER, saved="refund")),
    ("!refund 稍等", f"🆕 {NUMBER} · new ticket", ConsoleCommand("reply", NUMBER, text="稍等", via="reply", saved="refund")),
    # Not a saved reply: no name right after the mark.
    (f"/reply {NUMBER} !!! 好的", None, ConsoleCommand("reply", NUMBER, text="!!! 好的")),
    # `!!word`: text that really starts with "!word", one mark dropped.
    (f"/reply {NUMBER} !!Important: 请今天处理", None, ConsoleCommand("reply", NUMBER, text="!Important: 请今天处理")),
    ("！！退款 已到账", f"{NUMBER}", ConsoleCommand("reply", NUMBER, text="！退款 已到账", via="reply")),
    ("! 好的", f"{NUMBER}", ConsoleCommand("reply", NUMBER, text="! 好的", via="reply")),
    ("/replies", None, ConsoleCommand("replies")),
    ("/replies@paidan_bot 退款", None, ConsoleCommand("replies", saved="退款")),
    ("/replies add refund 您好 {name} || Hello {name}\nsecond line", None,
     ConsoleCommand("add_reply", saved="refund", zh="您好 {name}", en="Hello {name}\nsecond line")),
    ("/replies ADD 退款 只有中文", None, ConsoleCommand("add_reply", saved="退款", zh="只有中文")),
    ("/replies add hi Hello there", None, ConsoleCommand("add_reply", saved="hi", en="Hello there")),
    ("/replies edit refund || Hi {name}", None, ConsoleCommand("edit_reply", saved="refund", en="Hi {name}")),
    ("/replies remove refund", None, ConsoleCommand("remove_reply", saved="refund")),
])
def test_the_console_reads_saved_replies(text, reply_to, expected):
    assert parse_console(text, reply_to_text=reply_to) == expected


@pytest.mark.parametrize("text, says", [
    ("/replies add refund", "/replies add needs a name and the text, Chinese || English: /replies add refund 您好"),
    ("/replies edit", "/replies edit needs a name and the text"),
    ("/replies remove", "/replies remove needs the name of one saved reply: /replies remove refund"),
    ("/replies refund please", "/replies takes add, edit or remove, or one name to show"),
    ("/reply !refund", "'!refund' is not a ticket number (GD, the date and a sequence number, e.g. "
                       "GD20261123001): /reply GD20261123001 !refund"),  # nothing names the ticket
])
def test_console_mistakes_with_saved_replies(text, says):
    parsed = parse_console(text)
    assert isinstance(parsed, ConsoleMistake) and parsed.message.startswith(says)


def test_help_tells_of_saved_replies():
    assert "/replies" in HELP and "!名称" in HELP


# ---------------------------------------------------------------- the console, end to end

ANN, BO, SUE = 7001, 7002, 9001


@pytest.fixture
def staff(engine):
    """Ann and Bo do service tickets; Sue supervises; a saved `refund` reply in both languages."""
    from router.agents import add_agent

    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], seniority=2, telegram_id=ANN).online = True
        add_agent(session, "Bo", skills=["service", "transaction"], telegram_id=BO).online = True
        add_agent(session, "Sue", skills=["service"], role="supervisor", telegram_id=SUE)
        saved(session)
    return engine


def say(engine, telegram_id: int, text: str, *, reply_to: str | None = None, once: str | None = None) -> ConsoleAnswer:
    return answer_agent(engine, RouterConfig(), telegram_id, text, reply_to, now=NOW, once=once)


def holder(engine, number: str) -> tuple[int, str]:
    """The Telegram id and name of the agent the ticket was offered to."""
    with Session(engine) as session:
        agent = session.get(Agent, session.scalar(select(Ticket.assigned_agent_id).where(Ticket.number == number)))
        return agent.telegram_id, agent.name


def customer_replies(engine) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == "reply").order_by(OutboxItem.id)).all()


def test_a_saved_reply_reaches_a_telegram_customer_in_their_language(staff):
    number = ticket_from(staff, Channel.TELEGRAM, "我要退款", language="zh-hans")
    agent, name = holder(staff, number)

    answer = say(staff, agent, f"/reply {number} !Refund 订单 884512 已查到")
    assert answer.text.splitlines()[0] == f"reply to {number} queued to the customer on telegram"
    assert "sent the saved reply !refund (zh)" in answer.text
    [item] = customer_replies(staff)
    expected = (f"王芳您好，工单 {number} 的退款已提交，3-5 个工作日内到账。—— {name}\n\n订单 884512 已查到")
    assert (item.channel, item.recipient, item.payload["text"]) == ("telegram", "555", expected)
    assert build_telegram(item).text == f"工单 {number}\n\n{expected}"  # what the customer's chat shows
    with Session(staff) as session:  # stored on the ticket as the agent's reply, like a typed one
        sent = session.scalars(select(Message).where(Message.direction == "out")).all()
        assert [(m.text, m.public, m.author_agent_id is not None) for m in sent] == [(expected, True, True)]
        ticket = session.scalar(select(Ticket).where(Ticket.number == number))
        assert ticket.state == "in_progress" and ticket.first_response_at == NOW  # it counts as the first response
        [replied] = session.scalars(select(TicketEvent).where(TicketEvent.kind == "replied")).all()
        assert replied.data["saved_reply"] == "refund"  # the audit trail says which saved reply went out


def test_a_saved_reply_reaches_an_email_customer_in_the_language_they_wrote(staff):
    number = ticket_from(staff, Channel.EMAIL, "Hello, I want a refund for order 884512", name="")
    agent, name = holder(staff, number)

    answer = say(staff, agent, f"/reply {number} !refund")
    assert answer.text.startswith(f"reply to {number} queued to the customer on email")
    assert "sent the saved reply !refund (en)" in answer.text
    [item] = customer_replies(staff)
    expected = f"Hello customer, the refund for {number} is on its way (3-5 working days). – {name}"
    assert (item.channel, item.recipient, item.payload["text"]) == ("email", "wang@example.com", expected)
    mail = build_outbox_email(item, RelayConfig("127.0.0.1", 25, "support@example.com"))
    assert mail["To"] == "wang@example.com" and f"[{number}]" in mail["Subject"]
    assert mail.get_content().replace("\r\n", "\n").strip() == f"{expected}\n\n-- \n{name}"  # and the signature


def test_answering_a_ticket_message_with_a_saved_reply(staff):
    number = ticket_from(staff, Channel.TELEGRAM, "I want a refund", language="en")
    agent, name = holder(staff, number)
    answer = say(staff, agent, "！REFUND", reply_to=f"🆕 {number} · new ticket for you\nI want a refund")
    assert answer.text.startswith(f"reply to {number} queued to the customer on telegram")
    [item] = customer_replies(staff)
    assert item.payload["text"] == f"Hello 王芳, the refund for {number} is on its way (3-5 working days). – {name}"


def test_a_redelivered_update_sends_the_saved_reply_once(staff):
    number = ticket_from(staff, Channel.TELEGRAM, "我要退款", language="zh")
    agent, _ = holder(staff, number)
    first = say(staff, agent, f"/reply {number} !refund", once="telegram-update:77")
    again = say(staff, agent, f"/reply {number} !refund", once="telegram-update:77")
    assert first.text.startswith(f"reply to {number} queued")
    assert again.text.startswith(f"already done: this reply of {number} arrived twice and was carried out once")
    assert len(customer_replies(staff)) == 1


def test_show_suggests_the_saved_replies_of_the_tickets_category(staff):
    number = ticket_from(staff, Channel.TELEGRAM, "我要退款", language="zh")
    agent, _ = holder(staff, number)
    assert "saved replies for" not in say(staff, agent, f"/show {number}").text  # `refund` has no category
    with transaction(staff) as session:
        for name in ("shipping", "invoice", "a1", "a2", "a3"):
            saved(session, name, category="service")
        saved(session, "outage", category="technical")
    lines = say(staff, agent, f"/show {number}").text.splitlines()
    assert f"saved replies for service: !a1 !a2 !a3 !invoice !shipping (/reply {number} !name)" in lines
    with transaction(staff) as session:
        saved(session, "z9", category="service")
    assert any(line.startswith("saved replies for service: !a1 !a2 !a3 !invoice !shipping … (")
               for line in say(staff, agent, f"/show {number}").text.splitlines())


def test_an_unknown_name_gets_an_answer_the_agent_can_act_on(staff):
    number = ticket_from(staff, Channel.TELEGRAM, "我要退款", language="zh")
    agent, _ = holder(staff, number)
    assert say(staff, agent, f"/reply {number} !refnd", once="telegram-update:78").text == \
        ("no saved reply called 'refnd' (did you mean !refund?); /replies lists them (nothing was sent). "
         "To send text that starts with !, start it with !! instead")
    assert say(staff, agent, f"/reply {number} !shipping").text.startswith(
        "no saved reply called 'shipping'; /replies lists them (nothing was sent).")
    assert customer_replies(staff) == []
    # Nothing was committed, the update's key included: the same update, once the name exists, acts.
    with transaction(staff) as session:
        saved(session, "refnd", zh="好的", en="")
    assert say(staff, agent, f"/reply {number} !refnd", once="telegram-update:78").text.startswith(
        f"reply to {number} queued")


def test_a_saved_reply_obeys_the_rules_of_a_typed_one(staff):
    number = ticket_from(staff, Channel.TELEGRAM, "我要退款", language="zh")
    agent, name = holder(staff, number)
    other, other_name = (BO, "Bo") if agent == ANN else (ANN, "Ann")
    refused = say(staff, other, f"/reply {number} !refund")
    assert refused.text.startswith(f"you cannot reply to ticket {number}: it is held by {name}, not by {other_name}")
    assert say(staff, agent, "/reply GD20990101001 !refund").text.startswith("no ticket 'GD20990101001'")
    # Telegram's limit holds for the saved text and the agent's words together.
    too_long = say(staff, agent, f"/reply {number} !refund " + "请按以下步骤操作。" * 440)  # alone, it would fit
    assert "shorter replies (nothing was sent)" in too_long.text
    assert customer_replies(staff) == []
    assert say(staff, SUE, f"/reply {number} !refund").text.startswith(f"reply to {number} queued")  # a supervisor may


def test_supervisors_keep_the_saved_replies_from_telegram(staff):
    refused = say(staff, ANN, "/replies add hello 您好 || Hello")
    assert refused.text.startswith("常用回复由主管维护 · only supervisors and admins change the saved replies")

    added = say(staff, SUE, "/replies add Hello {name}您好，请问有什么可以帮您？ || Hi {name}, how can we help?",
                once="telegram-update:90")
    assert added.text == "saved !hello (中文 and English); send it with /reply GD… !hello"
    assert say(staff, SUE, "/replies add hello x", once="telegram-update:90").text.startswith("already done")
    assert say(staff, SUE, "/replies add HELLO again").text.startswith(
        "name: a saved reply called 'hello' already exists; change it with `replies edit hello`")
    assert "unknown placeholder {order}" in say(staff, SUE, "/replies add late 订单 {order} 已发货").text

    edited = say(staff, SUE, "/replies edit hello || Hello {name}!")
    assert edited.text == "changed !hello (中文 and English); send it with /reply GD… !hello"
    with Session(staff) as session:
        reply = replies.get_reply(session, "hello")
        assert (reply.text_zh, reply.text_en, reply.created_by, reply.updated_by) == \
            ("{name}您好，请问有什么可以帮您？", "Hello {name}!", "agent:Sue", "agent:Sue")

    listed = say(staff, ANN, "/replies").text.splitlines()
    assert listed[0] == "常用回复 · saved replies (2):"
    assert listed[1] == "!hello · {name}您好，请问有什么可以帮您？"
    assert listed[2].startswith("!refund · {name}您好，工单 {ticket} 的退款已提交") and listed[2].endswith("…")
    assert listed[-1].startswith("send one: /reply GD… !name")
    shown = say(staff, ANN, "/replies HELLO").text
    assert shown.splitlines() == ["!hello · updated by agent:Sue", "中文: {name}您好，请问有什么可以帮您？",
                                  "English: Hello {name}!"]
    assert say(staff, ANN, "/replies nothing").text.startswith("no saved reply called 'nothing'")

    assert say(staff, SUE, "/replies remove hello").text == "removed !hello"
    assert [r for r in say(staff, ANN, "/replies").text.splitlines() if r.startswith("!")][0].startswith("!refund")
    with transaction(staff) as session:
        replies.remove_reply(session, "refund")
    assert say(staff, ANN, "/replies").text.startswith("no saved replies yet; a supervisor adds one")
