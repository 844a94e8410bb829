"""Ticket search (router.search, `paidan tickets find`) on a real database: SQLite, or PostgreSQL when
PAIDAN_TEST_DATABASE_URL is set. Most tickets are written as rows, so each test says exactly what is
stored; intake, customer merges and erasure are the real ones where they matter."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from factories import make_message
from models.errors import InvalidInput
from models.tables import Agent, Customer, Identity as IdentityRow, Message, Ticket
from paidan.cli import cli
from paidan.cli_router import format_found
from paidan.db import transaction
from router.identity import merge_customers
from router.intake import Intake
from router.privacy import forget_customer
from router.search import Found, find_tickets, snippet

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)


class Desk:
    """Writes customers, tickets and messages as rows; ticket numbers GD20261124001, 002, … unless given."""

    def __init__(self, session: Session):
        self.session = session
        self.count = 0

    def customer(self, name: str = "", *identities: str, merged_into: Customer | None = None) -> Customer:
        customer = Customer(display_name=name, merged_into_id=merged_into.id if merged_into else None)
        self.session.add(customer)
        self.session.flush()
        for identity in identities:
            kind, value = identity.split(":", 1)
            self.session.add(IdentityRow(customer_id=customer.id, kind=kind, value=value))
        self.session.flush()
        return customer

    def agent(self, name: str) -> Agent:
        agent = Agent(name=name)
        self.session.add(agent)
        self.session.flush()
        return agent

    def ticket(self, customer: Customer, subject: str = "", *texts: str, number: str | None = None,
               state: str = "new", ago: timedelta = timedelta(hours=1), priority: str | None = "P2",
               agent: Agent | None = None, channel: str = "email") -> Ticket:
        self.count += 1
        at = NOW - ago
        ticket = Ticket(number=number or f"GD20261124{self.count:03d}", customer_id=customer.id, channel=channel,
                        subject=subject, state=state, priority=priority, created_at=at, updated_at=at,
                        assigned_agent_id=agent.id if agent else None)
        self.session.add(ticket)
        self.session.flush()
        for text in texts:
            self.message(ticket, text)
        return ticket

    def message(self, ticket: Ticket, text: str, *, by: Agent | None = None, note: bool = False) -> Message:
        row = Message(ticket_id=ticket.id, customer_id=None if by else ticket.customer_id,
                      direction="out" if by else "in", channel=ticket.channel, external_id=uuid.uuid4().hex,
                      author_agent_id=by.id if by else None, text=text, public=not note, received_at=ticket.updated_at)
        self.session.add(row)
        self.session.flush()
        return row


@pytest.fixture
def session(engine):
    with Session(engine) as session:
        yield session


@pytest.fixture
def desk(session) -> Desk:
    return Desk(session)


def numbers(found: list[Found]) -> list[str]:
    return [f.number for f in found]


def why(found: list[Found]) -> dict[str, tuple[str, str]]:
    return {f.number: (f.matched, f.snippet) for f in found}


# ---------------------------------------------------------------- each way a query matches


def test_a_ticket_number_is_found_in_any_case_and_by_its_day(desk, session):
    someone = desk.customer("张三")
    desk.ticket(someone, "a", number="GD20261124001")
    desk.ticket(someone, "b", number="GD20261124002")
    desk.ticket(someone, "c", number="GD20261123001")

    assert why(find_tickets(session, "gd20261124002")) == {"GD20261124002": ("number", "")}
    assert why(find_tickets(session, " [GD20261123001] ")) == {"GD20261123001": ("number", "")}
    assert sorted(numbers(find_tickets(session, "GD20261124"))) == ["GD20261124001", "GD20261124002"]
    assert find_tickets(session, "GD2026112") == []  # not even the whole date: no day's tickets


def test_the_ticket_whose_number_was_typed_in_full_comes_first(desk, session):
    someone = desk.customer("张三")
    desk.ticket(someone, "old and closed", number="GD20261124100", state="closed", ago=timedelta(days=9))
    desk.ticket(someone, "open, recent, and its number starts the same", number="GD202611241000", ago=timedelta(minutes=1))

    for n in range(1, 4):
        desk.ticket(someone, "open too", number=f"GD20261124100{n}", ago=timedelta(minutes=10 + n))

    assert numbers(find_tickets(session, "GD20261124100", limit=2)) == ["GD20261124100", "GD202611241000"]


def test_a_customer_is_found_by_email_phone_and_telegram_id_as_intake_spells_them(desk, session):
    zhang = desk.customer("张三", "email:zhang.san@example.com", "phone:+8613800138000", "telegram:123456789")
    first, second = desk.ticket(zhang, "退款"), desk.ticket(zhang, "发票")
    desk.ticket(desk.customer("李四", "email:li.si@example.com"), "other")
    both = sorted([first.number, second.number])

    for query, kind, value in [
        ("Zhang.San@EXAMPLE.com", "email", "zhang.san@example.com"),
        ("138 0013 8000", "phone", "+8613800138000"),
        ("+86 138-0013-8000", "phone", "+8613800138000"),
        ("123456789", "telegram", "123456789"),
        ("telegram:123456789", "telegram", "123456789"),
    ]:
        found = find_tickets(session, query)
        assert sorted(numbers(found)) == both, query
        assert {(f.matched, f.snippet) for f in found} == {(kind, value)}, query


def test_a_phone_number_is_read_the_way_the_web_form_stored_it(engine):
    from connectors.webform.validation import normalise_phone

    phone = normalise_phone("138 0013 8000", "CN")  # as the form hands it to intake
    receipt = Intake(engine).accept_now(make_message(email=None, phone=phone, text="快递一直没到"))
    with Session(engine) as session:
        found = find_tickets(session, "138-0013-8000")
    assert [(f.number, f.matched, f.snippet) for f in found] == [(receipt.ticket_number, "phone", "+8613800138000")]


def test_a_customer_is_found_by_part_of_their_name_and_a_telegram_username(desk, session):
    alice = desk.ticket(desk.customer("Alice Wong"), "hello")
    username = desk.ticket(desk.customer("alice_w88", "telegram:5550001"), "hi", channel="telegram")
    desk.ticket(desk.customer("Bob"), "Alice told me to write")  # a subject, not a name: weaker

    found = find_tickets(session, "ALICE")
    assert why(found)[alice.number] == ("name", "Alice Wong")
    assert why(found)[username.number] == ("name", "alice_w88")
    assert why(find_tickets(session, "@alice_w88")) == {username.number: ("name", "alice_w88")}


def test_subject_and_message_text_match_in_any_case_and_say_where(desk, session):
    ann = desk.agent("Ann")
    customer = desk.customer("张三")
    by_subject = desk.ticket(customer, "Refund for ORDER 1234567890")
    in_message = desk.ticket(customer, "hello", "I wrote to you last week about order 1234567890, any news?")
    in_reply = desk.ticket(customer, "hello")
    desk.message(in_reply, "Order 1234567890 was shipped today.", by=ann)
    in_note = desk.ticket(customer, "hello")
    desk.message(in_note, "customer says order 1234567890 is a duplicate", by=ann, note=True)
    desk.ticket(customer, "order 123456789 only")  # one digit short

    found = why(find_tickets(session, "order 1234567890"))
    assert found == {
        by_subject.number: ("subject", "Refund for ORDER 1234567890"),
        in_message.number: ("customer message", "I wrote to you last week about order 1234567890, any news?"),
        in_reply.number: ("agent reply", "Order 1234567890 was shipped today."),
        in_note.number: ("note", "customer says order 1234567890 is a duplicate"),
    }


def test_chinese_is_found_by_a_plain_substring(desk, session):
    customer = desk.customer("王芳")
    wanted = desk.ticket(customer, "物流问题", "我的订单还没有发货，请帮忙查一下")
    desk.ticket(customer, "物流问题", "已经发货了，谢谢")

    assert why(find_tickets(session, "没有发货")) == {wanted.number: ("customer message", "我的订单还没有发货，请帮忙查一下")}
    assert numbers(find_tickets(session, "王芳")) and all(f.matched == "name" for f in find_tickets(session, "王芳"))


def test_the_snippet_is_one_line_around_the_hit():
    text = "Dear team,\n\n" + "blah " * 40 + "my ORDER 1234567890 never\narrived " + "and so on " * 30
    line = snippet(text, "order 1234567890")
    assert "\n" not in line and line.startswith("…") and line.endswith("…")
    assert "ORDER 1234567890" in line and 55 <= len(line) <= 62
    assert snippet("short text, order 1234567890", "order 1234567890") == "short text, order 1234567890"
    assert snippet("x" * 100, "missing").startswith("xxx") and snippet("x" * 100, "missing").endswith("…")


def test_wildcards_in_the_query_are_plain_characters(desk, session):
    customer = desk.customer("张三")
    percent = desk.ticket(customer, "50% off coupon did not work")
    desk.ticket(customer, "5000 off coupon did not work")
    underscore = desk.ticket(customer, "hello", "error code E_42 on checkout")
    desk.ticket(customer, "hello", "error code EX42 on checkout")

    assert numbers(find_tickets(session, "50%")) == [percent.number]
    assert numbers(find_tickets(session, "e_42")) == [underscore.number]
    assert find_tickets(session, "%%") == []
    assert find_tickets(session, "__") == []


def test_a_ticket_shows_what_an_agent_needs(desk, session):
    ann = desk.agent("Ann")
    named = desk.ticket(desk.customer("张三", "email:z@example.com"), "发票抬头错了", priority="P1", agent=ann,
                        state="in_progress", ago=timedelta(minutes=30), channel="telegram")
    nameless = desk.ticket(desk.customer("", "phone:+8613800138000", "email:later@example.com"), "发票抬头", priority=None)

    found = {f.number: f for f in find_tickets(session, "发票抬头")}
    assert found[named.number] == Found(
        number=named.number, state="in_progress", priority="P1", subject="发票抬头错了", customer="张三",
        channel="telegram", last_activity=NOW - timedelta(minutes=30), agent="Ann", matched="subject",
        snippet="发票抬头错了", merged_into=None)
    assert found[named.number].last_activity.utcoffset() == timedelta(0)
    assert (found[nameless.number].customer, found[nameless.number].agent) == ("phone:+8613800138000", None)


# ---------------------------------------------------------------- merges


def test_an_identity_of_a_customer_merged_away_lists_the_persons_tickets(engine, desk, session):
    kept = desk.customer("王芳", "email:wang@example.com")
    merged = desk.customer("Fang W", "telegram:777001")
    by_mail = desk.ticket(kept, "by mail", ago=timedelta(hours=2))
    by_telegram = desk.ticket(merged, "by telegram", channel="telegram")
    merge_customers(session, merged.id, kept.id, actor="cli:sue", evidence="she told us on the phone", now=NOW)

    expected = [by_telegram.number, by_mail.number]  # the most recently active first
    assert numbers(find_tickets(session, "777001")) == expected
    assert numbers(find_tickets(session, "wang@example.com")) == expected
    assert numbers(find_tickets(session, "fang w")) == expected  # the merged-away customer's own name


def test_a_chain_of_merges_is_followed_to_the_person_at_its_end(desk, session):
    root = desk.customer("Root")
    middle = desk.customer("Middle", merged_into=root)
    # Left holding an identity and a ticket (an old merge, or data from before merges moved them).
    first = desk.customer("First", "email:first@example.com", merged_into=middle)
    tickets = [desk.ticket(c, f"ticket of {c.display_name}", ago=timedelta(hours=n))
               for n, c in enumerate((first, middle, root), start=1)]
    desk.ticket(desk.customer("Someone else"), "not theirs")

    assert numbers(find_tickets(session, "first@example.com")) == [t.number for t in tickets]
    assert {f.matched for f in find_tickets(session, "first@example.com")} == {"email"}


def test_a_merged_ticket_points_at_the_ticket_that_carries_on(desk, session):
    customer = desk.customer("张三")
    carries_on = desk.ticket(customer, "退款", ago=timedelta(minutes=5))
    merged = desk.ticket(customer, "退款 again", state="merged")
    merged.merged_into_id = carries_on.id
    session.flush()

    found = find_tickets(session, merged.number)
    assert [(f.number, f.state, f.merged_into) for f in found] == [(merged.number, "merged", carries_on.number)]
    assert [(f.number, f.merged_into) for f in find_tickets(session, "退款")] == [
        (carries_on.number, None), (merged.number, carries_on.number)]  # open first


# ---------------------------------------------------------------- order, limit, one line per ticket


def test_open_tickets_come_first_then_the_most_recently_active(desk, session):
    customer = desk.customer("张三")
    closed_recent = desk.ticket(customer, "refund", state="closed", ago=timedelta(minutes=1))
    open_old = desk.ticket(customer, "refund", state="awaiting_customer", ago=timedelta(days=3))
    resolved_old = desk.ticket(customer, "refund", state="resolved", ago=timedelta(days=5))
    open_recent = desk.ticket(customer, "refund", state="reopened", ago=timedelta(minutes=10))

    assert numbers(find_tickets(session, "refund")) == [
        open_recent.number, open_old.number, closed_recent.number, resolved_old.number]


def test_at_most_limit_tickets_the_first_ones(desk, session):
    customer = desk.customer("张三")
    tickets = [desk.ticket(customer, "hello", "where is my parcel", ago=timedelta(hours=n)) for n in range(15)]

    assert numbers(find_tickets(session, "parcel")) == [t.number for t in tickets[:10]]
    assert numbers(find_tickets(session, "parcel", limit=3)) == [t.number for t in tickets[:3]]
    with pytest.raises(InvalidInput, match="at least 1"):
        find_tickets(session, "parcel", limit=0)


def test_a_ticket_found_several_ways_is_listed_once_for_the_strongest(desk, session):
    ann = desk.agent("Ann")
    refund_bob = desk.customer("Refund Bob", "email:refund@example.com")
    by_name = desk.ticket(refund_bob, "refund please", "I want a refund")
    by_subject = desk.ticket(desk.customer("张三"), "Refund", "refund refund")
    by_email = desk.ticket(desk.customer("李四", "email:refund.me@example.com"), "refund", "refund.me@example.com")
    by_number = desk.ticket(desk.customer("王五"), "see GD20261124004")
    desk.message(by_number, "GD20261124004 is the one", by=ann, note=True)
    assert by_number.number == "GD20261124004"

    assert {f.matched for f in find_tickets(session, "refund")} == {"name", "subject"}
    assert why(find_tickets(session, "refund"))[by_name.number][0] == "name"
    assert why(find_tickets(session, "refund"))[by_subject.number][0] == "subject"
    assert why(find_tickets(session, "refund.me@example.com")) == {by_email.number: ("email", "refund.me@example.com")}
    assert why(find_tickets(session, "GD20261124004")) == {by_number.number: ("number", "")}


def test_a_handful_of_queries_however_many_tickets_are_found(engine, desk, session):
    ann = desk.agent("Ann")
    for n in range(12):
        ticket = desk.ticket(desk.customer(f"customer {n}"), "hello", "the parcel is late", agent=ann)
        desk.message(ticket, "your parcel left today", by=ann)
    statements = []

    def count(conn, cursor, statement, *rest):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert len(find_tickets(session, "parcel", limit=2)) == 2
        few = len(statements)
        statements.clear()
        assert len(find_tickets(session, "parcel", limit=12)) == 12
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == few <= 8


# ---------------------------------------------------------------- refusals and erased people


@pytest.mark.parametrize("query,says", [
    ("", "type at least 2 characters"),
    ("  x  ", "type at least 2 characters"),
    ("x" * 201, "at most 200 characters (201 given)"),
])
def test_too_short_or_too_long_a_query_is_refused_with_what_to_do(session, query, says):
    with pytest.raises(InvalidInput) as refused:
        find_tickets(session, query)
    assert refused.value.field == "query" and says in str(refused.value)


def test_an_erased_person_is_not_found_and_the_marker_matches_nobody(desk, session):
    forgotten = desk.customer("赵六", "email:zhao@example.com")
    gone = desk.ticket(forgotten, "我的身份证号码", "身份证 110101199003077777", state="closed")
    also_forgotten = desk.customer("Erased Person", "email:other@example.com")
    desk.ticket(also_forgotten, "my data", "please forget me", state="closed")
    mentions = desk.ticket(desk.customer("张三"), "hello", "the file I sent was erased by your system")
    for person in (forgotten, also_forgotten):
        forget_customer(session, person.id, actor="cli:sue", reason="PIPL request 42", now=NOW)
    assert session.scalar(select(Ticket.subject).where(Ticket.id == gone.id)) == "[erased]"

    assert numbers(find_tickets(session, "erased")) == [mentions.number]
    assert find_tickets(session, "[erased]") == []
    for query in ("赵六", "zhao@example.com", "身份证", "Erased Person", "forget me"):
        assert find_tickets(session, query) == [], query
    assert numbers(find_tickets(session, gone.number)) == [gone.number]  # the ticket itself stays


# ---------------------------------------------------------------- how one result reads


def test_a_result_reads_as_two_short_lines():
    found = Found(number="GD20261124001", state="in_progress", priority="P1", subject="我的订单还没有发货，请帮忙查一下 " * 3,
                  customer="email:zhang.san@example.com", channel="email", last_activity=NOW - timedelta(hours=2, minutes=5),
                  agent="Ann", matched="agent reply", snippet="…order 1234567890 was shipped…")
    first, second = format_found(found, NOW, mask=lambda s: s.replace("zhang.san", "z***")).split("\n")
    assert first == ("GD20261124001  in_progress  P1  2h05m  email:z***@example.com  "
                     "我的订单还没有发货，请帮忙查一下 我的订单还没有发货，请帮忙查一下 我的订单还…  (Ann)")  # 40 characters
    assert second == "  matched agent reply: …order 1234567890 was shipped…"
    merged = Found(number="GD20261124002", state="merged", priority=None, subject="", customer="", channel="web",
                   last_activity=NOW, agent=None, matched="number", snippet="", merged_into="GD20261124001")
    assert format_found(merged, NOW) == ("GD20261124002  merged  -  0m  (no name)  (no subject)\n"
                                         "  merged into GD20261124001; matched number")


# ---------------------------------------------------------------- `paidan tickets find`


@pytest.fixture
def run(database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_the_command_prints_a_line_and_a_why_per_ticket(engine, run):
    with transaction(engine) as session:
        desk = Desk(session)
        ann = desk.agent("Ann")
        customer = desk.customer("张三", "email:zhang@example.com")
        first = desk.ticket(customer, "订单 1234567890 没到", priority="P1", agent=ann, state="in_progress")
        second = desk.ticket(customer, "hello", "I wrote to you about order 1234567890 last week",
                             state="closed", ago=timedelta(days=2))
        numbers_ = (first.number, second.number)

    result = run("tickets", "find", "1234567890")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{numbers_[0]}  in_progress  P1  ") and "张三  订单 1234567890 没到  (Ann)" in lines[0]
    assert lines[1] == "  matched subject: 订单 1234567890 没到"
    assert lines[2].startswith(f"{numbers_[1]}  closed  P2  ") and "张三  hello" in lines[2]
    assert lines[3] == "  matched customer message: I wrote to you about order 1234567890 last week"

    data = json.loads(run("tickets", "find", "order", "1234567890", "--json").output)
    assert [(d["number"], d["matched"], d["customer"]) for d in data] == [(numbers_[1], "customer message", "张三")]
    assert data[0]["last_activity"].endswith("+00:00") and data[0]["merged_into"] is None

    assert len(json.loads(run("tickets", "find", "zhang@example.com", "--limit", "1", "--json").output)) == 1
    nothing = run("tickets", "find", "no such thing")
    assert nothing.exit_code == 0 and nothing.output.startswith('no tickets match "no such thing"')


def test_the_command_refuses_in_one_line_and_says_what_it_searches(run):
    result = run("tickets", "find", "x")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: query: type at least 2 characters")
    help_text = " ".join(run("tickets", "find", "--help").output.split())
    for word in ("ticket number", "email", "phone", "Telegram id", "name", "subject", "internal notes"):
        assert word in help_text, word


# ---------------------------------------------------------------- /find in the agent console


def test_an_agent_finds_tickets_from_telegram(engine):
    from connectors.telegram.console import ConsoleCommand, ConsoleMistake, parse_console
    from paidan.telegram_console import answer_agent
    from router.agents import add_agent
    from router.config import RouterConfig

    assert parse_console("/find 订单 1234567890") == ConsoleCommand("find", text="订单 1234567890")
    assert parse_console("/find GD20261124001") == ConsoleCommand("find", text="GD20261124001")
    assert isinstance(parse_console("/find"), ConsoleMistake)
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service"], telegram_id=7001)
    intake = Intake(engine, clock=lambda: NOW)
    first = intake.accept_now(make_message(email="wang@example.com", text="发票抬头写错了，订单 1234567890", received_at=NOW))
    intake.accept_now(make_message(email="li@example.com", text="请问什么时候发货", received_at=NOW))

    def ask(text: str) -> str:
        return answer_agent(engine, RouterConfig(), 7001, text, None, None, now=NOW + timedelta(hours=2)).text

    found = ask("/find 1234567890").splitlines()
    assert found[0] == "1 ticket(s) for '1234567890', open ones first:"
    assert found[1].startswith(f"{first.ticket_number}  new  -  2h") and found[2].startswith(
        "  matched subject: 发票抬头写错了，订单 1234567890")  # the subject is the first line
    assert found[-1] == "/show GD… for one of them"
    assert ask("/find nobody@example.com").startswith("no tickets match 'nobody@example.com'")
    assert "at least 2" in ask("/find x")  # the refusal's own sentence, not a crash
    assert ask("/find").startswith("/find needs what to look for")
