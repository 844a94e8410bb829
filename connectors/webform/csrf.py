"""CSRF tokens: an HMAC over (browser session id, issue time, submission id).

The submission id doubles as the form's idempotency key: a double-click or a browser retry
carries the same id, so intake stores the message once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

_VERSION = "v1"
_CLOCK_SKEW = 60  # seconds a token may appear to come from the future (clock adjustments)


class CsrfStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"  # no token, or no session cookie to bind it to
    INVALID = "invalid"  # forged, tampered, or issued to another browser
    EXPIRED = "expired"  # genuine, but older than max_age


@dataclass(frozen=True, slots=True)
class CsrfCheck:
    status: CsrfStatus
    submission_id: str | None = None  # set for OK and EXPIRED (the signature was ours)


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def new_submission_id() -> str:
    return secrets.token_urlsafe(16)


class CsrfTokens:
    def __init__(self, secret: bytes, max_age: timedelta, clock: Callable[[], float] = time.time):
        # A key of its own, so the configured secret can safely sign other things too.
        self._key = hmac.new(secret, b"paidan webform csrf", hashlib.sha256).digest()
        self.max_age = max_age.total_seconds()
        self.clock = clock

    def _sign(self, session_id: str, issued: int, submission_id: str) -> str:
        message = f"{_VERSION}|{session_id}|{issued}|{submission_id}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, session_id: str, submission_id: str | None = None) -> str:
        """A token for a form shown to this session; pass the old submission id to keep it on re-render."""
        issued = int(self.clock())
        submission_id = submission_id or new_submission_id()
        return f"{_VERSION}.{issued}.{submission_id}.{self._sign(session_id, issued, submission_id)}"

    def check(self, token: str | None, session_id: str | None) -> CsrfCheck:
        if not token or not session_id:
            return CsrfCheck(CsrfStatus.MISSING)
        parts = token.split(".")
        # isascii first: compare_digest refuses non-ASCII str, and int() would accept other digits.
        if not token.isascii() or len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit() or len(token) > 200:
            return CsrfCheck(CsrfStatus.INVALID)
        _, issued_text, submission_id, signature = parts
        issued = int(issued_text)
        if not hmac.compare_digest(signature, self._sign(session_id, issued, submission_id)):
            return CsrfCheck(CsrfStatus.INVALID)
        age = self.clock() - issued
        if age < -_CLOCK_SKEW:
            return CsrfCheck(CsrfStatus.INVALID)
        if age > self.max_age:
            return CsrfCheck(CsrfStatus.EXPIRED, submission_id)
        return CsrfCheck(CsrfStatus.OK, submission_id)
