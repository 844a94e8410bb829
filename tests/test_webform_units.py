"""Pure parts of the web channel: languages, field rules, attachment sniffing, CSRF tokens, rate limit."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime, timedelta

import pytest

from connectors.webform import i18n
from connectors.webform.compose import build_message, content_key
from connectors.webform.config import WebFormConfig
from connectors.webform.csrf import CsrfStatus, CsrfTokens
from connectors.webform.ratelimit import RateLimiter
from connectors.webform.validation import (
    FieldProblem,
    Invalid,
    check_attachment,
    check_contacts,
    clean_text,
    normalise_email,
    normalise_phone,
    normalise_ticket_number,
    parse_contact,
    safe_filename,
    size_text,
)
from models.message import Channel, Identity, IdentityKind

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452")  # enough of a header for the sniffer
MB10 = 10 * 1024 * 1024


# --- languages -------------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    ("fr-FR,fr;q=0.9,en;q=0.5,zh;q=0.4", "en"),  # the best *supported* one
    ("en;q=0.2, zh-TW;q=0.7", "zh"),
    ("zh-Hant-HK", "zh"),
    ("de, fr", None),
    ("en;q=0, zh;q=nan", None),
    ("", None),
    (",,;;q=,", None),
])
def test_accept_language(header, expected):
    assert i18n.parse_accept_language(header) == expected


def test_explicit_choice_beats_cookie_beats_browser():
    assert i18n.pick_language("en", "zh", "zh-CN", "zh") == "en"
    assert i18n.pick_language(None, "en", "zh-CN", "zh") == "en"
    assert i18n.pick_language("xx", None, "en-GB", "zh") == "en"
    assert i18n.pick_language(None, None, None, "zh") == "zh"


@pytest.mark.parametrize("delta, zh, en", [
    (timedelta(hours=4), "4 小时", "4 hours"),
    (timedelta(hours=1), "1 小时", "1 hour"),
    (timedelta(minutes=15), "15 分钟", "15 minutes"),
    (timedelta(hours=1, minutes=30), "1.5 小时", "1.5 hours"),
    (timedelta(hours=24), "24 小时", "24 hours"),
    (timedelta(days=3), "3 天", "3 days"),
])
def test_format_duration(delta, zh, en):
    assert i18n.format_duration(delta, "zh") == zh
    assert i18n.format_duration(delta, "en") == en


def test_every_text_has_both_languages_and_states_are_translated():
    for key, (zh, en) in i18n.TEXTS.items():
        assert zh and en, key
    assert i18n.state_label("awaiting_customer", "zh") == "等待您的回复"
    assert i18n.state_label("some_future_state", "en") == "some_future_state"


# --- fields ----------------------------------------------------------------------------------

def test_email_keeps_local_part_and_lowercases_domain():
    assert normalise_email("  Zhang.San@Example.COM ") == "Zhang.San@example.com"
    assert normalise_email("user@例子.中国") == "user@例子.中国"
    for bad in ["", "no-at-sign", "a@", "@b.cn", "a b@c.cn", "x" * 400 + "@a.cn"]:
        with pytest.raises(ValueError):
            normalise_email(bad)


def test_phone_to_e164_with_default_region():
    assert normalise_phone("138 0013 8000", "CN") == "+8613800138000"
    assert normalise_phone("+86 138-0013-8000", "CN") == "+8613800138000"
    assert normalise_phone("+1 650-253-0000", "CN") == "+16502530000"
    assert normalise_phone("(650) 253-0000", "US") == "+16502530000"
    for bad in ["", "123", "hello", "+999 1234", "1" * 50]:
        with pytest.raises(ValueError):
            normalise_phone(bad, "CN")


def test_contacts_need_one_and_name_both_fields_when_missing():
    problems: list[FieldProblem] = []
    assert check_contacts("", "  ", "CN", problems) == ()
    assert {(p.field, p.code) for p in problems} == {("email", "contact_required"), ("phone", "contact_required")}

    problems = []
    ids = check_contacts("a@B.cn", "13800138000", "CN", problems)
    assert problems == []
    assert ids == (Identity(IdentityKind.EMAIL, "a@b.cn"), Identity(IdentityKind.PHONE, "+8613800138000"))

    problems = []
    check_contacts("not-an-email", "12", "CN", problems)
    assert {(p.field, p.code) for p in problems} == {("email", "email_invalid"), ("phone", "phone_invalid")}


def test_status_contact_box_reads_email_or_phone():
    assert parse_contact("A@Example.com", "CN") == Identity(IdentityKind.EMAIL, "A@example.com")
    assert parse_contact("13800138000", "CN") == Identity(IdentityKind.PHONE, "+8613800138000")
    assert parse_contact("nonsense", "CN") is None
    assert parse_contact("", "CN") is None


def test_ticket_number_format():
    assert normalise_ticket_number(" gd20261123001 ") == "GD20261123001"
    assert normalise_ticket_number("GD202611231234") == "GD202611231234"
    for bad in ["", "GD2026112301", "20261123001", "GD20261123001' OR 1=1", None]:
        assert normalise_ticket_number(bad) is None


def test_clean_text_strips_nul_controls_and_lone_surrogates():
    assert clean_text(" a\x00b\x1bc\ud800 \r\nd\re\t ", multiline=True) == "abc \nd\ne"
    assert clean_text("a\nb\tc", multiline=False) == "a b c"
    # NFC: the decomposed and composed forms of é are the same text
    assert clean_text("e\u0301", multiline=False) == "\u00e9"


# --- attachments -----------------------------------------------------------------------------

def _zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in names.items():
            z.writestr(name, data)
    return buf.getvalue()


DOCX = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})


@pytest.mark.parametrize("filename, data, content_type", [
    ("截图.png", PNG, "image/png"),
    ("photo.JPG", b"\xff\xd8\xff\xe0" + b"\0" * 20, "image/jpeg"),
    ("a.gif", b"GIF89a" + b"\0" * 10, "image/gif"),
    ("a.webp", b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
    ("invoice.pdf", b"%PDF-1.7\n...", "application/pdf"),
    ("notes.txt", "订单号 123\n".encode("utf-8"), "text/plain"),
    ("notes-gbk.txt", "订单号 123\n".encode("gb18030"), "text/plain"),
    ("server.log", b"2026-11-23 ERROR x\n", "text/plain"),
    ("data.csv", b"a,b\n1,2\n", "text/csv"),
    ("report.docx", DOCX, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("sheet.xlsx", _zip({"[Content_Types].xml": b"", "xl/workbook.xml": b""}),
     "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
])
def test_allowed_attachments_get_our_content_type(filename, data, content_type):
    attachment = check_attachment(filename, data, max_bytes=MB10)
    assert attachment.content_type == content_type
    assert attachment.data == data


@pytest.mark.parametrize("filename, data, code", [
    ("setup.exe", b"MZ\x90\0" + b"\0" * 60, "attachment_type"),
    ("page.html", b"<html><script>alert(1)</script></html>", "attachment_type"),
    ("logo.svg", b"<svg onload=alert(1)>", "attachment_type"),
    ("noext", b"hello", "attachment_type"),
    ("virus.png", b"MZ\x90\0" + b"\0" * 60, "attachment_mismatch"),  # renamed executable
    ("page.png", b"<html></html>", "attachment_mismatch"),
    ("binary.txt", b"abc\x00def", "attachment_mismatch"),
    ("fake.docx", b"PK\x03\x04garbage", "attachment_mismatch"),
    ("macro.docx", _zip({"[Content_Types].xml": b"", "word/document.xml": b"", "word/vbaProject.bin": b""}),
     "attachment_mismatch"),
    ("jar.docx", _zip({"META-INF/MANIFEST.MF": b""}), "attachment_mismatch"),
    ("empty.png", b"", "attachment_empty"),
])
def test_refused_attachments_name_the_problem(filename, data, code):
    with pytest.raises(Invalid) as info:
        check_attachment(filename, data, max_bytes=MB10)
    [problem] = info.value.problems
    assert (problem.field, problem.code) == ("attachments", code)


def test_attachment_size_limit():
    check_attachment("a.txt", b"x" * 100, max_bytes=100)
    with pytest.raises(Invalid) as info:
        check_attachment("a.txt", b"x" * 101, max_bytes=100)
    assert info.value.problems[0].code == "attachment_too_large"


def test_safe_filename():
    assert safe_filename("C:\\Users\\张三\\截图.png") == "截图.png"
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("a\x00b\n.txt") == "ab.txt"
    assert safe_filename("") == "attachment"
    long = safe_filename("x" * 300 + ".pdf")
    assert len(long) == 200 and long.endswith(".pdf")


# --- CSRF ------------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_csrf_token_round_trip_and_keeps_submission_id():
    clock = Clock()
    tokens = CsrfTokens(b"secret", timedelta(hours=1), clock=clock)
    token = tokens.issue("session-a")
    check = tokens.check(token, "session-a")
    assert check.status is CsrfStatus.OK and check.submission_id
    clock.now += 10
    again = tokens.issue("session-a", check.submission_id)
    assert again != token
    assert tokens.check(again, "session-a").submission_id == check.submission_id


def test_csrf_refuses_missing_forged_foreign_and_expired():
    clock = Clock()
    tokens = CsrfTokens(b"secret", timedelta(hours=1), clock=clock)
    token = tokens.issue("session-a")
    assert tokens.check(None, "session-a").status is CsrfStatus.MISSING
    assert tokens.check(token, None).status is CsrfStatus.MISSING
    assert tokens.check(token, "session-b").status is CsrfStatus.INVALID
    assert CsrfTokens(b"other", timedelta(hours=1), clock=clock).check(token, "session-a").status is CsrfStatus.INVALID
    version, issued, sid, sig = token.split(".")
    assert tokens.check(f"{version}.{int(issued) + 1}.{sid}.{sig}", "session-a").status is CsrfStatus.INVALID
    for junk in ["", "v1", "v1.x.y.z", "v1.١٢٣.a.b", "é" * 10, "v1.1.a.b.c", "x" * 500]:
        assert tokens.check(junk, "session-a").status in (CsrfStatus.MISSING, CsrfStatus.INVALID)
    clock.now += 3601
    expired = tokens.check(token, "session-a")
    assert expired.status is CsrfStatus.EXPIRED and expired.submission_id == sid
    future = CsrfTokens(b"secret", timedelta(hours=1), clock=Clock(clock.now + 3600)).issue("session-a")
    assert tokens.check(future, "session-a").status is CsrfStatus.INVALID


# --- rate limit -----------------------------------------------------------------------------

def test_rate_limit_burst_then_refill_per_key():
    clock = Clock(0.0)
    limiter = RateLimiter(3, clock=clock)
    assert [limiter.hit("1.2.3.4") for _ in range(3)] == [0, 0, 0]
    wait = limiter.hit("1.2.3.4")
    assert 1 <= wait <= 20
    assert limiter.hit("5.6.7.8") == 0  # another client is not affected
    clock.now += 20  # one token back (3 per minute)
    assert limiter.hit("1.2.3.4") == 0
    assert limiter.hit("1.2.3.4") > 0


def test_rate_limit_memory_is_bounded():
    clock = Clock(0.0)
    limiter = RateLimiter(2, clock=clock, max_keys=100)
    for i in range(1000):
        clock.now += 0.001
        limiter.hit(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= 101


# --- composing messages -----------------------------------------------------------------------

def test_same_content_same_external_id_different_content_different_id():
    ids = (Identity(IdentityKind.EMAIL, "a@b.cn"),)
    common = dict(channel=Channel.WEB, key="form:abc", identities=ids, name="张三", subject="s", attachments=(),
                  ticket_number=None, language="zh", raw=b"{}", received_at=datetime.now(UTC))
    one = build_message(text="你好", **common)
    two = build_message(text="你好", **common)
    edited = build_message(text="你好！", **common)
    assert one.external_id == two.external_id and one.external_id.startswith("form:abc:")
    assert edited.external_id != one.external_id
    assert content_key(identities=ids, name="", subject="", text="x", attachments=(), ticket_number=None) != \
        content_key(identities=ids, name="", subject="", text="x", attachments=(), ticket_number="GD20261123001")


def test_config_rejects_empty_secret_and_sizes_form_body():
    with pytest.raises(ValueError):
        WebFormConfig(secret=b"")
    config = WebFormConfig(secret=b"s")
    assert config.max_form_body_bytes > 5 * MB10
    assert config.max_attachment_size == "10 MB"
    assert size_text(1536 * 1024) == "1.5 MB" and size_text(1024) == "1 KB" and size_text(10) == "1 KB"
