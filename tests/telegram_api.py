"""FakeBotAPI: a loopback stand-in for the Telegram Bot API, for tests.

A real aiohttp server on 127.0.0.1, port 0, running in its own thread with its own event loop,
so it serves sync tests and async code alike. Point a real aiogram Bot at it:

    with FakeBotAPI(token="123456:TEST") as fake:
        session = AiohttpSession(api=TelegramAPIServer.from_base(fake.base))
        bot = Bot(fake.token, session=session)

aiogram 3 POSTs every method as multipart form data whose values are strings (numbers and
booleans JSON-encoded, objects such as reply_markup as JSON text); JSON bodies and query strings
are accepted too, so other clients work. `requests()` returns those parameters decoded.

`fail_next(method, ...)` also accepts the pseudo-method "file" for the file-download URL.

Webhooks as Telegram keeps them: setWebhook stores the URL, secret and allowed updates (`webhook`),
getWebhookInfo reports them, deleteWebhook clears them, and getUpdates answers 409 Conflict while one
is set. Updates are not pushed to the URL: a test posts them itself, playing Telegram.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web


# Form values aiogram JSON-encodes that we turn back into numbers. Text-like fields ("text",
# "caption", "callback_query_id", "file_id", ...) stay strings even when they look numeric.
_INTEGER_KEYS = frozenset({
    "offset", "limit", "timeout", "chat_id", "message_id", "reply_to_message_id", "from_chat_id",
    "message_thread_id", "user_id", "cache_time", "until_date", "max_connections",
})
_BOOLEAN_TEXT = {"true": True, "false": False}


@dataclass
class _PlannedFailure:
    error_code: int
    description: str
    retry_after: int | None
    times: int


def _decode_value(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    stripped = value.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(stripped)
        except ValueError:
            return value
    if stripped in _BOOLEAN_TEXT:
        return _BOOLEAN_TEXT[stripped]
    if key in _INTEGER_KEYS:
        try:
            return int(stripped)
        except ValueError:
            return value  # e.g. chat_id="@channelname"
    return value


def _chat_for(chat_id: Any) -> dict[str, Any]:
    # Telegram's convention: users have positive ids, groups and channels negative ones.
    if isinstance(chat_id, int) and chat_id > 0:
        return {"id": chat_id, "type": "private", "first_name": "Customer"}
    if isinstance(chat_id, int):
        return {"id": chat_id, "type": "supergroup", "title": "Group"}
    return {"id": -1000000000001, "type": "channel", "title": str(chat_id)}


class FakeBotAPI:
    """A loopback Telegram Bot API: push updates in, inspect what the bot called."""

    def __init__(self, token: str = "123456:TEST") -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1
        self.base = ""  # "http://127.0.0.1:<port>" once started
        self.confirmed_offset = 0
        self.webhook: dict[str, Any] | None = None  # what setWebhook registered; None: getUpdates allowed

        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []  # updates not yet confirmed, in id order
        self._next_update_id = 1
        self._next_message_id = 1
        self._calls: list[tuple[str, dict[str, Any]]] = []
        self._failures: dict[str, deque[_PlannedFailure]] = {}
        self._files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, data)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._update_arrived: asyncio.Event | None = None  # lives on the server loop
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> FakeBotAPI:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FakeBotAPI:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as exc:  # reported to the starting thread below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="FakeBotAPI", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._stopping = True
        self._loop.call_soon_threadsafe(self._wake_pollers)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop = None

    async def _start_server(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        self._update_arrived = asyncio.Event()
        # A short shutdown timeout: open long polls must not hold up stop().
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"

    # -- test controls --------------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; assigns the next update_id when it has none."""
        update = dict(update)
        with self._lock:
            if "update_id" not in update:
                update["update_id"] = self._next_update_id
            self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
            self._pending.append(update)
            self._pending.sort(key=lambda u: u["update_id"])
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_pollers)
        return update["update_id"]

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        """Decoded parameters of every call received, in order (failed ones included).

        Without a method, each dict also carries the method name under "method".
        """
        with self._lock:
            calls = list(self._calls)
        if method is None:
            return [{"method": name, **params} for name, params in calls]
        return [dict(params) for name, params in calls if name.lower() == method.lower()]

    def fail_next(
        self,
        method: str,
        error_code: int,
        description: str,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `method` with this Telegram error."""
        with self._lock:
            queue = self._failures.setdefault(method.lower(), deque())
            queue.append(_PlannedFailure(error_code, description, retry_after, times))

    def add_file(self, file_id: str, data: bytes, file_path: str | None = None) -> None:
        """Make `file_id` available through getFile and the file-download URL."""
        with self._lock:
            self._files[file_id] = (file_path or f"files/{file_id}", bytes(data))

    def pending_update_ids(self) -> list[int]:
        """Ids Telegram still holds (pushed and not yet confirmed by an offset)."""
        with self._lock:
            return [u["update_id"] for u in self._pending]

    # -- HTTP handlers --------------------------------------------------------------------

    async def _handle_method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._read_params(request)
        with self._lock:
            self._calls.append((method, params))
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        failure = self._take_failure(method)
        if failure is not None:
            return failure
        handler = getattr(self, f"_api_{method.lower()}", None)
        if handler is None:
            return self._error(404, "Not Found: method not found")
        result = handler(params)
        if asyncio.iscoroutine(result):
            result = await result
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    async def _handle_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        failure = self._take_failure("file")
        if failure is not None:
            return failure
        path = request.match_info["path"]
        with self._lock:
            data = next((d for p, d in self._files.values() if p == path), None)
        if data is None:
            return self._error(404, "Not Found")
        return web.Response(body=data, content_type="application/octet-stream")

    async def _read_params(self, request: web.Request) -> dict[str, Any]:
        raw: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            if request.content_type == "application/json":
                body = await request.json()
                raw.update(body if isinstance(body, dict) else {})
            elif request.can_read_body:
                form = await request.post()
                for key, value in form.items():
                    # Uploaded files are recorded by name, size and digest; their bytes are not kept.
                    if isinstance(value, web.FileField):
                        data = value.file.read()
                        raw[key] = {"filename": value.filename, "size": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()}
                    else:
                        raw[key] = value
        # aiogram uploads a file as its own form field and names it in the parameter ("attach://x"),
        # or inside sendMediaGroup's list of media.
        for key, value in list(raw.items()):
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in raw:
                raw[key] = raw.pop(value[9:])
        params = {key: _decode_value(key, value) for key, value in raw.items()}
        for item in params.get("media") or []:
            if isinstance(item, dict) and str(item.get("media", "")).startswith("attach://"):
                item["media"] = params.pop(item["media"][9:], item["media"])
        return params

    def _take_failure(self, method: str) -> web.Response | None:
        with self._lock:
            queue = self._failures.get(method.lower())
            if not queue:
                return None
            failure = queue[0]
            failure.times -= 1
            if failure.times <= 0:
                queue.popleft()
        return self._error(failure.error_code, failure.description, failure.retry_after)

    @staticmethod
    def _error(error_code: int, description: str, retry_after: int | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": error_code, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return web.json_response(body, status=error_code)

    def _wake_pollers(self) -> None:
        # Replace the event so each wake-up is seen once by the current waiters only.
        if self._update_arrived is not None:
            self._update_arrived.set()
            self._update_arrived = asyncio.Event()

    # -- Bot API methods ------------------------------------------------------------------

    def _bot_user(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Paidan", "username": "paidan_test_bot"}

    def _api_getme(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._bot_user()

    async def _api_getupdates(self, params: dict[str, Any]) -> list[dict[str, Any]] | web.Response:
        if self.webhook is not None:
            return self._error(409, "Conflict: can't use getUpdates method while webhook is active; "
                                    "use deleteWebhook to delete the webhook first")
        offset = params.get("offset")
        limit = max(1, min(int(params.get("limit") or 100), 100))
        timeout = float(params.get("timeout") or 0)
        if isinstance(offset, int):
            self._confirm(offset)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                available = list(self._pending)
            if isinstance(offset, int) and offset < 0:
                available = available[offset:]  # Telegram: the last -offset updates
            if available or self._stopping:
                return available[:limit]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(self._update_arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return []

    def _confirm(self, offset: int) -> None:
        # An offset confirms every update with a lower id: Telegram forgets them for good.
        with self._lock:
            if offset > 0:
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
                self.confirmed_offset = max(self.confirmed_offset, offset)

    def _api_sendmessage(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            message_id = self._next_message_id
            self._next_message_id += 1
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self._bot_user(),
            "chat": _chat_for(params.get("chat_id")),
            "date": int(time.time()),
            "text": str(params.get("text", "")),
        }
        markup = params.get("reply_markup")
        # A sent Message only ever carries an inline keyboard; reply keyboards are not echoed.
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        return message

    def _api_senddocument(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._api_sendmessage({**params, "text": ""})
        del message["text"]
        document = params.get("document") if isinstance(params.get("document"), dict) else {}
        message["document"] = {"file_id": f"doc-{message['message_id']}", "file_unique_id": f"u{message['message_id']}",
                               "file_name": document.get("filename"), "file_size": document.get("size")}
        if params.get("caption"):
            message["caption"] = str(params["caption"])
        return message

    def _api_sendmediagroup(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [self._api_senddocument({"chat_id": params.get("chat_id"), "document": item.get("media"),
                                        "caption": item.get("caption")})
                for item in params.get("media") or [] if isinstance(item, dict)]

    def _api_editmessagereplymarkup(self, params: dict[str, Any]) -> bool:
        return True  # recorded in the request log like every call; the message itself is not kept

    def _api_answercallbackquery(self, params: dict[str, Any]) -> bool:
        return True

    def _api_setwebhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        with self._lock:
            # Telegram: an empty url removes the webhook; allowed_updates is kept when not given.
            previous = self.webhook or {}
            self.webhook = {
                "url": url,
                "secret_token": params.get("secret_token"),
                "allowed_updates": params.get("allowed_updates", previous.get("allowed_updates")),
                "max_connections": params.get("max_connections", 40),
            } if url else None
            if params.get("drop_pending_updates") is True:
                self._pending.clear()
        return True

    def _api_deletewebhook(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self.webhook = None
            if params.get("drop_pending_updates") is True:
                self._pending.clear()
        return True

    def _api_getwebhookinfo(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            webhook = self.webhook or {}
            info: dict[str, Any] = {"url": webhook.get("url", ""), "has_custom_certificate": False,
                                    "pending_update_count": len(self._pending)}
            if webhook:
                info["max_connections"] = webhook["max_connections"]
                if webhook["allowed_updates"] is not None:
                    info["allowed_updates"] = webhook["allowed_updates"]
        return info

    def _api_getfile(self, params: dict[str, Any]) -> dict[str, Any] | web.Response:
        file_id = str(params.get("file_id", ""))
        with self._lock:
            known = self._files.get(file_id)
        if known is None:
            return self._error(400, "Bad Request: invalid file_id")
        file_path, data = known
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}"[:32],
            "file_size": len(data),
            "file_path": file_path,
        }


def run_with_bot(fake: FakeBotAPI, scenario):
    """Run `scenario(bot)` on a fresh event loop with a real aiogram Bot pointed at `fake`."""
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    async def main():
        bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.base)))
        try:
            return await scenario(bot)
        finally:
            await bot.session.close()
    return asyncio.run(main())
