"""Logs people can read, with customers' email addresses and phone numbers masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
# International or Chinese mobile numbers, with the usual separators; long digit runs such as
# order numbers (14+ digits) are left alone.
PHONE = re.compile(r"(?<![\w])(\+?\d{1,3}[ -]?)?(1[3-9]\d)[ -]?(\d{4})[ -]?(\d{4})(?![\d])|(?<![\w])\+\d[\d -]{7,15}\d(?![\d])")


def mask(text: str) -> str:
    """`alice@example.com` → `a***@example.com`-style masking: enough to tell apart, not to contact."""
    text = EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(0).split('@', 1)[1]}", text)
    return PHONE.sub(lambda m: _mask_phone(m.group(0)), text)


def _mask_phone(phone: str) -> str:
    digits = [c for c in phone if c.isdigit()]
    return ("+" if phone.startswith("+") else "") + "".join(digits[:3]) + "****" + "".join(digits[-2:])


class MaskingFormatter(logging.Formatter):
    def __init__(self, as_json: bool):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            entry = {
                "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": mask(record.getMessage()),
            }
            if record.exc_info:
                entry["exc"] = mask(self.formatException(record.exc_info))
            return json.dumps(entry, ensure_ascii=False)
        return mask(super().format(record))


def setup(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "aiosmtpd", "mail.log", "jieba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
