"""The supervisors' morning digest: yesterday's headline figures and what runs out today, in Telegram at
a set local time on working days (`[reports] daily_digest_at = "09:00"`; empty, the default, is off).

`paidan serve` runs `send_digest` every minute; it acts once a day, at or after the set time: the day's
once-key (router/cursors.py) is claimed in the same transaction as the messages it queues, so several
processes on one PostgreSQL, or a restart at 09:00:30, still send one digest a day. A process started
later in the day sends that day's digest then (late, not never); a day the desk is closed has none.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from paidan.cli_report import summary_lines
from router.calendar import is_business_day
from router.config import RouterConfig
from router.cursors import claim_once
from router.outbox import STAFF_CHANNEL, agent_address, enqueue_many, item, supervisors_of
from router.queries import due_soon
from router.reports import build_report, last_days

DIGEST_KIND = "digest"


def send_digest(session: Session, now: datetime, *, at: time, config: RouterConfig) -> int:
    """Queue the day's digest to every supervisor who has Telegram, once a day from `at` (local) on;
    returns how many were queued."""
    zone = ZoneInfo(config.calendar.timezone)
    local = now.astimezone(zone)
    if local.time() < at or not is_business_day(config.calendar, local.date()):
        return 0
    readers = [s for s in supervisors_of(session) if s.telegram_id]
    if not readers or claim_once(session, f"digest:{local.date().isoformat()}", now) is not None:
        return 0
    text = digest_text(session, now, config)
    enqueue_many(session, [item(kind=DIGEST_KIND, channel=STAFF_CHANNEL, recipient=agent_address(s),
                                payload={"text": text, "agent_id": s.id}, now=now,
                                dedupe_key=f"digest:{local.date().isoformat()}:{s.id}") for s in readers])
    return len(readers)


def digest_text(session: Session, now: datetime, config: RouterConfig) -> str:
    timezone = config.calendar.timezone
    since, _ = last_days(2, now, timezone)  # yesterday (local) ...
    until, _ = last_days(1, now, timezone)  # ... up to today's start
    report = build_report(session, since=since, until=until, now=now, timezone=timezone)
    today_ends = datetime.combine(now.astimezone(ZoneInfo(timezone)).date() + timedelta(days=1), time(),
                                  ZoneInfo(timezone))
    due = due_soon(session, now, today_ends - now, limit=1000)
    overdue = sum(1 for clock in due if clock.due_at <= now)
    return "\n".join([
        f"yesterday, {report.days[0]} ({timezone}):",
        *summary_lines(report),
        f"today: {len(due):,} SLA clock(s) run out before midnight, {overdue:,} of them already overdue "
        f"(/due 12h lists them)",
    ])
