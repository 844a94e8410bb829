"""Identities, merges on evidence, conflicts for a supervisor, unmerge, and `paidan customers`.

On SQLite, and on PostgreSQL with PAIDAN_TEST_DATABASE_URL set (the `engine` fixture).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from factories import cli_invoker, make_message
from models import Channel, Identity, IdentityKind, InboundMessage, Sender
from models.errors import ActionRefused, InvalidInput, NotFound
from models.tables import Customer, CustomerMerge, Identity as IdentityRow, Message, ReviewItem, Ticket, TicketEvent
from paidan.cli_customers import customers
from paidan.db import transaction
from router.config import RouterConfig
from router.identity import (
    conflicts,
    find_customer,
    make_identity,
    merge_customers,
    normalise_email,
    normalise_phone,
    normalise_telegram_id,
    parse_identity,
    unmerge,
)
from router.intake import Intake, store_batch

T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def count(engine, table) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(table))


def identities(session: Session, customer_id: int) -> list[str]:
    return sorted(f"{i.kind}:{i.value}" for i in session.scalars(
        select(IdentityRow).where(IdentityRow.customer_id == customer_id)))


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize("raw,region,expected", [
    ("13800138000", "CN", "+8613800138000"),
    ("138 0013 8000", "CN", "+8613800138000"),
    ("+86 138-0013-8000", "US", "+8613800138000"),
    ("(650) 253-0000", "US", "+16502530000"),
    ("+44 20 7946 0958", "CN", "+442079460958"),
    ("0086 13800138000", "CN", "+8613800138000"),
])
def test_phones_become_e164(raw, region, expected):
    assert normalise_phone(raw, region) == expected


@pytest.mark.parametrize("raw", ["", "12", "not a phone", "+86 123", "1" * 41])
def test_what_is_not_a_phone_is_refused_with_the_field(raw):
    with pytest.raises(InvalidInput) as err:
        normalise_phone(raw)
    assert err.value.field == "phone"


def test_emails_and_telegram_ids_have_one_spelling():
    assert normalise_email("  Li.Na@Example.COM ") == "li.na@example.com"
    assert normalise_telegram_id(123456789) == normalise_telegram_id(" 00123456789 ") == "123456789"
    for bad in ("", "-5", "0", "12a", "١٢٣"):
        with pytest.raises(InvalidInput):
            normalise_telegram_id(bad)
    for bad in ("nobody", "a@b", "a b@c.cn", "@x.cn"):
        with pytest.raises(InvalidInput):
            normalise_email(bad)


def test_identities_parse_from_what_a_person_types():
    assert parse_identity("email:A@B.cn") == Identity(IdentityKind.EMAIL, "a@b.cn")
    assert parse_identity("a@b.cn") == Identity(IdentityKind.EMAIL, "a@b.cn")
    assert parse_identity("13800138000") == Identity(IdentityKind.PHONE, "+8613800138000")
    assert parse_identity("telegram:42") == Identity(IdentityKind.TELEGRAM, "42")
    assert make_identity("web_session", " s-1 ") == Identity(IdentityKind.WEB_SESSION, "s-1")


def test_conflicts_are_different_values_of_an_exclusive_kind():
    a = [("email", "a@x.cn")]
    assert conflicts(a, [("phone", "+8613900000000")]) == {}
    assert conflicts(a, [("email", "b@x.cn"), ("phone", "+8613900000000")]) == {"email": (["a@x.cn"], ["b@x.cn"])}
    assert conflicts([("web_session", "s1")], [("web_session", "s2")]) == {}  # one person, many browsers
    assert conflicts([("telegram", "1")], [("telegram", "2")]) == {"telegram": (["1"], ["2"])}


# ---------------------------------------------------------------- merging at intake


def test_a_form_naming_two_customers_without_conflict_merges_them(engine):
    intake = Intake(engine, clock=lambda: T0)
    a = intake.accept_now(make_message(channel=Channel.EMAIL, email="a@example.com", subject="发票抬头错了",
                                       text="发票抬头开错了"))
    b = intake.accept_now(make_message(email=None, phone="+8613900000000", text="APP 一打开就闪退"))
    both = intake.accept_now(make_message("form-9", channel=Channel.WEB, email="a@example.com",
                                          phone="+8613900000000", text="发票的新抬头是 上海某某科技有限公司"))
    assert both.ticket_number == a.ticket_number  # the invoice ticket, by topic, now that they are one person
    with Session(engine) as session:
        a_id = session.get(Ticket, a.ticket_id).customer_id
        b_ticket = session.get(Ticket, b.ticket_id)
        assert b_ticket.customer_id == a_id  # B's ticket moved with B
        [merge] = session.scalars(select(CustomerMerge)).all()
        assert (merge.target_id, merge.actor) == (a_id, "intake") and merge.ticket_ids == [b.ticket_id]
        assert merge.evidence == "web form 'form-9' gave email a@example.com and phone +8613900000000 together"
        assert session.get(Customer, merge.source_id).merged_into_id == a_id
        assert identities(session, a_id) == ["email:a@example.com", "phone:+8613900000000"]
        assert identities(session, merge.source_id) == []
        assert session.get(Message, both.message_id).flags == []  # merged, so no conflict
        moved = session.scalars(select(TicketEvent).where(TicketEvent.kind == "customer_merged")).all()
        assert {e.ticket_id for e in moved} == {b.ticket_id, a.ticket_id}  # the moved ticket, and where it was said
        assert all("web form 'form-9' gave" in e.reason and e.data["merge_id"] == merge.id for e in moved)
        assert session.scalar(select(func.count()).select_from(ReviewItem)) == 0

    with transaction(engine) as session:  # and it can be undone
        unmerge(session, merge.id, actor="supervisor:ann", now=T0 + timedelta(hours=1))
    with Session(engine) as session:
        source = session.get(Customer, merge.source_id)
        assert source.merged_into_id is None
        assert identities(session, source.id) == ["phone:+8613900000000"]
        assert identities(session, a_id) == ["email:a@example.com"]
        assert session.get(Ticket, b.ticket_id).customer_id == source.id
        assert session.get(Ticket, a.ticket_id).customer_id == a_id
        undone = session.scalars(select(TicketEvent).where(TicketEvent.kind == "customer_unmerged")).all()
        assert [(e.ticket_id, e.actor) for e in undone] == [(b.ticket_id, "supervisor:ann")]
        assert session.get(CustomerMerge, merge.id).undone_by == "supervisor:ann"


def test_a_conflict_is_flagged_for_a_supervisor_and_nothing_is_merged(engine):
    intake = Intake(engine, clock=lambda: T0)
    intake.accept_now(make_message(email="a@example.com"))
    intake.accept_now(make_message(email="b@example.com", phone="+8613900000000", text="发票抬头错了"))
    both = intake.accept_now(make_message("form-c", channel=Channel.WEB, email="a@example.com",
                                          phone="+8613900000000", text="退款什么时候到？"))
    assert count(engine, CustomerMerge) == 0
    with Session(engine) as session:
        a_id, b_id = session.scalars(select(Customer.id).order_by(Customer.id)).all()
        assert identities(session, a_id) == ["email:a@example.com"]
        assert identities(session, b_id) == ["email:b@example.com", "phone:+8613900000000"]
        assert "identity_conflict" in session.get(Message, both.message_id).flags
        ticket = session.get(Ticket, both.ticket_id)
        assert ticket.customer_id == a_id and "identity_conflict" in ticket.flags
        [review] = session.scalars(select(ReviewItem)).all()
        assert (review.kind, review.ticket_id, review.customer_id, review.resolved_at) == (
            "identity_conflict", both.ticket_id, a_id, None)
        assert review.detail["customers"] == [a_id, b_id]
        assert review.detail["identities"] == {str(a_id): ["email:a@example.com"],
                                               str(b_id): ["email:b@example.com", "phone:+8613900000000"]}
        assert review.detail["conflicts"] == {"email": [["a@example.com"], ["b@example.com"]]}
        assert "gave email a@example.com and phone +8613900000000 together" in review.detail["evidence"]
        [said] = session.scalars(select(TicketEvent).where(TicketEvent.kind == "identity_conflict")).all()
        assert said.ticket_id == both.ticket_id and "not merged" in said.reason
        assert f"review item #{review.id}" in said.reason


def test_the_same_conflict_again_does_not_bury_the_supervisor_in_review_items(engine):
    intake = Intake(engine, clock=lambda: T0)
    intake.accept_now(make_message(email="a@example.com"))
    intake.accept_now(make_message(email="b@example.com", phone="+8613900000000", text="发票抬头错了"))
    for text in ("退款什么时候到？", "退款到底什么时候到？"):
        intake.accept_now(make_message(email="a@example.com", phone="+8613900000000", text=text))
    assert count(engine, ReviewItem) == 1 and count(engine, CustomerMerge) == 0
    with Session(engine) as session:
        said = session.scalars(select(TicketEvent).where(TicketEvent.kind == "identity_conflict")
                               .order_by(TicketEvent.id)).all()
        assert said[0].reason.endswith("(review item #1)")
        assert said[1].reason.endswith("(already awaiting review item #1)")


def test_a_merge_refused_at_intake_still_stores_the_message_and_asks_a_person(engine, monkeypatch):
    """E.g. another process merged one of the two a moment before: never lose the message over it."""
    import router.intake

    def refuse(*args, **kwargs):
        raise ActionRefused("customer #2 is already merged into #3")

    monkeypatch.setattr(router.intake, "merge_customers", refuse)
    intake = Intake(engine, clock=lambda: T0)
    intake.accept_now(make_message(email="a@example.com"))
    intake.accept_now(make_message(email=None, phone="+8613900000000", text="APP 闪退"))
    both = intake.accept_now(make_message(email="a@example.com", phone="+8613900000000", text="退款"))
    with Session(engine) as session:
        assert "identity_conflict" in session.get(Message, both.message_id).flags
        [review] = session.scalars(select(ReviewItem)).all()
        assert review.detail["merge_refused"] == "customer #2 is already merged into #3"


def test_a_telegram_contact_share_ties_the_phone_to_the_telegram_customer(engine):
    intake = Intake(engine, clock=lambda: T0)
    intake.accept_now(make_message(email=None, phone="+8613812345678", text="订单没发货"))
    share = InboundMessage(channel=Channel.TELEGRAM, external_id="tg:1",
                           sender=Sender((Identity(IdentityKind.TELEGRAM, normalise_telegram_id(99)),
                                          Identity(IdentityKind.PHONE, normalise_phone("13812345678")))),
                           text="订单发货了吗", received_at=T0, raw=b"{}")
    receipt = intake.accept_now(share)
    assert not receipt.new_ticket and count(engine, Customer) == 1
    with Session(engine) as session:
        assert identities(session, 1) == ["phone:+8613812345678", "telegram:99"]


def test_merges_inside_one_batch_leave_every_ticket_with_the_survivor(engine):
    """A newcomer's first message and the form that ties them to a known customer, committed together."""
    Intake(engine, clock=lambda: T0).accept_now(make_message(email="old@example.com", text="退款没到账"))
    batch = [
        make_message(email=None, phone="+8613700000000", text="APP 闪退"),
        make_message(email="old@example.com", phone="+8613700000000", text="还有 APP 闪退的问题"),
        make_message(email=None, phone="+8613700000000", text="闪退的截图发你们了"),
    ]
    with transaction(engine) as session:
        receipts = store_batch(session, batch, tz=ZoneInfo("UTC"), first_response=timedelta(hours=4),
                               now=T0 + timedelta(minutes=5), config=RouterConfig())
    assert count(engine, Customer) == 2  # the newcomer, merged into the customer we knew
    with Session(engine) as session:
        old = session.scalar(select(Customer.id).where(Customer.merged_into_id.is_(None)))
        assert identities(session, old) == ["email:old@example.com", "phone:+8613700000000"]
        assert {session.get(Ticket, r.ticket_id).customer_id for r in receipts} == {old}
        assert {m.customer_id for m in session.scalars(select(Message))} == {old}
    assert receipts[0].ticket_number == receipts[1].ticket_number == receipts[2].ticket_number


# ---------------------------------------------------------------- merge_customers / unmerge directly


def _customers(engine, *specs) -> list[int]:
    intake = Intake(engine, clock=lambda: T0)
    ids = []
    for email, phone in specs:
        receipt = intake.accept_now(make_message(email=email, phone=phone))
        with Session(engine) as session:
            ids.append(session.get(Ticket, receipt.ticket_id).customer_id)
    return ids


def test_merges_that_make_no_sense_are_refused_with_the_reason(engine):
    a, b, c = _customers(engine, ("a@example.com", None), (None, "+8613900000001"), ("c@example.com", None))
    with transaction(engine) as session:
        with pytest.raises(InvalidInput, match="cannot be merged into itself"):
            merge_customers(session, a, a, actor="cli", evidence="x", now=T0)
        with pytest.raises(InvalidInput, match="evidence"):
            merge_customers(session, b, a, actor="cli", evidence="  ", now=T0)
        with pytest.raises(NotFound):
            merge_customers(session, 999, a, actor="cli", evidence="x", now=T0)
        with pytest.raises(ActionRefused, match=r"conflicting identities \(#1 has email a@example.com and #3 has "
                                                r"email c@example.com\)"):
            merge_customers(session, c, a, actor="cli", evidence="same name", now=T0)
        merge_customers(session, b, a, actor="cli", evidence="phoned in", now=T0)
        with pytest.raises(ActionRefused, match=f"already merged into #{a}"):
            merge_customers(session, b, c, actor="cli", evidence="x", now=T0)
        with pytest.raises(ActionRefused, match=f"merge into #{a} instead"):
            merge_customers(session, c, b, actor="cli", evidence="x", now=T0)


def test_a_merge_of_a_person_whose_data_was_erased_is_not_undone(engine):
    from router.privacy import forget_customer

    a, b = _customers(engine, ("a@example.com", None), (None, "+8613900000001"))
    with transaction(engine) as session:
        merge = merge_customers(session, b, a, actor="cli", evidence="phoned in", now=T0)
        forget_customer(session, a, actor="cli", reason="erasure request", now=T0, force=True)
    with transaction(engine) as session:
        with pytest.raises(ActionRefused, match=f"customer #{a}'s personal data was erased"):
            unmerge(session, merge.id, actor="cli", now=T0)
    with Session(engine) as session:
        assert session.get(Customer, b).merged_into_id == a


def test_a_forced_merge_over_a_conflict_is_recorded_as_forced_and_undoable(engine):
    a, c = _customers(engine, ("a@example.com", None), ("c@example.com", None))
    with transaction(engine) as session:
        merge = merge_customers(session, c, a, actor="supervisor:ann", evidence="same person, two mailboxes",
                                now=T0, force=True)
        merge_id = merge.id
    with Session(engine) as session:
        assert identities(session, a) == ["email:a@example.com", "email:c@example.com"]
        [event] = session.scalars(select(TicketEvent).where(TicketEvent.kind == "customer_merged")).all()
        assert event.data["forced"] is True and "forced over conflicting identities" in event.reason
    with transaction(engine) as session:
        unmerge(session, merge_id, actor="supervisor:ann", now=T0)
        with pytest.raises(ActionRefused, match="already undone"):
            unmerge(session, merge_id, actor="supervisor:ann", now=T0)
    with Session(engine) as session:
        assert identities(session, a) == ["email:a@example.com"] and identities(session, c) == ["email:c@example.com"]


def _customer(engine, *idents: str) -> int:
    """A customer who wrote once, known by these identities (`kind:value`)."""
    msg = InboundMessage(channel=Channel.API, external_id=f"c-{'-'.join(idents)}", text="你好", received_at=T0,
                         raw=b"", sender=Sender(tuple(parse_identity(i) for i in idents)))
    receipt = Intake(engine, clock=lambda: T0).accept_now(msg)
    with Session(engine) as session:
        return session.get(Ticket, receipt.ticket_id).customer_id


def test_merges_undo_in_reverse_order_and_keep_what_arrived_later(engine):
    a = _customer(engine, "telegram:7")
    b = _customer(engine, "phone:+8613900000001")
    c = _customer(engine, "email:c@example.com")
    with transaction(engine) as session:
        first = merge_customers(session, b, c, actor="cli", evidence="one", now=T0).id
    with transaction(engine) as session:
        second = merge_customers(session, c, a, actor="cli", evidence="two", now=T0).id
    with transaction(engine) as session:
        with pytest.raises(ActionRefused, match=f"undo merge #{second} first"):
            unmerge(session, first, actor="cli", now=T0)
    # a message after the merges adds a web session to the survivor; undoing does not take it away
    _customer(engine, "web_session:s-1", "phone:+8613900000001")
    with transaction(engine) as session:
        unmerge(session, second, actor="cli", now=T0)
        unmerge(session, first, actor="cli", now=T0)
    with Session(engine) as session:
        assert identities(session, a) == ["telegram:7", "web_session:s-1"]
        assert identities(session, b) == ["phone:+8613900000001"]
        assert identities(session, c) == ["email:c@example.com"]
        assert all(session.get(Customer, cid).merged_into_id is None for cid in (a, b, c))


def test_a_merge_does_not_make_old_tickets_look_recently_active(engine):
    a, b = _customers(engine, ("a@example.com", None), (None, "+8613900000001"))
    with transaction(engine) as session:
        before = session.scalar(select(Ticket.updated_at).where(Ticket.customer_id == b))
        merge_customers(session, b, a, actor="cli", evidence="x", now=T0 + timedelta(days=30))
    with Session(engine) as session:
        assert session.scalar(select(Ticket.updated_at).where(Ticket.customer_id == a, Ticket.id == 2)) == before


def test_customers_are_found_by_id_or_by_any_identity(engine):
    a, b = _customers(engine, ("a@example.com", "+8613900000001"), ("b@example.com", None))
    with Session(engine) as session:
        assert find_customer(session, str(a)).id == a and find_customer(session, f"#{b}").id == b
        assert find_customer(session, "A@Example.com").id == a
        assert find_customer(session, "13900000001").id == a
        with pytest.raises(NotFound, match="telegram:5"):
            find_customer(session, "telegram:5")
        with pytest.raises(InvalidInput):
            find_customer(session, "nonsense")


# ---------------------------------------------------------------- paidan customers


@pytest.fixture
def run(database_url, monkeypatch, tmp_path):
    return cli_invoker(customers, database_url, monkeypatch, tmp_path)


@pytest.mark.parametrize("path", [(), ("show",), ("merge",), ("unmerge",)])
def test_every_customers_command_has_help(path):
    result = CliRunner().invoke(customers, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_show_merge_unmerge_from_the_command_line(run, engine):
    intake = Intake(engine, clock=lambda: T0)
    first = intake.accept_now(make_message(email="wang@example.com", subject="退款没到账", text="退款没到账"))
    intake.accept_now(make_message(email=None, phone="+8613911112222", text="APP 闪退"))

    shown = run("show", "wang@example.com").output
    assert "customer #1" in shown and "email:wang@example.com" in shown and first.ticket_number in shown

    merged = run("merge", "13911112222", "wang@example.com", "--evidence", "called from that phone",
                 "--actor", "supervisor:ann").output
    assert "merge #1: customer #2 merged into #1 (1 identities, 1 tickets moved)" in merged
    data = json.loads(run("show", "1", "--json").output)
    assert data["identities"] == ["email:wang@example.com", "phone:+8613911112222"]
    assert len(data["tickets"]) == 2 and data["merges"][0]["evidence"] == "called from that phone"
    assert json.loads(run("show", "2", "--json").output)["merged_into_id"] == 1
    assert "merges" in run("show", "+8613911112222").output  # the phone now finds the survivor

    undone = run("unmerge", "1", "--actor", "supervisor:ann").output
    assert "merge #1 undone: customer #2 has its 1 identities and 1 tickets back from #1" in undone
    data = json.loads(run("show", "2", "--json").output)
    assert data["merged_into_id"] is None and data["identities"] == ["phone:+8613911112222"]
    assert data["merges"][0]["undone_by"] == "supervisor:ann"


def test_the_command_line_refuses_with_the_reason_and_force_is_recorded(run, engine):
    intake = Intake(engine, clock=lambda: T0)
    intake.accept_now(make_message(email="a@example.com"))
    intake.accept_now(make_message(email="b@example.com", phone="+8613900000000", text="发票"))
    intake.accept_now(make_message(email="a@example.com", phone="+8613900000000", text="退款"))  # a conflict
    assert "open review #1 (identity_conflict)" in run("show", "a@example.com").output

    refused = run("merge", "2", "1", "--evidence", "same name", ok=False)
    assert refused.exit_code == 1 and "conflicting identities" in refused.output and "Traceback" not in refused.output
    itself = run("merge", "1", "a@example.com", "--evidence", "x", ok=False)
    assert itself.exit_code == 1 and "cannot be merged into itself" in itself.output
    missing = run("show", "nobody@example.com", ok=False)
    assert missing.exit_code == 1 and "no customer is known by email:nobody@example.com" in missing.output
    no_evidence = run("merge", "2", "1", ok=False)
    assert no_evidence.exit_code == 2 and "--evidence" in no_evidence.output
    assert run("unmerge", "7", ok=False).exit_code == 1

    forced = run("merge", "2", "1", "--evidence", "supervisor checked by phone", "--force").output
    assert "forced over conflicting identities" in forced
    with Session(engine) as session:
        assert session.get(Customer, 2).merged_into_id == 1
        assert all(e.data["forced"] for e in session.scalars(select(TicketEvent).where(
            TicketEvent.kind == "customer_merged")))
