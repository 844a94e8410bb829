"""Satisfaction surveys (router.surveys, paidan.surveys and the channels' parts), with real peers:
tickets come in through intake and are routed and resolved by the real router; the survey mail
goes to an aiosmtpd relay on 127.0.0.1; its link is opened by a real HTTP client against the web
app under uvicorn; Telegram answers go through the Dispatcher to the loopback Bot API stand-in."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.email.send import SmtpSender, build_outbox_email
from connectors.outbox import deliver_due
from connectors.telegram.send import TelegramSender, build_telegram
from connectors.telegram.survey import survey_button, survey_replied_to
from connectors.webform.surveys import SurveyTokens
from factories import KeywordClassifier, make_message
from models import Channel, Identity, IdentityKind, InboundMessage, Sender
from models.errors import InvalidInput, SurveyClosed
from models.message import SurveyView
from models.tables import Message, OutboxItem, Survey, Ticket, TicketEvent
from paidan.db import transaction
from paidan.surveys import SurveyDesk, survey_link
from paidan.telegram import Dispatcher
from paidan.web import build_app
from router import actions, surveys
from router.agents import add_agent
from router.config import RouterConfig
from router.delivery import claim_due, mark_failed, mark_sent
from router.intake import Intake
from router.queries import TicketQueries
from router.routing import route_pending
from telegram_api import FakeBotAPI, run_with_bot
import test_email_send
from test_email_send import relay_config
from webfixtures import browser  # noqa: F401 — the fixture
from webfixtures import chromium_missing, csrf_in, make_settings, serve

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai: business hours
CONFIG = RouterConfig()
REFUND = "我要退款，订单 20261103884512"  # request/service/P2 for the keyword classifier
ANN, SUE, CUSTOMER, STRANGER = 7001, 9001, 555001, 999001
LEASE = timedelta(minutes=5)
relay = test_email_send.relay  # the fixture: an aiosmtpd relay on 127.0.0.1, port 0, that records what it takes


# ---------------------------------------------------------------- set-up


@pytest.fixture
def staff(engine):
    """Ann does service tickets; Sue supervises. Both are in the agent console on Telegram."""
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], seniority=2, telegram_id=ANN).online = True
        add_agent(session, "Sue", skills=["service", "technical", "transaction"], role="supervisor",
                  telegram_id=SUE)
    return engine


def new_ticket(engine, message: InboundMessage | None = None, *, at: datetime = NOW) -> str:
    message = message or make_message(text=REFUND, email=f"kehu.{uuid.uuid4().hex[:8]}@example.com", received_at=at)
    number = Intake(engine, clock=lambda: at).accept_now(message).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, at)
    return number


def telegram_message(text: str = REFUND, customer: int = CUSTOMER) -> InboundMessage:
    return InboundMessage(channel=Channel.TELEGRAM, external_id=f"{customer}:{uuid.uuid4().hex[:8]}", text=text,
                          received_at=NOW, raw=b"{}", language="zh",
                          sender=Sender((Identity(IdentityKind.TELEGRAM, str(customer)),), "王芳"))


def act(engine, action, number, actor, *, at: datetime = NOW, config: RouterConfig = CONFIG, **kwargs):
    with transaction(engine) as session:
        return action(session, number, actor, config=config, now=at, **kwargs)


def resolved(engine, message: InboundMessage | None = None, *, config: RouterConfig = CONFIG) -> str:
    """A ticket Ann accepted and resolved."""
    number = new_ticket(engine, message)
    act(engine, actions.accept, number, "Ann")
    act(engine, actions.resolve, number, "Ann", config=config)
    return number


def survey_of(engine, number: str) -> Survey | None:
    with Session(engine, expire_on_commit=False) as session:
        return surveys.survey_for_ticket(session, number)


def rows(engine, model, *where) -> list:
    with Session(engine) as session:
        return list(session.scalars(select(model).where(*where).order_by(model.id)))


def outbox(engine, kind: str, number: str | None = None) -> list[OutboxItem]:
    where = [OutboxItem.kind == kind]
    if number:
        where.append(OutboxItem.ticket_id == select(Ticket.id).where(Ticket.number == number).scalar_subquery())
    return rows(engine, OutboxItem, *where)


def events(engine, number: str, kind: str) -> list[TicketEvent]:
    with Session(engine) as session:
        return list(session.scalars(select(TicketEvent).join(Ticket).where(Ticket.number == number,
                                                                           TicketEvent.kind == kind)))


# ---------------------------------------------------------------- asking once, in the resolving transaction


def test_resolving_asks_the_customer_once_even_after_a_reopen(staff):
    number = resolved(staff)
    survey = survey_of(staff, number)
    [item] = outbox(staff, "survey", number)
    assert survey is not None and survey.channel == "email" and survey.sent_at == NOW and survey.rating is None
    with Session(staff) as session:
        assert survey.agent_id == actions.resolve_agent(session, "Ann").id
    assert item.channel == "email" and item.recipient.startswith("kehu.") and item.payload["survey_id"] == survey.id
    assert item.payload["ticket"] == number and item.dedupe_key == f"survey:{survey.id}"
    assert len(events(staff, number, "survey_sent")) == 1

    act(staff, actions.reopen, number, "Sue", reason="客户说还没到账", at=NOW + timedelta(hours=1))
    act(staff, actions.resolve, number, "Sue", at=NOW + timedelta(hours=2))
    assert len(rows(staff, Survey)) == 1 and len(outbox(staff, "survey")) == 1
    assert len(events(staff, number, "survey_sent")) == 1


def test_no_survey_when_turned_off_unreachable_or_machine_written(staff):
    off = resolved(staff, config=RouterConfig(surveys=False))
    # A web visitor who left only a phone number cannot be asked (no email, no Telegram).
    phone_only = resolved(staff, make_message(text=REFUND, email=None, phone="+8613800138000", channel=Channel.WEB,
                                              received_at=NOW))
    # An auto-reply opens a ticket that is closed from the start; reopened and resolved, it is still a robot's.
    robot = new_ticket(staff, make_message(text="I am out of the office", email="robot@example.com",
                                           flags=("auto_reply",), channel=Channel.EMAIL, received_at=NOW))
    act(staff, actions.reopen, robot, "Sue", reason="look at it")
    act(staff, actions.resolve, robot, "Sue")
    assert [survey_of(staff, n) for n in (off, phone_only, robot)] == [None, None, None]
    assert outbox(staff, "survey") == []


def test_a_merged_ticket_is_not_asked(staff):
    number = new_ticket(staff)
    with transaction(staff) as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == number))
        ticket.state = "merged"
        assert surveys.create_survey(session, ticket, agent_id=None, config=CONFIG, now=NOW) is None


# ---------------------------------------------------------------- the rule for an answer (pure)


def test_record_answer_refuses_clearly_and_changes_only_what_changed():
    survey = Survey(id=1, ticket_id=1, customer_id=1, channel="email", sent_at=NOW, rating=None, comment="")
    first = surveys.record_answer(survey, 4, None, NOW + timedelta(days=1))
    assert (first.rating, first.changed, survey.answered_at) == (4, True, NOW + timedelta(days=1))
    assert surveys.record_answer(survey, 4, None, NOW + timedelta(days=2)).changed is False
    assert survey.answered_at == NOW + timedelta(days=1)
    commented = surveys.record_answer(survey, None, "  很快\x00  ", NOW + timedelta(days=3))
    assert (commented.rating, commented.comment, commented.low) == (4, "很快", False)
    for bad in (0, 6, True, "5"):
        with pytest.raises(InvalidInput, match="rating"):
            surveys.record_answer(survey, bad, None, NOW)
    with pytest.raises(InvalidInput, match="comment.*characters"):
        surveys.record_answer(survey, 2, "x" * (surveys.MAX_COMMENT_CHARS + 1), NOW)
    with pytest.raises(SurveyClosed, match="closed on 2026-12-08.*nothing was recorded"):
        surveys.record_answer(survey, 1, None, NOW + surveys.ANSWER_WINDOW)
    assert (survey.rating, survey.comment) == (4, "很快")


def test_survey_tokens_are_signed_and_bound_to_their_ticket():
    tokens = SurveyTokens(b"secret")
    token = tokens.issue(7, "GD20261124001")
    view = SurveyView(7, "GD20261124001", "", None, None, "", None, NOW, False)
    assert SurveyTokens.survey_id(token) == 7 and tokens.valid(token, view)
    assert not SurveyTokens(b"other").valid(token, view)
    assert not tokens.valid(token, SurveyView(7, "GD20261124002", "", None, None, "", None, NOW, False))
    assert not tokens.valid(token[:-1] + ("A" if token[-1] != "A" else "B"), view)
    assert SurveyTokens.survey_id("7") is None and SurveyTokens.survey_id("x.abc") is None


# ---------------------------------------------------------------- by email and on the web page


def test_the_survey_mail_links_to_a_page_where_only_a_post_records_the_answer(staff, relay):
    number = resolved(staff)
    clock = {"now": NOW + timedelta(days=1)}
    desk = SurveyDesk(staff, clock=lambda: clock["now"])
    app = build_app(make_settings(), Intake(staff).accept, TicketQueries(staff).ticket_view, surveys=desk.store())
    with serve(app) as url:
        config = relay_config(relay.port)
        build = partial(build_outbox_email, config=config, survey_link=survey_link(make_settings(public_url=url)))
        report = deliver_due(partial(claim_due, staff, "email", lease=LEASE), build, SmtpSender(config).send,
                             partial(mark_sent, staff), partial(mark_failed, staff), now=NOW)
        assert report.failed == 0 and report.retried == 0
        [mail] = [m for m in relay.accepted if number in m["Subject"] and "满意" in m["Subject"]]
        assert mail["Auto-Submitted"] == "auto-generated"  # RFC 3834: nothing of the customer's prompted it
        body = mail.get_content()
        link = re.search(rf"{re.escape(url)}/survey/\S+?(?=\s|$)", body).group(0)
        assert f"{link}?rating=1" in body and f"{link}?rating=5" in body

        with httpx.Client(headers={"Accept-Language": "en"}, timeout=30) as browser:
            # A mail scanner (or the customer) opening the links records nothing.
            page = browser.get(link)
            preselected = browser.get(f"{link}?rating=2")
            assert page.status_code == preselected.status_code == 200
            assert number in page.text and 'name="rating" value="5"' in page.text
            assert re.search(r'value="2" id="rating-2" checked', preselected.text)
            assert not re.search(r"checked", page.text)
            assert survey_of(staff, number).answered_at is None

            no_csrf = browser.post(link, data={"rating": "2", "comment": "x"})
            assert no_csrf.status_code == 403 and survey_of(staff, number).rating is None

            sent = browser.post(link, data={"csrf_token": csrf_in(preselected.text), "rating": "2",
                                            "comment": "等了三天才有人回复"})
            assert sent.status_code == 200 and "Thank you for your answer" in sent.text, sent.text
            stored = survey_of(staff, number)
            assert (stored.rating, stored.comment, stored.answered_at) == (2, "等了三天才有人回复", clock["now"])
            [low] = outbox(staff, "low_rating", number)
            assert low.recipient == f"telegram:{SUE}" and low.payload["rating"] == 2 and low.payload["resolved_by"] == "Ann"
            notice = build_telegram(low).text
            assert number in notice and "2/5" in notice and "Ann" in notice and "等了三天才有人回复" in notice

            # Changed within the window: stored again, and a good rating tells nobody.
            changed = browser.post(link, data={"csrf_token": csrf_in(sent.text), "rating": "4", "comment": ""})
            assert changed.status_code == 200 and survey_of(staff, number).rating == 4
            assert len(outbox(staff, "low_rating")) == 1
            missing = browser.post(link, data={"csrf_token": csrf_in(changed.text), "comment": "?"})
            assert missing.status_code == 400 and "Choose a rating" in missing.text

            clock["now"] = NOW + surveys.ANSWER_WINDOW
            closed_page = browser.get(link)
            assert closed_page.status_code == 200 and "This survey has closed" in closed_page.text
            assert 'id="survey-form"' not in closed_page.text
            late = browser.post(link, data={"csrf_token": csrf_in(changed.text), "rating": "1"})
            assert late.status_code == 410 and survey_of(staff, number).rating == 4

            survey_id = survey_of(staff, number).id
            for forged in (f"{survey_id}.{'A' * 22}", f"{survey_id + 1}.{link.rsplit('.', 1)[1]}", "nonsense"):
                answer = browser.get(f"{url}/survey/{forged}")
                assert answer.status_code == 404 and "This survey link is not valid" in answer.text
                assert browser.post(f"{url}/survey/{forged}", data={"rating": "1"}).status_code == 404
    assert len(events(staff, number, "survey_answered")) == 2


# ---------------------------------------------------------------- in Telegram


def callback(update_id: int, user: int, data: str, text: str = "") -> dict:
    return {"update_id": update_id, "callback_query": {
        "id": f"cb{update_id}", "from": {"id": user, "is_bot": False, "first_name": "王芳", "language_code": "zh-hans"},
        "chat_instance": "1", "data": data,
        "message": {"message_id": 1, "date": 1_796_000_000, "chat": {"id": user, "type": "private"}, "text": text}}}


def reply(update_id: int, user: int, text: str, replied_text: str) -> dict:
    chat = {"id": user, "type": "private", "first_name": "王芳"}
    return {"update_id": update_id, "message": {
        "message_id": 100 + update_id, "date": 1_796_000_000 + update_id, "chat": chat, "text": text,
        "from": {"id": user, "is_bot": False, "first_name": "王芳", "language_code": "zh-hans"},
        "reply_to_message": {"message_id": 2, "date": 1_796_000_000, "chat": chat, "text": replied_text}}}


class _DayAfter(datetime):
    """`datetime` whose now() is a day after NOW: what the Telegram handlers (paidan.surveys) take as the
    time of the customer's answer. On the real clock the survey sent at NOW closes 14 days later
    (2026-12-08), and every press after that would be refused as late."""

    @classmethod
    def now(cls, tz=None):
        at = NOW + timedelta(days=1)
        return at.astimezone(tz) if tz is not None else at.replace(tzinfo=None)


def test_a_telegram_customer_rates_with_a_button_and_a_reply_to_the_survey_is_a_comment(staff, monkeypatch):
    import paidan.surveys

    monkeypatch.setattr(paidan.surveys, "datetime", _DayAfter)
    number = resolved(staff, telegram_message())
    survey = survey_of(staff, number)
    assert survey.channel == "telegram"
    messages_before = len(rows(staff, Message))
    intake = Intake(staff)

    def texts_to(fake, chat: int) -> list[dict]:
        return [r for r in fake.requests("sendMessage") if r.get("chat_id") == chat]

    with FakeBotAPI() as fake:
        async def scenario(bot):
            # The outbox's question, sent as the Telegram sender sends it.
            for item in claim_due(staff, "telegram", now=NOW, lease=LEASE):
                if item.kind == "survey":
                    await TelegramSender(bot).send(build_telegram(item))
            [question] = [r for r in texts_to(fake, CUSTOMER) if "reply_markup" in r]
            dispatcher = Dispatcher(bot, staff, CONFIG, intake.accept)
            await dispatcher.handle(callback(1, CUSTOMER, f"survey:{survey.id}:2", question["text"]))
            after_low = survey_of(staff, number)
            await dispatcher.handle(callback(2, CUSTOMER, f"survey:{survey.id}:1", question["text"]))
            await dispatcher.handle(callback(1, CUSTOMER, f"survey:{survey.id}:2", question["text"]))  # redelivered
            await dispatcher.handle(callback(3, STRANGER, f"survey:{survey.id}:5", question["text"]))
            follow_up = [r for r in texts_to(fake, CUSTOMER) if "哪里做得不好" in r["text"]][0]
            await dispatcher.handle(reply(4, CUSTOMER, "退款拖了一周，客服也不回消息", follow_up["text"]))
            await dispatcher.handle(reply(4, CUSTOMER, "退款拖了一周，客服也不回消息", follow_up["text"]))
            return question, after_low, follow_up

        try:
            question, after_low, follow_up = run_with_bot(fake, scenario)
        finally:
            intake.close()
        answers = fake.requests("answerCallbackQuery")

    buttons = [b["callback_data"] for b in question["reply_markup"]["inline_keyboard"][0]]
    assert buttons == [f"survey:{survey.id}:{r}" for r in range(1, 6)]
    assert number in question["text"] and survey_replied_to(question["text"]) == number
    assert survey_button(buttons[0]) == (survey.id, 1)
    assert after_low.rating == 2
    assert follow_up["reply_markup"]["force_reply"] is True and survey_replied_to(follow_up["text"]) == number
    # The redelivered press changed nothing; the stranger was told it is not theirs.
    stranger = [a for a in answers if a["callback_query_id"] == "cb3"]
    assert stranger and stranger[0]["show_alert"] is True and "不是发给您的" in stranger[0]["text"]
    final = survey_of(staff, number)
    assert (final.rating, final.comment) == (1, "退款拖了一周，客服也不回消息")
    # The comment is the survey's, not a message on the ticket (and the ticket stays resolved).
    assert len(rows(staff, Message)) == messages_before
    with Session(staff) as session:
        assert session.scalar(select(Ticket.state).where(Ticket.number == number)) == "resolved"
        assert session.scalar(select(func.count()).select_from(TicketEvent)
                              .where(TicketEvent.kind == "survey_answered")) == 3  # 2, then 1, then the comment
    lows = outbox(staff, "low_rating", number)
    assert [(o.payload["rating"], o.payload["comment"]) for o in lows] == [
        (2, ""), (1, ""), (1, "退款拖了一周，客服也不回消息")]
    assert all(o.recipient == f"telegram:{SUE}" for o in lows)
    assert any("谢谢" in r["text"] for r in fake.requests("sendMessage") if r.get("chat_id") == CUSTOMER)


def test_tickets_show_prints_the_survey_answer(staff, database_url, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from paidan.cli import cli

    number = resolved(staff)
    with transaction(staff) as session:
        surveys.answer(session, survey_of(staff, number).id, rating=2, comment="太慢了", now=NOW + timedelta(hours=1))
    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    text = CliRunner().invoke(cli, ["tickets", "show", number], catch_exceptions=False)
    as_json = CliRunner().invoke(cli, ["tickets", "show", number, "--json"], catch_exceptions=False)
    assert text.exit_code == 0 and "survey:   2/5 (asked on email 2026-11-24T03:00): 太慢了" in text.output
    assert "survey_answered" in text.output
    assert '"rating": 2' in as_json.output and '"comment": "太慢了"' in as_json.output


@pytest.mark.browser
@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
def test_a_customer_answers_the_survey_page_in_chromium(staff, browser):
    number = resolved(staff)
    with Session(staff) as session:
        survey_id = surveys.survey_for_ticket(session, number).id
    settings = make_settings()
    # The page's clock a day after the survey was sent: on the real one it closes 14 days after NOW.
    app = build_app(settings, Intake(staff).accept, TicketQueries(staff).ticket_view,
                    surveys=SurveyDesk(staff, clock=lambda: NOW + timedelta(days=1)).store())
    with serve(app) as url:
        link = survey_link(make_settings(public_url=url))(survey_id, number)
        page = browser.new_context(locale="zh-CN").new_page()
        page.goto(f"{link}?rating=5")  # the "5" link in the mail
        assert page.locator("h1").inner_text() == "服务满意度调查" and number in page.locator(".intro").inner_text()
        assert page.is_checked("#rating-5") and survey_of(staff, number).rating is None  # opening records nothing
        page.check("#rating-4")
        page.fill("#comment", "回复很及时 👍")
        page.click("#survey-submit")
        assert page.locator("#survey-notice").is_visible()
        assert page.is_checked("#rating-4")  # the page shows what is stored, and can still be changed
    stored = survey_of(staff, number)
    assert (stored.rating, stored.comment) == (4, "回复很及时 👍")
