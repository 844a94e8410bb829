import json
import logging

import pytest

from paidan.logs import MaskingFormatter, mask
from paidan.settings import Settings


def test_environment_beats_toml_beats_defaults(tmp_path, monkeypatch):
    config = tmp_path / "paidan.toml"
    config.write_text('web_port = 9000\ntimezone = "Europe/Berlin"\napi_tokens = ["a", "b"]\n')
    monkeypatch.setenv("PAIDAN_CONFIG", str(config))
    monkeypatch.setenv("PAIDAN_WEB_PORT", "9100")
    settings = Settings()
    assert settings.web_port == 9100 and settings.timezone == "Europe/Berlin" and settings.api_tokens == ["a", "b"]
    assert settings.database_url == "sqlite:///paidan.db"


def test_api_tokens_from_the_environment_are_comma_separated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIDAN_API_TOKENS", " t1, t2 ,")
    assert Settings().api_tokens == ["t1", "t2"]


def test_the_csrf_secret_is_created_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = Settings().secret
    assert first == Settings().secret and len(first) >= 32
    assert (tmp_path / ".paidan-secret").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("text,hidden,kept", [
    ("mail from alice.smith@example.com", "alice.smith@", "a***@example.com"),
    ("call 13812345678 now", "13812345678", "138****78"),
    ("call +86 138 1234 5678 now", "1234 5678", "+861****78"),
    ("order 20261103884512 paid", None, "20261103884512"),
])
def test_logs_mask_emails_and_phones_but_not_order_numbers(text, hidden, kept):
    masked = mask(text)
    assert kept in masked and (hidden is None or hidden not in masked)


def test_json_log_lines_are_masked():
    record = logging.LogRecord("paidan", logging.INFO, __file__, 1, "from %s", ("bob@example.org",), None)
    entry = json.loads(MaskingFormatter(as_json=True).format(record))
    assert entry["msg"] == "from b***@example.org" and entry["level"] == "info"


def test_routing_settings_reach_the_router_config(tmp_path, monkeypatch):
    from datetime import date, time, timedelta

    from paidan.service import router_config

    config = tmp_path / "paidan.toml"
    config.write_text(
        'timezone = "Europe/Berlin"\n[routing]\nbusiness_hours = ["08:30", "17:00"]\nholidays = ["2026-12-25"]\n'
        "accept_timeout_minutes = 5\n[routing.sla.P2]\nfirst_response_minutes = 120\nresolution_minutes = 1440\n"
        'calendar = "business"\n[routing.sla_by_channel.telegram.P3]\nfirst_response_minutes = 60\n'
        'resolution_minutes = 600\ncalendar = "24x7"\n'
    )
    monkeypatch.setenv("PAIDAN_CONFIG", str(config))
    monkeypatch.setenv("PAIDAN_ROUTING__TRIAGE_THRESHOLD", "0.3")
    routing = router_config(Settings())
    assert routing.calendar.timezone == "Europe/Berlin" and routing.calendar.start == time(8, 30)
    assert routing.calendar.holidays == {date(2026, 12, 25)}
    assert routing.sla_for("P2", "web").first_response == timedelta(hours=2)
    assert routing.sla_for("P3", "telegram").calendar == "24x7"
    assert routing.sla_for("P0", "web").first_response == timedelta(minutes=15)  # DESIGN.md default kept
    assert routing.accept_timeout == timedelta(minutes=5) and routing.triage_threshold == 0.3
