"""The JSON API channel: `POST /api/v1/messages` and `GET /api/v1/tickets/{number}`, bearer-token auth.

The body is read and validated here rather than by FastAPI, so every problem gets this API's own
answer — 401 before anything is parsed, 400 `{"error": "invalid", "fields": {...}}` naming each
field (never FastAPI's 422), 413, 415, 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors.webform import i18n
from connectors.webform.compose import build_message
from connectors.webform.ratelimit import RateLimiter
from connectors.webform.site import Site
from connectors.webform.validation import (
    FieldProblem,
    Invalid,
    check_attachment,
    check_contacts,
    check_text,
    normalise_ticket_number,
    parse_contact,
)
from models.errors import InvalidMessage, StorageUnavailable
from models.message import Channel, TicketView

_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:@/+=")


class ApiAttachment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    content_type: str | None = Field(None, description="Ignored: the type is determined from the bytes.")
    data_base64: Annotated[str, Field(min_length=1, description="The file, base64 (RFC 4648) encoded.")]


class ApiMessage(BaseModel):
    """A customer message. Give `email` or `phone` (or both) and an idempotency key, either as the
    `Idempotency-Key` header or as `external_id`."""

    model_config = ConfigDict(extra="forbid")
    external_id: Annotated[str | None, Field(None, min_length=1, max_length=200,
                                             description="Your id for this message; a retry with the same id and "
                                                         "content is stored once.")]
    name: Annotated[str, Field("", max_length=200)]
    email: Annotated[str | None, Field(None, max_length=320)]
    phone: Annotated[str | None, Field(None, max_length=40, description="E.164, or national for the default region.")]
    subject: Annotated[str, Field("", max_length=500)]
    text: Annotated[str, Field(min_length=1)]
    attachments: list[ApiAttachment] = Field(default_factory=list)
    ticket_number: str | None = Field(None, description="Continue this ticket (it must belong to the sender).")
    language: Literal["zh", "en"] | None = None


class ApiReceipt(BaseModel):
    ticket_number: str
    message_id: int
    duplicate: bool
    new_ticket: bool
    first_response_within_seconds: int


class ApiError(BaseModel):
    error: str
    detail: str = ""
    fields: dict[str, str] = Field(default_factory=dict)


class ApiPublicMessage(BaseModel):
    direction: Literal["in", "out"] | str
    text: str
    at: datetime
    author: str


class ApiTicket(BaseModel):
    number: str
    state: str
    subject: str
    created_at: datetime
    messages: list[ApiPublicMessage]


def error(status: int, code: str, detail: str = "", fields: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = ApiError(error=code, detail=detail, fields=fields or {}).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with `$defs` references resolved in place, for `openapi_extra`."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def _field_name(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "body"


def _english(problems: list[FieldProblem]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for p in problems:
        sentence = i18n.text("err_" + p.code, "en", **p.params)
        fields[p.field] = f"{fields[p.field]} {sentence}" if p.field in fields else sentence
    return fields


class Api:
    def __init__(self, site: Site):
        self.site = site
        self.config = site.config
        # Keys are namespaced by a short hash of the token, so two clients' "1" are two messages.
        self._tokens = [(t.encode(), hashlib.sha256(t.encode()).hexdigest()[:12]) for t in site.config.api_tokens if t]
        per_minute = site.config.api_rate_limit_per_minute
        self._limiter = RateLimiter(per_minute) if per_minute > 0 else None

    def authenticate(self, request: Request) -> str | None:
        """The token's tag when the bearer token is one of ours, else None."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        given = credentials.strip().encode("utf-8", "surrogateescape")
        found = None
        for token, tag in self._tokens:  # compare with every token: timing says nothing about which
            if hmac.compare_digest(given, token):
                found = tag
        return found

    def over_limit(self, tag: str) -> JSONResponse | None:
        """429 with Retry-After when this token has used up its requests for now, else None."""
        wait = self._limiter.hit(tag) if self._limiter is not None else 0
        if not wait:
            return None
        self.site.count("api", "rate_limited")
        return error(429, "rate_limited",
                     f"more than {self.config.api_rate_limit_per_minute} requests a minute with this token; "
                     f"nothing was stored: send it again in {wait} s", headers={"Retry-After": str(wait)})

    def unauthorized(self) -> JSONResponse:
        self.site.count("api", "unauthorized")
        return error(401, "unauthorized", "send Authorization: Bearer <token> with a token configured on the server",
                     headers={"WWW-Authenticate": 'Bearer realm="paidan"'})

    async def post_message(self, request: Request) -> Response:
        tag = self.authenticate(request)
        if tag is None:
            return self.unauthorized()
        if (refused := self.over_limit(tag)) is not None:
            return refused
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            self.site.count("api", "invalid")
            return error(415, "unsupported_media_type", "send the message as application/json")
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of 5000 digits
            self.site.count("api", "invalid")
            return error(400, "invalid", "the body is not valid JSON", {"body": f"not valid JSON: {exc}"})
        except RecursionError:
            self.site.count("api", "invalid")
            return error(400, "invalid", "the body is nested too deeply", {"body": "nested too deeply"})
        if not isinstance(payload, dict):
            self.site.count("api", "invalid")
            return error(400, "invalid", "the body must be a JSON object", {"body": "must be a JSON object"})
        try:
            data = ApiMessage.model_validate(_drop_lone_surrogates(payload))
        except ValidationError as exc:
            self.site.count("api", "invalid")
            fields = {}
            for item in exc.errors(include_url=False):
                fields.setdefault(_field_name(item["loc"]), item["msg"])
            return error(400, "invalid", "some fields are missing or wrong", fields)

        problems: list[FieldProblem] = []
        key = self._idempotency_key(request, data, problems)
        identities = check_contacts(data.email, data.phone, self.config.default_region, problems)
        name = check_text("name", data.name, max_chars=self.config.max_name_chars, required=False, problems=problems)
        subject = check_text("subject", data.subject, max_chars=500, required=False, problems=problems)
        text = check_text("text", data.text, max_chars=self.config.max_text_chars, required=True, multiline=True,
                          problems=problems)
        ticket_number = None
        if data.ticket_number is not None:
            ticket_number = normalise_ticket_number(data.ticket_number)
            if ticket_number is None:
                problems.append(FieldProblem("ticket_number", "ticket_number_invalid"))
        if len(data.attachments) > self.config.max_attachments:
            problems.append(FieldProblem("attachments", "too_many_attachments", {"max": self.config.max_attachments}))
        attachments = []
        for index, item in enumerate(data.attachments[: self.config.max_attachments]):
            try:
                raw = base64.b64decode(item.data_base64, validate=True)
            except (binascii.Error, ValueError):
                problems.append(FieldProblem(f"attachments.{index}.data_base64", "base64"))
                continue
            try:
                attachments.append(await asyncio.to_thread(check_attachment, item.filename, raw,
                                                           max_bytes=self.config.max_attachment_bytes))
            except Invalid as exc:
                problems.extend(FieldProblem(f"attachments.{index}", p.code, p.params) for p in exc.problems)
        if problems:
            self.site.count("api", "invalid")
            return error(400, "invalid", "some fields are missing or wrong", _english(problems))

        message = build_message(
            channel=Channel.API, key=f"{tag}:{key}", identities=identities, name=name, subject=subject, text=text,
            attachments=tuple(attachments), ticket_number=ticket_number, language=data.language, raw=body,
            received_at=datetime.now(UTC),
        )
        try:
            receipt = await self.site.sink(message)
        except StorageUnavailable:
            self.site.count("api", "storage_unavailable")
            return error(503, "unavailable", "the message was not stored; send it again later",
                         headers={"Retry-After": str(self.config.retry_after_seconds)})
        except InvalidMessage as exc:
            self.site.count("api", "invalid")
            return error(400, "invalid", str(exc), {exc.field: exc.problem})
        self.site.count("api", "duplicate" if receipt.duplicate else "accepted")
        due = receipt.first_response_due or self.config.default_first_response
        out = ApiReceipt(ticket_number=receipt.ticket_number, message_id=receipt.message_id,
                         duplicate=receipt.duplicate, new_ticket=receipt.new_ticket,
                         first_response_within_seconds=int(due.total_seconds()))
        return JSONResponse(out.model_dump(), status_code=200 if receipt.duplicate else 201)

    def _idempotency_key(self, request: Request, data: ApiMessage, problems: list[FieldProblem]) -> str:
        header = request.headers.get("idempotency-key", "").strip()
        body = (data.external_id or "").strip()
        if header and body and header != body:
            problems.append(FieldProblem("external_id", "key_mismatch"))
        key = header or body
        if not key:
            problems.append(FieldProblem("external_id", "key_required"))
        elif len(key) > 200 or not set(key) <= _KEY_CHARS:
            problems.append(FieldProblem("external_id", "key_invalid"))
        return key

    async def get_ticket(self, request: Request) -> Response:
        tag = self.authenticate(request)
        if tag is None:
            return self.unauthorized()
        if (refused := self.over_limit(tag)) is not None:
            return refused
        number = normalise_ticket_number(request.path_params.get("number"))
        email, phone = request.query_params.get("email"), request.query_params.get("phone")
        contact = email if email else phone
        identity = parse_contact(contact, self.config.default_region) if contact else None
        fields = {}
        if number is None:
            fields["number"] = i18n.text("err_ticket_number_invalid", "en")
        if identity is None:
            fields["email" if email else "phone"] = "give the customer's email or phone as a query parameter"
        if fields:
            return error(400, "invalid", "some parameters are missing or wrong", fields)
        try:
            view = await self.site.ticket_view(number, identity)
        except StorageUnavailable:
            return error(503, "unavailable", "try again later",
                         headers={"Retry-After": str(self.config.retry_after_seconds)})
        if view is None:
            return error(404, "not_found", "no ticket matches this number and contact")
        return JSONResponse(ticket_json(view))


def _drop_lone_surrogates(value: Any) -> Any:
    """JSON may carry an unpaired "\\ud800"; no database can store it, and pydantic refuses the whole
    string. Dropping just that code point keeps the rest of the customer's text."""
    if isinstance(value, str):
        return value.encode("utf-8", "ignore").decode("utf-8") if not value.isascii() else value
    if isinstance(value, dict):
        return {_drop_lone_surrogates(k): _drop_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_lone_surrogates(v) for v in value]
    return value


def ticket_json(view: TicketView) -> dict:
    return ApiTicket(
        number=view.number, state=view.state, subject=view.subject, created_at=view.created_at,
        messages=[ApiPublicMessage(direction=m.direction, text=m.text, at=m.at, author=m.author)
                  for m in view.messages],
    ).model_dump(mode="json")
