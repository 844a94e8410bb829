"""`paidan tickets export`: tickets as CSV rows a spreadsheet opens, from a database the router filled
through its real code (intake, routing, replies, resolving, a survey answer, an agent writing first, an
auto-reply)."""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from factories import KeywordClassifier, make_message
from paidan.db import transaction
from router import actions, export, outreach, surveys
from router.agents import add_agent
from router.config import RouterConfig
from router.intake import Intake
from router.routing import route_pending

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()


@pytest.fixture
def filled(engine):
    """Three tickets on 2026-11-24 (Shanghai): answered, resolved and rated; one an agent opened; one
    an auto-reply. And one on 2026-11-20, outside the period the tests ask for."""
    with transaction(engine) as session:
        add_agent(session, "Ann", skills=["service", "transaction", "zh"], capacity=5).online = True

    def arrive(text: str, at: datetime, **extra) -> str:
        number = Intake(engine, clock=lambda: at).accept_now(make_message(text=text, received_at=at, **extra)).ticket_number
        with transaction(engine) as session:
            route_pending(session, KeywordClassifier(), CONFIG, at)
        return number

    old = arrive("上周的问题", NOW - timedelta(days=4), email="old@kehu.example.com")
    refund = arrive("我要退款，订单 1234567890", NOW)
    with transaction(engine) as session:
        actions.accept(session, refund, "Ann", CONFIG, NOW + timedelta(minutes=5))
        actions.reply(session, refund, "Ann", "已提交退款", CONFIG, NOW + timedelta(minutes=30))
        actions.resolve(session, refund, "Ann", CONFIG, NOW + timedelta(hours=2))
        survey = surveys.survey_for_ticket(session, refund)
        surveys.answer(session, survey.id, rating=5, comment="", now=NOW + timedelta(hours=3))
    with transaction(engine) as session:
        outbound = outreach.open_ticket(session, "new@kehu.example.com", "Ann", CONFIG, NOW + timedelta(hours=1),
                                        text="您好，发票已寄出").ticket
    machine = arrive("I am out of office", NOW + timedelta(hours=4), email="ooo@kehu.example.com", flags=("auto_reply",))
    return {"old": old, "refund": refund, "outbound": outbound, "machine": machine}


def run(database_url, monkeypatch, tmp_path, *args: str):
    from paidan.cli import cli

    monkeypatch.setenv("PAIDAN_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(cli, ["tickets", "export", *args], catch_exceptions=False)


def test_a_period_exports_as_rows_excel_reads(filled, database_url, monkeypatch, tmp_path):
    out = tmp_path / "tickets.csv"
    result = run(database_url, monkeypatch, tmp_path, "--since", "2026-11-24", "--until", "2026-11-24", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "3 tickets created 2026-11-24 – 2026-11-24 (Asia/Shanghai) written to" in result.output
    assert os.stat(out).st_mode & 0o777 == 0o600
    raw = out.read_bytes()
    assert raw.startswith("\ufeff".encode())  # Excel needs the mark to read UTF-8 Chinese
    rows = {r["number"]: r for r in csv.DictReader(io.StringIO(raw.decode("utf-8-sig")))}
    assert list(rows) == [filled["refund"], filled["outbound"], filled["machine"]]  # oldest first, not the 20th's
    refund = rows[filled["refund"]]
    assert {k: refund[k] for k in ("created", "channel", "state", "type", "category", "priority", "agent",
                                   "first_response", "first_response_minutes", "resolved", "resolution_minutes",
                                   "first_response_sla", "resolution_sla", "reopened", "rating", "origin")} == {
        "created": "2026-11-24 11:00", "channel": "api", "state": "resolved", "type": "request",
        "category": "service", "priority": "P2", "agent": "Ann", "first_response": "2026-11-24 11:30",
        "first_response_minutes": "30", "resolved": "2026-11-24 13:00", "resolution_minutes": "120",
        "first_response_sla": "met", "resolution_sla": "met", "reopened": "0", "rating": "5", "origin": "customer"}
    assert refund["subject"] == "" or "退款" in refund["subject"]
    assert "@" not in raw.decode("utf-8-sig")  # no addresses: customers are numbers
    assert (rows[filled["outbound"]]["origin"], rows[filled["outbound"]]["state"]) == ("agent", "awaiting_customer")
    # We wrote first: no first response is owed, and the resolution clock waits for the customer.
    assert (rows[filled["outbound"]]["first_response_sla"], rows[filled["outbound"]]["resolution_sla"]) == ("", "paused")
    assert rows[filled["machine"]]["origin"] == "machine"
    assert list(rows[filled["refund"]]) == list(export.COLUMNS)


def test_standard_output_and_bad_periods(filled, database_url, monkeypatch, tmp_path):
    result = run(database_url, monkeypatch, tmp_path, "--since", "2026-11-20", "--until", "2026-11-24", "--no-bom")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == ",".join(export.COLUMNS) and len(lines) == 5  # the header, and the 20th's ticket too
    refused = run(database_url, monkeypatch, tmp_path, "--since", "2026-11-24", "--until", "2026-11-20")
    assert refused.exit_code == 2 and "--until 2026-11-20 is before --since 2026-11-24" in refused.output
    assert run(database_url, monkeypatch, tmp_path, "--since", "24/11/2026").exit_code == 2


def test_rows_stream_a_page_at_a_time(filled, engine, monkeypatch):
    from sqlalchemy.orm import Session

    monkeypatch.setattr(export, "PAGE", 1)  # every ticket its own page: the paging must lose none
    with Session(engine) as session:
        numbers = [r["number"] for r in export.rows(session, NOW - timedelta(days=10), NOW + timedelta(days=1),
                                                    "Asia/Shanghai")]
    assert numbers == [filled["old"], filled["refund"], filled["outbound"], filled["machine"]]
