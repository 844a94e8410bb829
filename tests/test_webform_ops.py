"""/healthz and /metrics of the web app."""

from __future__ import annotations

import asyncio
import re

import httpx

from paidan.db import make_engine
from paidan.web import WebMetrics, build_app
from router.queries import TicketQueries
from webfixtures import make_settings, serve
from webfixtures import *  # noqa: F403 — the fixtures


async def _no_sink(message):
    raise AssertionError("not used")


async def _no_view(number, identity):
    return None


def test_healthz_ok_with_the_real_database(live_app):
    answer = httpx.get(live_app.url + "/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok", "database": "ok"}


def test_healthz_is_503_when_the_database_fails_raises_or_hangs(tmp_path):
    broken = TicketQueries(make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db"))

    async def raises() -> bool:
        raise OSError("connection refused")

    async def hangs() -> bool:
        await asyncio.sleep(3600)
        return True

    for check in (broken.db_ok, raises, hangs):
        app = build_app(make_settings(), _no_sink, _no_view, db_ok=check, health_timeout=0.3)
        with serve(app) as url:
            answer = httpx.get(url + "/healthz", timeout=10)
        assert answer.status_code == 503, check
        assert answer.json() == {"status": "unavailable", "database": "failing"}
        assert answer.headers["retry-after"]


def test_metrics_count_submissions_by_channel_and_outcome_and_time_requests(live_app, form_client, api_client):
    form_client.submit({"name": "赵六", "email": "zhao@example.com", "subject": "s", "message": "m"})
    form_client.submit({"name": "", "email": "", "subject": "", "message": ""})
    api_client.post("/api/v1/messages", json={"email": "api@example.com", "text": "t"},
                    headers={"Idempotency-Key": "metrics-1"})
    api_client.post("/api/v1/messages", json={"email": "api@example.com", "text": "t"},
                    headers={"Idempotency-Key": "metrics-1"})
    httpx.post(live_app.url + "/api/v1/messages", json={})
    api_client.get("/api/v1/tickets/GD20260101001", params={"email": "a@b.cn"})
    httpx.get(live_app.url + "/definitely/not/here")

    answer = httpx.get(live_app.url + "/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    metrics = answer.text

    def value(name: str, **labels: str) -> float:
        pattern = name + r"\{" + ",".join(f'{k}="{re.escape(v)}"' for k, v in labels.items()) + r"\} (\S+)"
        match = re.search(pattern, metrics)
        return float(match.group(1)) if match else 0.0

    assert value("paidan_web_submissions_total", channel="web", outcome="accepted") == 1
    assert value("paidan_web_submissions_total", channel="web", outcome="invalid") == 1
    assert value("paidan_web_submissions_total", channel="api", outcome="accepted") == 1
    assert value("paidan_web_submissions_total", channel="api", outcome="duplicate") == 1
    assert value("paidan_web_submissions_total", channel="api", outcome="unauthorized") == 1
    # Latency by route *template*: one series for every ticket number, one for all unknown paths.
    assert 'route="/api/v1/tickets/{number}"' in metrics
    assert 'route="/contact",status="200"' in metrics
    assert 'route="unmatched",status="404"' in metrics
    assert "GD20260101001" not in metrics and "definitely" not in metrics


def test_each_app_has_its_own_registry():
    one, two = WebMetrics(), WebMetrics()
    one.count("web", "accepted")
    labels = {"channel": "web", "outcome": "accepted"}
    assert one.registry.get_sample_value("paidan_web_submissions_total", labels) == 1
    assert two.registry.get_sample_value("paidan_web_submissions_total", labels) is None


def test_metrics_show_the_help_desk_tickets_queues_outbox_and_overdue_clocks(engine, web_intake):
    from datetime import UTC, datetime, timedelta

    from factories import KeywordClassifier, make_message
    from sqlalchemy import select

    from models import Channel
    from models.tables import OutboxItem, SlaClock
    from paidan.db import transaction
    from router.config import RouterConfig
    from router.queries import TicketQueries
    from router.routing import route_pending

    for i, text in enumerate(["支付系统宕机了", "我要退款", "lowconf 在吗"]):  # P0, P2, and one for triage
        # By email: an email customer is acknowledged through the outbox (the web and API answer at once).
        web_intake.accept_now(make_message(f"ops-{i}", email=f"ops{i}@example.com", text=text, channel=Channel.EMAIL))
    queries = TicketQueries(engine)

    def scrape() -> dict[str, float]:
        app = build_app(make_settings(), _no_sink, _no_view, operations=queries.operations)
        with serve(app) as url:
            text = httpx.get(url + "/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("paidan_") and " " in line}

    before = scrape()
    assert before["paidan_database_up"] == 1
    assert before['paidan_tickets{state="new"}'] == 3 and before["paidan_tickets_unrouted"] == 3
    # Routed with nobody online, then a day passes (the clocks and the outbox moved a day back): the clocks
    # are overdue, and the acknowledgements still wait in the outbox (no email sender has taken them).
    with transaction(engine) as session:
        route_pending(session, KeywordClassifier(), RouterConfig(), datetime.now(UTC))
    with transaction(engine) as session:
        for clock in session.scalars(select(SlaClock)):
            clock.started_at, clock.due_at = clock.started_at - timedelta(days=1), clock.due_at - timedelta(days=1)
        for item in session.scalars(select(OutboxItem)):
            item.created_at -= timedelta(days=1)
    after = scrape()
    assert after["paidan_tickets_unrouted"] == 0
    assert after['paidan_tickets_waiting{queue="triage"}'] == 1
    assert after['paidan_tickets_waiting{queue="assignment"}'] == 2
    assert after['paidan_outbox_pending{channel="email"}'] >= 3  # one acknowledgement per customer
    assert after['paidan_outbox_oldest_pending_seconds{channel="email"}'] > 23 * 3600
    assert after['paidan_sla_overdue{clock="first_response"}'] >= 1  # P0: 15 minutes around the clock

    async def down():
        raise OSError("database is down")

    with serve(build_app(make_settings(), _no_sink, _no_view, operations=down)) as url:
        answer = httpx.get(url + "/metrics")
    assert answer.status_code == 200 and "paidan_database_up 0.0" in answer.text
    assert "paidan_http_request_duration_seconds" in answer.text  # request metrics are still served
