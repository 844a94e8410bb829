"""Assemble the web channel into one FastAPI app: pages, JSON API, offline API docs, static files,
and the edge middleware (size limits, security headers, the answer for bugs)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from connectors.webform import i18n
from connectors.webform.api import (
    Api,
    ApiError,
    ApiMessage,
    ApiReceipt,
    ApiTicket,
    error,
    inline_schema,
)
from connectors.webform.config import MB, WebFormConfig
from connectors.webform.edge import BodyLimit, CatchAll, SecurityHeaders
from connectors.webform.pages import Pages
from connectors.webform.site import PACKAGE_DIR, OutcomeHook, Sink, Site, SolvedHook, TicketLookup
from connectors.webform.surveys import SurveyPages, SurveyStore, SurveyTokens

BEARER_SCHEME = "HTTPBearer"  # the name under components.securitySchemes in /openapi.json

_API_DESCRIPTION = """Send a customer message into the help desk.

Idempotency: give an `Idempotency-Key` header or an `external_id` field. Sending the same message again
with the same key returns the first receipt (`200`, `"duplicate": true`) and stores nothing new; a
*different* message under a reused key is stored as a new message rather than dropped.

Answers: `201` stored; `200` already stored; `400` `{"error": "invalid", "fields": {...}}` naming each
bad field (malformed JSON names `body`); `401` unknown token; `413` body too large; `415` not JSON;
`429` too many requests with this token (1,200 a minute by default) — nothing was stored, retry after
`Retry-After` seconds; `503` the database is unavailable — nothing was stored, retry after `Retry-After` seconds."""


def _is_api(scope: Scope) -> bool:
    return scope.get("path", "").startswith("/api/")


def build_app(config: WebFormConfig, sink: Sink, ticket_view: TicketLookup, *,
              on_outcome: OutcomeHook | None = None, title: str = "paidan", version: str = "0.1.0",
              surveys: SurveyStore | None = None, mark_solved: SolvedHook | None = None) -> FastAPI:
    """The web channel as an app. `sink` is durable intake; `ticket_view` answers the status page;
    `surveys` answers the satisfaction survey page (None: no such page); `mark_solved` lets a customer
    close their ticket from the status page (None: no such button)."""
    site = Site(config, sink, ticket_view, **({"on_outcome": on_outcome} if on_outcome else {}),
                mark_solved=mark_solved)
    pages, api = Pages(site), Api(site)
    # Swagger UI would load its assets from a CDN; /docs is served from our own template instead.
    app = FastAPI(title=title, version=version, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.webform = site

    for path in ("/", "/contact"):
        app.add_api_route(path, pages.contact_form, methods=["GET"], include_in_schema=False)
        app.add_api_route(path, pages.contact_submit, methods=["POST"], include_in_schema=False)
    app.add_api_route("/status", pages.status_form, methods=["GET"], include_in_schema=False)
    app.add_api_route("/status", pages.status_lookup, methods=["POST"], include_in_schema=False)
    app.add_api_route("/status/message", pages.status_message, methods=["POST"], include_in_schema=False)
    if mark_solved is not None:
        app.add_api_route("/status/solved", pages.status_solved, methods=["POST"], include_in_schema=False)
    if surveys is not None:
        survey_pages = SurveyPages(pages, surveys, SurveyTokens(config.secret))
        app.add_api_route("/survey/{token}", survey_pages.show, methods=["GET"], include_in_schema=False)
        app.add_api_route("/survey/{token}", survey_pages.submit, methods=["POST"], include_in_schema=False)

    # The API checks its bearer token itself (Api.authenticate: 401 with our JSON body). The scheme
    # is only declared for the OpenAPI description, not as a FastAPI dependency: solving one on every
    # request was a fifth of the API's CPU per message (bench/intake.py).
    bearer = {"security": [{BEARER_SCHEME: []}]}
    errors = {code: {"model": ApiError, "description": text} for code, text in (
        (400, "Invalid input; `fields` names each problem"), (401, "Missing or unknown token"),
        (413, "Body too large"), (415, "Not application/json"),
        (429, "Too many requests with this token; retry after Retry-After seconds"),
        (503, "Database unavailable; retry later"))}
    app.add_api_route(
        "/api/v1/messages", api.post_message, methods=["POST"], tags=["messages"],
        summary="Submit a customer message", description=_API_DESCRIPTION, status_code=201,
        response_model=ApiReceipt, responses={200: {"model": ApiReceipt, "description": "Already stored"}, **errors},
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(ApiMessage)}}},
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "maxLength": 200}}],
            **bearer,
        },
    )

    async def get_ticket(request: Request, number: str, email: str | None = None, phone: str | None = None) -> Response:
        return await api.get_ticket(request)

    app.add_api_route(
        "/api/v1/tickets/{number}", get_ticket, methods=["GET"], tags=["tickets"], openapi_extra=bearer,
        summary="A ticket's state and public messages, for the customer with this email or phone",
        response_model=ApiTicket,
        responses={404: {"model": ApiError, "description": "No ticket matches this number and contact"}, **errors},
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[BEARER_SCHEME] = {
                "type": "http", "scheme": "bearer", "description": "An API token configured on the server"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    async def docs(request: Request) -> Response:
        return HTMLResponse(site.templates.get_template("docs.html").render(spec=app.openapi()))

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths and wrong methods: JSON under /api/, a page in the customer's language elsewhere."""
        if _is_api(request.scope):
            code = "not_found" if exc.status_code == 404 else "http_error"
            return error(exc.status_code, code, str(exc.detail), headers=exc.headers)
        lang = site.language(request)
        key = "page_not_found" if exc.status_code == 404 else "bad_request"
        return site.message_page(request, lang=lang, status=exc.status_code, title_key="error_title",
                                 text=i18n.text(key, lang), headers=exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        fields = {".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path")) or "body": e["msg"]
                  for e in exc.errors()}
        return error(400, "invalid", "some fields are missing or wrong", fields)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)

    def limit_for(scope: Scope) -> int:
        path = scope.get("path", "")
        if path.startswith("/api/"):
            return config.max_api_body_bytes
        if path in ("/", "/contact", "/status/message"):  # the forms that take attachments
            return config.max_form_body_bytes
        if path.startswith("/status"):
            return config.max_text_chars * 4 + MB
        return 64 * 1024

    def too_large(scope: Scope, limit: int) -> Response:
        request = Request(scope)
        if _is_api(scope):
            site.count("api", "too_large")
            return error(413, "too_large", f"the request body exceeds {limit} bytes",
                         {"body": f"at most {limit} bytes"}, headers={"Connection": "close"})
        site.count("web", "too_large")
        response = pages.too_large_page(request, site.language(request))
        response.headers["Connection"] = "close"
        return response

    def failure(scope: Scope) -> Response:
        headers = {"Retry-After": str(config.retry_after_seconds)}
        if _is_api(scope):
            return error(503, "unavailable", "an internal error occurred; nothing was stored; retry later",
                         headers=headers)
        request = Request(scope)
        lang = site.language(request)
        return site.message_page(request, lang=lang, status=503, title_key="error_title",
                                 text=i18n.text("unavailable_plain", lang), headers=headers)

    # Added last = outermost: BodyLimit sees the request first, CatchAll wraps every handler.
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CatchAll, failure=failure)
    app.add_middleware(BodyLimit, limit_for=limit_for, too_large=too_large)
    return app
