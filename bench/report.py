"""The supervisors' report (router/reports.py): how long the dashboard and `paidan report` take.

A database of a busy month — 100,000 tickets by default over 30 days, two SLA clocks each, their audit
events, offers and surveys — built once with bulk inserts; then the 30-day report is built several times:

- ours: `build_report`, which reads only the columns it counts and lets the database group what it can;
- plain: the obvious ORM code — the period's tickets as objects with their events and clocks loaded by
  selectinload, counted in Python — for the same figures (contacts by day and channel, resolutions,
  reopens, SLA met/breached, first-response times).

    python bench/report.py [--tickets 100000] [--days 30] [--runs 5] [--pg URL] [--write]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from probe import machine, speed_probe, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select  # noqa: E402
from sqlalchemy.orm import Session, selectinload  # noqa: E402

from intake import fresh_pg, fresh_sqlite  # noqa: E402
from models.tables import (  # noqa: E402
    Agent,
    Assignment,
    Customer,
    SlaClock,
    Survey,
    Ticket,
    TicketEvent,
)
from paidan.db import make_engine, upgrade  # noqa: E402
from router.reports import build_report, last_days  # noqa: E402

ZONE = "Asia/Shanghai"
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
CHANNELS = ("email", "telegram", "web", "api")
PRIORITIES = ("P0", "P1", "P2", "P3")
TARGETS = {"P0": 900, "P1": 3600, "P2": 14400, "P3": 86400}


def build(url: str, tickets: int, days: int) -> None:
    """A month of a busy desk, written with multi-row INSERTs in chunks."""
    rng = random.Random(30)
    upgrade(url)
    engine = make_engine(url)
    start = NOW - timedelta(days=days)
    with Session(engine) as session, session.begin():
        session.execute(insert(Agent), [{"name": f"agent{i:02d}", "skills": ["service"], "capacity": 20,
                                         "role": "agent", "online": True, "load": 0} for i in range(40)])
        session.execute(insert(Customer), [{"display_name": f"c{i}"} for i in range(tickets // 3)])
    chunk = 5000
    for first in range(0, tickets, chunk):
        rows, clocks, events, offers, surveys = [], [], [], [], []
        for i in range(first, min(first + chunk, tickets)):
            created = start + timedelta(seconds=rng.uniform(0, days * 86400))
            priority = rng.choices(PRIORITIES, (2, 20, 50, 28))[0]
            answered = created + timedelta(seconds=rng.expovariate(1 / (TARGETS[priority] * 0.4)))
            resolved = answered + timedelta(seconds=rng.expovariate(1 / (TARGETS[priority] * 3)))
            done = resolved < NOW
            agent = 1 + i % 40
            rows.append({"id": i + 1, "number": f"GD{i:011d}", "customer_id": 1 + i % (tickets // 3),
                         "channel": rng.choice(CHANNELS), "state": "resolved" if done else "in_progress",
                         "type": "inquiry", "category": "service", "priority": priority, "flags": [],
                         "assigned_agent_id": agent, "created_at": created, "updated_at": created,
                         "routed_at": created, "first_response_at": answered if answered < NOW else None,
                         "resolved_at": resolved if done else None})
            for kind, at, target in (("first_response", answered, TARGETS[priority]),
                                     ("resolution", resolved, TARGETS[priority] * 6)):
                due = created + timedelta(seconds=target)
                clocks.append({"ticket_id": i + 1, "kind": kind, "priority": priority, "calendar": "24x7",
                               "target_seconds": target, "started_at": created, "consumed_seconds": 0,
                               "due_at": due, "warn_at": due, "stopped_at": at if at < NOW else None,
                               "breached_at": due if min(at, NOW) > due else None})
            events.append({"ticket_id": i + 1, "at": created, "actor": "system", "kind": "created",
                           "to_state": "new", "reason": "", "data": {}})
            offers.append({"ticket_id": i + 1, "agent_id": agent, "offered_at": created,
                           "expires_at": created + timedelta(minutes=10), "accepted_at": created, "reason": "",
                           "data": {}})
            if done:
                events.append({"ticket_id": i + 1, "at": resolved, "actor": f"agent:{agent}", "kind": "transition",
                               "from_state": "in_progress", "to_state": "resolved", "reason": "", "data": {}})
                surveys.append({"ticket_id": i + 1, "customer_id": 1 + i % (tickets // 3), "channel": "email",
                                "agent_id": agent, "sent_at": resolved, "comment": "",
                                "rating": rng.choice((None, None, 3, 4, 5, 5, 1))})
        with Session(engine) as session, session.begin():
            for table, values in ((Ticket, rows), (SlaClock, clocks), (TicketEvent, events),
                                  (Assignment, offers), (Survey, surveys)):
                session.execute(insert(table), values)
    if url.startswith("postgresql"):
        with engine.connect() as connection:
            connection.exec_driver_sql("COMMIT")
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def plain_report(session: Session, since: datetime, until: datetime) -> dict:
    """The same headline figures, the obvious way: objects and Python loops."""
    zone = ZoneInfo(ZONE)
    tickets = session.scalars(
        select(Ticket).where(Ticket.created_at >= since, Ticket.created_at < until)
        .options(selectinload(Ticket.events))
    ).all()
    by_day = Counter((t.channel, t.created_at.astimezone(zone).date()) for t in tickets)
    waits = sorted((t.first_response_at - t.created_at).total_seconds() for t in tickets if t.first_response_at)
    clocks = session.scalars(select(SlaClock).join(Ticket, Ticket.id == SlaClock.ticket_id)
                             .where(Ticket.created_at >= since, Ticket.created_at < until)).all()
    events = session.scalars(select(TicketEvent).where(TicketEvent.at >= since, TicketEvent.at < until)).all()
    return {
        "contacts": len(tickets), "by_day": len(by_day),
        "resolved": sum(e.to_state == "resolved" for e in events),
        "breached": sum(c.breached_at is not None for c in clocks),
        "median_wait": waits[len(waits) // 2] if waits else None,
    }


def ours_report(session: Session, since: datetime, until: datetime):
    return build_report(session, since=since, until=until, now=NOW, timezone=ZONE)


def time_runs(url: str, fn, days: int, runs: int) -> list[float]:
    since, until = last_days(days, NOW, ZONE)
    engine = make_engine(url)
    seconds = []
    try:
        for _ in range(runs):
            with Session(engine) as session:
                started = time.perf_counter()
                fn(session, since, until)
                seconds.append(time.perf_counter() - started)
    finally:
        engine.dispose()
    return seconds


def measure(label: str, make_db, args) -> list[str]:
    url, drop = make_db()
    try:
        started = time.perf_counter()
        build(url, args.tickets, args.days)
        print(f"{label}: built {args.tickets:,} tickets in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        since, until = last_days(args.days, NOW, ZONE)
        with Session(make_engine(url)) as session:  # both count the same tickets
            ours, plain = ours_report(session, since, until), plain_report(session, since, until)
        assert ours.created == plain["contacts"] and ours.resolved == plain["resolved"], (ours.created, plain)
        assert sum(x.breached for x in ours.sla) == plain["breached"]
        rows = []
        results = {}
        for name, fn in (("plain", plain_report), ("ours", ours_report)):
            runs = time_runs(url, fn, args.days, args.runs)
            results[name] = statistics.median(runs)
            print(f"{label} {name}: " + ", ".join(f"{s:.2f}" for s in runs), file=sys.stderr)
        rows.append(f"| {label} | {ours.created:,} | {results['ours']:.2f} s | {results['plain']:.2f} s | "
                    f"**{results['plain'] / results['ours']:.1f}×** |")
        return rows
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pg", metavar="URL", help="also measure on this PostgreSQL server (a database is created)")
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    probe_before = speed_probe()
    rows = measure("SQLite", fresh_sqlite, args)
    if args.pg:
        rows += measure("PostgreSQL", lambda: fresh_pg(args.pg), args)
    body = "\n".join([
        "## Reports: the supervisors' 30-day report",
        "",
        f"`python bench/report.py --tickets {args.tickets} --days {args.days} --runs {args.runs}"
        f"{' --pg …' if args.pg else ''}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; at the end "
        f"{speed_probe():.0f} ms (at the start {probe_before:.0f} ms). A month of a busy "
        f"desk: {args.tickets:,} tickets over {args.days} days, two SLA clocks each, their events, offers and "
        "surveys. Ours is `router.reports.build_report` (what `paidan report`, /dashboard and /api/v1/report run); "
        "plain is the obvious ORM code for its headline figures only (tickets with their events as objects, "
        "clocks as objects, counted in Python). Median of the runs, each in a fresh session.",
        "Goal: the dashboard answers within 2 s for such a month.",
        "",
        "| database | tickets in the report | ours | plain | ratio |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ])
    print(body)
    if args.write:
        write_section("report", body)


if __name__ == "__main__":
    main()
