"""The customer's pages: the contact form, its confirmation, and the ticket status page.

Order of checks on a form post, each answering with its own status: rate limit (429) ->
body size (413, in BodyLimit, and per attachment here) -> CSRF (403) -> honeypot (a quiet
200) -> field validation (400, the form again with each bad field named) -> intake (503 when
the database fails, the form again with the text kept) -> confirmation (200).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from connectors.webform import i18n
from connectors.webform.compose import build_message, form_raw
from connectors.webform.csrf import CsrfStatus
from connectors.webform.edge import BodyTooLarge
from connectors.webform.site import Site, log
from connectors.webform.validation import (
    FieldProblem,
    Invalid,
    check_attachment,
    check_contacts,
    check_text,
    clean_text,
    normalise_ticket_number,
    parse_contact,
)
from models.errors import InvalidMessage, StorageUnavailable
from models.message import Attachment, Channel, Identity, TicketView

# A ticket in these states has nothing left to mark solved (the router's finished states and merged).
FINISHED_STATES = frozenset({"resolved", "closed", "merged"})

CONTACT_FIELDS = ("name", "email", "phone", "subject", "message")
HONEYPOT = "website"
FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")
MAX_FILE_PARTS = 50  # parse a few more than allowed, so "too many" can be answered on the form


class FormUnreadable(Exception):
    """The body is not a form we can parse (wrong content type, broken multipart)."""

    def __init__(self, too_many_files: bool = False):
        self.too_many_files = too_many_files


def problems_to_errors(problems: list[FieldProblem], lang: str) -> dict[str, str]:
    """field -> one translated sentence (several problems of one field are joined)."""
    errors: dict[str, str] = {}
    for p in problems:
        sentence = i18n.text("err_" + p.code, lang, **p.params)
        errors[p.field] = f"{errors[p.field]} {sentence}" if p.field in errors else sentence
    return errors


def _short_media_type(request: Request) -> bytes:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower().encode("latin-1", "replace")


class Pages:
    def __init__(self, site: Site):
        self.site = site
        self.config = site.config

    # --- shared steps --------------------------------------------------------------------

    async def read_form(self, request: Request, *, max_part_size: int) -> FormData:
        if _short_media_type(request) not in FORM_TYPES:
            raise FormUnreadable()
        try:
            return await request.form(max_files=MAX_FILE_PARTS, max_fields=50, max_part_size=max_part_size)
        except BodyTooLarge:
            raise
        except HTTPException as exc:  # Starlette's answer to a MultiPartException
            raise FormUnreadable(too_many_files="Too many files" in str(exc.detail)) from None
        except (ValueError, KeyError, UnicodeError) as exc:
            log.info("unreadable form on %s: %s", request.url.path, type(exc).__name__)
            raise FormUnreadable() from None

    def rate_limited(self, request: Request, lang: str, limiter, back: str) -> Response | None:
        wait = limiter.hit(self.site.client_ip(request))
        if not wait:
            return None
        self.site.count("web", "rate_limited")
        return self.site.message_page(
            request, lang=lang, status=429, title_key="error_title",
            text=i18n.text("rate_limited", lang, seconds=wait), back=back, headers={"Retry-After": str(wait)},
        )

    def unreadable(self, request: Request, lang: str, exc: FormUnreadable, back: str) -> Response:
        if exc.too_many_files:
            self.site.count("web", "too_large")
            return self.too_large_page(request, lang)
        self.site.count("web", "unreadable")
        return self.site.message_page(request, lang=lang, status=400, title_key="error_title",
                                      text=i18n.text("bad_form", lang), back=back)

    def too_large_page(self, request: Request, lang: str) -> Response:
        text = i18n.text("too_large", lang, max_size=self.config.max_attachment_size,
                         max_files=self.config.max_attachments) + " " + i18n.text("too_large_back", lang)
        return self.site.message_page(request, lang=lang, status=413, title_key="error_title", text=text)

    def csrf_failed(self, request: Request, lang: str, back: str) -> Response:
        self.site.count("web", "csrf_failed")
        return self.site.message_page(request, lang=lang, status=403, title_key="error_title",
                                      text=i18n.text("csrf_failed", lang), back=back)

    def unavailable_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.config.retry_after_seconds)}

    # --- contact form ------------------------------------------------------------------

    def contact_page(self, request: Request, *, lang: str, status: int = 200, values: dict[str, str] | None = None,
                     errors: dict[str, str] | None = None, notice: str = "", submission_id: str | None = None,
                     headers: dict[str, str] | None = None) -> Response:
        session_id = self.site.ensure_session(request)
        return self.site.render(
            request, "contact.html", lang=lang, status=status, session_id=session_id, headers=headers,
            csrf_token=self.site.csrf.issue(session_id, submission_id),
            values=values or {}, errors=errors or {}, notice=notice, switch_path="/contact",
        )

    async def contact_form(self, request: Request) -> Response:
        return self.contact_page(request, lang=self.site.language(request))

    async def contact_submit(self, request: Request) -> Response:
        site, config = self.site, self.config
        lang = site.language(request)
        if limited := self.rate_limited(request, lang, site.form_limiter, "/contact"):
            return limited
        try:
            form = await self.read_form(request, max_part_size=config.max_text_chars * 4 + 65536)
        except FormUnreadable as exc:
            return self.unreadable(request, lang, exc, "/contact")
        try:
            return await self._contact_submit(request, form, lang)
        finally:
            await form.close()

    # --- attachments (the contact form and the status page's "add a message") ----------

    def size_problems(self, uploads: list[UploadFile]) -> list[FieldProblem]:
        """Too many files, or a file over the limit: checked before anything else, so an oversized
        upload is reported as that and never as a CSRF failure (FAILURE_MODES 29)."""
        config = self.config
        problems = []
        if len(uploads) > config.max_attachments:
            problems.append(FieldProblem("attachments", "too_many_attachments", {"max": config.max_attachments}))
        for upload in uploads:
            if (upload.size or 0) > config.max_attachment_bytes:
                params = {"filename": upload.filename, "max_size": config.max_attachment_size}
                problems.append(FieldProblem("attachments", "attachment_too_large", params))
        return problems

    async def read_attachments(
        self, uploads: list[UploadFile]
    ) -> tuple[list[Attachment], list[dict], list[FieldProblem]]:
        """The uploads checked by content (check_attachment), a record of each for the raw message, and
        the problems of those refused."""
        attachments, records, problems = [], [], []
        for upload in uploads:
            data = await upload.read()
            records.append({"field": "attachments", "filename": upload.filename,
                            "content_type": upload.content_type, "size": len(data)})
            try:
                # Sniffing 10 MB (decoding text, listing a zip) is CPU work: off the event loop.
                attachments.append(await asyncio.to_thread(check_attachment, upload.filename, data,
                                                           max_bytes=self.config.max_attachment_bytes))
                records[-1]["sha256"] = attachments[-1].sha256
            except Invalid as exc:
                problems.extend(exc.problems)
        return attachments, records, problems

    async def _contact_submit(self, request: Request, form: FormData, lang: str) -> Response:
        site, config = self.site, self.config
        values = {k: v for k in CONTACT_FIELDS if isinstance(v := form.get(k), str)}
        uploads = _uploads(form)
        size_problems = self.size_problems(uploads)
        check = site.csrf.check(_str(form.get("csrf_token")), site.session_id(request))
        if size_problems:
            site.count("web", "too_large")
            return self.contact_page(
                request, lang=lang, status=413, values=values, errors=problems_to_errors(size_problems, lang),
                notice=i18n.text("too_large", lang, max_size=config.max_attachment_size,
                                 max_files=config.max_attachments),
                submission_id=check.submission_id,
            )

        if check.status in (CsrfStatus.MISSING, CsrfStatus.INVALID):
            log.info("form post with %s CSRF token from %s", check.status, site.client_ip(request))
            return self.csrf_failed(request, lang, "/contact")
        if check.status is CsrfStatus.EXPIRED:
            site.count("web", "csrf_expired")
            return self.contact_page(request, lang=lang, status=403, values=values,
                                     notice=i18n.text("csrf_expired", lang), submission_id=check.submission_id)

        if _str(form.get(HONEYPOT)).strip():
            # Answered like a success so a bot learns nothing; no ticket is created.
            log.info("honeypot filled on the contact form from %s", site.client_ip(request))
            site.count("web", "honeypot")
            return site.render(request, "confirm.html", lang=lang, ticket_number=None, due="", switch_path="/contact")

        problems: list[FieldProblem] = []
        name = check_text("name", values.get("name"), max_chars=config.max_name_chars, required=True, problems=problems)
        identities = check_contacts(values.get("email"), values.get("phone"), config.default_region, problems)
        subject = check_text("subject", values.get("subject"), max_chars=config.max_subject_chars, required=True,
                             problems=problems)
        text = check_text("message", values.get("message"), max_chars=config.max_text_chars, required=True,
                          multiline=True, problems=problems)
        attachments, file_records, attachment_problems = await self.read_attachments(uploads)
        problems += attachment_problems
        if problems:
            site.count("web", "invalid")
            return self.contact_page(request, lang=lang, status=400, values=values,
                                     errors=problems_to_errors(problems, lang),
                                     notice=i18n.text("form_has_errors", lang), submission_id=check.submission_id)

        message = build_message(
            channel=Channel.WEB, key=f"form:{check.submission_id}", identities=identities, name=name,
            subject=subject, text=text, attachments=tuple(attachments), ticket_number=None, language=lang,
            raw=form_raw(_text_items(form), file_records, _provenance(request)),
            received_at=datetime.now(UTC),
        )
        try:
            receipt = await site.sink(message)
        except StorageUnavailable:
            site.count("web", "storage_unavailable")
            return self.contact_page(
                request, lang=lang, status=503, values=values,
                notice=i18n.text("unavailable", lang, seconds=config.retry_after_seconds),
                submission_id=check.submission_id, headers=self.unavailable_headers(),
            )
        except InvalidMessage as exc:
            site.count("web", "invalid")
            field = exc.field if exc.field in CONTACT_FIELDS else "message"
            return self.contact_page(request, lang=lang, status=400, values=values, errors={field: exc.problem},
                                     notice=i18n.text("form_has_errors", lang), submission_id=check.submission_id)
        site.count("web", "duplicate" if receipt.duplicate else "accepted")
        due = receipt.first_response_due or config.default_first_response
        return site.render(request, "confirm.html", lang=lang, ticket_number=receipt.ticket_number,
                           due=i18n.format_duration(due, lang), switch_path="/contact")

    # --- status page -----------------------------------------------------------------

    def status_page(self, request: Request, *, lang: str, status: int = 200, view: TicketView | None = None,
                    number: str = "", contact: str = "", errors: dict[str, str] | None = None,
                    notice: str = "", draft: str = "", submission_id: str | None = None,
                    headers: dict[str, str] | None = None) -> Response:
        session_id = self.site.ensure_session(request)
        return self.site.render(
            request, "status.html", lang=lang, status=status, session_id=session_id, headers=headers,
            csrf_token=self.site.csrf.issue(session_id, submission_id),
            view=view, number=number, contact=contact, errors=errors or {}, notice=notice, draft=draft,
            local_time=self.local_time, switch_path="/status",
            solvable=bool(view and self.site.mark_solved and view.state not in FINISHED_STATES),
        )

    def local_time(self, at: datetime) -> str:
        return at.astimezone(self.site.tz).strftime("%Y-%m-%d %H:%M")

    async def status_form(self, request: Request) -> Response:
        number = clean_text(request.query_params.get("number", ""), multiline=False)[:40]
        return self.status_page(request, lang=self.site.language(request), number=number)

    def _lookup_input(self, form: FormData, lang: str):
        number_in = clean_text(_str(form.get("number")), multiline=False)[:40]
        contact_in = clean_text(_str(form.get("contact")), multiline=False)[:320]
        number = normalise_ticket_number(number_in)
        identity = parse_contact(contact_in, self.config.default_region)
        problems = []
        if number is None:
            problems.append(FieldProblem("number", "required" if not number_in else "ticket_number_invalid"))
        if identity is None:
            problems.append(FieldProblem("contact", "required" if not contact_in else "contact_invalid"))
        return number_in, contact_in, number, identity, problems_to_errors(problems, lang)

    async def _timed_view(self, number: str, identity) -> TicketView | None:
        """The look-up, padded to a minimum duration so a miss and a hit cannot be told apart by time."""
        started = time.monotonic()
        try:
            return await self.site.ticket_view(number, identity)
        finally:
            await asyncio.sleep(max(0.0, self.config.lookup_min_seconds - (time.monotonic() - started)))

    async def _find_ticket(self, request: Request, lang: str, form) -> tuple[TicketView, str, Identity] | Response:
        """The ticket a number + contact pair proves, or the page that says why not (400, 404, 503)."""
        number_in, contact_in, number, identity, errors = self._lookup_input(form, lang)
        if errors:
            return self.status_page(request, lang=lang, status=400, number=number_in, contact=contact_in, errors=errors)
        try:
            view = await self._timed_view(number, identity)
        except StorageUnavailable:
            return self.status_page(request, lang=lang, status=503, number=number_in, contact=contact_in,
                                    notice=i18n.text("unavailable_plain", lang), headers=self.unavailable_headers())
        if view is None:
            self.site.count("web", "lookup_miss")
            return self.status_page(request, lang=lang, status=404, number=number_in, contact=contact_in,
                                    notice=i18n.text("not_found", lang))
        return view, contact_in, identity

    async def status_lookup(self, request: Request) -> Response:
        lang = self.site.language(request)
        if limited := self.rate_limited(request, lang, self.site.status_limiter, "/status"):
            return limited
        try:
            form = await self.read_form(request, max_part_size=65536)
        except FormUnreadable as exc:
            return self.unreadable(request, lang, exc, "/status")
        found = await self._find_ticket(request, lang, form)
        if isinstance(found, Response):
            return found
        view, contact_in, _ = found
        return self.status_page(request, lang=lang, view=view, number=view.number, contact=contact_in)

    async def status_message(self, request: Request) -> Response:
        """The customer adds a message to a ticket they proved is theirs (number + contact)."""
        site, config = self.site, self.config
        lang = site.language(request)
        if limited := self.rate_limited(request, lang, site.status_limiter, "/status"):
            return limited
        try:
            form = await self.read_form(request, max_part_size=config.max_text_chars * 4 + 65536)
        except FormUnreadable as exc:
            return self.unreadable(request, lang, exc, "/status")
        try:
            return await self._status_message(request, form, lang)
        finally:
            await form.close()

    async def _status_message(self, request: Request, form: FormData, lang: str) -> Response:
        site, config = self.site, self.config
        uploads = _uploads(form)
        if self.size_problems(uploads):
            site.count("web", "too_large")
            return self.too_large_page(request, lang)
        check = site.csrf.check(_str(form.get("csrf_token")), site.session_id(request))
        if check.status in (CsrfStatus.MISSING, CsrfStatus.INVALID):
            return self.csrf_failed(request, lang, "/status")
        draft = _str(form.get("message"))
        found = await self._find_ticket(request, lang, form)
        if isinstance(found, Response):
            return found
        view, contact_in, identity = found
        keep = {"lang": lang, "view": view, "number": view.number, "contact": contact_in, "draft": draft,
                "submission_id": check.submission_id}
        if check.status is CsrfStatus.EXPIRED:
            return self.status_page(request, status=403, notice=i18n.text("csrf_expired", lang), **keep)
        problems: list[FieldProblem] = []
        text = check_text("message", draft, max_chars=config.max_text_chars, required=True, multiline=True,
                          problems=problems)
        attachments, file_records, attachment_problems = await self.read_attachments(uploads)
        problems += attachment_problems
        if problems:
            site.count("web", "invalid")
            return self.status_page(request, status=400, errors=problems_to_errors(problems, lang), **keep)
        message = build_message(
            channel=Channel.WEB, key=f"status:{check.submission_id}", identities=(identity,), name="",
            subject="", text=text, attachments=tuple(attachments), ticket_number=view.number, language=lang,
            raw=form_raw(_text_items(form), file_records, _provenance(request)), received_at=datetime.now(UTC),
        )
        try:
            receipt = await site.sink(message)
            fresh = await site.ticket_view(receipt.ticket_number, identity)
        except StorageUnavailable:
            site.count("web", "storage_unavailable")
            return self.status_page(request, status=503, headers=self.unavailable_headers(),
                                    notice=i18n.text("unavailable", lang, seconds=config.retry_after_seconds), **keep)
        site.count("web", "duplicate" if receipt.duplicate else "accepted")
        # A fresh submission id: the next message on this page is a new message, not a retry.
        return self.status_page(request, lang=lang, view=fresh or view, number=receipt.ticket_number,
                                contact=contact_in, notice=i18n.text("message_added", lang))


    async def status_solved(self, request: Request) -> Response:
        """The customer says their ticket is solved (the status page's ✅): resolved as an agent's resolve
        would; a message added later reopens it. The same proof as a message: number + contact."""
        site = self.site
        lang = site.language(request)
        if limited := self.rate_limited(request, lang, site.status_limiter, "/status"):
            return limited
        try:
            form = await self.read_form(request, max_part_size=65536)
        except FormUnreadable as exc:
            return self.unreadable(request, lang, exc, "/status")
        check = site.csrf.check(_str(form.get("csrf_token")), site.session_id(request))
        if check.status in (CsrfStatus.MISSING, CsrfStatus.INVALID):
            return self.csrf_failed(request, lang, "/status")
        found = await self._find_ticket(request, lang, form)
        if isinstance(found, Response):
            return found
        view, contact_in, identity = found
        keep = {"lang": lang, "number": view.number, "contact": contact_in}
        if check.status is CsrfStatus.EXPIRED:
            return self.status_page(request, status=403, view=view, notice=i18n.text("csrf_expired", lang), **keep)
        try:
            outcome = await site.mark_solved(view.number, identity)
            fresh = await site.ticket_view(view.number, identity)
        except StorageUnavailable:
            site.count("web", "storage_unavailable")
            return self.status_page(request, status=503, view=view, headers=self.unavailable_headers(),
                                    notice=i18n.text("unavailable_plain", lang), **keep)
        site.count("web", f"solved_{outcome}")
        notice = i18n.text("marked_solved" if outcome == "resolved" else "already_solved", lang)
        return self.status_page(request, view=fresh or view, notice=notice, **keep)


def _uploads(form: FormData) -> list[UploadFile]:
    """The files of the attachments input; an empty file input sends one part with filename=""."""
    return [f for f in form.getlist("attachments") if isinstance(f, UploadFile) and (f.filename or (f.size or 0) > 0)]


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _text_items(form: FormData) -> list[tuple[str, str]]:
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


def _provenance(request: Request) -> dict[str, str]:
    return {k: request.headers[k][:1000] for k in ("user-agent", "accept-language", "content-type")
            if k in request.headers}
