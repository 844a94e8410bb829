"""Builders for test inputs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from models import Channel, Identity, IdentityKind, InboundMessage, Sender


def make_message(
    external_id: str | None = None,
    *,
    email: str | None = "kehu@example.com",
    phone: str | None = None,
    text: str = "我的订单还没有发货，请帮忙查一下",
    channel: Channel = Channel.API,
    **extra,
) -> InboundMessage:
    identities = []
    if email:
        identities.append(Identity(IdentityKind.EMAIL, email))
    if phone:
        identities.append(Identity(IdentityKind.PHONE, phone))
    return InboundMessage(
        channel=channel,
        external_id=external_id or uuid.uuid4().hex,
        sender=Sender(tuple(identities), extra.pop("name", "张三")),
        text=text,
        received_at=extra.pop("received_at", datetime.now(UTC)),
        raw=extra.pop("raw", text.encode()),
        **extra,
    )
