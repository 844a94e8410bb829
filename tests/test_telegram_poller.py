"""connectors.telegram.poller against FakeBotAPI (a loopback Bot API) with a real aiogram Bot:
order, cursor-after-commit, retries, restarts, file downloads, and real intake end to end."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from functools import partial

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.telegram.poller import TelegramPoller, UpdateNotHandled, download_files
from connectors.telegram.updates import is_private, read_update, to_inbound
from models.tables import Message, Ticket
from router.cursors import load_cursor, save_cursor
from router.intake import Intake
from telegram_api import FakeBotAPI, run_with_bot

TOKEN = "123456:TEST"


@pytest.fixture
def fake():
    with FakeBotAPI(token=TOKEN) as api:
        yield api


def customer_message(user_id: int, message_id: int, text: str, **fields) -> dict:
    user = {"id": user_id, "is_bot": False, "first_name": f"Customer {user_id}", "language_code": "zh-hans"}
    return {"message": {"message_id": message_id, "from": user, "date": 1763884800, "text": text,
                        "chat": {"id": user_id, "type": "private", "first_name": user["first_name"]}, **fields}}


class MemoryCursors:
    """load_cursor/save_cursor over a dict, remembering every save in order."""

    def __init__(self):
        self.values: dict[str, dict] = {}
        self.saves: list[int] = []

    def load(self, name: str) -> dict:
        return dict(self.values.get(name, {}))

    def save(self, name: str, value: dict) -> None:
        self.values[name] = dict(value)
        self.saves.append(value["last_update_id"])

    def last(self) -> int | None:
        return next(iter(self.values.values()), {}).get("last_update_id")


def make_poller(bot, handle, cursors: MemoryCursors, **kwargs) -> TelegramPoller:
    return TelegramPoller(bot, handle, load_cursor=cursors.load, save_cursor=cursors.save, timeout=1, **kwargs)


# ---- order and acknowledgement ------------------------------------------------------------------


def test_updates_are_handled_in_order_and_the_cursor_saved_after_each(fake):
    ids = [fake.push_update(customer_message(7, n, f"message {n}")) for n in range(1, 5)]
    cursors = MemoryCursors()
    seen: list[tuple[int, int | None]] = []

    async def handle(update):
        seen.append((update["update_id"], cursors.last()))  # the cursor as it stood while handling

    async def scenario(bot):
        poller = make_poller(bot, handle, cursors)
        assert poller.name == "telegram:123456"
        return await poller.poll_once()

    assert run_with_bot(fake, scenario) == 4
    # Each update was handled while the cursor still pointed before it: saved only afterwards.
    assert seen == [(ids[0], None), (ids[1], ids[0]), (ids[2], ids[1]), (ids[3], ids[2])]
    assert cursors.saves == ids
    assert "drop_pending_updates" not in str(fake.requests())


def test_a_failing_update_stops_the_round_and_comes_back_next_round(fake):
    ids = [fake.push_update(customer_message(7, n, f"message {n}")) for n in range(1, 6)]
    cursors = MemoryCursors()
    stored: list[int] = []
    attempts: list[int] = []

    async def handle(update):
        attempts.append(update["update_id"])
        if update["update_id"] == ids[2] and attempts.count(ids[2]) == 1:
            raise RuntimeError("database is locked")
        stored.append(update["update_id"])

    async def scenario(bot):
        poller = make_poller(bot, handle, cursors)
        with pytest.raises(UpdateNotHandled):
            await poller.poll_once()
        assert cursors.last() == ids[1]  # the 2nd; the 3rd was not acknowledged
        assert await poller.poll_once() == 3

    run_with_bot(fake, scenario)
    assert stored == ids  # nothing skipped, nothing doubled
    assert attempts == ids[:3] + ids[2:]
    assert cursors.last() == ids[4]
    offsets = [r.get("offset") for r in fake.requests("getUpdates")]
    assert offsets == [None, ids[1] + 1]  # the retry asked again from the failed update


def test_a_restart_resumes_from_the_stored_cursor_and_confirms_it(fake):
    cursors = MemoryCursors()
    first = [fake.push_update(customer_message(7, n, f"message {n}")) for n in range(1, 4)]
    handled: list[int] = []

    async def handle(update):
        handled.append(update["update_id"])

    async def scenario(bot):
        assert await make_poller(bot, handle, cursors).poll_once() == 3
        later = fake.push_update(customer_message(7, 4, "message 4"))
        restarted = make_poller(bot, handle, cursors)  # a new process: only the stored cursor survives
        assert await restarted.poll_once() == 1
        return later

    later = run_with_bot(fake, scenario)
    assert handled == first + [later]
    assert fake.requests("getUpdates")[-1]["offset"] == first[-1] + 1
    assert fake.confirmed_offset == first[-1] + 1
    # Telegram forgot the handled updates; the last one is confirmed by the next getUpdates.
    assert fake.pending_update_ids() == [later]


def test_429_and_502_are_retried_without_skipping(fake):
    ids = [fake.push_update(customer_message(7, n, f"message {n}")) for n in range(1, 3)]
    fake.fail_next("getUpdates", 429, "Too Many Requests: retry after 1", retry_after=1)
    fake.fail_next("getUpdates", 502, "Bad Gateway")
    cursors = MemoryCursors()
    handled: list[int] = []

    async def scenario(bot):
        stop = asyncio.Event()

        async def handle(update):
            handled.append(update["update_id"])
            if len(handled) == len(ids):
                stop.set()

        poller = make_poller(bot, handle, cursors, retry_delay=0.05)
        started = time.monotonic()
        await asyncio.wait_for(poller.run(stop), timeout=10)
        return time.monotonic() - started

    elapsed = run_with_bot(fake, scenario)
    assert handled == ids and cursors.last() == ids[-1]
    assert elapsed >= 1.0  # retry_after was honoured
    assert [r.get("offset") for r in fake.requests("getUpdates")] == [None, None, None]


def test_run_stops_promptly_during_a_long_poll(fake):
    async def handle(update):
        raise AssertionError("nothing to handle")

    async def scenario(bot):
        stop = asyncio.Event()
        poller = make_poller(bot, handle, MemoryCursors())
        poller.timeout = 25  # a real long poll, abandoned on stop
        asyncio.get_running_loop().call_later(0.3, stop.set)
        started = time.monotonic()
        await asyncio.wait_for(poller.run(stop), timeout=5)
        return time.monotonic() - started

    assert run_with_bot(fake, scenario) < 2


# ---- files --------------------------------------------------------------------------------------


def test_a_photo_is_downloaded_into_an_attachment(fake):
    photo = [{"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 10},
             {"file_id": "large", "file_unique_id": "l", "width": 800, "height": 800, "file_size": 13}]
    fake.add_file("large", b"\xff\xd8large-jpeg")
    update = {"update_id": 1, **customer_message(7, 1, "", photo=photo, caption="broken box")}
    incoming = read_update(update)

    async def scenario(bot):
        return await download_files(bot, incoming)

    attachments = run_with_bot(fake, scenario)
    assert [(a.filename, a.content_type) for a in attachments] == [("photo.jpg", "image/jpeg")]
    assert attachments[0].data == b"\xff\xd8large-jpeg"
    msg = to_inbound(incoming, received_at=datetime.now(UTC), attachments=attachments)
    assert msg.flags == () and msg.text == "broken box"
    assert [r["file_id"] for r in fake.requests("getFile")] == ["large"]


def test_files_too_big_or_refused_are_skipped_and_flagged_but_temporary_failures_raise(fake):
    document = {"file_id": "doc", "file_unique_id": "d", "file_name": "a.pdf", "mime_type": "application/pdf"}
    fake.add_file("doc", b"x" * 100)
    incoming = read_update({"update_id": 1, **customer_message(7, 1, "", document=document)})
    unknown = read_update({"update_id": 2, **customer_message(7, 2, "", document={**document, "file_id": "gone"})})

    async def scenario(bot):
        assert await download_files(bot, incoming, max_bytes=50) == ()  # getFile says 100 bytes
        assert await download_files(bot, unknown) == ()  # 400 invalid file_id: permanent
        fake.fail_next("file", 503, "Service Unavailable")
        with pytest.raises(aiohttp.ClientResponseError):  # 5xx: the update is retried later
            await download_files(bot, incoming)
        return await download_files(bot, incoming)

    assert [a.data for a in run_with_bot(fake, scenario)] == [b"x" * 100]
    assert to_inbound(unknown, received_at=datetime.now(UTC)).flags == ("attachment_missing",)


# ---- end to end with the real intake ------------------------------------------------------------


def test_customer_messages_become_tickets_once_even_when_delivered_twice(fake, engine):
    intake = Intake(engine)
    messages = [customer_message(1000 + n, 1, f"订单 {n} 还没发货，请帮忙查一下") for n in range(3)]
    for message in messages:
        fake.push_update(message)
    receipts = []
    cursor_functions = {"load_cursor": partial(load_cursor, engine), "save_cursor": partial(save_cursor, engine)}

    async def scenario(bot):
        async def handle(update):
            incoming = read_update(update)
            if incoming.kind != "message" or not is_private(incoming):
                return
            attachments = await download_files(bot, incoming)
            msg = to_inbound(incoming, received_at=datetime.now(UTC), attachments=attachments)
            receipts.append(await intake.accept(msg))  # returns after the commit

        assert await TelegramPoller(bot, handle, timeout=1, **cursor_functions).poll_once() == 3
        # The same messages again under new update ids (as after a crash between the commit and
        # the cursor save, or a webhook retry): intake knows them by chat:message_id.
        for message in messages:
            fake.push_update(message)
        assert await TelegramPoller(bot, handle, timeout=1, **cursor_functions).poll_once() == 3

    try:
        run_with_bot(fake, scenario)
    finally:
        intake.close()
    assert [r.duplicate for r in receipts] == [False] * 3 + [True] * 3
    assert [r.ticket_number for r in receipts[:3]] == [r.ticket_number for r in receipts[3:]]
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 3
        assert session.scalar(select(func.count()).select_from(Message)) == 3
    assert load_cursor(engine, "telegram:123456") == {"last_update_id": 6}
