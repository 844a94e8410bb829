"""Long-poll Telegram's getUpdates and hand each update to `handle`; confirm only what was stored.

Telegram forgets an update once getUpdates is called with a higher `offset`, so the offset is our
acknowledgement. It comes from the stored cursor (`last_update_id + 1`) and the cursor is saved
only after `handle` returned, and `handle` returns only after the database commit (DESIGN.md,
"Acknowledge only what is stored"; FAILURE_MODES 25-27):

- updates are handled strictly in order, one at a time (aiogram's own polling runs them as
  concurrent tasks and confirms them before they are handled, aiogram#1397);
- if `handle` raises, the round stops before that update without saving: it comes back next round.
  A crash between the commit and the save re-delivers one update, which intake recognises by its
  (channel, "chat:message_id") key and does not store twice;
- never `drop_pending_updates`, and a stop during the long poll abandons only the request: nothing
  it might have returned was confirmed, so Telegram sends it again (python-telegram-bot#5329);
- network errors, 5xx and 429 (after its retry_after) back off and retry the same offset.

Polling needs no webhook set (Telegram answers 409 Conflict while one is); this module never
touches webhooks. The cursor functions hit the database, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiogram import Bot
from aiogram.exceptions import (
    RestartingTelegram,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import GetUpdates

from connectors.telegram.updates import Incoming
from models.errors import PaidanError
from models.message import Attachment

log = logging.getLogger(__name__)

MB = 1024 * 1024

# Worth retrying: Telegram or the network will likely be fine again soon.
# (409 Conflict: another poller with this token, or a webhook set; it may go away, so wait too.)
TEMPORARY_API_ERRORS = (TelegramNetworkError, TelegramServerError, RestartingTelegram, TelegramConflictError)


class UpdateNotHandled(PaidanError):
    """`handle` failed on an update; it was not confirmed and comes back next round."""

    def __init__(self, update_id: int, cause: BaseException):
        self.update_id = update_id
        super().__init__(f"update {update_id} not handled: {type(cause).__name__}")


class CursorUnavailable(PaidanError):
    """The stored cursor could not be read or saved (the database is down); nothing was confirmed."""


class GetRawUpdates(GetUpdates):
    """getUpdates answered as plain dicts. aiogram's Update models would re-serialise dates as ISO
    strings, drop fields newer than this aiogram and turn unknown update kinds into nothing, so a
    model_dump is not what Telegram sent; the dicts are, and they are what we store as `raw`."""

    __returning__ = list[dict[str, Any]]


class TelegramPoller:
    """`run(stop)` polls until `stop` is set; `poll_once()` is one round. One per bot token."""

    def __init__(
        self,
        bot: Bot,
        handle: Callable[[dict], Awaitable[None]],
        *,
        load_cursor: Callable[[str], dict],
        save_cursor: Callable[[str, dict], None],
        name: str | None = None,
        timeout: int = 25,
        limit: int = 100,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
    ):
        self.bot = bot
        self.handle = handle
        self.load_cursor = load_cursor
        self.save_cursor = save_cursor
        self.name = name or f"telegram:{bot.id}"
        self.timeout = timeout
        self.limit = limit
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._last_update_id: int | None = None  # known once the cursor was loaded
        self._cursor_loaded = False

    # ---- one round ---------------------------------------------------------------------------

    async def poll_once(self) -> int:
        """Fetch what Telegram holds after our cursor (long-polling up to `timeout` seconds) and
        handle it in order. Returns how many updates were handled (and the cursor saved past them).
        Raises the API's error when getUpdates fails, UpdateNotHandled when `handle` did and
        CursorUnavailable when the cursor could not be read or saved; nothing is skipped."""
        return await self._handle_in_order(await self._fetch())

    async def _offset(self) -> int | None:
        if not self._cursor_loaded:
            stored = await self._cursor_call(self.load_cursor, self.name)
            last = stored.get("last_update_id")
            self._last_update_id = int(last) if last is not None else None
            self._cursor_loaded = True
        # No cursor yet: no offset, so Telegram starts at its earliest unconfirmed update.
        return None if self._last_update_id is None else self._last_update_id + 1

    async def _fetch(self) -> list[dict[str, Any]]:
        method = GetRawUpdates(offset=await self._offset(), limit=self.limit, timeout=self.timeout)
        # The HTTP request must outlive the long poll, or every quiet poll would be a "timeout".
        return await self.bot(method, request_timeout=self.timeout + 10)

    async def _cursor_call(self, function: Callable, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except Exception as exc:  # whatever the database raised, the answer is: wait and retry
            log.error("%s: cursor not available (%s)", self.name, type(exc).__name__)
            raise CursorUnavailable(f"{self.name}: cursor not available: {type(exc).__name__}") from exc

    async def _handle_in_order(self, updates: list[dict[str, Any]], stop: asyncio.Event | None = None) -> int:
        handled = 0
        for update in sorted(updates, key=lambda u: u["update_id"]):
            if stop is not None and stop.is_set():
                break  # the rest was not confirmed: Telegram sends it again after the restart
            update_id = int(update["update_id"])
            if self._last_update_id is not None and update_id <= self._last_update_id:
                continue  # already handled and saved; Telegram should not have sent it again
            try:
                await self.handle(update)
            except Exception as exc:  # anything: the update stays unconfirmed and is retried
                log.error("%s: update %d not handled (%s: %s); it will be retried",
                          self.name, update_id, type(exc).__name__, exc)
                raise UpdateNotHandled(update_id, exc) from exc
            # Only now is the update stored: remember it, and the next getUpdates confirms it.
            await self._cursor_call(self.save_cursor, self.name, {"last_update_id": update_id})
            self._last_update_id = update_id
            handled += 1
        return handled

    # ---- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, backing off (with jitter, up to a cap) while Telegram, the
        network or `handle` fail, and resetting after a success. A stop waits for the update being
        handled to finish, never for a long poll."""
        failures = 0
        log.info("%s: polling from stored cursor %s", self.name, self._last_update_id)
        while not stop.is_set():
            try:
                updates = await _unless_stopped(self._fetch(), stop)
                if updates is None:
                    break
                await self._handle_in_order(updates, stop)
                failures = 0
                continue
            except TelegramRetryAfter as exc:
                delay = float(exc.retry_after)
                log.warning("%s: Telegram asks to wait %ss (429)", self.name, exc.retry_after)
            except TEMPORARY_API_ERRORS as exc:
                failures += 1
                delay = self._backoff(failures)
                log.warning("%s: getUpdates failed (%s: %s); retrying in %.1fs",
                            self.name, type(exc).__name__, exc, delay)
            except (UpdateNotHandled, CursorUnavailable):  # already logged where it happened
                failures += 1
                delay = self._backoff(failures)
            await _sleep_unless_stopped(delay, stop)
        log.info("%s: stopped at update %s", self.name, self._last_update_id)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.max_retry_delay, self.retry_delay * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter: two pollers do not retry in lockstep


async def _unless_stopped(work: Awaitable, stop: asyncio.Event):
    """The result of `work`, or None once `stop` is set first (the work is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass  # the abandoned long poll confirmed nothing
    return None


async def _sleep_unless_stopped(delay: float, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except asyncio.TimeoutError:
        pass


# ---- files --------------------------------------------------------------------------------------


async def download_files(bot: Bot, incoming: Incoming, max_bytes: int = 20 * MB) -> tuple[Attachment, ...]:
    """The message's files as Attachments. A file over `max_bytes` or one Telegram refuses for good
    (400, 404) is skipped and logged; `to_inbound` then flags the message "attachment_missing".
    A temporary failure raises, so the update is not confirmed and is tried again."""
    attachments: list[Attachment] = []
    for file_id, file_name, mime_type, file_size in incoming.files:
        where = f"update {incoming.update_id} file {file_name!r}"
        if file_size is not None and file_size > max_bytes:
            log.warning("%s is %.1f MB, over the %.1f MB limit; not downloaded", where, file_size / MB, max_bytes / MB)
            continue
        try:
            telegram_file = await bot.get_file(file_id)
        except (TelegramBadRequest, TelegramNotFound, TelegramEntityTooLarge) as exc:
            # "file is too big" (over the Bot API's 20 MB) and unknown file ids come as 400.
            log.warning("%s: Telegram refused it (%s); not downloaded", where, exc.message)
            continue
        size = telegram_file.file_size
        if size is not None and size > max_bytes:
            log.warning("%s is %.1f MB, over the %.1f MB limit; not downloaded", where, size / MB, max_bytes / MB)
            continue
        if not telegram_file.file_path:
            log.warning("%s: Telegram gave no download path; not downloaded", where)
            continue
        try:
            buffer = await bot.download_file(telegram_file.file_path)
        except aiohttp.ClientResponseError as exc:
            if exc.status >= 500:
                raise  # Telegram's trouble, not the file's: retry the update later
            log.warning("%s: download answered %d; not downloaded", where, exc.status)
            continue
        # Other aiohttp.ClientError and timeouts propagate as they are: temporary, so retried.
        data = buffer.read() if buffer is not None else b""
        if len(data) > max_bytes:
            log.warning("%s is %.1f MB, over the %.1f MB limit; dropped", where, len(data) / MB, max_bytes / MB)
            continue
        attachments.append(Attachment(filename=file_name, content_type=mime_type, data=data))
    return tuple(attachments)
