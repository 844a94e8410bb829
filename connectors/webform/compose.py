"""Turn validated input into the InboundMessage intake stores; pure functions."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from models.message import Attachment, Channel, Identity, InboundMessage, Sender, ThreadRefs


def content_key(*, identities: tuple[Identity, ...], name: str, subject: str, text: str,
                attachments: tuple[Attachment, ...], ticket_number: str | None) -> str:
    """A short hash of what the message says.

    It is part of the external id next to the client's key, so a retry of the same message is
    stored once, while a *different* message sent with a reused key (a form re-submitted after
    editing it, a client reusing an Idempotency-Key) is stored too instead of silently dropped.
    """
    payload = json.dumps(
        [sorted(str(i) for i in identities), name, subject, text, [a.sha256 for a in attachments], ticket_number],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_message(*, channel: Channel, key: str, identities: tuple[Identity, ...], name: str, subject: str,
                  text: str, attachments: tuple[Attachment, ...], ticket_number: str | None, language: str | None,
                  raw: bytes, received_at: datetime) -> InboundMessage:
    """`key` is the channel's idempotency key (form submission id, namespaced API key)."""
    digest = content_key(identities=identities, name=name, subject=subject, text=text,
                         attachments=attachments, ticket_number=ticket_number)
    return InboundMessage(
        channel=channel,
        external_id=f"{key}:{digest}",
        sender=Sender(identities=identities, display_name=name),
        text=text,
        received_at=received_at,
        raw=raw,
        subject=subject,
        attachments=attachments,
        thread_refs=ThreadRefs(ticket_number=ticket_number),
        language=language,
    )


def form_raw(fields: list[tuple[str, str]], uploads: list[dict], headers: dict[str, str]) -> bytes:
    """A faithful record of a form post: every text field as received (the CSRF token aside),
    the uploaded files' metadata, and the request headers that say who sent it how."""
    record = {
        "fields": [[k, v] for k, v in fields if k != "csrf_token"],
        "files": uploads,
        "headers": headers,
    }
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass")
