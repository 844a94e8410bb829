"""Telegram by webhook: `paidan serve` registers the webhook instead of polling, and answers Telegram's
POSTs with 200 only after the update is committed (FAILURE_MODES 25). An httpx client plays Telegram;
FakeBotAPI stands in for the Bot API that receives setWebhook and the messages we send."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from pydantic import ValidationError
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from models.errors import StorageUnavailable
from models.tables import Customer, Identity, Message, OutboxItem, Ticket
from paidan.db import make_engine
from paidan.settings import Settings
from paidan.telegram import HANDLED_UPDATES, Dispatcher, TelegramWebhook, run_telegram, webhook_secret
from paidan.web import build_app
from router.config import RouterConfig
from router.intake import Intake
from router.queries import TicketQueries
from serving import start_serve, wait_for
from telegram_api import FakeBotAPI
from webfixtures import make_settings

CUSTOMER, SUPERVISOR = 555001, 777001
SECRET = "webhook-test_secret-1"
PUBLIC_URL = "https://support.example.com/telegram/webhook"
PATH = "/telegram/webhook"
HEADER = "X-Telegram-Bot-Api-Secret-Token"


def private_message(update_id: int, user_id: int, message_id: int, text: str, name: str = "王芳") -> dict:
    return {"update_id": update_id, "message": {
        "message_id": message_id, "date": 1_796_000_000 + update_id, "text": text,
        "from": {"id": user_id, "is_bot": False, "first_name": name, "language_code": "zh-hans"},
        "chat": {"id": user_id, "type": "private", "first_name": name}}}


def sent_to(fake: FakeBotAPI, chat_id: int) -> list[str]:
    return [r["text"] for r in fake.requests("sendMessage") if r.get("chat_id") == chat_id]


def count(database: str | Engine, table) -> int:
    """Rows in `table`, read through an engine or (from outside a `paidan serve`) a database URL."""
    engine = make_engine(database) if isinstance(database, str) else database
    try:
        with Session(engine) as session:
            return session.scalar(select(func.count()).select_from(table))
    finally:
        if engine is not database:
            engine.dispose()


# ---- end to end through `paidan serve` --------------------------------------------------------


def test_paidan_serve_takes_telegram_updates_by_webhook(database_url, tmp_path):
    env = {**os.environ, "PAIDAN_DATABASE_URL": database_url, "PAIDAN_WEB_PORT": "0", "PAIDAN_SECRET_KEY": "t",
           "PAIDAN_EMAIL__SMTP_ENABLED": "false", "PAIDAN_MODEL_DIR": str(tmp_path / "no-models")}
    subprocess.run([sys.executable, "-m", "paidan.cli", "agents", "add", "李雷", "--role", "supervisor",
                    "--telegram-id", str(SUPERVISOR), "--skills", "transaction,zh"],
                   env=env, cwd=tmp_path, check=True, capture_output=True)
    with FakeBotAPI() as fake:
        env |= {"PAIDAN_TELEGRAM__TOKEN": fake.token, "PAIDAN_TELEGRAM__API_BASE": fake.base,
                "PAIDAN_TELEGRAM__SEND_POLL_SECONDS": "0.2", "PAIDAN_TELEGRAM__WEBHOOK_URL": PUBLIC_URL,
                "PAIDAN_TELEGRAM__WEBHOOK_SECRET": SECRET}
        proc, base, lines = start_serve(env, tmp_path)
        try:
            [registered] = wait_for(lambda: fake.requests("setWebhook"), "setWebhook", lines)
            assert registered == {"url": PUBLIC_URL, "secret_token": SECRET, "allowed_updates": HANDLED_UPDATES,
                                  "max_connections": 1, "drop_pending_updates": False}  # 1: in order
            with httpx.Client(base_url=base, headers={HEADER: SECRET}, timeout=10) as telegram:
                refund = private_message(1, CUSTOMER, 11, "上周申请的退款还没到账，订单号 20261130-7781")
                # Strangers and mistakes: refused, and nothing is stored.
                for headers in ({HEADER: "wrong"}, {HEADER: ""}):
                    refused = telegram.post(PATH, json=refund, headers=headers)
                    assert refused.status_code == 403 and HEADER in refused.json()["detail"], refused.text
                assert httpx.post(base + PATH, json=refund).status_code == 403  # no header at all
                malformed = telegram.post(PATH, content=b'{"update_id": 1, "message": ',
                                          headers={"Content-Type": "application/json"})
                assert malformed.status_code == 400 and "body" in malformed.json()["fields"], malformed.text
                assert count(database_url, Message) == 0

                # A customer writes: 200 once stored, and the acknowledgement goes out through the Bot API.
                stored = telegram.post(PATH, json=refund)
                assert (stored.status_code, stored.json()) == (200, {"ok": True})
                assert count(database_url, Ticket) == count(database_url, Message) == 1  # committed before the 200
                ack = wait_for(lambda: [t for t in sent_to(fake, CUSTOMER) if "GD" in t], "the acknowledgement", lines)
                number = re.search(r"GD\d{11,}", ack[0]).group(0)
                # Telegram sends it again (it timed out waiting for our 200): 200, still one message.
                assert telegram.post(PATH, json=refund).status_code == 200
                assert count(database_url, Message) == 1

                # The supervisor answers from the console; the update arrives twice, the customer hears once.
                reply = private_message(2, SUPERVISOR, 20, f"/reply {number} 您好，退款今天会到账。", name="李雷")
                assert telegram.post(PATH, json=reply).status_code == 200
                assert telegram.post(PATH, json=reply).status_code == 200
                assert [t for t in sent_to(fake, SUPERVISOR) if "arrived twice" in t]  # said straight back
                wait_for(lambda: [t for t in sent_to(fake, CUSTOMER) if "退款今天会到账" in t], "the reply", lines)
                time.sleep(1.0)  # five rounds of the outbox sender: time enough for a second send
            assert len([t for t in sent_to(fake, CUSTOMER) if "退款今天会到账" in t]) == 1
            assert sent_to(fake, CUSTOMER).count(ack[0]) == 1  # one acknowledgement for the two deliveries
            assert fake.requests("getUpdates") == []  # webhook mode never polls
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, "".join(lines)
    assert count(database_url, Message) == 2  # the customer's and the one reply
    assert "Traceback" not in "".join(lines)


# ---- the route, in process ----------------------------------------------------------------------


def bot_for(fake: FakeBotAPI) -> Bot:
    return Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.base)))


async def with_bot(fake: FakeBotAPI, scenario):
    bot = bot_for(fake)
    try:
        return await scenario(bot)
    finally:
        await bot.session.close()


def telegram_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://paidan.test",
                             headers={HEADER: SECRET})


def test_a_database_failure_answers_503_stores_nothing_and_the_redelivery_is_stored_once(engine):
    """The commit fails (as when the disk is full or PostgreSQL goes away mid-transaction): intake
    rolls back and raises StorageUnavailable, and Telegram is told to send the update again."""
    intake = Intake(engine)
    webhook = TelegramWebhook(SECRET, PATH)
    app = build_app(make_settings(), intake.accept, TicketQueries(engine).ticket_view, telegram_webhook=webhook)
    update = private_message(41, CUSTOMER, 10, "付款成功但订单一直显示未支付")

    def the_commit_fails(connection):
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    async def scenario(bot: Bot):
        webhook.dispatcher = Dispatcher(bot, engine, RouterConfig(), intake.accept)
        async with telegram_client(app) as telegram:
            event.listen(engine, "commit", the_commit_fails)
            try:
                down = await telegram.post(PATH, json=update)
            finally:
                event.remove(engine, "commit", the_commit_fails)
            nothing_yet = [count(engine, table) for table in (Customer, Identity, Ticket, Message, OutboxItem)]
            again = [await telegram.post(PATH, json=update) for _ in range(2)]  # Telegram's retries
        return down, nothing_yet, again

    with FakeBotAPI() as fake:
        try:
            down, nothing_yet, again = asyncio.run(with_bot(fake, scenario))
        finally:
            intake.close()
    assert down.status_code == 503 and down.headers["Retry-After"] == "10", down.text
    assert down.json()["error"] == "unavailable" and "nothing was stored" in down.json()["detail"]
    assert nothing_yet == [0, 0, 0, 0, 0]
    assert [r.status_code for r in again] == [200, 200]
    assert count(engine, Ticket) == count(engine, Message) == 1


class RecordingDispatcher:
    """Stands in for the Dispatcher: records what reached it, or fails as told."""

    def __init__(self, failure: Exception | None = None):
        self.handled: list[dict] = []
        self.failure = failure

    async def handle(self, update: dict) -> None:
        if self.failure is not None:
            raise self.failure
        self.handled.append(update)


def test_the_webhook_refuses_what_is_not_telegrams_and_never_answers_200_before_handle_returned(engine):
    webhook = TelegramWebhook(SECRET, PATH)
    app = build_app(make_settings(), sink=None, ticket_view=TicketQueries(engine).ticket_view,
                    telegram_webhook=webhook)
    update = private_message(7, CUSTOMER, 3, "在吗")

    async def scenario():
        async with telegram_client(app) as telegram:
            answers = {"not ready": await telegram.post(PATH, json=update)}  # before run_telegram met the bot
            webhook.dispatcher = recorder = RecordingDispatcher()
            answers |= {
                "wrong secret": await telegram.post(PATH, json=update, headers={HEADER: SECRET + "x"}),
                "not JSON": await telegram.post(PATH, content=b"\xff\xfe not json"),
                "not an update": await telegram.post(PATH, json=[update]),
                "no update_id": await telegram.post(PATH, json={"message": update["message"]}),
                "too large": await telegram.post(PATH, json={**update, "padding": "x" * (1024 * 1024)}),
                "GET": await telegram.get(PATH),
                "an update bigger than a web form's 64 KB": await telegram.post(
                    PATH, json={**update, "update_id": 8, "padding": "汉" * 100_000}),
            }
            handled = list(recorder.handled)
            webhook.dispatcher = RecordingDispatcher(failure=StorageUnavailable("database is locked"))
            answers["storage unavailable"] = await telegram.post(PATH, json=update)
            webhook.dispatcher = RecordingDispatcher(failure=RuntimeError("a bug of ours"))
            answers["a bug"] = await telegram.post(PATH, json=update)
            openapi = (await telegram.get("/openapi.json")).json()
        return answers, handled, openapi

    answers, handled, openapi = asyncio.run(scenario())
    status = {what: answer.status_code for what, answer in answers.items()}
    assert status == {"not ready": 503, "wrong secret": 403, "not JSON": 400, "not an update": 400,
                      "no update_id": 400, "too large": 413, "GET": 405,
                      "an update bigger than a web form's 64 KB": 200, "storage unavailable": 503, "a bug": 503}
    assert answers["wrong secret"].json()["fields"] == {HEADER: "missing or wrong"}
    assert answers["not JSON"].json()["fields"]["body"].startswith("not valid JSON")
    assert "update_id" in answers["not an update"].json()["fields"]["body"]
    for what in ("not ready", "storage unavailable", "a bug"):
        assert answers[what].headers["Retry-After"] == "10" and answers[what].json()["error"] == "unavailable"
    assert [u["update_id"] for u in handled] == [8]  # only the one with the secret, in shape and size
    assert PATH not in openapi["paths"]  # Telegram's callback, not an API for integrators


# ---- registering, and switching back to polling -------------------------------------------------


def test_polling_deletes_a_webhook_left_set_and_gets_the_updates_it_held(engine, caplog):
    intake = Intake(engine)

    async def scenario(settings: Settings):
        stop = asyncio.Event()
        polling = asyncio.create_task(run_telegram(settings, engine, RouterConfig(), intake.accept, stop))
        while count(engine, Message) == 0 and not polling.done():
            await asyncio.sleep(0.05)
        stop.set()
        await polling

    with FakeBotAPI() as fake:
        # The deployment ran in webhook mode, and an update came in that no one took.
        assert httpx.post(f"{fake.base}/bot{fake.token}/setWebhook", json={"url": PUBLIC_URL}).json()["ok"]
        fake.push_update(private_message(1, CUSTOMER, 5, "发票什么时候能开？"))
        settings = Settings(secret_key="t", telegram={"token": fake.token, "api_base": fake.base,
                                                      "poll_timeout_seconds": 1, "send_poll_seconds": 0.2})
        with caplog.at_level(logging.WARNING, logger="paidan.telegram"):
            try:
                asyncio.run(asyncio.wait_for(scenario(settings), 20))
            finally:
                intake.close()
        assert fake.requests("deleteWebhook") == [{"drop_pending_updates": False}] and fake.webhook is None
    assert count(engine, Message) == 1  # the update Telegram held while the webhook was set
    assert any("a webhook is set" in r.getMessage() and PUBLIC_URL in r.getMessage() for r in caplog.records)


def test_set_webhook_is_retried_while_telegram_fails(engine):
    webhook = TelegramWebhook(SECRET, PATH)

    async def scenario(fake: FakeBotAPI, settings: Settings):
        stop = asyncio.Event()
        running = asyncio.create_task(run_telegram(settings, engine, RouterConfig(), None, stop, webhook=webhook))
        while len(fake.requests("setWebhook")) < 2 and not running.done():
            await asyncio.sleep(0.05)
        assert webhook.dispatcher is not None  # updates are taken while it registers
        stop.set()
        await running

    with FakeBotAPI() as fake:
        fake.fail_next("setWebhook", 502, "Bad Gateway")
        settings = Settings(secret_key="t", telegram={"token": fake.token, "api_base": fake.base,
                                                      "webhook_url": PUBLIC_URL, "send_poll_seconds": 0.2})
        asyncio.run(asyncio.wait_for(scenario(fake, settings), 20))
        assert fake.webhook == {"url": PUBLIC_URL, "secret_token": SECRET, "allowed_updates": HANDLED_UPDATES,
                                "max_connections": 1}
    assert webhook.dispatcher is None  # the channel stopped: later updates get 503, and come back


def test_the_webhook_secret_is_configured_or_derived_from_the_kept_secret():
    given = Settings(secret_key="a", telegram={"webhook_secret": SECRET})
    assert webhook_secret(given) == SECRET
    derived = webhook_secret(Settings(secret_key="a"))
    assert derived == webhook_secret(Settings(secret_key="a")) != webhook_secret(Settings(secret_key="b"))
    assert re.fullmatch(r"[0-9a-f]{64}", derived)  # within Telegram's alphabet
    with pytest.raises(ValidationError, match="only A-Z"):
        Settings(telegram={"webhook_secret": "has spaces and 汉字"})
    with pytest.raises(ValidationError, match="starting with /"):
        Settings(telegram={"webhook_path": "telegram"})
