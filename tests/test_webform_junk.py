"""Junk at every endpoint: no 500, no hang, no lost message, and HTML stays text.

Every request goes to the real server; after the barrage the server must still answer, and the
last-resort handler (CatchAll, which turns a bug into a 503) must never have fired.
"""

from __future__ import annotations

import logging
import os
import socket

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import Message
from webfixtures import ticket_number_in
from webfixtures import *  # noqa: F403 — the fixtures

GOOD = {"name": "王五", "email": "wang@example.com", "subject": "测试", "message": "正常内容"}


@pytest.fixture
def no_bug_logged(caplog):
    caplog.set_level(logging.ERROR, logger="connectors.webform")
    yield
    bugs = [r for r in caplog.records if r.name.startswith("connectors.webform") and r.levelno >= logging.ERROR]
    assert not bugs, [r.getMessage() for r in bugs]


def _ok(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.request.url, answer.text[:300])


def test_junk_bodies_on_the_form_and_status_page(live_app, form_client, no_bug_logged):
    http = form_client.http
    token = form_client.token()
    boundary = "b0undary"
    junk: list[tuple[bytes, str | bytes]] = [
        (os.urandom(4096), "multipart/form-data"),  # no boundary
        (os.urandom(4096), f"multipart/form-data; boundary={boundary}"),
        (b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--" + boundary.encode()
         + b"--\r\n", f"multipart/form-data; boundary={boundary}"),
        (b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="message"\r\n\r\n\xff\xfe\x00bad'
         b"\r\n--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"),
        (b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="attachments"; filename="..\\..\\\xff'
         b'\x00evil.png"\r\nContent-Type: image/png\r\n\r\nnot a png\r\n--' + boundary.encode() + b"--\r\n",
         f"multipart/form-data; boundary={boundary}"),
        (b"name=%FF%FE&message=%00%00&email=%E4%B8", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\xfd=\x00\x01", "application/x-www-form-urlencoded"),
        (b"&".join(b"f%d=1" % i for i in range(500)), "application/x-www-form-urlencoded"),  # too many fields
        (b"message=" + b"x" * (2 * 1024 * 1024), "application/x-www-form-urlencoded"),  # one huge field
        (b'{"name": "json"}', "application/json"),
        (b"plain text", "text/plain"),
        (b"", b"multipart/form-data; boundary=\xe4\xb8\xad"),
        (os.urandom(1000), ""),
    ]
    for path in ("/contact", "/", "/status", "/status/message"):
        for body, content_type in junk:
            headers = {"Content-Type": content_type} if content_type else {}
            _ok(http.post(path, content=body, headers=headers))
    # Odd but valid input is stored faithfully, minus what a database cannot hold (NUL).
    weird = {**GOOD, "message": "a\x00b 😀 " + "<script>alert(1)</script>" + "中" * 1000, "csrf_token": token}
    page = http.post("/contact", data=weird, files=[("attachments", ("", b"", "application/octet-stream"))])
    assert page.status_code == 200, page.text[:500]
    number = ticket_number_in(page.text)
    with Session(live_app.engine) as session:
        [stored] = session.scalars(select(Message.text).where(Message.external_id.like("form:%"),
                                                              Message.text.like("ab 😀%")))
    assert stored == "ab 😀 <script>alert(1)</script>" + "中" * 1000
    status = form_client.lookup(number, GOOD["email"])
    assert status.status_code == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in status.text
    # 100 KB of text: refused with the field named, not a crash.
    long = http.post("/contact", data={**GOOD, "message": "x" * 100_000, "csrf_token": token},
                     files=[("attachments", ("", b"", "application/octet-stream"))])
    assert long.status_code == 400 and 'data-error-for="message"' in long.text


def test_junk_on_the_api(live_app, api_client, no_bug_logged):
    headers = {"Content-Type": "application/json", "Idempotency-Key": "junk"}
    bodies = [
        os.urandom(2048),
        b"\xff\xfe\xfa",
        b"",
        b"null",
        b'"just a string"',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deep enough to exhaust the parser's recursion
        b'{"text": ' + b"9" * 5000 + b"}",  # an integer Python refuses to convert
        b'{"text": "\\ud800 lone surrogate", "email": "a@b.cn"}',
        b'{"text": "\\u0000\\u0000", "email": "a@b.cn"}',
        b'{"text": "ok", "email": "a@b.cn", "attachments": "not a list"}',
        b'{"text": "ok", "email": "a@b.cn", "attachments": [null, 1, {}]}',
        b'{"text": "ok", "email": "\xe4\xb8\xad@b.cn"}',
        b'{"text": {"nested": true}, "email": ["a@b.cn"]}',
        b'{"text": "ok", "email": "a@b.cn", "ticket_number": "GD20260101001\\u0000"}',
    ]
    for body in bodies:
        _ok(api_client.post("/api/v1/messages", content=body, headers=headers))
    for content_type in ("text/plain", "application/xml", "multipart/form-data", "", "application/json; charset=gbk"):
        _ok(api_client.post("/api/v1/messages", content=b'{"text": "x"}',
                            headers={**headers, "Content-Type": content_type}))

    # A lone surrogate is dropped, the rest of the message is stored.
    answer = api_client.post("/api/v1/messages", content=b'{"text": "\\ud800ok \\ud83d\\ude00", "email": "s@b.cn"}',
                             headers={**headers, "Idempotency-Key": "surrogate"})
    assert answer.status_code == 201, answer.text
    with Session(live_app.engine) as session:
        assert session.scalar(select(Message.text).where(Message.id == answer.json()["message_id"])) == "ok 😀"

    for path in ("/api/v1/tickets/GD20260101001?email=%00", "/api/v1/tickets/%00?phone=%FF",
                 "/api/v1/tickets/" + "9" * 5000 + "?email=a@b.cn",
                 "/api/v1/tickets/GD20260101001?email=" + "a" * 10000):
        _ok(api_client.get(path))


def test_odd_requests_and_headers(live_app, no_bug_logged):
    with httpx.Client(base_url=live_app.url, timeout=30) as http:
        _ok(http.get("/contact", headers={"X-Huge": "a" * 100_000}))
        _ok(http.get("/contact", headers={"Accept-Language": "zh;q=" + "9" * 1000 + ",en;q=abc," * 500}))
        _ok(http.get("/contact", headers={"Cookie": b"paidan_sid=" + b"\xff" * 20 + b"; paidan_lang=<script>"}))
        _ok(http.get("/contact?lang=" + "x" * 10000))
        _ok(http.get("/status?number=" + "%00%FF" * 100))
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            _ok(http.request(method, "/contact"))
        assert http.get("/no/such/page").status_code == 404
        assert http.get("/" + "a" * 5000).status_code == 404
        assert http.get("/static/../pyproject.toml").status_code == 404

    # Not HTTP at all: uvicorn answers or closes; the server keeps serving.
    host, port = live_app.url.removeprefix("http://").split(":")
    for garbage in (b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
                    b"POST /contact HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(garbage)
            try:
                reply = sock.recv(1024)
            except (ConnectionResetError, TimeoutError):
                reply = b""
            assert not reply.startswith(b"HTTP/1.1 5"), reply[:100]
    assert httpx.get(live_app.url + "/healthz").status_code == 200
