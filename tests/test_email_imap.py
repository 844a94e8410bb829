"""The IMAP poller against a real Dovecot on loopback, into the real intake; and its decisions alone.

Each test gets its own folder on one Dovecot started for this module (tests/peers/dovecot.sh),
and its own empty database (the `engine` fixture), so tests never see each other's mail.
"""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.email.imap import (
    Cursor,
    ImapConfig,
    ImapPoller,
    ImapUnavailable,
    PollReport,
    body_of,
    fetch_groups,
    mask_address,
    received_at_of,
    resume_after,
    uids_to_fetch,
)
from models.errors import StorageUnavailable
from models.tables import Message, Ticket
from router.cursors import load_cursor, save_cursor
from router.intake import Intake

DOVECOT = Path("/usr/sbin/dovecot")
SCRIPT = Path(__file__).parent / "peers" / "dovecot.sh"
SEEN = b"\\Seen"
NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


# ---- the decisions, without a server -------------------------------------------------------------


def test_only_uids_after_the_cursor_are_fetched_in_order():
    assert uids_to_fetch([7, 5, 6], after=5) == [6, 7]
    # `UID SEARCH UID 8:*` answers the highest UID even when it is below 8: nothing new
    assert uids_to_fetch([7], after=7) == []
    assert uids_to_fetch([], after=0) == []


def test_a_changed_uidvalidity_starts_over_from_uid_1():
    assert resume_after(Cursor(uidvalidity=100, last_uid=42), 100) == 42
    assert resume_after(Cursor(uidvalidity=100, last_uid=42), 101) == 0
    assert resume_after(Cursor(), 100) == 0  # never polled
    assert Cursor.from_dict({}) == Cursor(None, 0)
    assert Cursor.from_dict(Cursor(7, 3).to_dict()) == Cursor(7, 3)


def test_fetch_groups_respect_count_and_bytes_and_isolate_huge_mail():
    uids = [1, 2, 3, 4, 5]
    assert fetch_groups(uids, {}, max_count=2, max_bytes=100) == [[1, 2], [3, 4], [5]]
    sizes = {1: 40, 2: 40, 3: 500, 4: 10, 5: 10}
    assert fetch_groups(uids, sizes, max_count=10, max_bytes=100) == [[1, 2], [3], [4, 5]]
    assert fetch_groups([], sizes, max_count=10, max_bytes=100) == []


def test_a_fetch_answer_without_bytes_has_no_body():
    assert body_of(None) is None
    assert body_of({}) is None
    assert body_of({b"BODY[]": None, b"SEQ": 2}) is None  # Dovecot, for mail expunged meanwhile
    assert body_of({b"BODY[]": b""}) is None
    assert body_of({b"BODY[]": b"Subject: x\r\n\r\nhi"}) == b"Subject: x\r\n\r\nhi"


def test_received_at_is_the_servers_date_in_utc_or_now():
    beijing = timezone(timedelta(hours=8))
    assert received_at_of({b"INTERNALDATE": datetime(2026, 11, 23, 17, 30, tzinfo=beijing)}, NOW) == NOW
    assert received_at_of({}, NOW) == NOW
    assert received_at_of({b"INTERNALDATE": datetime(1970, 1, 1, tzinfo=UTC)}, NOW) == NOW  # NIL mail
    assert received_at_of({b"INTERNALDATE": datetime(2026, 11, 23, 9, 30)}, NOW) == NOW  # naive: unknown zone


def test_addresses_are_masked_and_the_password_never_printed():
    assert mask_address("alice@example.com") == "a***@example.com"
    assert mask_address("") == ""
    assert mask_address("agent") == "a***"
    config = ImapConfig("imap.example.com", 993, "support@example.com", "hunter2")
    assert "hunter2" not in repr(config) and "support@" not in repr(config)
    assert config.cursor_name == "imap:support@example.com@imap.example.com:993/INBOX"


def test_cursors_are_stored_and_replaced(engine):
    assert load_cursor(engine, "imap:a") == {}
    save_cursor(engine, "imap:a", {"uidvalidity": 5, "last_uid": 1})
    save_cursor(engine, "imap:a", {"uidvalidity": 5, "last_uid": 9})
    save_cursor(engine, "imap:b", {"uidvalidity": 6, "last_uid": 2})
    assert load_cursor(engine, "imap:a") == {"uidvalidity": 5, "last_uid": 9}
    assert load_cursor(engine, "imap:b") == {"uidvalidity": 6, "last_uid": 2}


# ---- a real Dovecot ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    port: int
    user: str
    password: str


@pytest.fixture(scope="module")
def dovecot():
    if not DOVECOT.exists():
        pytest.skip("Dovecot not installed: apt-get install dovecot-imapd dovecot-core")
    # Not pytest's tmp_path: as root the mail belongs to 'nobody', which must reach the directory,
    # and pytest's base directory is private (0700).
    directory = Path(tempfile.mkdtemp(prefix="paidan-dovecot-"))
    try:
        started = subprocess.run([SCRIPT, "start", directory], capture_output=True, text=True, timeout=30)
        assert started.returncode == 0, started.stderr
        info = dict(field.split("=", 1) for field in started.stdout.split())
        yield Server(int(info["DOVECOT_PORT"]), info["IMAP_USER"], info["IMAP_PASS"])
    finally:
        subprocess.run([SCRIPT, "stop", directory], timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


class Mailbox:
    """One test's folder, seen through a second connection (a person's mail client, another MTA)."""

    def __init__(self, server: Server):
        self.server = server
        self.folder = f"test-{uuid.uuid4().hex[:8]}"
        self.client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=10)
        self.client.login(server.user, server.password)
        self.client.create_folder(self.folder)

    def config(self, **overrides) -> ImapConfig:
        return ImapConfig(**{"host": "127.0.0.1", "port": self.server.port, "username": self.server.user,
                             "password": self.server.password, "folder": self.folder, "ssl": False,
                             "timeout": 10.0, **overrides})

    def append(self, *mails: bytes, flags: tuple[bytes, ...] = ()) -> list[int]:
        """APPEND each mail; returns their UIDs (Dovecot answers APPENDUID)."""
        return [int(self.client.append(self.folder, raw, flags=flags).split(b"]")[0].split()[-1]) for raw in mails]

    def flags(self, folder: str | None = None) -> dict[int, set[bytes]]:
        self.client.select_folder(folder or self.folder, readonly=True)
        uids = self.client.search("ALL")
        return {uid: set(item[b"FLAGS"]) for uid, item in self.client.fetch(uids, ["FLAGS"]).items()} if uids else {}

    def seen(self) -> list[int]:
        return sorted(uid for uid, flags in self.flags().items() if SEEN in flags)

    def expunge(self, uid: int) -> None:
        self.client.select_folder(self.folder)
        self.client.delete_messages([uid])
        self.client.uid_expunge([uid])
        self.client.unselect_folder()

    def recreate(self) -> None:
        """Delete and re-create the folder: the server gives it a new uidvalidity."""
        self.client.delete_folder(self.folder)
        self.client.create_folder(self.folder)

    def uidvalidity(self) -> int:
        return self.client.folder_status(self.folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]


@pytest.fixture
def mailbox(dovecot):
    box = Mailbox(dovecot)
    yield box
    box.client.logout()


@pytest.fixture
def intake(engine):
    intake = Intake(engine)
    yield intake
    intake.close()


def poller_for(engine, config: ImapConfig, deliver) -> ImapPoller:
    return ImapPoller(config, deliver=deliver,
                      load_cursor=lambda name: load_cursor(engine, name),
                      save_cursor=lambda name, value: save_cursor(engine, name, value))


def mail(n: int, *, sender: str | None = None, message_id: str | None = None, body: str = "") -> bytes:
    sender = sender or f"customer{n}@example.com"
    message_id = message_id or f"<imap-test-{n}@example.com>"
    return (f"From: Customer {n} <{sender}>\r\nTo: support@example.test\r\nSubject: order {n} question\r\n"
            f"Message-ID: {message_id}\r\nDate: Mon, 23 Nov 2026 09:30:00 +0800\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body or f'Where is my order {n}?'}\r\n").encode()


def stored(engine) -> list[Message]:
    with Session(engine) as session:
        return list(session.scalars(select(Message).order_by(Message.id)))


def count(engine, table) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def test_new_mail_becomes_tickets_once_and_is_seen_after(engine, intake, mailbox):
    uids = mailbox.append(mail(1), mail(2), mail(3))
    poller = poller_for(engine, mailbox.config(), intake.accept_now)

    assert poller.poll() == PollReport(fetched=3, delivered=3, duplicates=0, stopped_because=None)
    assert [m.external_id for m in stored(engine)] == [f"<imap-test-{n}@example.com>" for n in (1, 2, 3)]
    assert [m.raw for m in stored(engine)] == [mail(1), mail(2), mail(3)]  # the exact bytes
    assert count(engine, Ticket) == 3
    assert mailbox.seen() == uids
    assert load_cursor(engine, mailbox.config().cursor_name) == {
        "uidvalidity": mailbox.uidvalidity(), "last_uid": uids[-1]}

    assert poller.poll() == PollReport()  # `UID n:*` answered the last UID again: filtered
    assert count(engine, Message) == 3


def test_a_restart_resumes_from_the_stored_cursor(engine, intake, mailbox):
    mailbox.append(mail(1), mail(2))
    assert poller_for(engine, mailbox.config(), intake.accept_now).poll().delivered == 2
    later = mailbox.append(mail(3), mail(4))

    fetched = []
    restarted = poller_for(engine, mailbox.config(), lambda msg: fetched.append(msg) or intake.accept_now(msg))
    assert restarted.poll() == PollReport(fetched=2, delivered=2)
    assert [m.external_id for m in fetched] == ["<imap-test-3@example.com>", "<imap-test-4@example.com>"]
    assert count(engine, Message) == 4 and mailbox.seen()[-2:] == later


def test_the_same_message_id_twice_is_one_message(engine, intake, mailbox):
    resent = mail(1).replace(b"Where is", b"Resent: where is")
    mailbox.append(mail(1), resent)
    assert poller_for(engine, mailbox.config(), intake.accept_now).poll() == PollReport(2, 2, 1)
    assert count(engine, Message) == 1 and len(mailbox.seen()) == 2


def test_a_failed_commit_stops_the_round_and_acknowledges_only_what_is_stored(engine, intake, mailbox):
    uids = mailbox.append(*(mail(n) for n in range(1, 6)))
    calls = []

    def database_down_on_the_third(msg):
        calls.append(msg)
        if len(calls) == 3:
            raise StorageUnavailable("the database could not store the message; try again later")
        return intake.accept_now(msg)

    report = poller_for(engine, mailbox.config(batch=2), database_down_on_the_third).poll()
    assert (report.fetched, report.delivered) == (3, 2)
    assert report.stopped_because == f"UID {uids[2]} not stored: StorageUnavailable"
    assert count(engine, Message) == 2
    assert mailbox.seen() == uids[:2]
    assert load_cursor(engine, mailbox.config().cursor_name)["last_uid"] == uids[1]

    assert poller_for(engine, mailbox.config(batch=2), intake.accept_now).poll() == PollReport(3, 3)
    assert count(engine, Message) == 5 and mailbox.seen() == uids


def test_mail_a_person_already_read_is_still_imported(engine, intake, mailbox):
    poller = poller_for(engine, mailbox.config(), intake.accept_now)
    mailbox.append(mail(1))
    poller.poll()
    mailbox.append(mail(2), flags=(SEEN,))  # opened in a mail client before we polled
    assert poller.poll() == PollReport(1, 1)
    assert count(engine, Message) == 2


def test_a_new_uidvalidity_rereads_the_folder_without_duplicates(engine, intake, mailbox, caplog):
    poller = poller_for(engine, mailbox.config(), intake.accept_now)
    mailbox.append(mail(1), mail(2))
    poller.poll()
    before = mailbox.uidvalidity()
    mailbox.recreate()  # e.g. the server's mail store was restored from a backup
    mailbox.append(mail(1), mail(2), mail(3))
    assert mailbox.uidvalidity() != before

    with caplog.at_level(logging.WARNING, logger="connectors.email.imap"):
        assert poller.poll() == PollReport(fetched=3, delivered=3, duplicates=2)
    assert "uidvalidity changed" in caplog.text
    assert count(engine, Message) == 3
    assert load_cursor(engine, mailbox.config().cursor_name)["uidvalidity"] == mailbox.uidvalidity()


def test_a_poison_mail_does_not_block_the_ones_after_it(engine, intake, mailbox):
    bad_encoding = (b"From: spam@example.com\r\nSubject: win\r\nMessage-ID: <poison@example.com>\r\n"
                    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: utf-8\r\n\r\n\xe4\xbd\xa0\xff\xfe=ZZ=\r\n")
    # every byte but NUL and bare CR/LF, which Dovecot would turn into CRLF on APPEND
    garbage = bytes(b for b in range(1, 256) if b not in b"\r\n") * 4 + b"\r\n"
    mailbox.append(bad_encoding, garbage, mail(3))

    assert poller_for(engine, mailbox.config(), intake.accept_now).poll() == PollReport(3, 3)
    poison, junk, good = stored(engine)
    assert poison.raw == bad_encoding and junk.raw == garbage  # kept whole for a human to look at
    assert good.external_id == "<imap-test-3@example.com>" and "Where is my order 3?" in good.text


def test_a_gb2312_mail_arrives_with_the_right_text(engine, intake, mailbox):
    text = "您好，我的订单还没有发货，请尽快处理。"
    raw = (b"From: =?GB2312?B?" + base64.b64encode("张三".encode("gb2312")) + b"?= <zhangsan@example.cn>\r\n"
           b"To: support@example.test\r\nSubject: =?GB2312?B?" + base64.b64encode("订单未发货".encode("gb2312"))
           + b"?=\r\nMessage-ID: <gb2312-1@example.cn>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=\"gb2312\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(text.encode("gb2312")) + b"\r\n")
    mailbox.append(raw)
    poller_for(engine, mailbox.config(), intake.accept_now).poll()
    [message] = stored(engine)
    assert text in message.text and message.raw == raw


def test_a_uid_without_a_body_yet_stops_the_round_until_it_has_one(engine, intake, mailbox, monkeypatch):
    uids = mailbox.append(mail(1), mail(2), mail(3))
    real_fetch = IMAPClient.fetch

    def fetch_like_exchange(client, messages, data, *args, **kwargs):
        answer = real_fetch(client, messages, data, *args, **kwargs)
        if uids[1] in answer:  # announced, but the body is not there yet
            answer[uids[1]].pop(b"BODY[]", None)
        return answer

    monkeypatch.setattr(IMAPClient, "fetch", fetch_like_exchange)
    poller = poller_for(engine, mailbox.config(), intake.accept_now)
    assert poller.poll() == PollReport(1, 1, 0, f"UID {uids[1]} has no body yet")
    assert mailbox.seen() == uids[:1] and count(engine, Message) == 1
    assert load_cursor(engine, mailbox.config().cursor_name)["last_uid"] == uids[0]

    monkeypatch.setattr(IMAPClient, "fetch", real_fetch)
    assert poller.poll() == PollReport(2, 2)
    assert mailbox.seen() == uids and count(engine, Message) == 3


def test_mail_expunged_before_it_is_read_is_skipped(engine, intake, mailbox):
    uids = mailbox.append(mail(1), mail(2), mail(3))

    def deliver_while_someone_deletes_the_second(msg):
        if msg.external_id == "<imap-test-1@example.com>":
            mailbox.expunge(uids[1])
        return intake.accept_now(msg)

    poller = poller_for(engine, mailbox.config(batch=1), deliver_while_someone_deletes_the_second)
    assert poller.poll() == PollReport(2, 2)
    assert [m.external_id for m in stored(engine)] == ["<imap-test-1@example.com>", "<imap-test-3@example.com>"]
    assert load_cursor(engine, mailbox.config().cursor_name)["last_uid"] == uids[2]


def test_a_flag_that_fails_after_the_commit_does_not_import_again(engine, intake, mailbox, monkeypatch, caplog):
    uids = mailbox.append(mail(1), mail(2))
    real_add_flags = IMAPClient.add_flags

    def add_flags_like_office365(client, messages, flags, silent=False):
        if uids[0] in messages:
            raise IMAPClientError("STORE failed: Some of the requested messages no longer exist")
        return real_add_flags(client, messages, flags, silent)

    monkeypatch.setattr(IMAPClient, "add_flags", add_flags_like_office365)
    poller = poller_for(engine, mailbox.config(), intake.accept_now)
    with caplog.at_level(logging.WARNING, logger="connectors.email.imap"):
        assert poller.poll() == PollReport(2, 2)
    assert f"UID {uids[0]} stored but not flagged" in caplog.text
    assert mailbox.seen() == uids[1:]
    assert poller.poll() == PollReport()  # the cursor, not \Seen, says it is done
    assert count(engine, Message) == 2


def test_a_connection_dropped_mid_round_loses_nothing(engine, intake, mailbox, monkeypatch):
    uids = mailbox.append(*(mail(n) for n in range(1, 5)))
    real_fetch = IMAPClient.fetch
    body_fetches = []

    def fetch_then_drop(client, messages, data, *args, **kwargs):
        if "BODY.PEEK[]" in data:
            body_fetches.append(messages)
            if len(body_fetches) == 2:  # the network goes away before the second batch
                client.socket().shutdown(socket.SHUT_RDWR)
        return real_fetch(client, messages, data, *args, **kwargs)

    monkeypatch.setattr(IMAPClient, "fetch", fetch_then_drop)
    poller = poller_for(engine, mailbox.config(batch=2), intake.accept_now)
    with pytest.raises(ImapUnavailable, match="after 2 stored"):
        poller.poll()
    assert count(engine, Message) == 2 and mailbox.seen() == uids[:2]

    assert poller.poll() == PollReport(2, 2)
    assert count(engine, Message) == 4 and mailbox.seen() == uids


def test_committed_mail_can_be_moved_to_a_processed_folder(engine, intake, mailbox):
    mailbox.append(mail(1), mail(2))
    processed = f"{mailbox.folder}-done"
    poller = poller_for(engine, mailbox.config(processed_folder=processed), intake.accept_now)
    assert poller.poll() == PollReport(2, 2)
    assert mailbox.flags() == {}  # moved, not deleted:
    assert len(mailbox.flags(processed)) == 2
    assert poller.poll() == PollReport()
    assert count(engine, Message) == 2


def test_oversized_mail_is_delivered_whole_and_logged_without_full_addresses(engine, intake, mailbox, caplog):
    big = mail(1, sender="alice@example.com", body="很长的日志\r\n" * 2000)
    mailbox.append(mail(2, sender="bob@example.com"), big, mail(3))
    poller = poller_for(engine, mailbox.config(max_bytes=10_000), intake.accept_now)
    with caplog.at_level(logging.INFO, logger="connectors.email.imap"):
        assert poller.poll() == PollReport(3, 3)
    assert stored(engine)[1].raw == big
    assert "over the" in caplog.text and "a***@example.com" in caplog.text
    assert "alice@" not in caplog.text and "bob@" not in caplog.text and mailbox.server.user not in caplog.text


def test_a_wrong_password_or_no_server_is_imap_unavailable(engine, intake, mailbox):
    with pytest.raises(ImapUnavailable, match="LoginError"):
        poller_for(engine, mailbox.config(password="wrong"), intake.accept_now).poll()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # bound, never listening: connection refused
        with pytest.raises(ImapUnavailable, match="ConnectionRefused"):
            poller_for(engine, mailbox.config(port=closed_port), intake.accept_now).poll()


# ---- `paidan serve` polling the mailbox ----------------------------------------------------------


def test_paidan_serve_polls_the_mailbox_and_marks_mail_read_once_stored(database_url, tmp_path, mailbox):
    """The wiring: `paidan serve` with [email] imap_* set polls the folder, stores each mail once as
    a ticket (with the SMTP server off, so this can only have come by IMAP), and then marks it read."""
    import os
    import re
    import signal
    import sys
    import time

    mailbox.append(mail(1), mail(2, body="第二封：发票抬头写错了。"))
    env = {**os.environ, "PAIDAN_DATABASE_URL": database_url, "PAIDAN_WEB_PORT": "0", "PAIDAN_SECRET_KEY": "t",
           "PAIDAN_EMAIL__SMTP_ENABLED": "false", "PAIDAN_EMAIL__IMAP_HOST": "127.0.0.1",
           "PAIDAN_EMAIL__IMAP_PORT": str(mailbox.server.port), "PAIDAN_EMAIL__IMAP_SSL": "false",
           "PAIDAN_EMAIL__IMAP_USERNAME": mailbox.server.user, "PAIDAN_EMAIL__IMAP_PASSWORD": mailbox.server.password,
           "PAIDAN_EMAIL__IMAP_FOLDER": mailbox.folder, "PAIDAN_EMAIL__IMAP_POLL_SECONDS": "0.3"}
    proc = subprocess.Popen([sys.executable, "-m", "paidan.cli", "serve"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        from paidan.db import make_engine

        engine = make_engine(database_url)
        deadline = time.time() + 30
        while time.time() < deadline and len(mailbox.seen()) < 2:
            time.sleep(0.2)
        with Session(engine) as session:
            stored = session.scalars(select(Message.text).where(Message.channel == "email")).all()
        engine.dispose()
    finally:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0, log
    assert len(mailbox.seen()) == 2 and len(stored) == 2, log
    assert any("发票抬头写错了" in text for text in stored)
    assert re.search(r"polling ImapConfig\(127\.0\.0\.1:\d+", log) and "taking email by SMTP" not in log
    assert mailbox.server.user not in log and "paidan stopped" in log
