"""Pure checks of what a customer typed or uploaded: no I/O, so every rule has a plain unit test.

Problems are reported as `FieldProblem(field, code, params)`; the pages translate the code (i18n.py,
key ``err_<code>``) and the JSON API answers with its English text.
"""

from __future__ import annotations

from functools import lru_cache

import io
import re
import unicodedata
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from models.message import Attachment, Identity, IdentityKind

TICKET_NUMBER = re.compile(r"GD\d{8}\d{3,}")
# C0/C1 controls except tab and newline (NUL in particular, which PostgreSQL text rejects), and
# lone surrogates, which JSON can carry ("\ud800") but no database encoding can store.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_FILENAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # every control, tab and newline too
_MAX_CONTACT_CHARS = 320


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    code: str
    params: Mapping[str, object] = field(default_factory=dict)


class Invalid(Exception):
    """One or more fields are wrong; carries all of them so the form can mark each one."""

    def __init__(self, problems: list[FieldProblem]):
        self.problems = problems
        super().__init__(", ".join(f"{p.field}: {p.code}" for p in problems))


def clean_text(value: str | None, *, multiline: bool) -> str:
    """Strip what a message must not carry: control characters (NUL included), odd newlines,
    surrounding blanks. Unicode is NFC-normalised so equal text compares equal."""
    value = unicodedata.normalize("NFC", value or "")
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    if not multiline:
        value = value.replace("\n", " ").replace("\t", " ")
    return _CONTROL.sub("", value).strip()


def check_text(name: str, value: str | None, *, max_chars: int, required: bool, multiline: bool = False,
               problems: list[FieldProblem]) -> str:
    cleaned = clean_text(value, multiline=multiline)
    if required and not cleaned:
        problems.append(FieldProblem(name, "required"))
    elif len(cleaned) > max_chars:
        problems.append(FieldProblem(name, "too_long", {"max": max_chars}))
    return cleaned


@lru_cache(maxsize=4096)  # pure, and customers write again and again: validation is a real cost per request
def normalise_email(value: str) -> str:
    """The address as an identity: domain lower-cased (and IDNA-normalised), local part kept.

    Raises ValueError when it is not a plausible address. Deliverability is not checked: that
    would mean DNS look-ups on the request path.
    """
    value = value.strip()
    if not value or len(value) > _MAX_CONTACT_CHARS:
        raise ValueError("not an email address")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return f"{result.local_part}@{result.domain.lower()}"


def normalise_phone(value: str, default_region: str) -> str:
    """E.164 (`+8613800138000`); numbers without a country code are read as `default_region`'s."""
    value = value.strip()
    if not value or len(value) > 40:
        raise ValueError("not a phone number")
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(str(exc)) from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_contact(value: str | None, default_region: str) -> Identity | None:
    """The status page's single "email or phone" box: an address if it has an @, else a phone."""
    value = clean_text(value, multiline=False)
    try:
        if "@" in value:
            return Identity(IdentityKind.EMAIL, normalise_email(value))
        return Identity(IdentityKind.PHONE, normalise_phone(value, default_region))
    except ValueError:
        return None


def normalise_ticket_number(value: str | None) -> str | None:
    number = clean_text(value, multiline=False).upper().replace(" ", "")
    return number if TICKET_NUMBER.fullmatch(number) else None


def check_contacts(email: str | None, phone: str | None, default_region: str,
                   problems: list[FieldProblem]) -> tuple[Identity, ...]:
    """At least one of email and phone, each valid when given; both fields are named when neither is."""
    identities = []
    email = clean_text(email, multiline=False)
    phone = clean_text(phone, multiline=False)
    if email:
        try:
            identities.append(Identity(IdentityKind.EMAIL, normalise_email(email)))
        except ValueError:
            problems.append(FieldProblem("email", "email_invalid"))
    if phone:
        try:
            identities.append(Identity(IdentityKind.PHONE, normalise_phone(phone, default_region)))
        except ValueError:
            problems.append(FieldProblem("phone", "phone_invalid"))
    if not email and not phone:
        problems.append(FieldProblem("email", "contact_required"))
        problems.append(FieldProblem("phone", "contact_required"))
    return tuple(identities)


# --- attachments ---------------------------------------------------------------------------

def size_text(n_bytes: int) -> str:
    """10485760 -> '10 MB', 512000 -> '500 KB': how limits are shown to people."""
    if n_bytes >= 1024 * 1024:
        return f"{round(n_bytes / (1024 * 1024), 1):g} MB"
    return f"{max(1, round(n_bytes / 1024)):g} KB"


def _is_text(data: bytes) -> bool:
    """Plain text in UTF-8 (with or without BOM), UTF-16 with a BOM, or GB18030; no binary."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            data.decode("utf-16")
            return True
        except UnicodeDecodeError:
            return False
    if b"\x00" in data:
        return False
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            data.decode(encoding)
            return True
        except UnicodeDecodeError:
            continue
    return False


def _is_ooxml(folder: str) -> Callable[[bytes], bool]:
    """A .docx/.xlsx is a zip with [Content_Types].xml and its part folder; macros are refused."""

    def check(data: bytes) -> bool:
        if not data.startswith(b"PK\x03\x04"):
            return False
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()
        except Exception:  # noqa: BLE001 — zipfile raises many types on corrupt input; any means "not a document"
            return False
        return (
            "[Content_Types].xml" in names
            and any(n.startswith(folder) for n in names)
            and not any(n.lower().endswith("vbaproject.bin") for n in names)
        )

    return check


# extension -> (content type we store, check of the first bytes / whole content)
ALLOWED_TYPES: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    "png": ("image/png", lambda d: d.startswith(b"\x89PNG\r\n\x1a\n")),
    "jpg": ("image/jpeg", lambda d: d.startswith(b"\xff\xd8\xff")),
    "jpeg": ("image/jpeg", lambda d: d.startswith(b"\xff\xd8\xff")),
    "gif": ("image/gif", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    "webp": ("image/webp", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    "pdf": ("application/pdf", lambda d: d.startswith(b"%PDF-")),
    "txt": ("text/plain", _is_text),
    "log": ("text/plain", _is_text),
    "csv": ("text/csv", _is_text),
    "docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", _is_ooxml("word/")),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", _is_ooxml("xl/")),
}


def safe_filename(name: str | None) -> str:
    """The last path component, without control characters, at most 200 characters (extension kept)."""
    name = unicodedata.normalize("NFC", name or "").replace("\\", "/")
    name = _FILENAME_BAD.sub("", PurePosixPath(name).name).strip().strip(".") if name else ""
    name = name or "attachment"
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 199 - len(ext)] + dot + ext) if dot and len(ext) <= 10 else name[:200]
    return name


def check_attachment(filename: str | None, data: bytes, *, max_bytes: int) -> Attachment:
    """An Attachment with a content type we determined ourselves, or Invalid naming the problem.

    The extension must be on the allow-list *and* the bytes must look like that type, so a
    renamed .exe or an .html called .png is refused. The client's Content-Type is ignored.
    """
    name = safe_filename(filename)
    if len(data) > max_bytes:
        params = {"filename": name, "max_size": size_text(max_bytes)}
        raise Invalid([FieldProblem("attachments", "attachment_too_large", params)])
    if not data:
        raise Invalid([FieldProblem("attachments", "attachment_empty", {"filename": name})])
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    if ext not in ALLOWED_TYPES:
        raise Invalid([FieldProblem("attachments", "attachment_type", {"filename": name})])
    content_type, looks_right = ALLOWED_TYPES[ext]
    if not looks_right(data):
        raise Invalid([FieldProblem("attachments", "attachment_mismatch", {"filename": name})])
    return Attachment(filename=name, content_type=content_type, data=data)
