"""An agent takes a waiting ticket from the queue (actions.take): `/take` in Telegram and
`paidan tickets take`, against tickets the router queued through its real code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.telegram.console import ConsoleCommand, parse_console
from factories import KeywordClassifier, make_message
from models.errors import ActionRefused
from models.tables import Agent, Assignment, Ticket
from paidan.db import transaction
from paidan.telegram_console import answer_agent
from router import actions
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
ANN_TG, BO_TG, SUE_TG = 7301, 7302, 7303


@pytest.fixture
def desk(engine):
    """Nobody online: the router queues what comes in. Ann has the service skills, Bo only technical."""
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "zh"], capacity=1, telegram_id=ANN_TG)
        add_agent(session, "Bo", skills=["technical", "zh"], capacity=3, telegram_id=BO_TG)
        add_agent(session, "Sue", skills=[], role="supervisor", capacity=3, telegram_id=SUE_TG)
    numbers = {}
    for key, text in (("refund", "我要退款"), ("unsure", "lowconf 你好"), ("second", "我要退款 第二单")):
        numbers[key] = Intake(engine, clock=lambda: NOW).accept_now(
            make_message(email=f"{key}@kehu.example.com", text=text, received_at=NOW)).ticket_number
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, NOW)
    return engine, numbers


def ticket(engine, number: str) -> Ticket:
    with Session(engine, expire_on_commit=False) as session:
        return session.scalar(select(Ticket).where(Ticket.number == number))


def test_an_agent_takes_a_queued_ticket_and_it_is_theirs_at_once(desk):
    engine, numbers = desk
    assert ticket(engine, numbers["refund"]).queue == "assignment"  # nobody was online
    answer = answer_agent(engine, CONFIG, ANN_TG, f"/take {numbers['refund']}", None, None, now=NOW,
                          once="update:1").text
    assert answer.startswith(f"Ann took {numbers['refund']}; it is in progress"), answer
    taken = ticket(engine, numbers["refund"])
    assert (taken.state, taken.queue, taken.accepted_at) == ("in_progress", None, NOW)
    with Session(engine) as session:
        assert session.scalar(select(Agent.load).where(Agent.name == "Ann")) == 1
        [offer] = session.scalars(select(Assignment).where(Assignment.ticket_id == taken.id)).all()
        assert (offer.accepted_at, offer.ended_at, offer.reason) == (NOW, None, "Ann took it from the assignment queue")
    # Then Ann can work it like any ticket, and resolving gives her place back.
    with transaction(engine) as session:
        actions.reply(session, numbers["refund"], "Ann", "已处理", CONFIG, NOW)
        actions.resolve(session, numbers["refund"], "Ann", CONFIG, NOW)
    with Session(engine) as session:
        assert session.scalar(select(Agent.load).where(Agent.name == "Ann")) == 0


def test_what_taking_refuses(desk):
    engine, numbers = desk
    with transaction(engine) as session:
        actions.take(session, numbers["refund"], "Ann", CONFIG, NOW)
    cases = [
        ("Ann", "refund", f"{numbers['refund']} is yours already"),
        ("Bo", "refund", f"{numbers['refund']} is held by Ann; ask them, or a supervisor (/assign {numbers['refund']} Bo)"),
        ("Bo", "unsure", "waits for a supervisor's triage"),
        ("Bo", "second", "Bo lacks the skill(s) service"),
        ("Ann", "second", "Ann is at capacity (1/1 open tickets)"),
    ]
    for who, key, words in cases:
        with pytest.raises(ActionRefused) as refused, transaction(engine) as session:
            actions.take(session, numbers[key], who, CONFIG, NOW)
        assert words in str(refused.value), (who, key, str(refused.value))
    # A supervisor takes the ticket in triage, skills or not.
    with transaction(engine) as session:
        outcome = actions.take(session, numbers["unsure"], "Sue", CONFIG, NOW)
    assert outcome.summary.startswith(f"Sue took {numbers['unsure']}") and ticket(engine, numbers["unsure"]).queue is None


def test_take_from_the_console_and_the_cli(desk, database_url, monkeypatch, tmp_path):
    engine, numbers = desk
    assert parse_console("/take GD20261124001") == ConsoleCommand("take", "GD20261124001")
    assert "/take GD… 领取 · take" in answer_agent(engine, CONFIG, ANN_TG, "/help", None, None, now=NOW).text

    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tickets", "take", numbers["second"], "--as", "Ann", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (json.loads(result.output)["action"], json.loads(result.output)["state"]) == ("take", "in_progress")
    refused = CliRunner().invoke(cli, ["tickets", "take", numbers["refund"], "--as", "Ann"])
    assert refused.exit_code == 1 and "Ann is at capacity" in refused.output
