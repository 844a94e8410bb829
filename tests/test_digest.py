"""The supervisors' morning digest (paidan/digest.py): once a working day, from the set local time on,
to every supervisor with Telegram, built from the same report as /report."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors.telegram.send import build_telegram
from factories import KeywordClassifier, make_message
from models.tables import OutboxItem
from paidan.db import transaction
from paidan.digest import send_digest
from router.agents import add_agent
from router.config import BusinessCalendar, RouterConfig
from router.intake import Intake
from router.routing import route_pending

CONFIG = RouterConfig(calendar=BusinessCalendar(holidays=frozenset({date(2026, 11, 26)})))
MONDAY_NINE = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 09:00 in Asia/Shanghai
AT = time(9, 0)


def digests(engine) -> list[OutboxItem]:
    with Session(engine) as session:
        return session.scalars(select(OutboxItem).where(OutboxItem.kind == "digest").order_by(OutboxItem.id)).all()


def run(engine, now: datetime) -> int:
    with transaction(engine) as session:
        return send_digest(session, now, at=AT, config=CONFIG)


def test_once_a_working_day_from_the_set_time_to_supervisors_on_telegram(engine):
    with transaction(engine) as session:
        add_agent(session, "Sue", skills=[], role="supervisor", telegram_id=9001)
        add_agent(session, "Max", skills=[], role="admin", telegram_id=9002)
        add_agent(session, "Zed", skills=[], role="supervisor")  # no Telegram: nobody to send it to
        add_agent(session, "Ann", skills=["service"], telegram_id=7001)  # an agent: not for them
    for n, text in enumerate(("我要退款", "系统宕机了")):  # Sunday's contacts, in Sunday's local day
        Intake(engine, clock=lambda: MONDAY_NINE - timedelta(hours=12)).accept_now(make_message(
            email=f"c{n}@kehu.example.com", text=text, received_at=MONDAY_NINE - timedelta(hours=12)))
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), CONFIG, MONDAY_NINE - timedelta(hours=12))

    assert run(engine, MONDAY_NINE - timedelta(minutes=1)) == 0  # 08:59: not yet
    assert run(engine, MONDAY_NINE + timedelta(seconds=30)) == 2
    assert run(engine, MONDAY_NINE + timedelta(minutes=1)) == 0  # once a day, however often it is asked
    sent = digests(engine)
    assert [d.recipient for d in sent] == ["telegram:9001", "telegram:9002"]
    text = build_telegram(sent[0]).text
    assert text.startswith("☀️ · the help desk yesterday\nyesterday, 2026-11-22 (Asia/Shanghai):\ncontacts 2;")
    assert "before midnight" in text and "/report 7 for the week" in text

    assert run(engine, MONDAY_NINE + timedelta(days=1, hours=3)) == 2  # Tuesday, started late: sent late
    assert run(engine, MONDAY_NINE + timedelta(days=3)) == 0  # Thursday the 26th: a holiday here
    assert run(engine, MONDAY_NINE + timedelta(days=5)) == 0  # Saturday
    assert len(digests(engine)) == 4


def test_the_setting_takes_a_time_of_day():
    import pytest
    from pydantic import ValidationError

    from paidan.settings import ReportSettings

    assert ReportSettings(daily_digest_at=" 08:30 ").daily_digest_at == "08:30"
    with pytest.raises(ValidationError, match="is not a time of day"):
        ReportSettings(daily_digest_at="9am")
