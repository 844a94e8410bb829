"""Durable, idempotent intake on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from factories import make_message
from models import Attachment, Channel, ThreadRefs
from models.errors import StorageUnavailable
from models.tables import AttachmentRow, Customer, Identity, Message, Ticket, TicketEvent
from paidan.db import make_engine, transaction
from router import states
from router.config import RouterConfig
from router.intake import Intake

NUMBER = re.compile(r"^GD\d{8}\d{3,}$")


def count(engine, table) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def test_a_message_becomes_a_ticket_with_its_raw_bytes(engine):
    raw = b"From: a@b\r\n\r\nbinary \x00 NUL and \xff bytes"
    msg = make_message(raw=raw, subject="订单未发货", attachments=(Attachment("log.txt", "text/plain", b"E1023\n"),))
    receipt = Intake(engine).accept_now(msg)
    assert NUMBER.match(receipt.ticket_number) and receipt.new_ticket and not receipt.duplicate
    with Session(engine) as session:
        row = session.get(Message, receipt.message_id)
        assert row.raw == raw and row.text == msg.text and row.ticket.number == receipt.ticket_number
        assert row.ticket.state == states.NEW and row.ticket.subject == "订单未发货"
        [attachment] = row.attachments
        assert attachment.data == b"E1023\n" and attachment.size == 6
        [event] = row.ticket.events
        assert event.kind == "created" and event.actor == "customer" and event.to_state == "new"


def test_the_same_delivery_twice_is_stored_once(engine):
    intake = Intake(engine)
    first = intake.accept_now(make_message("same-id"))
    again = intake.accept_now(make_message("same-id", text="a retry with other text"))
    assert again.duplicate and again.ticket_number == first.ticket_number and again.message_id == first.message_id
    assert count(engine, Message) == 1 and count(engine, Ticket) == 1


def test_same_external_id_on_another_channel_is_another_message(engine):
    intake = Intake(engine)
    a = intake.accept_now(make_message("42", channel=Channel.API))
    b = intake.accept_now(make_message("42", channel=Channel.WEB))
    assert not b.duplicate and a.message_id != b.message_id


async def _accept_all(intake, messages):
    return await asyncio.gather(*(intake.accept(m) for m in messages))


def test_concurrent_submissions_get_unique_numbers_and_duplicates_collapse(engine):
    # Topic threading is off: this is about numbering under concurrency, and 400 invented texts from
    # 37 customers share enough words that some would rightly continue an earlier ticket.
    intake = Intake(engine, config=RouterConfig(topic_window=timedelta(0)))
    def message(i):
        return make_message(f"m{i}", email=f"c{i % 37}@example.com", text=f"第 {i} 个问题：{'ABCDEFGHIJ'[i % 10] * 3} {i * 7919}")
    messages = [message(i) for i in range(400)]
    repeats = [message(i) for i in range(0, 400, 7)]
    receipts = asyncio.run(_accept_all(intake, messages + repeats))
    intake.close()
    first = receipts[:400]
    assert len({r.ticket_number for r in first}) == 400
    assert all(NUMBER.match(r.ticket_number) for r in first)
    assert all(r.duplicate for r in receipts[400:])
    assert count(engine, Message) == 400 and count(engine, Customer) == 37


def test_writers_in_separate_processes_never_share_a_ticket_number(database_url, tmp_path):
    """Several processes (as several `paidan serve` on one PostgreSQL, or CLI beside serve on SQLite)."""
    script = Path(__file__).with_name("concurrent_writer.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), str(Path(__file__).parent)])}
    procs = [
        subprocess.Popen([sys.executable, str(script), database_url, str(worker), "150"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for worker in range(4)
    ]
    numbers = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            numbers += out.split()
    finally:  # a failure must not leave the other writers blocked on a pipe nobody reads
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(numbers) == 4 * 150 + 4 * 10  # every worker also re-sent 10 of worker 0's messages
    engine = make_engine(database_url)
    with Session(engine) as session:
        stored = session.scalars(select(Ticket.number)).all()
    engine.dispose()
    assert len(stored) == len(set(stored)) == 4 * 150
    assert set(numbers) == set(stored)


def test_a_ticket_number_from_its_own_customer_threads_the_message(engine):
    intake = Intake(engine)
    first = intake.accept_now(make_message(email="wang@example.com"))
    follow = intake.accept_now(make_message(email="wang@example.com", text="补充：订单号 20261103884512",
                                            thread_refs=ThreadRefs(ticket_number=first.ticket_number.lower())))
    assert follow.ticket_number == first.ticket_number and not follow.new_ticket


def test_a_ticket_number_from_a_stranger_opens_a_new_flagged_ticket(engine):
    intake = Intake(engine)
    first = intake.accept_now(make_message(email="wang@example.com"))
    stranger = intake.accept_now(make_message(email="mallory@example.com",
                                              thread_refs=ThreadRefs(ticket_number=first.ticket_number)))
    assert stranger.ticket_number != first.ticket_number and stranger.new_ticket
    with Session(engine) as session:
        assert "ticket_ref_rejected" in session.get(Message, stranger.message_id).flags


def test_email_in_reply_to_threads_and_reopens_a_resolved_ticket(engine):
    intake = Intake(engine)
    first = intake.accept_now(make_message(channel=Channel.EMAIL, message_id="<a1@mail.example>"))
    with transaction(engine) as session:
        ticket = session.get(Ticket, first.ticket_id)
        states.transition(session, ticket, states.RESOLVED, actor="agent:1", reason="fixed",
                          at=ticket.created_at)
    reply = intake.accept_now(make_message(channel=Channel.EMAIL, text="还是不行",
                                           thread_refs=ThreadRefs(in_reply_to="<a1@mail.example>")))
    assert reply.ticket_number == first.ticket_number
    with Session(engine) as session:
        ticket = session.get(Ticket, first.ticket_id)
        assert ticket.state == states.REOPENED
        last = session.scalars(select(TicketEvent).where(TicketEvent.ticket_id == ticket.id)
                               .order_by(TicketEvent.id)).all()
        assert [(e.from_state, e.to_state) for e in last if e.kind == "transition"][-1] == ("resolved", "reopened")


def test_form_with_email_and_phone_gives_one_customer_with_two_identities(engine):
    intake = Intake(engine)
    intake.accept_now(make_message(email="li@example.com", phone="+8613812345678"))
    later = intake.accept_now(make_message(email=None, phone="+8613812345678"))
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 1
        kinds = sorted(session.scalars(select(Identity.kind)).all())
        assert kinds == ["email", "phone"]
        assert session.get(Ticket, later.ticket_id).customer_id == 1


def test_conflicting_identities_are_flagged_not_merged(engine):
    intake = Intake(engine)
    # One phone claimed by two customers with different emails: a supervisor decides, not intake.
    intake.accept_now(make_message(email="a@example.com", phone="+8613900000000"))
    intake.accept_now(make_message(email="b@example.com"))
    both = intake.accept_now(make_message(email="b@example.com", phone="+8613900000000"))
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 2
        assert "identity_conflict" in session.get(Message, both.message_id).flags


def test_a_database_failure_answers_unavailable_and_writes_nothing(engine):
    if engine.dialect.name == "sqlite":
        trigger = ("CREATE TRIGGER fail_attachments BEFORE INSERT ON attachments "
                   "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END")
    else:
        with engine.begin() as conn:
            conn.execute(text("CREATE FUNCTION fail() RETURNS trigger AS $$ BEGIN "
                              "RAISE EXCEPTION 'disk full (simulated)'; END $$ LANGUAGE plpgsql"))
        trigger = "CREATE TRIGGER fail_attachments BEFORE INSERT ON attachments FOR EACH ROW EXECUTE FUNCTION fail()"
    with engine.begin() as conn:
        conn.execute(text(trigger))
    intake = Intake(engine)
    msg = make_message(attachments=(Attachment("a.png", "image/png", b"\x89PNG"),))
    with pytest.raises(StorageUnavailable):
        intake.accept_now(msg)
    with pytest.raises(StorageUnavailable):
        asyncio.run(intake.accept(msg))
    intake.close()
    assert count(engine, Message) == count(engine, Ticket) == count(engine, Customer) == count(engine, AttachmentRow) == 0


def test_one_failing_message_does_not_fail_its_batch(engine):
    """Group commit must not turn one bad message into many lost ones."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER no_poison BEFORE INSERT ON messages WHEN NEW.text = 'poison' "
                              "BEGIN SELECT RAISE(ABORT, 'poison'); END"))
        else:
            conn.execute(text("CREATE FUNCTION no_poison() RETURNS trigger AS $$ BEGIN IF NEW.text = 'poison' "
                              "THEN RAISE EXCEPTION 'poison'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER no_poison BEFORE INSERT ON messages FOR EACH ROW "
                              "EXECUTE FUNCTION no_poison()"))
    intake = Intake(engine)
    messages = [make_message(f"b{i}", text="poison" if i == 5 else f"fine {i}") for i in range(20)]

    async def run():
        return await asyncio.gather(*(intake.accept(m) for m in messages), return_exceptions=True)

    results = asyncio.run(run())
    intake.close()
    assert isinstance(results[5], StorageUnavailable)
    assert sum(1 for r in results if not isinstance(r, Exception)) == 19
    assert count(engine, Message) == 19


def test_unreachable_database_is_unavailable_not_a_crash(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db")
    with pytest.raises(StorageUnavailable):
        Intake(engine).accept_now(make_message())


def test_nul_bytes_in_text_are_kept_in_raw_and_dropped_from_text(engine):
    receipt = Intake(engine).accept_now(make_message(text="a\x00b", subject="s\x00", raw=b"a\x00b", name="n\x00"))
    with Session(engine) as session:
        row = session.get(Message, receipt.message_id)
        assert (row.text, row.subject, row.raw) == ("ab", "s", b"a\x00b")


def test_an_email_address_is_one_identity_however_it_is_capitalised(engine):
    intake = Intake(engine)
    intake.accept_now(make_message(email="Zhang.Wei@Example.COM"))
    intake.accept_now(make_message(email=" zhang.wei@example.com"))
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 1
        assert session.scalars(select(Identity.value)).all() == ["zhang.wei@example.com"]


@pytest.mark.parametrize("text, language", [
    ("我的 iPhone 登录不了，一直报 error 502", "zh"),  # Chinese with English words is Chinese
    ("您好，退款还没到账。\n\n--\nBest regards\nZhang Wei\nACME Trading Co., Ltd.", "zh"),
    ("Hi, my order 20261103 is lost. Thanks, 王芳", "en"),  # a Chinese signature does not make it Chinese
    ("在吗", "zh"),
    ("hello?", None), ("😀😀 12345", None), ("", None),
])
def test_a_message_that_names_no_language_is_read_by_its_script(text, language):
    from models.message import written_language

    assert written_language(text) == language
