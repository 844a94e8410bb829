"""The contact form and status page over real HTTP: uvicorn on 127.0.0.1:0, real intake, real database."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from connectors.webform.csrf import CsrfTokens
from models.errors import StorageUnavailable
from models.message import Identity, IdentityKind, PublicMessage, TicketView
from models.tables import AttachmentRow, Customer, Message, Ticket
from paidan.web import build_app
from router.queries import TicketQueries
from webfixtures import PNG_1X1, FormClient, csrf_in, make_settings, serve, ticket_number_in
from webfixtures import *  # noqa: F403 — the fixtures

MB = 1024 * 1024
GOOD = {"name": "张三", "email": "zhang@example.com", "phone": "", "subject": "订单没到",
        "message": "我的订单 12345 还没有到 😀", "website": ""}


def errors_in(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-error-for="(\w+)">([^<]*)<', page))


def rows(engine, model, *where) -> list:
    with Session(engine) as session:
        return list(session.scalars(select(model).where(*where)))


def count(engine, model) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def unique_email(tag: str) -> str:
    return f"{tag}.{time.monotonic_ns()}@example.com"  # distinct customers even on a shared PostgreSQL


# --- language ------------------------------------------------------------------------------

def test_form_language_follows_browser_and_switch_is_remembered(live_app):
    with httpx.Client(base_url=live_app.url) as client:
        zh = client.get("/contact", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
        assert zh.status_code == 200 and '<html lang="zh-CN">' in zh.text and "联系我们" in zh.text
        en = client.get("/contact", headers={"Accept-Language": "en-GB,en;q=0.9"})
        assert '<html lang="en">' in en.text and "Contact us" in en.text

        switched = client.get("/contact?lang=en", headers={"Accept-Language": "zh-CN"})
        assert "Contact us" in switched.text
        assert "paidan_lang=en" in switched.headers["set-cookie"]
        # The cookie now wins over the browser's Chinese preference, on every page.
        assert "Ticket status" in client.get("/status", headers={"Accept-Language": "zh-CN"}).text
    with httpx.Client(base_url=live_app.url) as fresh:
        assert "联系我们" in fresh.get("/").text  # no header, no cookie: the default language (zh)


def test_pages_carry_security_headers(live_app):
    page = httpx.get(live_app.url + "/contact")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    cookie = page.headers["set-cookie"]
    assert "paidan_sid=" in cookie and "HttpOnly" in cookie and "samesite=lax" in cookie.lower()


# --- submitting ----------------------------------------------------------------------------------

def test_submission_becomes_a_ticket_with_attachment_and_raw_record(live_app, form_client):
    email = unique_email("Zhang.San")
    page = form_client.submit({**GOOD, "email": email.replace("example.com", "EXAMPLE.com"),
                               "phone": "138 0013 8000"},
                              files=[("截图.png", PNG_1X1, "image/png"), ("日志.txt", "错误 500\n".encode(), "text/plain")])
    assert page.status_code == 200, page.text
    number = ticket_number_in(page.text)
    assert number and re.fullmatch(r"GD\d{11,}", number)
    assert "We will first reply within 4 hours." in page.text

    [message] = rows(live_app.engine, Message, Message.ticket_id == select(Ticket.id).where(Ticket.number == number)
                     .scalar_subquery())
    assert message.channel == "web" and message.text == GOOD["message"] and message.subject == GOOD["subject"]
    assert message.external_id.startswith("form:")
    raw = json.loads(message.raw.decode("utf-8"))
    assert ["message", GOOD["message"]] in raw["fields"]
    assert not any(k == "csrf_token" for k, _ in raw["fields"])
    assert {f["filename"] for f in raw["files"]} == {"截图.png", "日志.txt"}
    attachments = rows(live_app.engine, AttachmentRow, AttachmentRow.message_id == message.id)
    assert {(a.filename, a.content_type, bytes(a.data)) for a in attachments} == {
        ("截图.png", "image/png", PNG_1X1), ("日志.txt", "text/plain", "错误 500\n".encode())}

    # The customer is known by the email (domain lower-cased, local part kept) and the E.164 phone.
    found = httpx.post(live_app.url + "/status", data={"number": number, "contact": email},
                       headers={"Accept-Language": "en"})
    assert found.status_code == 200 and GOOD["message"] in found.text
    by_phone = httpx.post(live_app.url + "/status", data={"number": number.lower(), "contact": "+86 138-0013-8000"})
    assert by_phone.status_code == 200


def test_double_submit_is_one_message_but_an_edited_resubmit_is_kept(live_app, form_client):
    token = form_client.token()
    fields = {**GOOD, "email": unique_email("double")}
    before = count(live_app.engine, Message)
    first = form_client.submit(fields, token=token)
    second = form_client.submit(fields, token=token)  # a double-click or the browser retrying
    assert first.status_code == second.status_code == 200
    assert ticket_number_in(first.text) == ticket_number_in(second.text)
    assert count(live_app.engine, Message) == before + 1
    # Back button, edit, send again with the same (cached) form: a different message, not dropped.
    edited = form_client.submit({**fields, "message": fields["message"] + " 补充"}, token=token)
    assert edited.status_code == 200
    assert count(live_app.engine, Message) == before + 2


def test_each_bad_field_is_named_and_input_is_kept(live_app, form_client):
    page = form_client.submit({"name": "", "email": "not-an-email", "phone": "12", "subject": "",
                               "message": "<b>kept</b>"})
    assert page.status_code == 400
    assert set(errors_in(page.text)) == {"name", "email", "phone", "subject"}
    assert "This is not a valid email address." in errors_in(page.text)["email"]
    assert 'value="not-an-email"' in page.text and "&lt;b&gt;kept&lt;/b&gt;</textarea>" in page.text

    neither = form_client.submit({**GOOD, "email": "", "phone": ""})
    assert neither.status_code == 400
    assert errors_in(neither.text) == {"email": "Give an email address or a phone number (or both).",
                                       "phone": "Give an email address or a phone number (or both)."}

    too_long = form_client.submit({**GOOD, "message": "长" * 50_001})
    assert too_long.status_code == 400 and "at most 50000 characters" in errors_in(too_long.text)["message"]


def test_bad_attachment_types_are_refused_by_content_not_by_name(live_app, form_client):
    page = form_client.submit(GOOD, files=[("photo.png", b"MZ\x90\x00" + b"\x00" * 100, "image/png"),
                                           ("page.html", b"<script>alert(1)</script>", "text/html")])
    assert page.status_code == 400
    assert "photo.png: the content does not match" in errors_in(page.text)["attachments"]
    assert "page.html: this file type is not accepted" in errors_in(page.text)["attachments"]


def test_errors_are_in_chinese_for_a_chinese_browser(live_app):
    client = FormClient(live_app.url, **{"Accept-Language": "zh-CN"})
    try:
        page = client.submit({**GOOD, "email": "", "phone": ""})
        assert errors_in(page.text)["email"] == "邮箱和手机号码请至少填写一项。"
        done = client.submit(GOOD)
        assert "我们将在 4 小时内首次回复您。" in done.text
    finally:
        client.close()


# --- CSRF and size ---------------------------------------------------------------------------

def test_missing_or_wrong_csrf_token_is_403_and_stores_nothing(live_app, form_client):
    before = count(live_app.engine, Message)
    missing = form_client.submit(GOOD, token="")
    assert missing.status_code == 403 and "security check failed" in missing.text
    forged = form_client.submit(GOOD, token="v1.1800000000.abc.def")
    assert forged.status_code == 403
    # A token shown to another browser does not work with this browser's cookie.
    other = FormClient(live_app.url)
    try:
        stolen = other.token()
    finally:
        other.close()
    assert form_client.submit(GOOD, token=stolen).status_code == 403
    # No cookie at all (cookies blocked): refused too.
    no_cookie = httpx.post(live_app.url + "/contact", data={**GOOD, "csrf_token": form_client.token()})
    assert no_cookie.status_code == 403
    assert count(live_app.engine, Message) == before


def test_expired_form_keeps_the_text_and_a_resend_works(live_app, form_client, web_settings):
    form_client.token()  # sets the session cookie
    session_id = form_client.http.cookies["paidan_sid"]
    old = CsrfTokens(web_settings.secret, timedelta(hours=12), clock=lambda: time.time() - 13 * 3600)
    page = form_client.submit({**GOOD, "email": unique_email("late")}, token=old.issue(session_id))
    assert page.status_code == 403
    assert "The form had expired" in page.text and GOOD["message"] in page.text
    resent = form_client.http.post("/contact", data={**GOOD, "email": unique_email("late2"),
                                                     "csrf_token": csrf_in(page.text)},
                                   files=[("attachments", ("", b"", "application/octet-stream"))])
    assert resent.status_code == 200 and ticket_number_in(resent.text)


def test_oversized_attachment_is_413_not_a_csrf_failure(live_app, form_client):
    """FAILURE_MODES 29: a too-large upload must say so, even when the token is missing too."""
    big = b"a" * (10 * MB + 1)
    for token in ("", None):
        page = form_client.submit(GOOD, files=[("big.txt", big, "text/plain")], token=token)
        assert page.status_code == 413, page.text[:300]
        assert "Attachment too large (max 10 MB each, 5 files)" in page.text
        assert "big.txt is too large" in errors_in(page.text)["attachments"]
        assert GOOD["message"] in page.text  # what they typed is still there


def test_too_many_attachments_is_413(live_app, form_client):
    files = [(f"{i}.png", PNG_1X1, "image/png") for i in range(6)]
    page = form_client.submit(GOOD, files=files)
    assert page.status_code == 413 and "at most 5" in errors_in(page.text)["attachments"]


@pytest.fixture
def small_limits_app(engine, web_intake):
    settings = make_settings(max_attachments=2, max_attachment_bytes=1 * MB)
    queries = TicketQueries(engine)
    with serve(build_app(settings, web_intake.accept, queries.ticket_view)) as url:
        yield url


def test_body_over_the_total_limit_is_413_before_parsing(small_limits_app):
    client = FormClient(small_limits_app, **{"Accept-Language": "en"})
    try:
        huge = b"x" * (5 * MB)
        page = client.submit(GOOD, files=[("a.txt", huge, "text/plain")], token="")
        assert page.status_code == 413
        assert "Attachment too large (max 1 MB each, 2 files)" in page.text
        assert "security check" not in page.text

        # The same without Content-Length (chunked upload): counted while reading, same answer.
        boundary = "xYzZY"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"attachments\"; filename=\"a.txt\"\r\n"
                f"Content-Type: text/plain\r\n\r\n").encode() + huge + f"\r\n--{boundary}--\r\n".encode()

        def chunks():
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]

        chunked = client.http.post("/contact", content=chunks(),
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert chunked.status_code == 413 and "security check" not in chunked.text
        # The server is fine afterwards.
        assert client.http.get("/contact").status_code == 200
    finally:
        client.close()


# --- honeypot, rate limit, storage failure -----------------------------------------------------

def test_filled_honeypot_looks_like_success_but_creates_nothing(live_app, form_client):
    before = count(live_app.engine, Message)
    page = form_client.submit({**GOOD, "website": "http://spam.example"})
    assert page.status_code == 200 and "Thank you for your message." in page.text
    assert ticket_number_in(page.text) is None
    assert count(live_app.engine, Message) == before
    metrics = httpx.get(live_app.url + "/metrics").text
    assert 'paidan_web_submissions_total{channel="web",outcome="honeypot"} 1.0' in metrics


def test_rate_limit_per_ip_answers_429_with_retry_after(engine, web_intake):
    settings = make_settings(form_rate_limit_per_minute=3)
    queries = TicketQueries(engine)
    with serve(build_app(settings, web_intake.accept, queries.ticket_view)) as url:
        client = FormClient(url, **{"Accept-Language": "en"})
        try:
            answers = [client.submit({**GOOD, "email": unique_email(f"rl{i}")}).status_code for i in range(4)]
            assert answers == [200, 200, 200, 429]
            limited = client.submit(GOOD)
            assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 60
            assert "Too many requests" in limited.text
            # Look-ups have their own budget, and it runs out too (no guessing ticket numbers).
            looks = [client.lookup("GD20260101001", "a@b.cn").status_code for _ in range(4)]
            assert looks == [404, 404, 404, 429]
        finally:
            client.close()


class BrokenSink:
    """The database is down: intake raises StorageUnavailable, having stored nothing."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, message):
        self.calls += 1
        raise StorageUnavailable("database is down")


def test_storage_failure_is_503_with_retry_after_and_keeps_the_text(engine):
    sink = BrokenSink()
    queries = TicketQueries(engine)
    with serve(build_app(make_settings(), sink, queries.ticket_view)) as url:
        client = FormClient(url, **{"Accept-Language": "en"})
        try:
            page = client.submit(GOOD)
            assert page.status_code == 503 and page.headers["retry-after"] == "30"
            assert "We could not store your message" in page.text and GOOD["message"] in page.text
            assert sink.calls == 1
        finally:
            client.close()


def _fail_attachment_inserts(engine, on: bool) -> None:
    """Make the database refuse attachment rows, i.e. fail in the middle of storing a message."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            if on:
                conn.execute(text("CREATE OR REPLACE FUNCTION paidan_test_fail() RETURNS trigger AS $$ "
                                  "BEGIN RAISE EXCEPTION 'simulated disk failure' USING ERRCODE = 'disk_full'; "
                                  "END $$ LANGUAGE plpgsql"))
                conn.execute(text("CREATE TRIGGER paidan_test_fail BEFORE INSERT ON attachments "
                                  "FOR EACH ROW EXECUTE FUNCTION paidan_test_fail()"))
            else:
                conn.execute(text("DROP TRIGGER IF EXISTS paidan_test_fail ON attachments"))
        elif on:
            conn.execute(text("CREATE TRIGGER paidan_test_fail BEFORE INSERT ON attachments "
                              "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS paidan_test_fail"))


def test_database_failing_mid_write_is_503_and_nothing_half_written(live_app, form_client):
    tables = (Customer, Ticket, Message, AttachmentRow)
    before = {t: count(live_app.engine, t) for t in tables}
    fields = {**GOOD, "email": unique_email("halfway")}
    token = form_client.token()
    _fail_attachment_inserts(live_app.engine, True)
    try:
        page = form_client.submit(fields, files=[("a.png", PNG_1X1, "image/png")], token=token)
    finally:
        _fail_attachment_inserts(live_app.engine, False)
    assert page.status_code == 503 and page.headers["retry-after"]
    assert {t: count(live_app.engine, t) for t in tables} == before
    # The customer sends again from the page they were shown: now it is stored, exactly once.
    again = form_client.submit(fields, files=[("a.png", PNG_1X1, "image/png")], token=csrf_in(page.text))
    assert again.status_code == 200 and ticket_number_in(again.text)
    assert count(live_app.engine, Message) == before[Message] + 1


# --- status page ------------------------------------------------------------------------------

def _new_ticket(form_client, **fields) -> tuple[str, str]:
    email = unique_email("status")
    page = form_client.submit({**GOOD, "email": email, **fields})
    assert page.status_code == 200, page.text
    return ticket_number_in(page.text), email


def test_status_shows_state_and_messages_with_html_as_text(live_app, form_client):
    script = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    number, email = _new_ticket(form_client, message=f"看这里 {script}", subject="<i>主题</i>")
    page = form_client.lookup(number, email)
    assert page.status_code == 200
    assert 'data-state="new"' in page.text and ">Received<" in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;i&gt;主题&lt;/i&gt;" in page.text


def test_the_link_in_an_acknowledgement_opens_the_status_page_with_its_number_filled_in(live_app, form_client):
    page = form_client.http.get("/status?number=GD20261123001")
    assert page.status_code == 200 and 'value="GD20261123001"' in page.text


def test_wrong_pair_reveals_nothing(live_app, form_client):
    number, email = _new_ticket(form_client)
    other_number = re.sub(r"\d{3}$", "999", number)

    def answer(n: str, contact: str) -> tuple[int, str, float]:
        started = time.monotonic()
        page = form_client.lookup(n, contact)
        elapsed = time.monotonic() - started
        body = re.sub(r'name="csrf_token" value="[^"]*"', "", page.text).replace(n, "N").replace(contact, "C")
        return page.status_code, body, elapsed

    wrong_contact = answer(number, "someone.else@example.com")
    wrong_number = answer(other_number, email)
    both_wrong = answer(other_number, "someone.else@example.com")
    assert wrong_contact[0] == wrong_number[0] == both_wrong[0] == 404
    assert wrong_contact[1] == wrong_number[1] == both_wrong[1]
    assert "No ticket matches this number and contact." in wrong_contact[1]
    assert min(wrong_contact[2], wrong_number[2], both_wrong[2]) >= 0.2  # the padded minimum


def test_lookup_input_problems_are_named(live_app, form_client):
    page = form_client.lookup("12345", "not a contact")
    assert page.status_code == 400
    assert errors_in(page.text) == {"number": "A ticket number looks like GD20261123001.",
                                    "contact": "Enter the email address or phone number you used."}


def test_customer_adds_a_message_on_the_status_page(live_app, form_client):
    number, email = _new_ticket(form_client)
    page = form_client.lookup(number, email)
    token = csrf_in(page.text)
    sent = form_client.http.post("/status/message", data={"csrf_token": token, "number": number, "contact": email,
                                                          "message": "补充：快递单号 SF123 <b>"})
    assert sent.status_code == 200
    assert "Your message was added to the ticket." in sent.text
    assert "补充：快递单号 SF123 &lt;b&gt;" in sent.text
    # Sending the same form again (refresh) does not add it twice.
    before = count(live_app.engine, Message)
    form_client.http.post("/status/message", data={"csrf_token": token, "number": number, "contact": email,
                                                   "message": "补充：快递单号 SF123 <b>"})
    assert count(live_app.engine, Message) == before
    [ticket] = rows(live_app.engine, Ticket, Ticket.number == number)
    assert len(rows(live_app.engine, Message, Message.ticket_id == ticket.id)) == 2


def test_a_message_added_on_the_status_page_can_carry_attachments(live_app, form_client):
    number, email = _new_ticket(form_client)
    token = csrf_in(form_client.lookup(number, email).text)
    fields = {"csrf_token": token, "number": number, "contact": email, "message": "这是报错截图"}
    sent = form_client.http.post("/status/message", data=fields, files=[
        ("attachments", ("报错.png", PNG_1X1, "image/png")), ("attachments", ("步骤.txt", "1. 登录\n".encode(), "text/plain"))])
    assert sent.status_code == 200 and "Your message was added to the ticket." in sent.text
    [added] = rows(live_app.engine, Message, Message.text == "这是报错截图", Message.external_id.like("status:%"))
    attachments = rows(live_app.engine, AttachmentRow, AttachmentRow.message_id == added.id)
    assert {(a.filename, bytes(a.data)) for a in attachments} == {("报错.png", PNG_1X1), ("步骤.txt", "1. 登录\n".encode())}
    assert {f["filename"] for f in json.loads(added.raw.decode("utf-8"))["files"]} == {"报错.png", "步骤.txt"}
    shown = form_client.lookup(number, email).text  # the status page names them under the message
    assert "📎 报错.png" in shown and "📎 步骤.txt" in shown

    before = count(live_app.engine, Message)
    token = csrf_in(sent.text)
    bad_type = form_client.http.post("/status/message", data={**fields, "csrf_token": token, "message": "再补充"},
                                     files=[("attachments", ("x.png", b"MZ\x90\x00 not an image", "image/png"))])
    assert bad_type.status_code == 400 and "attachments" in errors_in(bad_type.text)
    assert "再补充" in bad_type.text  # the draft is kept
    # Too large: said as that, even with the CSRF token missing too (FAILURE_MODES 29); nothing stored.
    too_large = form_client.http.post("/status/message", data={k: v for k, v in fields.items() if k != "csrf_token"},
                                      files=[("attachments", ("big.pdf", b"a" * (10 * MB + 1), "application/pdf"))])
    assert too_large.status_code == 413 and "Attachment too large (max 10 MB each, 5 files)" in too_large.text
    assert count(live_app.engine, Message) == before


def test_adding_a_message_needs_csrf_and_the_right_contact(live_app, form_client):
    number, email = _new_ticket(form_client)
    before = count(live_app.engine, Message)
    no_token = form_client.http.post("/status/message", data={"number": number, "contact": email, "message": "x"})
    assert no_token.status_code == 403
    token = form_client.token("/status")
    wrong = form_client.http.post("/status/message", data={"csrf_token": token, "number": number,
                                                           "contact": "intruder@example.com", "message": "x"})
    assert wrong.status_code == 404 and "No ticket matches" in wrong.text
    empty = form_client.http.post("/status/message", data={"csrf_token": token, "number": number, "contact": email,
                                                           "message": "  "})
    assert empty.status_code == 400 and errors_in(empty.text) == {"message": "This field is required."}
    assert count(live_app.engine, Message) == before


def test_status_page_storage_failure_and_stale_form_keep_the_draft(web_settings):
    now = datetime.now(UTC)
    view = TicketView(number="GD20260101001", state="awaiting_customer", subject="退款", created_at=now,
                      messages=(PublicMessage("out", "请提供订单号", now, "客服小王"),))
    owner = Identity(IdentityKind.EMAIL, "owner@example.com")

    async def ticket_view(number, identity):
        return view if (number, identity) == (view.number, owner) else None

    with serve(build_app(web_settings, BrokenSink(), ticket_view)) as url:
        client = FormClient(url, **{"Accept-Language": "en"})
        try:
            page = client.lookup(view.number, owner.value)
            assert page.status_code == 200
            assert ">Waiting for your reply<" in page.text and "客服小王" in page.text and "请提供订单号" in page.text
            form = {"number": view.number, "contact": owner.value, "message": "订单号 123"}
            failed = client.http.post("/status/message", data={**form, "csrf_token": csrf_in(page.text)})
            assert failed.status_code == 503 and failed.headers["retry-after"] == "30"
            assert "订单号 123</textarea>" in failed.text

            old = CsrfTokens(web_settings.secret, timedelta(hours=12), clock=lambda: time.time() - 13 * 3600)
            stale = client.http.post("/status/message", data={
                **form, "csrf_token": old.issue(client.http.cookies["paidan_sid"])})
            assert stale.status_code == 403 and "The form had expired" in stale.text
            assert "订单号 123</textarea>" in stale.text
        finally:
            client.close()
