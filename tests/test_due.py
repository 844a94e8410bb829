"""What runs out soon (router.queries.due_soon): `/due` in Telegram, `paidan tickets due`, against clocks
the router started, paused and stopped through its real code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from connectors.telegram.console import ConsoleCommand, ConsoleMistake, parse_console
from factories import KeywordClassifier, make_message
from paidan.db import transaction
from paidan.telegram_console import answer_agent
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.queries import due_soon
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
ANN_TG, SUE_TG = 7201, 7202


@pytest.fixture
def desk(engine):
    """A P0 outage (first response due in 15 min), a P2 refund (4 business hours), a P1 charge that
    waits on its customer (paused), and one already answered (first response stopped)."""
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction", "technical", "zh"], capacity=9,
                  telegram_id=ANN_TG).online = True
        add_agent(session, "Sue", skills=[], role="supervisor", telegram_id=SUE_TG)
    numbers = {}
    for key, text in (("outage", "系统宕机了"), ("refund", "我要退款"), ("charge", "重复扣款了"), ("answered", "重复扣款 第二笔")):
        numbers[key] = Intake(engine, clock=lambda: NOW).accept_now(
            make_message(email=f"{key}@kehu.example.com", text=text, received_at=NOW)).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
    with transaction(engine) as session:
        for key in ("outage", "refund", "charge", "answered"):
            actions.accept(session, numbers[key], "Ann", CONFIG, NOW)
        actions.wait_for_customer(session, numbers["charge"], "Ann", CONFIG, NOW)
        actions.reply(session, numbers["answered"], "Ann", "已退回", CONFIG, NOW)
    return engine, numbers


def test_due_soon_lists_running_clocks_overdue_first(desk):
    engine, numbers = desk
    with Session(engine) as session:
        soon = due_soon(session, NOW + timedelta(minutes=20), timedelta(hours=1))
        later = due_soon(session, NOW, timedelta(hours=5))
        mine = due_soon(session, NOW, timedelta(hours=5), holder=-1)
    assert [(r.number, r.kind, r.agent) for r in soon] == [(numbers["outage"], "first_response", "Ann")]
    assert soon[0].due_at == NOW + timedelta(minutes=15)  # so 5 minutes overdue at NOW + 20 min
    listed = [(r.number, r.kind) for r in later]
    assert listed[0] == (numbers["outage"], "first_response") and (numbers["refund"], "first_response") in listed
    assert [r.due_at for r in later] == sorted(r.due_at for r in later)
    assert numbers["charge"] not in {r.number for r in later}  # paused: waiting on the customer
    assert (numbers["answered"], "first_response") not in listed  # stopped by the reply
    assert mine == []


def test_due_in_telegram_and_from_the_cli(desk, database_url, monkeypatch, tmp_path):
    engine, numbers = desk
    assert parse_console("/due") == ConsoleCommand("due", after=timedelta(hours=2))
    assert parse_console("/due 30m") == ConsoleCommand("due", after=timedelta(minutes=30))
    assert isinstance(parse_console("/due soon"), ConsoleMistake)
    at = NOW + timedelta(minutes=20)
    answer = answer_agent(engine, CONFIG, SUE_TG, "/due 1h", None, None, now=at).text
    assert answer.splitlines()[0] == "SLA clocks of open tickets running out within 1h00m (1):"
    assert answer.splitlines()[1].startswith(f"{numbers['outage']} · P0 · first response 5m overdue · Ann")
    assert answer_agent(engine, CONFIG, ANN_TG, "/due 5m", None, None, now=NOW).text == (
        "no SLA clock of your open tickets runs out within 5m")

    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tickets", "due", "--within", "30d", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["ticket"] == numbers["outage"] and rows[0]["seconds_left"] < 0  # the clock runs now, not at NOW
    assert CliRunner().invoke(cli, ["tickets", "due", "--within", "soon"]).exit_code == 2
