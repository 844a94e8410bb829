"""The Telegram channel inside `paidan serve`: one bot, two sides.

Updates from a registered agent's Telegram id go to the agent console (accept, reply, resolve, …);
everyone else writing to the bot in a private chat is a customer, whose message goes to intake like
any channel's. Messages out (acknowledgements, agents' replies, offers and alerts to staff) leave
through the outbox.

Updates arrive by long polling (one process) or, with `[telegram] webhook_url`, by webhook: Telegram
POSTs each one to `TelegramWebhook`, so any number of `paidan serve` behind a load balancer take
them. Nothing is acknowledged to Telegram before it is committed: the poller confirms an update (by
asking for the next offset), and the webhook answers 200, only after `handle` returned, and `handle`
returns only after the customer's message, or the agent's action, is in the database. A
redelivered update is stored once (intake's chat:message_id key) and acts once (the console's
and /link's `once` key, paidan/linking.py), so "when in doubt, not acknowledged" never doubles
anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors.telegram.poller import TelegramPoller, download_files
from connectors.telegram.send import (TelegramSend, TelegramSender, build_telegram, customer_status_text, solved_answer,
                                      solved_ticket, sync_send)
from connectors.telegram.survey import is_survey_button
from connectors.telegram.updates import Incoming, is_command, is_private, read_update, to_inbound
from connectors.telegram.updates import language_of, link_argument, new_ticket_text
from connectors.webform.api import error
from models.errors import StorageUnavailable
from models.message import Identity, IdentityKind, InboundMessage, Receipt, TicketSummary
from models.tables import Agent
from paidan.db import transaction
from paidan.linking import answer_link, link_key
from paidan.outbound import pause, send_outbox_forever
from paidan.surveys import survey_button_pressed, survey_reply
from paidan.settings import Settings
from paidan.telegram_console import answer_agent
from router import actions, delivery
from router.config import RouterConfig
from router.queries import customer_tickets_sync
from router.cursors import claim_once, load_cursor, save_cursor

log = logging.getLogger("paidan.telegram")

# What a customer sees on /start or /help: how to write in, in both languages.
WELCOME = ("您好！这里是客服。请直接描述您的问题（可附图片或文件），我们会回复工单号并尽快处理。\n"
           "回复我们的消息即可补充说明同一工单。\n"
           "发送 /status 查看您的工单进度；另一个问题请以 /new 开头，单独建工单。\n"
           "也给我们写过邮件？发送 /link 您的邮箱（或「绑定邮箱 您的邮箱」），按邮件中的验证码绑定，两边的记录就会合在一起。\n\n"
           "Hello! This is customer support. Describe your issue here (photos and files are welcome); we will "
           "answer with a ticket number and get back to you. Reply to our messages to add to the same ticket.\n"
           "Send /status to see where your tickets stand; start another matter with /new for a ticket of its own.\n"
           "Also wrote to us by email? Send /link you@example.com and then the code we email you: your email and "
           "Telegram conversations become one.")
TELEGRAM_BATCH = 30  # Telegram allows ~30 messages a second per bot
TELEGRAM_LEASE = timedelta(minutes=5)  # longer than a round of TELEGRAM_BATCH sends at their timeout
# The update kinds `Dispatcher.handle` acts on; Telegram sends no others. It keeps the list it was
# last given for getUpdates too, so the same list holds after a switch back to polling.
HANDLED_UPDATES = ["message", "edited_message", "callback_query"]
STATUS_COMMANDS = frozenset({"/status", "/tickets"})  # a customer asking where their tickets stand
NEW_NEEDS_TEXT = ("请在 /new 后写下新的问题，例如：/new 发票抬头写错了\n"
                  "Write the new matter after /new, e.g. /new the invoice has the wrong company name")
# One connection: Telegram then sends the next update only once we answered the last, so a customer's
# "my order is lost" and "never mind, it came" are stored in the order they were written (with its
# default of 40, they race through our processes and can land the other way round). One connection
# carries far more than a support bot's traffic: an update is stored in milliseconds.
WEBHOOK_CONNECTIONS = 1
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_MAX_BODY = 1024 * 1024  # an update is a few KB; a bigger body is not from Telegram
WEBHOOK_RETRY_AFTER = "10"  # seconds; Telegram retries on its own schedule, other senders may read it


def make_bot(settings: Settings) -> Bot:
    token = settings.telegram.token.get_secret_value() if settings.telegram.token else ""
    return Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram.api_base)))


class Dispatcher:
    """Decides what each update is and hands it on; returns only once that is committed."""

    def __init__(self, bot: Bot, engine: Engine, config: RouterConfig,
                 sink: Callable[[InboundMessage], Awaitable[Receipt]], *, bot_username: str | None = None,
                 link_key: bytes | None = None, dashboard_link: Callable[[int], str] | None = None):
        self.bot, self.engine, self.config, self.sink = bot, engine, config, sink
        self.bot_username = bot_username
        self.link_key = link_key  # seals and checks /link codes; None: /link says it is not available
        self.dashboard_link = dashboard_link  # agent id → a dashboard sign-in link; None: not served

    async def handle(self, update: dict) -> None:
        incoming = read_update(update)
        if incoming.from_id is None or incoming.kind == "other":
            return  # channel posts, polls, membership changes: nothing anyone wrote to us
        if incoming.kind == "callback_query" and is_survey_button(incoming.callback_data):
            await survey_button_pressed(self.bot, self.engine, incoming)  # a customer's rating (paidan/surveys.py)
            return
        if incoming.kind == "callback_query" and (number := solved_ticket(incoming.callback_data)):
            await self._solved(incoming, number)  # a customer's ✅ under our reply
            return
        if await asyncio.to_thread(self._is_agent, incoming.from_id):
            await self._console(incoming)
        elif incoming.kind in ("message", "edited_message") and is_private(incoming):
            await self._customer(incoming)
        elif incoming.kind == "callback_query":  # a customer pressing an old staff button: say nothing happened
            await self._quietly(self.bot.answer_callback_query(incoming.callback_id or "", text="—"))

    def _tickets_of(self, telegram_id: int) -> list[TicketSummary]:
        with Session(self.engine) as session:
            return customer_tickets_sync(session, Identity(IdentityKind.TELEGRAM, str(telegram_id)), datetime.now(UTC))

    def _is_agent(self, telegram_id: int) -> bool:
        with Session(self.engine) as session:
            return session.scalar(select(Agent.id).where(Agent.telegram_id == telegram_id)) is not None

    async def _customer(self, incoming: Incoming) -> None:
        command = is_command(incoming, self.bot_username)
        if command in ("/start", "/help"):
            await self._quietly(self.bot.send_message(incoming.chat_id, WELCOME, parse_mode=None))
            return
        if command in STATUS_COMMANDS:  # "where is my ticket?" answered at once, never a ticket message
            tickets = await asyncio.to_thread(self._tickets_of, incoming.from_id)
            answer = customer_status_text(tickets, language_of(incoming.language_code))
            await self._quietly(self.bot.send_message(incoming.chat_id, answer, parse_mode=None))
            return
        if new_ticket_text(incoming, self.bot_username) == "" and not incoming.files:
            await self._quietly(self.bot.send_message(incoming.chat_id, NEW_NEEDS_TEXT, parse_mode=None))
            return  # "/new" alone: nothing to store yet
        if (argument := link_argument(incoming, self.bot_username)) is not None:
            await self._link(incoming, argument)  # never a ticket message
            return
        if await survey_reply(self.bot, self.engine, incoming):  # a comment on our survey, not a ticket message
            return
        attachments = await download_files(self.bot, incoming)  # a temporary failure raises: retried
        receipt = await self.sink(to_inbound(incoming, received_at=datetime.now(UTC), attachments=attachments))
        log.info("telegram: %s update %s as %s", "duplicate of" if receipt.duplicate else "stored",
                 incoming.update_id, receipt.ticket_number)

    async def _solved(self, incoming: Incoming, number: str) -> None:
        """The customer pressed ✅ under a reply: the ticket is resolved (once, however often Telegram
        delivers the press), and a pop-up says so."""
        status = await asyncio.to_thread(self._resolve_for_customer, incoming, number)
        await self._quietly(self.bot.answer_callback_query(
            incoming.callback_id or "", text=solved_answer(status, language_of(incoming.language_code))))
        if status != "not_theirs" and incoming.chat_id is not None and incoming.message_id is not None:
            # Pressed: the button goes, so the reply no longer offers what is done.
            await self._quietly(self.bot.edit_message_reply_markup(
                chat_id=incoming.chat_id, message_id=incoming.message_id, reply_markup=None))

    def _resolve_for_customer(self, incoming: Incoming, number: str) -> str:
        with transaction(self.engine) as session:
            if incoming.update_id is not None and claim_once(session, f"telegram-update:{incoming.update_id}",
                                                             datetime.now(UTC)) is not None:
                return "already"
            return actions.customer_resolves(session, number, ("telegram", str(incoming.from_id)), self.config,
                                             datetime.now(UTC))

    async def _link(self, incoming: Incoming, argument: str) -> None:
        answer = await asyncio.to_thread(
            answer_link, self.engine, self.link_key, telegram_id=incoming.from_id, argument=argument,
            display_name=incoming.display_name, username=incoming.username,
            language=language_of(incoming.language_code), now=datetime.now(UTC),
            once=f"telegram-update:{incoming.update_id}" if incoming.update_id is not None else None)
        await self._quietly(self.bot.send_message(incoming.chat_id, answer, parse_mode=None))

    async def _console(self, incoming: Incoming) -> None:
        # An agent's screenshot or PDF goes to the customer with the reply it captions; downloaded
        # first (a temporary failure raises, and the update comes again), as a customer's files are.
        attachments = await download_files(self.bot, incoming) if incoming.files else ()
        if len(attachments) < len(incoming.files):
            await self._quietly(self.bot.send_message(
                incoming.chat_id, "this file could not be fetched from Telegram (over 20 MB, or gone); nothing "
                "was sent: send a smaller file", parse_mode=None))
            return
        answer = await asyncio.to_thread(
            answer_agent, self.engine, self.config, incoming.from_id, incoming.text, incoming.reply_to_text,
            incoming.callback_data, now=datetime.now(UTC), once=f"telegram-update:{incoming.update_id}",
            dashboard_link=self.dashboard_link, attachments=attachments, album=incoming.media_group_id)
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


def dashboard_link(settings: Settings) -> Callable[[int], str]:
    """Agent id → a fresh sign-in link to the dashboard that `paidan serve` serves at `public_url`."""
    from paidan.dashboard import SignInLinks, sign_in_url

    links = SignInLinks(settings.secret)
    return lambda agent_id: sign_in_url(settings.public_url, links, agent_id, datetime.now(UTC))


def webhook_secret(settings: Settings) -> str:
    """The webhook's secret token: `[telegram] webhook_secret`, or else derived from the settings'
    kept `secret` (one-way, so the CSRF key itself never leaves the machine), which makes every
    process that shares that secret expect the same token without a second secret to keep."""
    if settings.telegram.webhook_secret is not None:
        return settings.telegram.webhook_secret.get_secret_value()
    return hmac.new(settings.secret, b"paidan telegram webhook", hashlib.sha256).hexdigest()


class TelegramWebhook:
    """`POST webhook_path`: Telegram pushes one update per request. 200 only after `Dispatcher.handle`
    returned (= committed); 503 when it raised, so Telegram sends the update again (FAILURE_MODES 25).
    Until `run_telegram` has met the bot and set `dispatcher`, updates get 503 too."""

    def __init__(self, secret: str, path: str = "/telegram/webhook"):
        self.secret = secret
        self.path = path
        self.dispatcher: Dispatcher | None = None

    async def answer(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        # Checked before the body is read: a stranger cannot make us buffer or parse anything.
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            return error(403, "forbidden", f"missing or wrong {SECRET_HEADER} header",
                         {SECRET_HEADER: "missing or wrong"})
        body = await _body_within(request, WEBHOOK_MAX_BODY)
        if body is None:
            return error(413, "too_large", f"the request body exceeds {WEBHOOK_MAX_BODY} bytes",
                         {"body": f"at most {WEBHOOK_MAX_BODY} bytes"})
        try:
            update = json.loads(body)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; absurdly deep nesting
            return error(400, "invalid", "the body is not valid JSON", {"body": f"not valid JSON: {exc}"})
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            return error(400, "invalid", "the body is not a Telegram update",
                         {"body": "a Telegram Update object with an integer update_id"})
        dispatcher = self.dispatcher
        if dispatcher is None:
            return _retry_later(f"update {update['update_id']}: the Telegram channel is not ready yet")
        try:
            await dispatcher.handle(update)
        except StorageUnavailable as exc:
            log.warning("telegram: update %s not stored (%s); answered 503, Telegram sends it again",
                        update["update_id"], exc)
            return _retry_later("the database could not store the update; nothing was stored")
        except Exception:  # noqa: BLE001 — answered 503 below: not stored, so Telegram must send it again
            log.exception("telegram: update %s not handled; answered 503, Telegram sends it again",
                          update["update_id"])
            return _retry_later("the update could not be handled")
        return JSONResponse({"ok": True})


async def _body_within(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is known to exceed `limit` (declared or counted)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_later(detail: str) -> Response:
    return error(503, "unavailable", f"{detail}; retry later", headers={"Retry-After": WEBHOOK_RETRY_AFTER})


async def run_telegram(settings: Settings, engine: Engine, config: RouterConfig,
                       sink: Callable[[InboundMessage], Awaitable[Receipt]], stop: asyncio.Event,
                       webhook: TelegramWebhook | None = None) -> None:
    """Take the bot's updates (by `webhook` when given, else by long polling) and send the outbox's
    Telegram items, until `stop` is set."""
    bot = make_bot(settings)
    try:
        me = await bot.get_me()
        dispatcher = Dispatcher(bot, engine, config, sink, bot_username=me.username, link_key=link_key(settings),
                                dashboard_link=dashboard_link(settings))
        if webhook is None:
            log.info("paidan on Telegram as @%s (updates by long polling)", me.username)
            receive = _poll(bot, dispatcher, settings, engine, stop)
        else:
            log.info("paidan on Telegram as @%s (updates by webhook: %s, served here at %s, secret %s)",
                     me.username, settings.telegram.webhook_url, webhook.path,
                     "from [telegram] webhook_secret" if settings.telegram.webhook_secret else
                     "derived from secret_key: every process behind the balancer needs the same one")
            webhook.dispatcher = dispatcher
            receive = _register_webhook(bot, settings.telegram.webhook_url, webhook.secret, stop)
        # A TaskGroup, so that if one of the two fails the other is stopped too, not left running.
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(receive)
            tasks.create_task(_send_forever(bot, engine, settings, stop))
    except Exception:  # noqa: BLE001 — a bad token or an unreachable API must not take the other channels down
        log.exception("telegram: the channel stopped; the other channels go on")
    finally:
        if webhook is not None:
            webhook.dispatcher = None  # its bot is closing: later updates get 503 and come back
        await bot.session.close()


async def _poll(bot: Bot, dispatcher: Dispatcher, settings: Settings, engine: Engine, stop: asyncio.Event) -> None:
    await _leave_webhook_mode(bot)
    poller = TelegramPoller(bot, dispatcher.handle, load_cursor=partial(load_cursor, engine),
                            save_cursor=partial(save_cursor, engine), timeout=settings.telegram.poll_timeout_seconds)
    await poller.run(stop)


async def _leave_webhook_mode(bot: Bot) -> None:
    """While a webhook is set, getUpdates only answers 409 Conflict: delete it, so switching back from
    webhook mode to polling just works. Nothing is lost: with drop_pending_updates=False Telegram
    keeps the updates it holds, and getUpdates returns them."""
    try:
        info = await bot.get_webhook_info()
        if not info.url:
            return
        log.warning("telegram: a webhook is set (%s, %d updates pending) and polling receives nothing while it "
                    "is; deleting it, keeping the pending updates. If other paidan processes run with "
                    "[telegram] webhook_url they set it again and this one gets 409 Conflict: run every "
                    "process in the same mode", info.url, info.pending_update_count)
        await bot.delete_webhook(drop_pending_updates=False)
    except TelegramAPIError as exc:
        log.warning("telegram: could not check or delete the webhook (%s); if one is set, polling gets "
                    "409 Conflict until it is deleted", exc)


async def _register_webhook(bot: Bot, url: str, secret: str, stop: asyncio.Event) -> None:
    """setWebhook, retried with backoff while Telegram or the network fail. Every process of a
    deployment sets the same webhook at start, which Telegram takes as a no-op. Pending updates are
    never dropped: Telegram delivers them to the webhook once it is set."""
    delay = 1.0
    while not stop.is_set():
        try:
            await bot.set_webhook(url, secret_token=secret, allowed_updates=HANDLED_UPDATES,
                                  max_connections=WEBHOOK_CONNECTIONS, drop_pending_updates=False)
            log.info("telegram: webhook set to %s", url)
            return
        except TelegramBadRequest as exc:  # not HTTPS, a port Telegram refuses, a host it cannot resolve
            log.error("telegram: Telegram refused the webhook %s (%s); no updates arrive until "
                      "[telegram] webhook_url is fixed", url, exc.message)
            return
        except TelegramRetryAfter as exc:
            delay = max(delay, float(exc.retry_after))
            log.warning("telegram: setWebhook: Telegram asks to wait %ss", exc.retry_after)
        except TelegramAPIError as exc:
            log.warning("telegram: could not set the webhook (%s); retrying in %.0fs", exc, delay)
        await pause(stop, delay)
        delay = min(delay * 2, 60.0)


async def _send_forever(bot: Bot, engine: Engine, settings: Settings, stop: asyncio.Event) -> None:
    send = sync_send(TelegramSender(bot), asyncio.get_running_loop())
    build = partial(build_telegram, load_file=partial(delivery.attachment_file, engine))
    await send_outbox_forever(engine, "telegram", build, send, batch=TELEGRAM_BATCH, lease=TELEGRAM_LEASE,
                              every=settings.telegram.send_poll_seconds, stop=stop)
