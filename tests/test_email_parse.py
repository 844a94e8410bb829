"""The pure email parser: every rule on small hand-written mails, then a sweep of the corpus.

The corpus lives outside the project (licences); its tests read it in place and skip without it.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.email import parse as parse_module
from connectors.email.parse import MACHINE_FLAGS, parse_email
from models.message import Channel, IdentityKind

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
CORPUS = Path("/work/shared/corpus/mail")


def mail(*headers: str, body: bytes | str = b"hello\r\n", message_id: str | None = "<m1@example.com>") -> bytes:
    """A small mail: header lines, then the body; a Message-ID and a From unless given."""
    lines = list(headers)
    if message_id is not None and not any(h.lower().startswith("message-id:") for h in headers):
        lines.append(f"Message-ID: {message_id}")
    if not any(h.lower().startswith("from:") for h in headers):
        lines.append("From: Li Lei <lilei@example.com>")
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n"
    return head + (body.encode("utf-8") if isinstance(body, str) else body)


def parse(raw: bytes, **kwargs) -> object:
    return parse_email(raw, received_at=NOW, **kwargs)


def b64(text: str, charset: str) -> str:
    return base64.b64encode(text.encode(charset)).decode("ascii")


# --- basics ------------------------------------------------------------------------------------


def test_plain_mail_fills_every_field():
    raw = mail("Subject: 订单没有收到", "To: support@paidan.example", body="我的订单还没到。\r\n")
    msg = parse(raw)
    assert msg.channel == Channel.EMAIL
    assert msg.raw is raw
    assert msg.received_at == NOW
    assert msg.external_id == msg.message_id == "<m1@example.com>"
    assert msg.sender.identities[0].kind == IdentityKind.EMAIL
    assert msg.sender.identities[0].value == "lilei@example.com"
    assert msg.sender.display_name == "Li Lei"
    assert msg.subject == "订单没有收到"
    assert msg.text == "我的订单还没到。"
    assert msg.language is None
    assert msg.attachments == ()
    assert msg.flags == ()


def test_machine_flags_are_the_models_set():
    assert MACHINE_FLAGS == frozenset({"auto_reply", "bounce"})


def test_parser_imports_only_the_stdlib_and_models():
    tree = ast.parse(Path(parse_module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    roots = {name.split(".")[0] for name in imported}
    assert roots - {"__future__", "models"} <= {
        "binascii", "codecs", "collections", "datetime", "email", "functools", "hashlib", "html", "quopri", "re"
    }


# --- charsets (FAILURE_MODES 1-5, 8, 10) -------------------------------------------------------

GB18030_ONLY = "价格–订单㐀"  # the en dash and 㐀 are outside GB2312


@pytest.mark.parametrize("label", ["gb2312", "GB2312", "gbk", "x-gbk", "iso-gb2312", "gb_2312-80", "cp936"])
def test_gb2312_family_is_decoded_as_gb18030(label):
    subject = f"=?{label}?B?{b64(GB18030_ONLY, 'gb18030')}?="
    raw = mail(
        f"Subject: {subject}",
        f"Content-Type: text/plain; charset={label}",
        "Content-Transfer-Encoding: 8bit",
        body=GB18030_ONLY.encode("gb18030") + b"\r\n",
    )
    msg = parse(raw)
    assert msg.subject == GB18030_ONLY
    assert msg.text == GB18030_ONLY
    assert "charset_fallback" not in msg.flags


@pytest.mark.parametrize(
    ("label", "body", "text", "fallback"),
    [
        ("x-unknown", "Grüße".encode(), "Grüße", True),
        ("x-unknown", "订单".encode("gb18030"), "订单", True),
        ("fakescii", b"caf\xe9", "café", True),  # utf-8 and gb18030 fail: latin-1
        ("utf8", "Grüße".encode(), "Grüße", False),  # the typo is a known alias
        ("1252", b"caf\xe9 \x80", "café €", False),  # FAILURE_MODES 8
        ("windows-1258", b"caf\xe9", "café", False),  # real, though rare (FAILURE_MODES 5)
        ("utf-8-purple", "Grüße".encode(), "Grüße", True),  # a known name with junk after it
        ("us-ascii", "Grüße".encode(), "Grüße", True),  # 8-bit bytes under a 7-bit label
        ("utf-8", b"Gr\xfc\xdfe", "Gr\ufffd\ufffde", True),  # broken bytes are marked, not dropped
        # UTF-8 under a stale single-byte label (a corpus mail says x-mac-cyrillic): UTF-8 wins …
        ("x-mac-cyrillic", "您好，退款还没到账".encode(), "您好，退款还没到账", True),
        ("iso-8859-1", "Grüße – 订单".encode(), "Grüße – 订单", True),
        ("koi8-r", "Привет".encode(), "Привет", True),
        # … while text that really is in its single-byte label stays so.
        ("koi8-r", "Привет".encode("koi8-r"), "Привет", False),
        ("iso-8859-1", "naïve – “quotes”".encode("cp1252"), "naïve – “quotes”", False),
    ],
)
def test_unknown_or_wrong_charsets_fall_back(label, body, text, fallback):
    raw = mail("Subject: x", f"Content-Type: text/plain; charset={label}", body=body)
    msg = parse(raw)
    assert msg.text == text
    assert ("charset_fallback" in msg.flags) is fallback


def test_encoded_word_with_unknown_charset_is_decoded_and_flagged():
    msg = parse(mail(f"Subject: =?x-unknown?B?{b64('退款申请', 'utf-8')}?="))
    assert msg.subject == "退款申请"
    assert "charset_fallback" in msg.flags


def test_encoded_words_split_inside_a_character_are_joined():
    data = "订单号".encode("gb18030")
    words = " ".join(f"=?gb2312?B?{base64.b64encode(data[i:i + 3]).decode()}?=" for i in range(0, 6, 3))
    assert parse(mail(f"Subject: Re: {words} 123")).subject == "Re: 订单号 123"


def test_raw_8bit_headers_are_decoded():
    raw = b"From: =?utf-8?B?5byg5LiJ?= <zs@example.com>\r\nMessage-ID: <r@x>\r\nSubject: " + "发票".encode(
        "gb18030"
    ) + b"\r\nContent-Type: text/plain; charset=gbk\r\n\r\nbody\r\n"
    msg = parse(raw)
    assert msg.subject == "发票"
    assert msg.sender.display_name == "张三"


# --- transfer encodings (FAILURE_MODES 7) ------------------------------------------------------


@pytest.mark.parametrize("cte", ["utf-8", "8bits", "plain", "", "x-unknown"])
def test_bad_transfer_encoding_is_read_as_8bit(cte):
    raw = mail("Content-Type: text/plain; charset=utf-8", f"Content-Transfer-Encoding: {cte}", body="退货 ok")
    msg = parse(raw)
    assert msg.text == "退货 ok"
    assert "unparseable" not in msg.flags


@pytest.mark.parametrize("cte", ["base64", "Base64", "base64 ", '"base64"'])
def test_base64_spelled_loosely_is_decoded(cte):
    headers = ("Content-Type: text/plain; charset=utf-8", f"Content-Transfer-Encoding: {cte}")
    raw = mail(*headers, body=b64("你好", "utf-8"))
    assert parse(raw).text == "你好"


# --- Message-ID and deduplication (FAILURE_MODES 14, 15) ---------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Message-ID: <abc@example.com>", "<abc@example.com>"),
        ("Message-ID:    < abc@Example.COM >   ", "<abc@Example.COM>"),  # case kept
        ("Message-ID:\r\n <abc@example.com>", "<abc@example.com>"),  # folded
        ("Message-Id: abc@example.com", "<abc@example.com>"),  # brackets missing
        ("Message-ID: <abc\r\n @example.com>", "<abc@example.com>"),  # folded inside
        ("Message-ID: <token.gd2026112300001@paidan>", "<token.gd2026112300001@paidan>"),
    ],
)
def test_message_id_is_normalised(header, expected):
    msg = parse(mail(header, message_id=None))
    assert msg.external_id == msg.message_id == expected
    assert "no_message_id" not in msg.flags


@pytest.mark.parametrize("header", [None, "Message-ID:", "Message-ID:    ", "Message-ID: <>", "Message-ID: <a\x01b>"])
def test_missing_or_garbage_message_id_uses_a_hash_of_the_bytes(header):
    raw = mail(*([header] if header else []), message_id=None)
    msg = parse(raw)
    assert msg.external_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert msg.message_id is None
    assert "no_message_id" in msg.flags
    assert parse(raw).external_id == msg.external_id  # the same bytes twice: one id
    assert parse(raw + b"more\r\n").external_id != msg.external_id


def test_overlong_message_id_is_hashed_to_fit_the_column():
    long_id = "<" + "x" * 600 + "@example.com>"
    msg = parse(mail(f"Message-ID: {long_id}", message_id=None))
    assert msg.external_id == "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    assert len(msg.external_id) <= 512
    assert msg.message_id is None
    assert parse(mail(f"Message-ID: {long_id}", "Subject: other", message_id=None)).external_id == msg.external_id


# --- sender ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "envelope", "address", "name"),
    [
        (["From: =?utf-8?B?5byg5LiJ?= <ZhangSan@Example.com>"], None, "zhangsan@example.com", "张三"),
        (['From: "Wang, Wu" <ww@example.com>, other@example.com'], None, "ww@example.com", "Wang, Wu"),
        (["From: undisclosed", "Reply-To: Reply <r@example.com>"], None, "r@example.com", "Reply"),
        (["From: ", "Sender: s@example.com"], None, "s@example.com", ""),
        (["From: nobody"], "env@example.com", "env@example.com", ""),
        # Whom we answer: a shop's contact form mails from a no-reply address on the customer's behalf,
        # and a list that rewrites From for DMARC keeps the author in Reply-To.
        (["From: 网店 <noreply@shop.example>", "Reply-To: 王芳 <wang@kehu.example>"], None, "wang@kehu.example", "王芳"),
        (["From: Form <do-not-reply@shop.example>", "Reply-To: li@kehu.example"], None, "li@kehu.example", ""),
        (["From: =?utf-8?b?546L56GVIHZpYSBMaW51eC1lcm9mcw==?= <list@lists.example>", "Reply-To: w@kehu.example"],
         None, "w@kehu.example", "王硕"),
        # Otherwise From stands: a customer may well want answers at another of their addresses, but
        # the one they write from is who they are.
        (["From: Wang <wang@kehu.example>", "Reply-To: team@kehu.example"], None, "wang@kehu.example", "Wang"),
        (["From: no-reply@crm.example", 'Reply-To: "Klaus" <>'], None, "no-reply@crm.example", ""),
        (["From: Olivia Viaduct <olivia@example.org>", "Reply-To: o@example.net"], None, "olivia@example.org",
         "Olivia Viaduct"),
    ],
)
def test_sender_comes_from_the_first_usable_address(headers, envelope, address, name):
    msg = parse(mail(*headers), envelope_sender=envelope)
    assert msg.sender.identities[0].value == address
    assert msg.sender.display_name == name
    assert "no_sender" not in msg.flags


def test_no_address_at_all_gives_a_placeholder_a_human_can_see():
    raw = mail("From: Someone <>", "Subject: help")
    msg = parse(raw, envelope_sender="<>")
    digest = hashlib.sha256(raw).hexdigest()
    assert msg.sender.identities[0].value == f"unknown+{digest[:12]}@invalid"
    assert "no_sender" in msg.flags


# --- subject and thread references -------------------------------------------------------------


def test_subject_is_one_stripped_line_of_at_most_500_characters():
    assert parse(mail("Subject:   Re: one\r\n\ttwo\x07  ")).subject == "Re: one two"
    assert len(parse(mail("Subject: " + "长" * 900)).subject) == 500


@pytest.mark.parametrize(
    ("subject", "ticket"),
    [
        ("Re: [GD20261123001] 订单", "GD20261123001"),
        ("回复：[gd202611230012345] again", "GD202611230012345"),
        ("Fwd: 【GD20261123001】 退款", "GD20261123001"),
        ("[GD2026112301] too short", None),
        ("GD20261123001 without brackets", None),
    ],
)
def test_ticket_number_comes_from_the_subject_tag(subject, ticket):
    assert parse(mail(f"Subject: {subject}")).thread_refs.ticket_number == ticket


def test_in_reply_to_and_references_are_normalised_in_order():
    refs = " ".join(f"<r{i}@x>" for i in range(60))
    msg = parse(mail("In-Reply-To: < token.gd1@paidan > (comment) <second@x>", f"References: {refs}\r\n <last@x>"))
    assert msg.thread_refs.in_reply_to == "<token.gd1@paidan>"
    assert len(msg.thread_refs.references) == 50
    assert msg.thread_refs.references[-2:] == ("<r59@x>", "<last@x>")
    assert msg.thread_refs.references[0] == "<r11@x>"


# --- the customer's new words ------------------------------------------------------------------

NEW = "Still broken.\r\n\r\n"
REPLIES = {
    "gmail": NEW + "On Mon, Nov 23, 2026 at 10:00 AM Support <support@paidan.example> wrote:\r\n> Please restart.\r\n",
    "gmail wrapped": NEW + "On Mon, Nov 23, 2026 at 10:00 AM Support <\r\nsupport@paidan.example> wrote:\r\n"
    "\r\nPlease restart.\r\n",
    "apple zh": NEW + "在 2026年11月23日，10:00，客服 <support@paidan.example> 写道：\r\n\r\n请重启。\r\n",
    "gmail zh": NEW + "客服 <support@paidan.example> 于2026年11月23日周一 10:00写道：\r\n\r\n请重启。\r\n",
    "qq": NEW + "------------------ 原始邮件 ------------------\r\n发件人: \"客服\"<support@paidan.example>;\r\n"
    "发送时间: 2026年11月23日(星期一) 上午10:00\r\n\r\n请重启。\r\n",
    "foxmail": NEW + "-----原始邮件-----\r\n发件人：客服\r\n请重启。\r\n",
    "outlook zh": NEW + "发件人: 客服 <support@paidan.example>\r\n发送时间: 2026年11月23日 10:00\r\n收件人: 我\r\n"
    "主题: 订单\r\n\r\n请重启。\r\n",
    "outlook": NEW + "________________________________\r\nFrom: Support <support@paidan.example>\r\n"
    "Sent: Monday, November 23, 2026 10:00 AM\r\nTo: me\r\n\r\nPlease restart.\r\n",
    "original message": NEW + "-----Original Message-----\r\nFrom: Support\r\nPlease restart.\r\n",
    "bottom posted": "On 2026-11-23 10:00, Support wrote:\r\n> Please restart.\r\n\r\nStill broken.\r\n",
    "bottom posted, wrapped": "On Mon, Nov 23, 2026 at 10:00 AM Support <\r\nsupport@paidan.example> wrote:\r\n"
    "> Please restart.\r\n\r\nStill broken.\r\n",
}


@pytest.mark.parametrize("style", sorted(REPLIES))
def test_quoted_earlier_mail_is_stripped(style):
    assert parse(mail(body=REPLIES[style])).text == "Still broken."


def test_inline_answers_between_quotes_are_kept():
    body = "> Which order?\r\nGD20261123001\r\n> Which day?\r\nMonday\r\n"
    assert parse(mail(body=body)).text == "GD20261123001\nMonday"


def test_a_reply_that_is_only_a_quote_keeps_the_full_text():
    body = "On Mon, Nov 23, 2026 at 10:00 AM Support wrote:\r\n> Please restart.\r\n"
    assert parse(mail(body=body)).text == "On Mon, Nov 23, 2026 at 10:00 AM Support wrote:\n> Please restart."


def test_a_forwarded_mail_is_the_customers_content():
    body = ("See below.\r\n\r\n---------- Forwarded message ---------\r\nFrom: Shop <shop@x>\r\n"
            "Date: Mon, 23 Nov 2026\r\n\r\nYour parcel is lost.\r\n")
    assert "Your parcel is lost." in parse(mail(body=body)).text


def test_html_only_mail_becomes_plain_text():
    html = (
        "<html><head><title>t</title><style>p {color: red}</style></head><body>"
        "<script>alert(1)</script><p>Order&nbsp;&#35;42 &amp; &lt;refund&gt;</p><div>line<br>two</div>"
        "<blockquote>old quoted mail</blockquote></body></html>"
    )
    msg = parse(mail("Content-Type: text/html; charset=utf-8", body=html))
    assert msg.text == "Order #42 & <refund>\n\nline\ntwo"  # &nbsp; is a plain space in plain text


def test_text_plain_is_preferred_over_html():
    body = (
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html words</p>\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain words\r\n--b--\r\n"
    )
    assert parse(mail('Content-Type: multipart/alternative; boundary="b"', body=body)).text == "plain words"


def test_10000_deep_html_is_fine():  # FAILURE_MODES 9
    html = "<div>" * 10_000 + "deep words" + "</div>" * 10_000
    started = time.perf_counter()
    msg = parse(mail("Content-Type: text/html", body=html))
    assert msg.text == "deep words"
    assert time.perf_counter() - started < 2


def test_nul_and_control_characters_are_dropped():
    msg = parse(mail("Subject: a\x00b", body=b"ok\x00 \x07bell\r\ttab\r\n\xed\xa0\x80"))
    assert "\x00" not in msg.text and "\x07" not in msg.text and "\x00" not in msg.subject
    assert msg.text.startswith("ok bell\n\ttab")
    msg.text.encode("utf-8")  # no lone surrogates


def test_text_is_capped():
    assert len(parse(mail(body="字" * 150_000)).text) == 100_000


# --- attachments -------------------------------------------------------------------------------


def multipart(*parts: str, kind: str = "mixed") -> bytes:
    body = "".join(f"--B\r\n{p}\r\n" for p in parts) + "--B--\r\n"
    return mail(f'Content-Type: multipart/{kind}; boundary="B"', body=body)


def test_attachments_are_collected_with_safe_names():
    raw = multipart(
        "Content-Type: text/plain; charset=utf-8\r\n\r\nsee attached",
        f"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(b'%PDF-1.4').decode()}",
        f"Content-Type: image/png; name=\"=?gb2312?B?{b64('截图', 'gb2312')}?=.png\"\r\n"
        "Content-Disposition: inline\r\nContent-ID: <img1>\r\n\r\npng",
        "Content-Type: application/octet-stream\r\n"
        "Content-Disposition: attachment; filename=\"..\\\\..\\\\evil.exe\"\r\n\r\nMZ",
        "Content-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n\r\nanon",
        f"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=\"{'n' * 300}.txt\"\r\n\r\nlong",
    )
    msg = parse(raw)
    assert msg.text == "see attached"
    names = [a.filename for a in msg.attachments]
    assert names[:4] == ["invoice.pdf", "截图.png", "evil.exe", "attachment-4.bin"]
    assert len(names[4]) == 255 and names[4].endswith(".txt")
    assert msg.attachments[0].data == b"%PDF-1.4"
    assert msg.attachments[0].content_type == "application/pdf"


def test_rfc2231_filename_with_bytes_invalid_for_its_charset():  # FAILURE_MODES 6
    raw = multipart(
        "Content-Type: text/plain\r\n\r\nbody",
        "Content-Type: application/octet-stream\r\n"
        "Content-Disposition: attachment; filename*=us-ascii''Sch%F6n.txt\r\n\r\nx",
        "Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n"
        " filename*0*=utf-8''%E5%8F%91%E7%A5%A8;\r\n filename*1*=.pdf\r\n\r\ny",
    )
    msg = parse(raw)
    assert [a.filename for a in msg.attachments] == ["Sch\ufffdn.txt", "发票.pdf"]
    assert "charset_fallback" in msg.flags


def test_an_attached_mail_is_one_eml_attachment():
    inner = (
        "From: shop@x\r\nSubject: Your order\r\nContent-Type: multipart/mixed; boundary=\"I\"\r\n\r\n"
        "--I\r\nContent-Type: text/plain\r\n\r\ninner body\r\n"
        "--I\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"inner.pdf\"\r\n"
        "\r\nPDF\r\n--I--"
    )
    msg = parse(multipart(
        "Content-Type: text/plain\r\n\r\nforwarding this",
        f"Content-Type: message/rfc822\r\n\r\n{inner}",
    ))
    assert msg.text == "forwarding this"
    assert [(a.filename, a.content_type) for a in msg.attachments] == [("attachment-1.eml", "message/rfc822")]
    assert b"Subject: Your order" in msg.attachments[0].data and b"inner.pdf" in msg.attachments[0].data


def test_big_mail_with_70_attachments_parses_quickly():  # FAILURE_MODES 24
    pdf = base64.encodebytes(b"%PDF" + bytes(range(256)) * 160).decode()
    parts = [f'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="f{i}.pdf"\r\n'
             f"Content-Transfer-Encoding: base64\r\n\r\n{pdf}" for i in range(70)]
    raw = multipart("Content-Type: text/plain\r\n\r\n70 files", *parts)
    assert len(raw) > 3_000_000
    started = time.perf_counter()
    msg = parse(raw)
    assert time.perf_counter() - started < 3
    assert len(msg.attachments) == 70 and msg.attachments[-1].size == 4 + 256 * 160


# --- machine mail (FAILURE_MODES 21, 22) -------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Auto-Submitted: auto-replied",
        "Auto-Submitted: auto-generated (failure)",
        "Precedence: bulk",
        "Precedence: junk",
        "Precedence: list",
        "Precedence: auto_reply",
        "X-Autoreply: yes",
        "X-Autorespond: vacation",
        "X-Auto-Reply: 1",
        "X-QQ-AUTO-REPLY: true",  # QQ Mail sets only this one
        "Subject: Out of Office: back Monday",
        "Subject: Automatic reply: order 42",
        "Subject: Auto: refund",
        "Subject: 自动回复: 订单",
        "Subject: 自動回覆：訂單",
        "Subject: 休假中",
    ],
)
def test_auto_replies_are_flagged(header):
    assert "auto_reply" in parse(mail(header)).flags


@pytest.mark.parametrize(
    "headers",
    [
        ["Precedence: normal", "X-Auto-Response-Suppress: All"],
        ["Auto-Submitted: no"],
        ["X-QQ-AUTO-REPLY: false"],
        ["Subject: Re: my out of office question"],
    ],
)
def test_ordinary_mail_is_not_flagged_as_machine(headers):
    assert not MACHINE_FLAGS & set(parse(mail(*headers)).flags)


DSN = (
    "--R\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
    "--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
    "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    "--R\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: [GD20261123001] your ticket\r\n--R--\r\n"
)


def test_a_dsn_is_a_bounce():
    raw = mail('Content-Type: multipart/report; report-type=delivery-status; boundary="R"',
               "From: Mail Delivery System <MAILER-DAEMON@mx.example>", "Subject: Undelivered Mail", body=DSN)
    msg = parse(raw)
    assert "bounce" in msg.flags
    assert msg.text == "Your message could not be delivered."
    assert [a.content_type for a in msg.attachments] == ["message/delivery-status", "text/rfc822-headers"]
    assert b"Status: 5.1.1" in msg.attachments[0].data


@pytest.mark.parametrize(
    ("headers", "envelope"),
    [
        (["From: MAILER-DAEMON@mx.example", "Subject: failure notice"], None),
        (["From: Postmaster <postmaster@corp.example>", "Subject: Undeliverable: hello"], None),
        (["From: robot@mx.example", "Subject: Delivery Status Notification (Failure)"], ""),
        (["From: robot@mx.example", "Subject: Mail delivery failed"], "<>"),
        (["From: 系统 <robot@mx.example>", "Subject: 系统退信"], ""),
        (["From: robot@mx.example", "Subject: 投递失败", "Return-Path: <>"], None),  # read from a mailbox
    ],
)
def test_bounces_from_mail_servers_are_flagged(headers, envelope):
    assert "bounce" in parse(mail(*headers), envelope_sender=envelope).flags


@pytest.mark.parametrize(
    ("headers", "envelope"),
    [
        (["Subject: Delivery failure: my parcel never came"], "lilei@example.com"),  # a customer's parcel
        (["From: Bob <postmaster@corp.example>", "Subject: question about invoice"], None),  # a person
        (["Subject: Fwd: Undeliverable"], None),
    ],
)
def test_customers_writing_about_delivery_are_not_bounces(headers, envelope):
    assert "bounce" not in parse(mail(*headers), envelope_sender=envelope).flags


# --- never raises ------------------------------------------------------------------------------


def deep_mime(depth: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"From: a@example.com\r\nMessage-ID: <deep@x>\r\nSubject: deep\r\n" + head + b"\r\nhello\r\n" + tail


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 64,
        bytes(range(256)) * 4,
        b"\xff\xfe\xfd garbage without headers",
        b"From nobody Mon Jan 1 00:00:00 2026\n",
        b"Subject: " + b"x" * 100_000,
        b'Content-Type: multipart/mixed; boundary="never"\r\n\r\nno parts here',
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
        b"Content-Type: text/plain; charset=\"\x00\"\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!=",
        b"From: =?utf-8?B?====?= <a@b>\r\nSubject: =?utf-8?Q?=ZZ?=\r\n\r\nx",
        deep_mime(3000),
    ],
    ids=lambda raw: repr(raw[:20]),
)
def test_never_raises_and_always_gives_storable_text(raw):
    msg = parse(raw)
    assert msg.external_id and len(msg.external_id) <= 512
    assert "\x00" not in msg.text
    msg.text.encode("utf-8")
    msg.subject.encode("utf-8")


def test_mime_nested_past_the_stack_keeps_its_headers():
    msg = parse(deep_mime(3000))
    assert msg.external_id == "<deep@x>"
    assert msg.sender.identities[0].value == "a@example.com"
    assert "unparseable" in msg.flags


def test_broken_multipart_is_flagged_and_keeps_its_body():
    msg = parse(mail('Content-Type: multipart/mixed; boundary="never"', body="the customer's words"))
    assert msg.flags == ("unparseable",)
    assert msg.text == "the customer's words"


def test_an_unexpected_error_still_yields_a_message(monkeypatch):
    raw = mail("Subject: fine")

    def boom(*args, **kwargs):
        raise RuntimeError("a parser bug")

    monkeypatch.setattr(parse_module, "_body", boom)
    msg = parse(raw)
    assert msg.flags == ("unparseable",)
    assert msg.external_id == "<m1@example.com>" and msg.subject == "fine"

    monkeypatch.setattr(parse_module, "_read", boom)
    msg = parse(raw)
    assert msg.flags == ("unparseable", "no_message_id", "no_sender")
    assert msg.external_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert "hello" in msg.text and msg.raw is raw


def test_flags_come_in_a_stable_order_without_duplicates():
    raw = mail(
        "From: Mail Delivery System <>",
        "Subject: =?x-unknown?Q?Undeliverable?=",
        "Auto-Submitted: auto-replied",
        "Precedence: bulk",
        message_id=None,
    )
    expected = ("no_message_id", "no_sender", "charset_fallback", "auto_reply", "bounce")
    assert parse(raw, envelope_sender="").flags == expected


# --- the corpus (/work/shared/corpus/mail; FAILURE_MODES.md) ------------------------------------

# Manifest words that mark a mail as written by a machine; a flag on any other file is a mistake.
MACHINE_MARKS = ("DSN/bounce", "bounce(non-DSN)", "Auto-Submitted", "Precedence", "X-Autoreply",
                 "X-QQ-AUTO-REPLY", "MDN", "ARF", "auto-reply")
# Non-DSN bounces with nothing but prose to go on (a made-up sender, a parcel-like subject, no null
# envelope); we would rather miss these than silence a customer. microsoft_03 is still auto_reply.
KNOWN_BOUNCE_MISSES = {
    "flufl__bounce_02.eml", "flufl__microsoft_03.eml", "flufl__simple_36.eml", "flufl__simple_43.eml"
}


@pytest.fixture(scope="module")
def corpus():
    if not CORPUS.is_dir():
        pytest.skip("the mail corpus is not on this machine")
    manifest = {}
    for line in (CORPUS / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        cells = line.split("\t")
        manifest[cells[0]] = cells[5] if len(cells) > 5 else ""
    parsed = {}
    # The parser's own CPU time (this thread's), not the wall clock: on a loaded 2-core machine the
    # wall clock also counts the time other processes had the CPU (22 s for 4.2 s of parsing, measured).
    started = time.thread_time()
    for path in sorted(CORPUS.glob("*.eml")):
        raw = path.read_bytes()
        parsed[path.name] = (raw, parse(raw))
    return manifest, parsed, time.thread_time() - started


def test_corpus_parses_whole_and_quickly(corpus):
    _, parsed, seconds = corpus
    assert len(parsed) > 900
    assert seconds < 10
    for name, (raw, msg) in parsed.items():
        assert msg.external_id and len(msg.external_id) <= 512, name
        assert "\x00" not in msg.text and "\x00" not in msg.subject, name
        msg.text.encode("utf-8")
        msg.subject.encode("utf-8")
        assert len(msg.subject) <= 500 and len(msg.text) <= 100_000, name
        assert msg.raw is raw


def test_corpus_message_ids_become_external_ids(corpus):
    _, parsed, _ = corpus
    checked = 0
    for name, (raw, msg) in parsed.items():
        head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
        found = re.search(rb"(?im)^message-id:\s*<([!-;=?-~]+@[!-;=?-~]+)>\s*$", head)
        if found:
            checked += 1
            assert msg.external_id == "<" + found.group(1).decode() + ">", name
    assert checked > 600


def test_corpus_mails_without_message_id_get_a_stable_hash(corpus):  # FAILURE_MODES 14, 15
    manifest, parsed, _ = corpus
    # The manifest's probe also counts ids it could not reach past a broken header line; we repair
    # those (kopano__encoded-word-split, stalwart__019, …), so check only mails with no id at all.
    missing = [name for name, (raw, _) in parsed.items()
               if "NO-Message-ID" in manifest.get(name, "") and not re.search(rb"(?im)^message-id:", raw)]
    assert len(missing) > 280
    for name in missing:
        raw, msg = parsed[name]
        assert "no_message_id" in msg.flags, name
        assert msg.external_id == "sha256:" + hashlib.sha256(raw).hexdigest() == parse(raw).external_id


def corpus_files(corpus, pattern):
    _, parsed, _ = corpus
    found = {name: msg for name, (_, msg) in parsed.items() if Path(name).match(pattern)}
    assert found, pattern
    return found


def test_corpus_mislabelled_chinese_decodes_cleanly(corpus):  # FAILURE_MODES 1-4
    msg = corpus_files(corpus, "kopano__gb2312_18030.eml")["kopano__gb2312_18030.eml"]
    assert msg.subject.startswith("讀取")  # 讀 is GB18030, not GB2312
    for name, msg in corpus_files(corpus, "erofs__*.eml").items():
        assert "\ufffd" not in msg.subject, name
    for name, msg in corpus_files(corpus, "*__gbk_charset.eml").items():  # "x-gbk"
        assert msg.text == "Hi" and "charset_fallback" not in msg.flags, name


@pytest.mark.parametrize(
    "name", ["kopano__unknown-text-charset.eml", "enmime__unk-charset-part.eml", "zammad__mail060.eml"]
)
def test_corpus_unknown_charsets_fall_back(corpus, name):  # FAILURE_MODES 5
    msg = corpus_files(corpus, name)[name]
    assert msg.text.strip() and "charset_fallback" in msg.flags and "unparseable" not in msg.flags


@pytest.mark.parametrize(
    "pattern",
    ["enmime__mime-bad-content-transfer-encoding.eml", "rubymail__content_transfer_encoding_*.eml",
     "nodemailparser__htmllargecallstack.eml", "mimekit__stack-overflow.eml"],
)
def test_corpus_bad_encodings_and_deep_html_are_read(corpus, pattern):  # FAILURE_MODES 7, 9
    for name, msg in corpus_files(corpus, pattern).items():
        assert msg.text.strip() and "unparseable" not in msg.flags, name


def test_corpus_auto_replies_are_flagged(corpus):  # FAILURE_MODES 21
    for pattern in ("zammad__zammad_gmail_vacation_autoreply.eml", "qqautoreply__*.eml"):
        for name, msg in corpus_files(corpus, pattern).items():
            assert "auto_reply" in msg.flags, name


def test_corpus_list_mail_rewritten_for_dmarc_is_from_its_author(corpus):
    """The erofs list sends its members' mail as "X via Linux-erofs <linux-erofs@…>": each author is one
    customer, not the whole list one."""
    authors = {name: msg.sender.identities[0].value for name, msg in corpus_files(corpus, "erofs__*.eml").items()}
    assert "linux-erofs@lists.ozlabs.org" not in authors.values()
    assert {"hsiangkao@aol.com", "wangshuo16@xiaomi.com"} <= set(authors.values())


def test_corpus_bounces_are_flagged(corpus):  # FAILURE_MODES 22
    manifest, parsed, _ = corpus
    dsn = [name for name in parsed if "DSN/bounce" in manifest.get(name, "")]
    prose = [name for name in parsed if "bounce(non-DSN)" in manifest.get(name, "")]
    assert len(dsn) >= 72 and len(prose) == 76
    assert all("bounce" in parsed[name][1].flags for name in dsn)
    missed = {name for name in prose if "bounce" not in parsed[name][1].flags}
    assert missed <= KNOWN_BOUNCE_MISSES


def test_corpus_ordinary_mail_is_not_flagged_as_machine(corpus):
    manifest, parsed, _ = corpus
    for name, (raw, msg) in parsed.items():
        if not MACHINE_FLAGS & set(msg.flags) or any(mark in manifest.get(name, "") for mark in MACHINE_MARKS):
            continue
        # Beyond the manifest: a mail from MAILER-DAEMON, or any multipart/report, is a machine's.
        head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
        assert re.search(rb"(?im)^from:.*mailer-daemon|multipart/report", head), name


@pytest.mark.parametrize("header, language", [
    ("Content-Language: zh-CN", "zh"), ("Content-Language: en-US, zh", "en"), ("Content-Language: de", None), ("", None),
])
def test_content_language_names_the_language_when_the_mailer_says_it(header, language):
    assert parse(mail("Subject: x", *([header] if header else []), body=b"hello there\r\n")).language == language
