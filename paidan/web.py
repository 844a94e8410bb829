"""The web app as served: the web channel (connectors/webform) plus `/healthz`, Prometheus `/metrics`
and, in webhook mode, Telegram's webhook."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connectors.webform import WebFormConfig
from connectors.webform import build_app as build_webform
from connectors.webform.api import error
from connectors.webform.site import Sink, SolvedHook, TicketLookup
from connectors.webform.surveys import SurveyStore
from paidan.settings import Settings
from router.queries import Operations

if TYPE_CHECKING:  # paidan.telegram imports aiogram; a deployment without Telegram need not
    from paidan.dashboard import Dashboard
    from paidan.telegram import TelegramWebhook

log = logging.getLogger(__name__)

DbCheck = Callable[[], Awaitable[bool]]
OperationsQuery = Callable[[], Awaitable[Operations]]
HEALTH_TIMEOUT = 5.0  # a database that does not answer in this time is as bad as one that fails


def _version() -> str:
    try:
        return version("paidan")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def webform_config(settings: Settings) -> WebFormConfig:
    return WebFormConfig(
        secret=settings.secret,
        api_tokens=tuple(settings.api_tokens),
        max_attachments=settings.max_attachments,
        max_attachment_bytes=settings.max_attachment_bytes,
        max_api_body_bytes=settings.max_api_body_bytes,
        rate_limit_per_minute=settings.form_rate_limit_per_minute,
        api_rate_limit_per_minute=settings.api_rate_limit_per_minute,
        default_first_response=settings.default_first_response,
        timezone=settings.timezone,
        default_region=settings.phone_region,
        default_language=settings.default_language,
    )


class WebMetrics:
    """The web app's Prometheus metrics, in a registry of its own (tests build many apps)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.submissions = Counter(
            "paidan_web_submissions", "Messages and attempts by channel (web, api) and outcome",
            ["channel", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "paidan_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def count(self, channel: str, outcome: str) -> None:
        self.submissions.labels(channel, outcome).inc()


class OperationsCollector:
    """One snapshot of the help desk as Prometheus gauges: open tickets by state, waiting without an
    agent, not yet routed, undelivered outbox rows and their age by channel, overdue SLA clocks."""

    def __init__(self, ops: Operations | None):
        self.ops = ops

    def collect(self):
        up = GaugeMetricFamily("paidan_database_up", "1 when the database answered this scrape's counts")
        up.add_metric([], 1 if self.ops is not None else 0)
        yield up
        if self.ops is None:
            return
        ops = self.ops
        yield _gauge("paidan_tickets", "Open tickets by state", "state", ops.tickets)
        yield _gauge("paidan_tickets_waiting", "Open tickets without an agent, by queue", "queue", ops.waiting)
        unrouted = GaugeMetricFamily("paidan_tickets_unrouted", "Tickets stored but not yet classified and routed")
        unrouted.add_metric([], ops.unrouted)
        yield unrouted
        yield _gauge("paidan_outbox_pending", "Notifications and replies not yet delivered, by channel", "channel",
                     ops.outbox_pending)
        yield _gauge("paidan_outbox_oldest_pending_seconds", "Age of the oldest undelivered outbox row, by channel",
                     "channel", ops.outbox_oldest_seconds)
        yield _gauge("paidan_sla_overdue", "Running SLA clocks past their due time, by clock", "clock", ops.sla_overdue)


def _gauge(name: str, documentation: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class LatencyMiddleware:
    """Times every request; labels by the matched route's template so /status/GD… is one series."""

    def __init__(self, app: ASGIApp, *, metrics: WebMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = getattr(scope.get("route"), "path", None)
            if template is None:
                template = "/static" if scope["path"].startswith("/static/") else "unmatched"
            self.metrics.latency.labels(scope.get("method", ""), template, str(status or 0)).observe(
                time.perf_counter() - started
            )


class TelegramWebhookRoute:
    """Serves Telegram's webhook ahead of the web channel's edge middleware. That edge limits bodies
    to what its forms need (64 KB off their paths) and answers errors with HTML pages; an update may be
    bigger and Telegram wants a status code, so the webhook checks its own secret and size (1 MB)
    and answers JSON. It is left out of /docs: only Telegram calls it, and only with the secret."""

    def __init__(self, app: ASGIApp, *, webhook: TelegramWebhook):
        self.app = app
        self.webhook = webhook
        self.path = webhook.path  # LatencyMiddleware labels a request by its route's `path`

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        scope["route"] = self
        if scope["method"] == "POST":
            response = await self.webhook.answer(Request(scope, receive))
        else:
            response = error(405, "method_not_allowed", "Telegram POSTs updates here", headers={"Allow": "POST"})
        await response(scope, receive, send)


def build_app(settings: Settings, sink: Sink, ticket_view: TicketLookup, *, db_ok: DbCheck | None = None,
              operations: OperationsQuery | None = None, metrics: WebMetrics | None = None,
              health_timeout: float = HEALTH_TIMEOUT, telegram_webhook: TelegramWebhook | None = None,
              dashboard: Dashboard | None = None, surveys: SurveyStore | None = None,
              mark_solved: SolvedHook | None = None) -> FastAPI:
    """The whole web app. `db_ok` backs /healthz (None: the database is not checked); `operations`
    adds the help desk's counts to /metrics (None: request metrics only); `telegram_webhook` serves
    Telegram's updates at its path (None: Telegram polls, or is off); `dashboard` serves /dashboard and
    /api/v1/report (None: no reports on the web); `mark_solved` (see `solved_hook`) puts a "this is
    solved" button on the status page (None: none)."""
    metrics = metrics or WebMetrics()
    app = build_webform(webform_config(settings), sink, ticket_view, on_outcome=metrics.count,
                        title="paidan", version=_version(), surveys=surveys,  # surveys: the /survey/<token> page
                        mark_solved=mark_solved)
    app.state.metrics = metrics

    async def healthz(request: Request) -> Response:
        if db_ok is None:
            return JSONResponse({"status": "ok", "database": "not checked"})
        try:
            healthy = await asyncio.wait_for(db_ok(), health_timeout)
        except Exception as exc:  # noqa: BLE001 — any failure of the check is "unhealthy", answered below
            log.warning("health check failed: %s", type(exc).__name__)
            healthy = False
        if healthy:
            return JSONResponse({"status": "ok", "database": "ok"})
        return JSONResponse({"status": "unavailable", "database": "failing"}, status_code=503,
                            headers={"Retry-After": "10", "Cache-Control": "no-store"})

    async def metrics_endpoint(request: Request) -> Response:
        body = generate_latest(metrics.registry)
        if operations is not None:
            try:
                ops = await asyncio.wait_for(operations(), health_timeout)
            except Exception as exc:  # noqa: BLE001 — a failing database still gets its request metrics served
                log.warning("metrics: the database did not answer: %s", type(exc).__name__)
                ops = None
            snapshot = CollectorRegistry(auto_describe=False)
            snapshot.register(OperationsCollector(ops))
            body += generate_latest(snapshot)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["operations"], summary="Liveness and database check")
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    if dashboard is not None:
        dashboard.mount(app)
    if telegram_webhook is not None:
        app.add_middleware(TelegramWebhookRoute, webhook=telegram_webhook)  # inside LatencyMiddleware: timed too
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


def solved_hook(engine, config) -> SolvedHook:
    """The status page's "this is solved", as `actions.customer_resolves` in a transaction of its own;
    a database that does not answer is StorageUnavailable (the page says to try again)."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import SQLAlchemyError

    from models.errors import StorageUnavailable
    from paidan.db import transaction
    from router import actions

    def work(number: str, identity) -> str:
        try:
            with transaction(engine) as session:
                return actions.customer_resolves(session, number, (identity.kind.value, identity.value), config,
                                                 datetime.now(UTC))
        except SQLAlchemyError as exc:
            raise StorageUnavailable("the database did not answer; try again in a moment") from exc

    async def mark_solved(number: str, identity) -> str:
        return await asyncio.to_thread(work, number, identity)

    return mark_solved
