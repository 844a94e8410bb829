"""The contact form and status page in headless Chromium (Debian's, driven by Playwright).

Needs `/usr/bin/chromium` (apt-get install -y --no-install-recommends chromium fonts-noto-cjk) and
the `playwright` package from PyPI. Never `playwright install`: it downloads browsers from a CDN.
"""

from __future__ import annotations

import os
import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import AttachmentRow, Message, Ticket
from paidan.web import build_app
from router.queries import TicketQueries
from webfixtures import PNG_1X1, chromium_missing, make_settings, serve
from webfixtures import *  # noqa: F403 — the fixtures

pytestmark = [pytest.mark.browser, pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")]


def test_chinese_form_with_attachment_becomes_a_ticket_found_on_the_status_page(live_app, browser):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    email = f"zhangsan.{os.getpid()}.{id(page)}@example.com"
    text = "我的订单 20261123 还没有到，快递一直没有更新 😀\n第二行 <script>alert('x')</script>"

    page.goto(live_app.url + "/contact")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    assert page.locator("h1").inner_text() == "联系我们"
    page.fill("#name", "张三")
    page.fill("#email", email)
    page.fill("#subject", "订单未送达")
    page.fill("#message", text)
    page.set_input_files("#attachments", files=[{"name": "截图.png", "mimeType": "image/png", "buffer": PNG_1X1}])
    page.click("#submit")

    page.wait_for_selector("#ticket-number")
    number = page.inner_text("#ticket-number").strip()
    assert re.fullmatch(r"GD\d{11,}", number)
    assert page.inner_text("#first-response") == "我们将在 4 小时内首次回复您。"

    with Session(live_app.engine) as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        [message] = session.scalars(select(Message).where(Message.ticket_id == ticket.id))
        assert message.channel == "web" and message.text == text and ticket.language == "zh"
        [attachment] = session.scalars(select(AttachmentRow).where(AttachmentRow.message_id == message.id))
        assert (attachment.filename, attachment.content_type, bytes(attachment.data)) == ("截图.png", "image/png",
                                                                                          PNG_1X1)

    page.click("#status-link")
    assert page.input_value("#number") == number
    page.fill("#contact", email)
    page.click("#lookup")
    page.wait_for_selector("#ticket")
    assert page.inner_text("#ticket-number") == number
    assert page.inner_text("#ticket-state") == "已受理"
    assert page.inner_text("#messages .text") == text  # the script is shown as text...
    assert dialogs == []  # ...and never ran

    page.fill("#message", "补充：收件人电话 13800138000")
    page.set_input_files("#attachments", files=[{"name": "面单.png", "mimeType": "image/png", "buffer": PNG_1X1}])
    page.click("#send-message")
    page.wait_for_selector("#status-notice")
    assert page.inner_text("#status-notice") == "您的补充说明已收到。"
    assert page.locator("#messages .text").all_inner_texts() == [text, "补充：收件人电话 13800138000"]
    with Session(live_app.engine) as session:
        added = session.scalars(select(Message).where(Message.text == "补充：收件人电话 13800138000")).one()
        [attachment] = session.scalars(select(AttachmentRow).where(AttachmentRow.message_id == added.id)).all()
        assert (attachment.filename, bytes(attachment.data)) == ("面单.png", PNG_1X1)

    page.click("#lang-switch")
    assert page.locator("h1").inner_text() == "Ticket status"
    context.close()


def test_wrong_contact_on_the_status_page_reveals_nothing(live_app, browser):
    page = browser.new_page(locale="en-US")
    page.goto(live_app.url + "/status")
    page.fill("#number", "GD20260101001")
    page.fill("#contact", "nobody@example.com")
    page.click("#lookup")
    page.wait_for_selector("#status-notice")
    assert page.inner_text("#status-notice") == (
        "No ticket matches this number and contact. Please check both and try again.")
    assert page.locator("#ticket").count() == 0


def test_browser_refuses_a_too_large_file_before_uploading(engine, web_intake, browser):
    settings = make_settings(max_attachment_bytes=1024)
    queries = TicketQueries(engine)
    with serve(build_app(settings, web_intake.accept, queries.ticket_view)) as url:
        page = browser.new_page(locale="en-US")
        page.goto(url + "/contact")
        page.fill("#name", "Big File")
        page.fill("#email", "big@example.com")
        page.fill("#subject", "too big")
        page.fill("#message", "see attachment")
        page.set_input_files("#attachments", files=[{"name": "big.txt", "mimeType": "text/plain",
                                                     "buffer": b"x" * 5000}])
        assert page.inner_text("#attachments-client-error") == "big.txt is too large: at most 1 KB per file."
        page.click("#submit")
        page.wait_for_timeout(300)
        assert page.url.endswith("/contact") and page.locator("#ticket-number").count() == 0
