"""ASGI middleware at the edge of the web channel: body size limits, security headers, and the
last-resort answer for a bug, so no request ever gets a bare 500 or a hang."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# How much of an oversized body we still read (and throw away) before answering 413, so that a
# browser that is still uploading sees our answer instead of a reset connection (FAILURE_MODES 30).
DRAIN_CAP = 256 * 1024 * 1024


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body exceeds {limit} bytes")


class BodyLimit:
    """Refuse bodies over the limit for their path *before* anything parses them.

    A declared Content-Length over the limit is answered at once; a chunked body is counted as
    it is read, and the read that crosses the limit raises BodyTooLarge. Either way the answer
    is `too_large(scope, limit)` — a 413 — never a CSRF failure of an emptied form.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[Scope], int],
                 too_large: Callable[[Scope, int], Response]):
        self.app = app
        self.limit_for = limit_for
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # With `Expect: 100-continue` the client waits for us and never sends the body.
            if declared <= DRAIN_CAP and not _header(scope, b"expect"):
                await _drain(receive, DRAIN_CAP)
            await self.too_large(scope, limit)(scope, receive, send)
            return

        received = 0
        started = False
        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            if not body_done:  # once the body is complete, receive() would wait for a disconnect
                await _drain(receive, DRAIN_CAP - received)
            await self.too_large(scope, limit)(scope, receive, send)


class CatchAll:
    """A bug must still get an answer: log it with its traceback and reply 503 with Retry-After.

    503 rather than 500 because the client can do something about it: send again later (every
    channel is idempotent, so a retry never duplicates a message).
    """

    def __init__(self, app: ASGIApp, *, failure: Callable[[Scope], Response]):
        self.app = app
        self.failure = failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except BodyTooLarge:
            raise  # BodyLimit, outside us, answers it
        except Exception:  # noqa: BLE001 — the answer is a 503 below; the traceback goes to the log
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await self.failure(scope)(scope, receive, send)


SECURITY_HEADERS = [
    # Messages are shown as text; even if escaping failed somewhere, no script would run.
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, add_headers)


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return value
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server rejects a malformed length before we see it


async def _drain(receive: Receive, budget: int) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return
