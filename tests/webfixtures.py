"""Fixtures for the web channel tests: a real uvicorn server on 127.0.0.1 port 0, real intake on
the fresh migrated database of conftest's `database_url` (SQLite, or PostgreSQL when
PAIDAN_TEST_DATABASE_URL is set), and an httpx client that behaves like a browser filling the
form (cookie + CSRF token from the page).

Test modules use them with `from webfixtures import *`.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from paidan.db import make_engine
from paidan.settings import Settings
from paidan.web import WebMetrics, build_app
from router.intake import Intake
from router.queries import TicketQueries

__all__ = [
    "API_TOKEN", "FormClient", "LiveApp", "serve", "web_intake", "web_settings",
    "live_app", "form_client", "api_client", "make_settings", "PNG_1X1", "ticket_number_in", "csrf_in",
    "browser", "chromium_missing",
]

API_TOKEN = "test-token-1"
CHROMIUM = os.environ.get("PAIDAN_CHROMIUM", "/usr/bin/chromium")
TICKET = re.compile(r"GD\d{11,}")
# A valid 1x1 PNG, built here rather than read from disk.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def make_settings(**overrides) -> Settings:
    values = {
        "secret_key": "webform-test-secret",
        "api_tokens": [API_TOKEN, "test-token-2"],
        "form_rate_limit_per_minute": 10_000,  # the rate-limit tests build their own apps
        "api_rate_limit_per_minute": 0,
        "database_url": "sqlite:///unused.db",
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def serve(app) -> Iterator[str]:
    """Run `app` under uvicorn (httptools, uvloop when present) in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class LiveApp:
    url: str
    app: object
    intake: Intake
    engine: object
    metrics: WebMetrics


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return (f"Chromium not found at {CHROMIUM}: to run the browser tests, "
                "`apt-get install -y --no-install-recommends chromium fonts-noto-cjk` "
                "(or point PAIDAN_CHROMIUM at a Chromium binary)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `pip install playwright` (do not run `playwright install`)"
    return None


@pytest.fixture
def browser():
    """Debian's headless Chromium through Playwright; never `playwright install`, which downloads one."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def web_intake(engine):
    intake = Intake(engine)
    yield intake
    intake.close()


@pytest.fixture
def web_settings() -> Settings:
    return make_settings()


@pytest.fixture
def live_app(web_settings, engine, web_intake) -> Iterator[LiveApp]:
    queries = TicketQueries(engine)
    metrics = WebMetrics()
    app = build_app(web_settings, web_intake.accept, queries.ticket_view, db_ok=queries.db_ok, metrics=metrics)
    with serve(app) as url:
        yield LiveApp(url, app, web_intake, engine, metrics)


def csrf_in(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return html.unescape(match.group(1))


def ticket_number_in(page: str) -> str | None:
    match = re.search(r'id="ticket-number">(GD\d+)<', page)
    return match.group(1) if match else None


class FormClient:
    """A browser-like client: keeps cookies, reads the CSRF token from the page it was shown."""

    def __init__(self, base_url: str, **headers: str):
        self.http = httpx.Client(base_url=base_url, timeout=60, headers=headers)

    def close(self) -> None:
        self.http.close()

    def token(self, path: str = "/contact") -> str:
        page = self.http.get(path)
        assert page.status_code == 200, page.text
        return csrf_in(page.text)

    def submit(self, fields: dict[str, str], files: list[tuple[str, bytes, str]] | None = None,
               token: str | None = None, path: str = "/contact") -> httpx.Response:
        data = {"csrf_token": self.token(path) if token is None else token, **fields}
        multipart = [("attachments", (name, content, ctype)) for name, content, ctype in files or []]
        if not multipart:  # browsers always send multipart for this form, with an empty file part
            multipart = [("attachments", ("", b"", "application/octet-stream"))]
        return self.http.post(path, data=data, files=multipart)

    def lookup(self, number: str, contact: str) -> httpx.Response:
        return self.http.post("/status", data={"csrf_token": self.token("/status"), "number": number,
                                               "contact": contact})


@pytest.fixture
def form_client(live_app) -> Iterator[FormClient]:
    client = FormClient(live_app.url, **{"Accept-Language": "en"})
    yield client
    client.close()


@pytest.fixture
def api_client(live_app) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_app.url, timeout=60,
                      headers={"Authorization": f"Bearer {API_TOKEN}"}) as client:
        yield client
