"""Linking an email address to a Telegram chat with a mailed code (router.linking, paidan.linking).

The customer side runs through the real Dispatcher against the Bot API stand-in (FakeBotAPI); the
code is read from the mail the outbox actually handed to the recording SMTP relay on loopback.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import signal
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from functools import partial

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

import test_email_send
from connectors.email.send import SmtpSender, build_outbox_email
from connectors.outbox import DeliveryReport, PermanentFailure, deliver_due
from connectors.telegram.updates import link_argument, read_update
from factories import make_message
from models import Channel
from models.sealing import SealError, seal, unseal
from models.tables import Base, Customer, CustomerMerge, Identity, LinkCode, Message, OutboxItem, ReviewItem, Ticket
from paidan.cli_customers import customers
from paidan.db import make_engine
from paidan.telegram import WELCOME, Dispatcher
from router import linking
from router.config import RouterConfig
from router.delivery import claim_due, mark_failed, mark_sent
from router.intake import Intake
from serving import start_serve, wait_for
from telegram_api import FakeBotAPI, run_with_bot

relay = test_email_send.relay  # the recording SMTP relay on 127.0.0.1, port 0, shared with the email tests

KEY = b"linking-test-key-0123456789abcdef"
CONFIG = RouterConfig()
WANG, LI = 700100200, 700100300  # Telegram user ids
EMAIL = "kehu@example.com"


# ---------------------------------------------------------------- harness


class Chat:
    """One Telegram user writing to the bot in a private chat, through the real Dispatcher."""

    ids = itertools.count(1)

    def __init__(self, fake: FakeBotAPI, dispatcher: Dispatcher, user_id: int, name: str = "王芳",
                 language: str = "zh-hans", username: str | None = "wangfang"):
        self.fake, self.dispatcher, self.user_id = fake, dispatcher, user_id
        self.user = {"id": user_id, "is_bot": False, "first_name": name, "language_code": language,
                     **({"username": username} if username else {})}
        self.last: dict | None = None

    async def send(self, text: str) -> str | None:
        """Send `text`; the bot's answer to it (None when it answered nothing at once)."""
        n = next(self.ids)
        self.last = {"update_id": n, "message": {
            "message_id": n, "from": self.user, "date": 1_796_000_000 + n, "text": text,
            "chat": {"id": self.user_id, "type": "private", "first_name": self.user["first_name"]}}}
        return await self.again()

    async def again(self) -> str | None:
        """Telegram delivers the last update once more."""
        before = len(self.answers())
        await self.dispatcher.handle(self.last)
        after = self.answers()
        return after[-1] if len(after) > before else None

    def answers(self) -> list[str]:
        return [r["text"] for r in self.fake.requests("sendMessage") if r.get("chat_id") == self.user_id]


def deliver_mail(engine, port: int) -> DeliveryReport:
    """One round of the email sender, wired as `paidan serve` wires it (with the key)."""
    config = dataclasses.replace(test_email_send.relay_config(port), code_key=KEY)
    return deliver_due(claim=partial(claim_due, engine, "email", lease=timedelta(minutes=5)),
                       build=partial(build_outbox_email, config=config), send=SmtpSender(config).send,
                       mark_sent=partial(mark_sent, engine), mark_failed=partial(mark_failed, engine),
                       now=datetime.now(UTC))


def code_in(mail: EmailMessage) -> str:
    return re.search(r"/link (\d{6})", mail.get_content()).group(1)


def latest_code(engine, relay, address: str) -> str:
    assert deliver_mail(engine, relay.port).sent >= 1
    return code_in([m for m in relay.accepted if m["To"] == address][-1])


def database_text(engine) -> str:
    """Every row of every table, as text: what a copy of the database would give away."""
    lines = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                lines.append(repr([bytes(v).decode("utf-8", "replace") if isinstance(v, (bytes, memoryview)) else v
                                   for v in row]))
    return "\n".join(lines)


def contains_code(text: str, code: str) -> bool:
    return re.search(rf"(?<!\d){code}(?!\d)", text) is not None


def rows(engine, table, *where):
    with Session(engine) as session:
        return session.scalars(select(table).where(*where).order_by(table.id)).all()


@pytest.fixture
def intake(engine):
    intake = Intake(engine)
    yield intake
    intake.close()


def run_chats(engine, intake, scenario, *users):
    """Run `scenario(*chats)` with one Chat per (user_id, name, language) against a fresh stand-in."""
    with FakeBotAPI() as fake:
        async def main(bot):
            dispatcher = Dispatcher(bot, engine, CONFIG, intake.accept, bot_username="paidan_test_bot", link_key=KEY)
            return await scenario(*(Chat(fake, dispatcher, *user) for user in users))
        return run_with_bot(fake, main)


# ---------------------------------------------------------------- the whole flow


def test_a_code_mailed_to_the_address_merges_the_email_customer_into_one_with_the_telegram_one_undoably(
        engine, intake, relay, caplog, monkeypatch, tmp_path, database_url):
    caplog.set_level(logging.DEBUG)
    email_ticket = Intake(engine).accept_now(make_message(
        channel=Channel.EMAIL, email=EMAIL, subject="退款申请", text="我要退款，订单 20261103884512",
        message_id="<q1@kehu.example.com>")).ticket_number
    seen: dict = {}

    async def scenario(wang: Chat):
        assert await wang.send("你好，上周的退款还没到账") is None  # an ordinary message: a ticket, acknowledged later
        seen["sent"] = await wang.send("/link KeHu@Example.com")
        [item] = rows(engine, OutboxItem, OutboxItem.kind == "link_code")
        seen["item"] = item
        seen["code"] = code = latest_code(engine, relay, EMAIL)
        seen["linked"] = await wang.send(f"/link {code}")

    run_chats(engine, intake, scenario, (WANG, "王芳", "zh-hans"))
    code, item = seen["code"], seen["item"]

    # What the customer read: where the code went (masked), then that it worked.
    assert "k***@example.com" in seen["sent"] and "/link" in seen["sent"] and EMAIL not in seen["sent"]
    assert "绑定成功" in seen["linked"] and "k***@example.com" in seen["linked"]
    # The mail: to that address, through the outbox, saying who asked and to ignore it otherwise.
    [mail] = [m for m in relay.accepted if m["To"] == EMAIL]
    body = mail.get_content()
    assert (item.channel, item.recipient, item.ticket_id) == ("email", EMAIL, None)
    assert mail["Auto-Submitted"] == "auto-generated" and code not in str(mail["Subject"])
    assert "王芳" in body and "@wangfang" in body and str(WANG) in body and "忽略" in body
    assert f"/link {code}" in body

    # One customer now: the older (the email one) kept, the Telegram one merged into it, on evidence.
    [merge] = rows(engine, CustomerMerge)
    email_customer, telegram_customer = merge.target_id, merge.source_id
    assert email_customer < telegram_customer and merge.actor == "telegram-link"
    assert merge.evidence.startswith("verified code by Telegram") and code not in merge.evidence
    with Session(engine) as session:
        held = {(i.kind, i.value): (i.customer_id, i.verified) for i in session.scalars(select(Identity))}
        tickets = {t.number: t.customer_id for t in session.scalars(select(Ticket))}
        texts = session.scalars(select(Message.text).order_by(Message.id)).all()
        [used] = session.scalars(select(LinkCode)).all()
    assert held == {("email", EMAIL): (email_customer, True), ("telegram", str(WANG)): (email_customer, True)}
    assert set(tickets.values()) == {email_customer} and len(tickets) == 2 and email_ticket in tickets
    # The commands were never ticket messages.
    assert texts == ["我要退款，订单 20261103884512", "你好，上周的退款还没到账"]
    assert used.used_at is not None and used.attempts == 0 and len(used.code_sha256) == 64

    # The code is nowhere in the logs or, in clear, in the database.
    assert not contains_code(caplog.text, code), "the code reached the logs"
    assert not contains_code(database_text(engine), code), "the code is in the database in clear"
    assert unseal(item.payload["sealed_code"], KEY) == code  # only with the key

    # A supervisor undoes it as any merge.
    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    shown = CliRunner().invoke(customers, ["show", EMAIL, "--json"], catch_exceptions=False)
    assert json.loads(shown.output)["merges"][0]["evidence"].startswith("verified code by Telegram")
    undone = CliRunner().invoke(customers, ["unmerge", str(merge.id), "--actor", "supervisor:ann"],
                                catch_exceptions=False)
    assert undone.exit_code == 0, undone.output
    with Session(engine) as session:
        assert session.get(Customer, telegram_customer).merged_into_id is None
        assert session.scalar(select(Identity.customer_id).where(Identity.value == str(WANG))) == telegram_customer
        assert {t.number: t.customer_id for t in session.scalars(select(Ticket))}[email_ticket] == email_customer
        assert sorted(t.customer_id for t in session.scalars(select(Ticket))) == [email_customer, telegram_customer]


def test_a_new_address_is_added_verified_and_the_answers_never_tell_whether_it_was_someone_elses(
        engine, intake, relay):
    Intake(engine).accept_now(make_message(channel=Channel.EMAIL, email="known@example.com", text="发票什么时候开"))
    said: dict = {}

    async def scenario(wang: Chat, li: Chat):
        # 王芳 links an address we know (another customer's); 李雷, who never wrote, one we do not.
        said["wang_sent"] = await wang.send("/link known@example.com")
        said["li_sent"] = await li.send("绑定邮箱 novel@example.com")  # the Chinese form, as text
        assert deliver_mail(engine, relay.port).sent == 2
        by_to = {m["To"]: code_in(m) for m in relay.accepted}
        said["wang_linked"] = await wang.send(f"/link {by_to['known@example.com']}")
        said["li_linked"] = await li.send(f"绑定邮箱 {by_to['novel@example.com']}")
        said["li_again"] = await li.send("/link NOVEL@example.com")

    run_chats(engine, intake, scenario, (WANG, "王芳", "zh-hans"), (LI, "李雷", "zh-hans"))
    assert said["wang_sent"].replace("k***", "n***") == said["li_sent"]
    assert said["wang_linked"].replace("k***", "n***") == said["li_linked"]
    assert "已经绑定" in said["li_again"]
    with Session(engine) as session:
        li = session.scalar(select(Identity).where(Identity.value == str(LI)))
        novel = session.scalar(select(Identity).where(Identity.value == "novel@example.com"))
        assert novel.customer_id == li.customer_id and novel.verified and li.verified
        assert session.get(Customer, li.customer_id).display_name == "李雷"
        assert session.scalars(select(CustomerMerge)).all() != []  # 王芳's, not 李雷's
        assert all(m.source_id != li.customer_id and m.target_id != li.customer_id
                   for m in session.scalars(select(CustomerMerge)))
    assert len(rows(engine, Message)) == 1  # only the email: no command became a message


def test_paidan_serve_links_by_the_mail_its_own_sender_delivers(database_url, tmp_path, relay):
    """The wiring: the bot that seals a code and the email sender that opens it share one key."""
    env = {**os.environ, "PAIDAN_DATABASE_URL": database_url, "PAIDAN_WEB_PORT": "0", "PAIDAN_SECRET_KEY": "t",
           "PAIDAN_EMAIL__SMTP_ENABLED": "false", "PAIDAN_MODEL_DIR": str(tmp_path / "no-models"),
           "PAIDAN_EMAIL__RELAY_HOST": "127.0.0.1", "PAIDAN_EMAIL__RELAY_PORT": str(relay.port),
           "PAIDAN_EMAIL__RELAY_STARTTLS": "false", "PAIDAN_EMAIL__FROM_ADDRESS": "support@paidan.test",
           "PAIDAN_EMAIL__RELAY_POLL_SECONDS": "0.2"}
    with FakeBotAPI() as fake:
        env |= {"PAIDAN_TELEGRAM__TOKEN": fake.token, "PAIDAN_TELEGRAM__API_BASE": fake.base,
                "PAIDAN_TELEGRAM__POLL_TIMEOUT_SECONDS": "1", "PAIDAN_TELEGRAM__SEND_POLL_SECONDS": "0.2"}
        user = {"id": WANG, "is_bot": False, "first_name": "王芳", "language_code": "zh-hans"}

        def say(n: int, text: str) -> None:
            fake.push_update({"update_id": n, "message": {"message_id": n, "from": user, "date": 1_796_000_000 + n,
                                                          "text": text, "chat": {"id": WANG, "type": "private"}}})

        def answers() -> list[str]:
            return [r["text"] for r in fake.requests("sendMessage") if r.get("chat_id") == WANG]

        proc, _, lines = start_serve(env, tmp_path)
        try:
            say(1, f"/link {EMAIL}")
            [mail] = wait_for(lambda: relay.accepted, "the code's mail", lines)
            code = code_in(mail)
            say(2, f"/link {code}")
            wait_for(lambda: [a for a in answers() if "绑定成功" in a], "the link's answer", lines)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, "".join(lines)
    assert "k***@example.com" in answers()[0]
    assert not contains_code("".join(lines), code) and "Traceback" not in "".join(lines)
    engine = make_engine(database_url)
    with Session(engine) as session:
        held = {i.kind: (i.customer_id, i.verified) for i in session.scalars(select(Identity))}
        assert session.scalars(select(Message)).all() == []
    engine.dispose()
    assert held["email"] == held["telegram"] and held["email"][1]


def test_a_verified_address_whose_customer_has_conflicting_identities_waits_for_a_supervisor(engine, intake, relay):
    """王芳 linked one address already; a second one, another customer's, would merge two people each
    with their own email: verified, but a person decides (as intake does with conflicting evidence)."""
    Intake(engine).accept_now(make_message(channel=Channel.EMAIL, email="work@example.com", text="发票什么时候开"))
    said: dict = {}

    async def scenario(wang: Chat):
        await wang.send("/link home@example.com")
        await wang.send(f"/link {latest_code(engine, relay, 'home@example.com')}")
        await wang.send("/link work@example.com")
        said["second"] = await wang.send(f"/link {latest_code(engine, relay, 'work@example.com')}")

    run_chats(engine, intake, scenario, (WANG, "王芳", "en"))
    assert "w***@example.com is verified" in said["second"] and "colleague" in said["second"]
    assert rows(engine, CustomerMerge) == []
    [review] = rows(engine, ReviewItem)
    assert review.kind == "identity_conflict" and review.detail["evidence"].startswith("verified code by Telegram")
    assert "conflicting identities" in review.detail["merge_refused"]
    with Session(engine) as session:
        assert session.scalar(select(Identity.verified).where(Identity.value == "work@example.com"))


# ---------------------------------------------------------------- mistakes


def test_every_mistake_gets_its_own_answer_and_a_spent_code_stays_spent(engine, intake, relay):
    said: dict = {}

    async def scenario(wang: Chat):
        said["bare"] = await wang.send("/link")
        said["not_address"] = await wang.send("/link kehu-at-example.com")
        said["two_addresses"] = await wang.send("/link a@example.com,b@example.org")
        said["short_code"] = await wang.send("/link 12345")
        said["no_pending"] = await wang.send("/link 123456")
        await wang.send(f"/link {EMAIL}")  # code 1
        code = latest_code(engine, relay, EMAIL)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        said["wrong"] = [await wang.send(f"/link {wrong}") for _ in range(5)]
        said["spent"] = await wang.send(f"/link {code}")  # right, but after five wrong tries
        await wang.send(f"/link {EMAIL}")  # code 2
        code = latest_code(engine, relay, EMAIL)
        with Session(engine) as session, session.begin():  # half an hour later
            session.execute(update(LinkCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        said["expired"] = await wang.send(f"/link {code}")
        said["third"] = await wang.send(f"/link {EMAIL}")  # code 3: still within the limit
        said["fourth"] = await wang.send(f"/link {EMAIL}")  # over it
        code = latest_code(engine, relay, EMAIL)
        said["fullwidth"] = await wang.send(f"/link {code.translate(str.maketrans('0123456789', '０１２３４５６７８９'))}")
        said["already"] = await wang.send(f"/link {EMAIL}")

    run_chats(engine, intake, scenario, (WANG, "王芳", "en-US"))
    assert "/link you@example.com" in said["bare"] and "6-digit code" in said["bare"]
    assert "not an email address" in said["not_address"] and "not an email address" in said["two_addresses"]
    assert "6 digits" in said["short_code"]
    assert "No code is waiting" in said["no_pending"]
    assert [w.split(";")[-1].strip() for w in said["wrong"][:4]] == [
        "4 tries left.", "3 tries left.", "2 tries left.", "1 try left."]
    assert "last try" in said["wrong"][4]
    assert "Too many wrong tries" in said["spent"]
    assert "expired" in said["expired"]
    assert "Code sent to k***@example.com" in said["third"]
    assert "Too many codes" in said["fourth"] and re.search(r"try again in \d+ minutes", said["fourth"])
    assert "Done: k***@example.com is linked" in said["fullwidth"]
    assert "already linked" in said["already"]
    assert len(rows(engine, LinkCode)) == 3 and len(rows(engine, OutboxItem, OutboxItem.kind == "link_code")) == 3
    assert rows(engine, Ticket) == [] and rows(engine, Message) == []


def test_a_redelivered_update_acts_once_and_gets_the_same_answer(engine, intake, relay):
    said: dict = {}

    async def scenario(wang: Chat):
        said["asked"] = [await wang.send(f"/link {EMAIL}"), await wang.again()]
        code = latest_code(engine, relay, EMAIL)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        said["wrong"] = [await wang.send(f"/link {wrong}"), await wang.again()]
        said["linked"] = [await wang.send(f"/link {code}"), await wang.again(), await wang.again()]

    run_chats(engine, intake, scenario, (WANG, "王芳", None))
    assert said["asked"][0] == said["asked"][1] and len(rows(engine, LinkCode)) == 1
    assert len(rows(engine, OutboxItem, OutboxItem.kind == "link_code")) == 1
    assert said["wrong"][0] == said["wrong"][1] and "4 tries left" in said["wrong"][0]
    assert rows(engine, LinkCode)[0].attempts == 1  # the redelivered wrong try did not count twice
    assert said["linked"][0] == said["linked"][1] == said["linked"][2] and "绑定成功" in said["linked"][0]
    assert " / " not in said["linked"][0] and "Done:" in said["linked"][0]  # no language: both, one after the other


# ---------------------------------------------------------------- pure parts


def incoming(text: str):
    return read_update({"update_id": 1, "message": {"message_id": 1, "date": 1_796_000_000, "text": text,
                                                    "from": {"id": WANG, "is_bot": False, "first_name": "王芳"},
                                                    "chat": {"id": WANG, "type": "private"}}})


@pytest.mark.parametrize("text, argument", [
    ("/link you@example.com", "you@example.com"),
    ("/link@paidan_test_bot 123456", "123456"),
    ("/LINK  123456 ", "123456"),
    ("/link", ""),
    ("绑定邮箱 you@example.com", "you@example.com"),
    ("绑定邮箱：123456", "123456"),
    ("绑定邮箱失败怎么办", None),  # a question for support, not a request
    ("绑定邮箱 总是失败", None),
    ("/linked", None),
    ("/link@other_bot 123456", None),
    ("please /link me", None),
])
def test_link_requests_are_told_from_messages(text, argument):
    assert link_argument(incoming(text), "paidan_test_bot") == argument


@pytest.mark.parametrize("argument, expected", [
    ("Wang.Fang@Example.COM", linking.AskCode("wang.fang@example.com")),
    ("<wang@example.com>", linking.AskCode("wang@example.com")),
    ("０１２３４５", linking.GiveCode("012345")),
    ("012 345", linking.GiveCode("012345")),
    ("", linking.USAGE),
    ("1234567", linking.MALFORMED_CODE),
    ("wang@example", linking.MALFORMED_ADDRESS),
    ("a@example.com, b@example.com", linking.MALFORMED_ADDRESS),
    ("Wang <wang@example.com>", linking.MALFORMED_ADDRESS),
    ("wang@example.com\nBcc: x@example.org", linking.MALFORMED_ADDRESS),
])
def test_what_follows_link_is_read_as_an_address_a_code_or_a_mistake(argument, expected):
    read = linking.read_link_argument(argument)
    assert (read.status if isinstance(read, linking.LinkOutcome) else read) == expected


def test_codes_are_six_random_digits_and_their_digest_is_keyed():
    codes = {linking.new_code() for _ in range(200)}
    assert len(codes) > 190 and all(len(c) == 6 and c.isdigit() for c in codes)
    digest = linking.code_digest(KEY, 1, "email", EMAIL, "012345")
    assert digest != linking.code_digest(b"another key", 1, "email", EMAIL, "012345")
    assert digest != linking.code_digest(KEY, 2, "email", EMAIL, "012345")


def test_a_sealed_code_opens_only_with_its_key_and_a_mail_without_it_is_refused_for_good():
    sealed = seal("012345", KEY)
    assert "012345" not in sealed and sealed != seal("012345", KEY) and unseal(sealed, KEY) == "012345"
    with pytest.raises(SealError):
        unseal(sealed, b"another key")
    with pytest.raises(SealError):
        unseal(sealed[:-1] + ("1" if sealed[-1] == "0" else "0"), KEY)  # one hex digit of the tag changed

    class Row:
        id, kind, recipient, dedupe_key = 1, "link_code", EMAIL, "link_code:1"
        created_at = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
        payload = {"sealed_code": sealed, "language": "en", "telegram_name": "Wang\nFang", "telegram_id": WANG}

    config = test_email_send.relay_config(25)
    mail = build_outbox_email(Row, dataclasses.replace(config, code_key=KEY))
    assert "Code: 012345" in mail.get_content() and '"Wang Fang"' in mail.get_content()
    with pytest.raises(PermanentFailure, match="secret_key"):
        build_outbox_email(Row, config)


def test_the_welcome_mentions_link():
    assert "/link" in WELCOME and "绑定邮箱" in WELCOME
