"""The Telegram channel inside `paidan serve`: one bot, two sides.

Updates from a registered agent's Telegram id go to the agent console (accept, reply, resolve, …);
everyone else writing to the bot in a private chat is a customer, whose message goes to intake like
any channel's. Messages out (acknowledgements, agents' replies, offers and alerts to staff) leave
through the outbox.

Nothing is acknowledged to Telegram before it is committed: the poller confirms an update (by
asking for the next offset) only after `handle` returned, and `handle` returns only after the
customer's message, or the agent's action, is in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from connectors.telegram.poller import TelegramPoller, download_files
from connectors.telegram.send import TelegramSend, TelegramSender, build_telegram, sync_send
from connectors.telegram.updates import Incoming, is_command, is_private, read_update, to_inbound
from models.message import InboundMessage, Receipt
from models.tables import Agent
from paidan.outbound import send_outbox_forever
from paidan.settings import Settings
from paidan.telegram_console import answer_agent
from router.config import RouterConfig
from router.cursors import load_cursor, save_cursor

log = logging.getLogger("paidan.telegram")

# What a customer sees on /start or /help: how to write in, in both languages.
WELCOME = ("您好！这里是客服。请直接描述您的问题（可附图片或文件），我们会回复工单号并尽快处理。\n"
           "回复我们的消息即可补充说明同一工单。\n\n"
           "Hello! This is customer support. Describe your issue here (photos and files are welcome); we will "
           "answer with a ticket number and get back to you. Reply to our messages to add to the same ticket.")
TELEGRAM_BATCH = 30  # Telegram allows ~30 messages a second per bot
TELEGRAM_LEASE = timedelta(minutes=5)  # longer than a round of TELEGRAM_BATCH sends at their timeout


def make_bot(settings: Settings) -> Bot:
    token = settings.telegram.token.get_secret_value() if settings.telegram.token else ""
    return Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram.api_base)))


class Dispatcher:
    """Decides what each update is and hands it on; returns only once that is committed."""

    def __init__(self, bot: Bot, engine: Engine, config: RouterConfig,
                 sink: Callable[[InboundMessage], Awaitable[Receipt]], *, bot_username: str | None = None):
        self.bot, self.engine, self.config, self.sink = bot, engine, config, sink
        self.bot_username = bot_username

    async def handle(self, update: dict) -> None:
        incoming = read_update(update)
        if incoming.from_id is None or incoming.kind == "other":
            return  # channel posts, polls, membership changes: nothing anyone wrote to us
        if await asyncio.to_thread(self._is_agent, incoming.from_id):
            await self._console(incoming)
        elif incoming.kind in ("message", "edited_message") and is_private(incoming):
            await self._customer(incoming)
        elif incoming.kind == "callback_query":  # a customer pressing an old staff button: say nothing happened
            await self._quietly(self.bot.answer_callback_query(incoming.callback_id or "", text="—"))

    def _is_agent(self, telegram_id: int) -> bool:
        with Session(self.engine) as session:
            return session.scalar(select(Agent.id).where(Agent.telegram_id == telegram_id)) is not None

    async def _customer(self, incoming: Incoming) -> None:
        if is_command(incoming, self.bot_username) in ("/start", "/help"):
            await self._quietly(self.bot.send_message(incoming.chat_id, WELCOME, parse_mode=None))
            return
        attachments = await download_files(self.bot, incoming)  # a temporary failure raises: retried
        receipt = await self.sink(to_inbound(incoming, received_at=datetime.now(UTC), attachments=attachments))
        log.info("telegram: %s update %s as %s", "duplicate of" if receipt.duplicate else "stored",
                 incoming.update_id, receipt.ticket_number)

    async def _console(self, incoming: Incoming) -> None:
        answer = await asyncio.to_thread(
            answer_agent, self.engine, self.config, incoming.from_id, incoming.text, incoming.reply_to_text,
            incoming.callback_data, now=datetime.now(UTC), once=f"telegram-update:{incoming.update_id}")
        if incoming.callback_id:
            await self._quietly(self.bot.answer_callback_query(incoming.callback_id))
        if answer.text:
            # Straight back, not through the outbox: it answers what the agent just typed, and if it is
            # lost the action itself is committed and `/show` tells the same.
            await self._quietly(TelegramSender(self.bot).send(TelegramSend(incoming.chat_id, answer.text,
                                                                           answer.buttons)))

    @staticmethod
    async def _quietly(call: Awaitable) -> None:
        try:
            await call
        except Exception as exc:  # noqa: BLE001 — a lost courtesy message must not re-run the update
            log.warning("telegram: could not answer: %s", exc)


async def run_telegram(settings: Settings, engine: Engine, config: RouterConfig,
                       sink: Callable[[InboundMessage], Awaitable[Receipt]], stop: asyncio.Event) -> None:
    """Poll the bot's updates and send the outbox's Telegram items until `stop` is set."""
    bot = make_bot(settings)
    try:
        me = await bot.get_me()
        log.info("paidan on Telegram as @%s (updates by long polling)", me.username)
        dispatcher = Dispatcher(bot, engine, config, sink, bot_username=me.username)
        poller = TelegramPoller(bot, dispatcher.handle, load_cursor=partial(load_cursor, engine),
                                save_cursor=partial(save_cursor, engine),
                                timeout=settings.telegram.poll_timeout_seconds)
        await asyncio.gather(poller.run(stop), _send_forever(bot, engine, settings, stop))
    except Exception:  # noqa: BLE001 — a bad token or an unreachable API must not take the other channels down
        log.exception("telegram: the channel stopped; the other channels go on")
    finally:
        await bot.session.close()


async def _send_forever(bot: Bot, engine: Engine, settings: Settings, stop: asyncio.Event) -> None:
    send = sync_send(TelegramSender(bot), asyncio.get_running_loop())
    await send_outbox_forever(engine, "telegram", build_telegram, send, batch=TELEGRAM_BATCH, lease=TELEGRAM_LEASE,
                              every=settings.telegram.send_poll_seconds, stop=stop)
