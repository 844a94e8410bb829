"""The `paidan` command, run as a user would (click's runner, a real database)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from factories import cli_invoker, make_message
from paidan.cli import cli
from router.intake import Intake


@pytest.fixture
def run(database_url, monkeypatch, tmp_path):
    return cli_invoker(cli, database_url, monkeypatch, tmp_path)


def _all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(_all_commands(cli)))
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert len(result.output.splitlines()) > 3


def test_db_upgrade_is_repeatable(run):
    assert "revision head" in run("db", "upgrade").output
    run("db", "upgrade")


def test_agents_add_list_set(run):
    run("agents", "add", "李雷", "--skills", "Technical, zh", "--capacity", "8", "--seniority", "3")
    run("agents", "add", "Ann", "--role", "supervisor", "--telegram-id", "12345")
    data = json.loads(run("agents", "list", "--json").output)
    assert [(a["name"], a["skills"], a["capacity"]) for a in data] == [("李雷", ["technical", "zh"], 8), ("Ann", [], 5)]
    run("agents", "set", "李雷", "--online", "--capacity", "3")
    assert json.loads(run("agents", "list", "--json").output)[0]["online"] is True


@pytest.mark.parametrize("args,message", [
    (("agents", "add", "Bob", "--capacity", "-1"), "capacity"),
    (("agents", "set", "nobody", "--online"), "no agent called 'nobody'"),
    (("tickets", "show", "GD20990101001"), "no ticket GD20990101001"),
])
def test_mistakes_get_one_readable_line(run, args, message):
    result = run(*args, ok=False)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_duplicate_agent_names_are_refused(run):
    run("agents", "add", "Bob")
    assert "already exists" in run("agents", "add", "Bob", ok=False).output


def test_tickets_show_prints_messages_and_audit_trail(run, engine):
    receipt = Intake(engine).accept_now(make_message(subject="发票抬头错了", text="<b>请</b>重新开具发票"))
    out = run("tickets", "show", receipt.ticket_number.lower()).output
    assert receipt.ticket_number in out and "发票抬头错了" in out and "<b>请</b>重新开具发票" in out
    assert "audit trail" in out and "created" in out and "first message on api" in out
    assert "kehu@example.com" not in out  # masked in human output
    data = json.loads(run("tickets", "show", receipt.ticket_number, "--json").output)
    assert data["events"][0]["kind"] == "created" and data["messages"][0]["text"] == "<b>请</b>重新开具发票"
    listed = json.loads(run("tickets", "list", "--json").output)
    assert [t["number"] for t in listed] == [receipt.ticket_number]


def test_a_skill_no_ticket_asks_for_is_kept_with_a_warning(run):
    out = run("agents", "add", "Zoe", "--skills", "tecnical,zh").output
    assert "warning" in out and "tecnical" in out and "technical" in out
    assert json.loads(run("agents", "list", "--json").output)[0]["skills"] == ["tecnical", "zh"]
    assert "warning" not in run("agents", "set", "Zoe", "--skills", "technical,zh").output


def test_an_agent_coming_online_takes_a_waiting_ticket_at_once(run, engine):
    from datetime import UTC, datetime

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from factories import KeywordClassifier
    from models.tables import Ticket
    from paidan.db import transaction
    from router.config import RouterConfig
    from router.routing import route_pending

    run("agents", "add", "Lily", "--skills", "service,zh")  # offline: the ticket has to wait
    receipt = Intake(engine).accept_now(make_message(text="请问怎么修改收货地址"))
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), RouterConfig(), datetime.now(UTC))
    with Session(engine) as session:
        assert session.scalar(select(Ticket).where(Ticket.number == receipt.ticket_number)).queue == "assignment"
    assert "assigned 1 waiting ticket" in run("agents", "set", "Lily", "--online").output
    with Session(engine) as session:
        ticket = session.scalar(select(Ticket).where(Ticket.number == receipt.ticket_number))
        assert ticket.queue is None and ticket.assigned_agent.name == "Lily"
