"""The outbox's senders inside `paidan serve`: each channel's items, claimed, sent and recorded in rounds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Engine

from connectors.outbox import OutboxItem, deliver_due
from router import delivery

log = logging.getLogger("paidan.outbound")


async def send_outbox_forever(engine: Engine, channel: str, build: Callable[[OutboxItem], Any],
                              send: Callable[[Any], None], *, batch: int, lease: timedelta, every: float,
                              stop: asyncio.Event) -> None:
    """Deliver `channel`'s due items every `every` seconds until `stop` is set. A round runs in a
    worker thread (the database calls and smtplib block); `lease` must outlast a round of `batch`
    sends at the peer's timeout, or another process could claim the round's tail again."""

    def one_round():
        return deliver_due(partial(delivery.claim_due, engine, channel, limit=batch, lease=lease), build, send,
                           partial(delivery.mark_sent, engine), partial(delivery.mark_failed, engine),
                           now=datetime.now(UTC))

    while not stop.is_set():
        try:
            report = await asyncio.to_thread(one_round)
            if report.sent or report.retried or report.failed:
                log.info("%s out: %d sent, %d to retry, %d given up", channel, report.sent, report.retried,
                         report.failed)
        except Exception:  # noqa: BLE001 — e.g. the database away for a moment: the next round retries
            log.exception("%s out: a delivery round failed", channel)
        await pause(stop, every)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less when `stop` is set meanwhile: how every background loop of serve rests."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
