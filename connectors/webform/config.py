"""Everything the web channel needs to know, in one frozen object built by the wiring (paidan/web.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from connectors.webform.validation import size_text

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebFormConfig:
    secret: bytes  # signs CSRF tokens; keep it stable across restarts so open forms stay valid
    api_tokens: tuple[str, ...] = ()
    max_attachments: int = 5
    max_attachment_bytes: int = 10 * MB
    max_api_body_bytes: int = 1 * MB
    rate_limit_per_minute: int = 10  # form posts and status look-ups, per client IP
    # API requests per token (a burst of this many, then this many a minute); 0: no limit. One runaway
    # integration must not crowd out the others or the web form.
    api_rate_limit_per_minute: int = 1200
    default_first_response: timedelta = timedelta(hours=4)
    default_region: str = "CN"  # phone numbers without a country code are read as this region's
    default_language: str = "zh"  # when neither the browser nor a cookie says otherwise
    timezone: str = "Asia/Shanghai"  # for the times shown on the status page
    csrf_max_age: timedelta = timedelta(hours=12)  # long enough to write a long message
    max_text_chars: int = 50_000
    max_name_chars: int = 200
    max_subject_chars: int = 300
    # A status look-up answers no faster than this, so a miss and a hit take the same time.
    lookup_min_seconds: float = 0.2
    retry_after_seconds: int = 30  # told to clients when the database is unavailable

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("WebFormConfig.secret must not be empty")
        if self.default_language not in ("zh", "en"):
            raise ValueError("default_language must be 'zh' or 'en'")

    @property
    def max_form_body_bytes(self) -> int:
        """The whole multipart body: every attachment at its limit plus room for the text fields."""
        return self.max_attachments * self.max_attachment_bytes + MB + self.max_text_chars * 4

    @property
    def max_attachment_size(self) -> str:
        return size_text(self.max_attachment_bytes)
