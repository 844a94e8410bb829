"""One typed settings object: defaults that run on a laptop, overridden by `paidan.toml`
and then by `PAIDAN_*` environment variables (highest)."""

from __future__ import annotations

import os
import re
import secrets
from datetime import date, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    NoDecode,
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("PAIDAN_CONFIG", "paidan.toml"))


class SlaSetting(BaseModel):
    first_response_minutes: float
    resolution_minutes: float
    calendar: Literal["24x7", "business"]


class RoutingSettings(BaseModel):
    """The router's knobs; in paidan.toml under [routing], in the environment as PAIDAN_ROUTING__FIELD."""

    business_hours: tuple[str, str] = ("09:00", "18:00")
    weekdays: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="Monday = 0")
    holidays: list[date] = Field(default_factory=list)
    # Per priority (P0…P3); omitted priorities keep DESIGN.md's defaults.
    sla: dict[str, SlaSetting] = Field(default_factory=dict)
    # Per channel, then per priority, overriding `sla`.
    sla_by_channel: dict[str, dict[str, SlaSetting]] = Field(default_factory=dict)
    category_skills: dict[str, str] | None = None
    accept_timeout_minutes: float = 10
    triage_threshold: float = 0.45
    topic_window_hours: float = 72
    topic_threshold: float | None = None
    senior_level: int = 3
    # Ask the customer how we did (a 1-5 rating and a comment) when a ticket is resolved, by email or
    # Telegram, once per ticket.
    surveys: bool = True
    # A resolved ticket is closed after this many days without a word from the customer; until then
    # a message from them reopens it. 0: resolved tickets stay resolved.
    close_resolved_after_days: float = Field(default=7, ge=0)
    # A ticket that waits on the customer (/wait) with nothing happening is resolved after this many
    # days, the customer having been reminded once after `remind_waiting_after_days`. 0: never.
    remind_waiting_after_days: float = Field(default=3, ge=0)
    resolve_waiting_after_days: float = Field(default=7, ge=0)


class EmailSettings(BaseModel):
    """The email channel; in paidan.toml under [email], in the environment as PAIDAN_EMAIL__FIELD.

    The SMTP server listens on `smtp_host`:`smtp_port` (top-level settings, 127.0.0.1:2525 by default).
    """

    smtp_enabled: bool = True
    # Recipient domains the SMTP server takes mail for; empty: every recipient (a developer's machine,
    # or behind an MX that already filters). Mail to other domains gets 550.
    smtp_domains: list[str] = Field(default_factory=list)
    # Bigger mail is refused with 552 (the usual provider limit).
    smtp_max_bytes: int = 25 * 1024 * 1024
    # Outgoing mail (acknowledgements, agents' replies) goes through this relay (your provider's
    # submission server, or a local MTA). Empty: email items wait in the outbox until one is set.
    relay_host: str = ""
    relay_port: int = 587
    relay_username: str | None = None
    relay_password: SecretStr | None = None
    relay_starttls: bool = True
    from_address: str = "support@localhost"
    from_name: str = "客服 Support"
    # An agent's emailed reply ends with "-- ", their name and from_name. False: the text alone (a desk
    # that keeps its agents' names to itself).
    sign_replies: bool = True
    relay_poll_seconds: float = 2.0
    # A mailbox to poll (mail that reaches support through a provider rather than our SMTP server).
    # Empty host: no polling. Mail is marked read (or moved to `imap_processed_folder`) only after it
    # is stored, and never deleted.
    imap_host: str = ""
    imap_port: int = 993
    imap_ssl: bool = True
    imap_username: str = ""
    imap_password: SecretStr | None = None
    imap_folder: str = "INBOX"
    imap_processed_folder: str | None = None
    imap_poll_seconds: float = 30.0


class TelegramSettings(BaseModel):
    """The Telegram channel; in paidan.toml under [telegram], in the environment as PAIDAN_TELEGRAM__FIELD.

    One bot serves both sides: messages from a registered agent's Telegram id (`paidan agents set NAME
    --telegram-id …`) go to the agent console, everyone else's become customer messages.
    """

    token: SecretStr | None = None  # from @BotFather; none: no Telegram channel
    # The Bot API server: Telegram's, or a self-hosted telegram-bot-api (and, in tests, a stand-in).
    api_base: str = "https://api.telegram.org"
    poll_timeout_seconds: int = 25  # long polling: how long one getUpdates waits for news
    send_poll_seconds: float = 1.0  # how often the outbox is checked for messages to send
    # Webhook mode, for several `paidan serve` behind a load balancer (two pollers would get 409
    # Conflict): Telegram POSTs every update to this public URL, which must reach `webhook_path` on the
    # web port of any process. Empty: long polling, one process.
    webhook_url: str = ""
    webhook_path: str = "/telegram/webhook"
    # Telegram sends it back in X-Telegram-Bot-Api-Secret-Token. None: derived from the settings'
    # `secret`, so processes sharing `secret_key` (or the secret file) expect the same token.
    webhook_secret: SecretStr | None = None

    @field_validator("webhook_secret")
    @classmethod
    def _telegram_secret_alphabet(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram's own rule; anything else, and setWebhook fails only when the process starts.
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("1 to 256 characters, only A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("webhook_path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a path on the web port, starting with /")
        return value


class PrivacySettings(BaseModel):
    """Personal data; in paidan.toml under [privacy], in the environment as PAIDAN_PRIVACY__FIELD."""

    # Days after a ticket is resolved or closed before its messages and attachments are erased (the
    # ticket, its labels and times stay, so reports still count it). 0: keep everything forever.
    retain_days: int = Field(default=0, ge=0)


class ReportSettings(BaseModel):
    """Reports pushed to supervisors; in paidan.toml under [reports], as PAIDAN_REPORTS__FIELD."""

    # Local time ("09:00") at which supervisors with Telegram get yesterday's figures and what runs out
    # today, on working days (paidan/digest.py). Empty: no digest.
    daily_digest_at: str = ""

    @field_validator("daily_digest_at")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                time.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a time of day such as \"09:00\"") from None
        return value


class BackupSettings(BaseModel):
    """Backups made by `paidan serve`; in paidan.toml under [backup], in the environment as PAIDAN_BACKUP__FIELD."""

    # Hours between backups (as `paidan db backup` makes them). 0: none.
    every_hours: float = Field(default=0, ge=0)
    # Where they go; empty: beside the SQLite database (the working directory for PostgreSQL).
    directory: str = ""
    # The newest this many paidan-backup-* files there are kept; older ones are deleted.
    keep: int = Field(default=7, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAIDAN_", env_nested_delimiter="__", extra="ignore", frozen=True)

    database_url: str = "sqlite:///paidan.db"
    # Business calendar time zone: ticket numbers use its date, SLA clocks its hours.
    timezone: str = "Asia/Shanghai"

    web_host: str = "127.0.0.1"
    web_port: int = 8080
    # Where customers reach the web pages from outside (behind a proxy: its https address); links in
    # our mail, such as a satisfaction survey's, start with it.
    public_url: str = "http://127.0.0.1:8080"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525

    # Where trained classifier directories live; one subdirectory per version.
    model_dir: Path = Path("paidan-models")
    training_data_dir: Path = Path("training_data")

    # Bearer tokens accepted by POST /api/v1/messages (comma-separated in the environment).
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Signs CSRF tokens; generated once and kept in `secret_file` when not given.
    secret_key: SecretStr | None = None
    secret_file: Path = Path(".paidan-secret")

    max_attachments: int = 5
    max_attachment_bytes: int = 10 * 1024 * 1024
    max_api_body_bytes: int = 1024 * 1024
    form_rate_limit_per_minute: int = 10
    # API requests per bearer token: a burst of this many, then this many a minute (0: no limit).
    api_rate_limit_per_minute: int = 1200
    # Shown to the customer before a ticket is classified (P2 default of DESIGN.md).
    default_first_response_hours: float = 4.0

    # Phone numbers typed without a country code are read as this region's (ISO 3166 code).
    phone_region: str = "CN"
    # The web pages' language when neither the browser nor the visitor's choice says otherwise.
    default_language: str = "zh"
    # Behind a reverse proxy: the proxy addresses whose X-Forwarded-For we trust (e.g. "10.0.0.1"),
    # so rate limits see the customer's address rather than the proxy's.
    forwarded_allow_ips: str | None = None

    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    email: EmailSettings = Field(default_factory=EmailSettings)
    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)

    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def default_first_response(self) -> timedelta:
        return timedelta(hours=self.default_first_response_hours)

    @cached_property
    def secret(self) -> bytes:
        """The CSRF signing key: configured, or created once and kept beside the database."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.secret_file
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
        )
