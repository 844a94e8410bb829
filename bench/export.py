"""`paidan tickets export` (router/export.py): a month of a busy desk as CSV, time and memory.

The database is bench/report.py's (100,000 tickets over 30 days by default, two SLA clocks each,
events, offers, surveys). Both sides write the same CSV rows to /dev/null:

- ours: `router.export.rows`, pages of 2,000 tickets by id, each page's clocks, surveys and reopens in
  one query each, the page dropped from the session before the next;
- plain: the obvious ORM code — every ticket of the period at once with its events (selectinload), the
  period's clocks and surveys in dictionaries, then one row a ticket.

Memory is how much a fresh process's peak resident size (VmHWM) grows during one export, from where it
stood once it had opened the database: what the export itself holds.

    python bench/export.py [--tickets 100000] [--days 30] [--runs 3] [--pg URL] [--write]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from probe import machine, speed_probe, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session, selectinload  # noqa: E402

from intake import fresh_pg, fresh_sqlite  # noqa: E402
from models.tables import SlaClock, Survey, Ticket  # noqa: E402
from paidan.db import make_engine  # noqa: E402
from report import NOW, ZONE, build  # noqa: E402
from router import export  # noqa: E402
from router.reports import last_days  # noqa: E402


def ours(session: Session, since, until, sink) -> int:
    writer = csv.DictWriter(sink, fieldnames=export.COLUMNS)
    n = 0
    for row in export.rows(session, since, until, ZONE):
        writer.writerow(row)
        n += 1
    return n


def plain(session: Session, since, until, sink) -> int:
    """The same rows, the obvious way: everything of the period loaded as objects first."""
    zone = ZoneInfo(ZONE)
    tickets = session.scalars(select(Ticket).where(Ticket.created_at >= since, Ticket.created_at < until)
                              .options(selectinload(Ticket.events), selectinload(Ticket.assigned_agent))
                              .order_by(Ticket.id)).all()
    ids = [t.id for t in tickets]
    clocks, ratings = {}, {}
    for first in range(0, len(ids), 30_000):  # bound parameters per statement
        chunk = ids[first:first + 30_000]
        clocks.update({(c.ticket_id, c.kind): c for c in session.scalars(select(SlaClock).where(SlaClock.ticket_id.in_(chunk)))})
        ratings.update({s.ticket_id: s.rating for s in session.scalars(select(Survey).where(Survey.ticket_id.in_(chunk)))})
    writer = csv.DictWriter(sink, fieldnames=export.COLUMNS)
    for t in tickets:
        reopened = sum(1 for e in t.events if e.kind == "transition" and e.to_state == "reopened")
        writer.writerow(export._row(t, t.assigned_agent.name if t.assigned_agent else None, clocks,
                                    ratings.get(t.id), reopened, zone))
    return len(tickets)


def _one_export(url: str, fn_name: str, days: int, queue) -> None:
    engine = make_engine(url)
    since, until = last_days(days, NOW, ZONE)
    with Session(engine) as session:
        session.execute(select(Ticket.id).limit(1)).all()
        before = _peak_kib()
        if fn_name != "nothing":
            with open(os.devnull, "w", encoding="utf-8", newline="") as sink:
                {"ours": ours, "plain": plain}[fn_name](session, since, until, sink)
        queue.put(_peak_kib() - before)


def _peak_kib() -> int:
    """This process's peak resident size (VmHWM). Not ru_maxrss: Linux carries that across fork and exec,
    so a child spawned by a parent that had grown starts at the parent's peak."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def peak_kib(url: str, fn_name: str, days: int) -> int:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_one_export, args=(url, fn_name, days, queue))
    process.start()
    grown = queue.get(timeout=1800)
    process.join()
    return grown


def measure(label: str, make_db, args) -> list[str]:
    url, drop = make_db()
    try:
        started = time.perf_counter()
        build(url, args.tickets, args.days)
        print(f"{label}: built {args.tickets:,} tickets in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        since, until = last_days(args.days, NOW, ZONE)
        engine = make_engine(url)
        times: dict[str, list[float]] = {"ours": [], "plain": []}
        counted = {}
        try:
            for _ in range(args.runs):  # alternating, so both see the same machine
                for name, fn in (("plain", plain), ("ours", ours)):
                    with Session(engine) as session, open(os.devnull, "w", encoding="utf-8", newline="") as sink:
                        t0 = time.perf_counter()
                        counted[name] = fn(session, since, until, sink)
                        times[name].append(time.perf_counter() - t0)
        finally:
            engine.dispose()
        assert counted["ours"] == counted["plain"], counted
        memory = {name: peak_kib(url, name, args.days) for name in ("ours", "plain")}
        for name in ("plain", "ours"):
            print(f"{label} {name}: " + ", ".join(f"{s:.2f}" for s in times[name]) + f" s; +{memory[name] / 1024:.0f} MB",
                  file=sys.stderr)
        t_ours, t_plain = statistics.median(times["ours"]), statistics.median(times["plain"])
        # Under a megabyte the process's growth is allocator noise, and a ratio of it means nothing.
        memory_ratio = f"**{memory['plain'] / memory['ours']:.1f}×**" if memory["ours"] >= 1024 else "–"
        return [f"| {label} | {counted['ours']:,} | {t_ours:.2f} s ({counted['ours'] / t_ours:,.0f} rows/s) | "
                f"{t_plain:.2f} s | **{t_plain / t_ours:.1f}×** | +{memory['ours'] / 1024:.0f} MB | "
                f"+{memory['plain'] / 1024:.0f} MB | {memory_ratio} |"]
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", metavar="URL", help="also measure on this PostgreSQL server (a database is created)")
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    probe_before = speed_probe()
    rows = measure("SQLite", fresh_sqlite, args)
    if args.pg:
        rows += measure("PostgreSQL", lambda: fresh_pg(args.pg), args)
    probe_after = speed_probe()
    body = "\n".join([
        "## Ticket export (CSV)",
        "",
        f"`python bench/export.py --tickets {args.tickets} --days {args.days} --runs {args.runs}"
        f"{' --pg …' if args.pg else ''}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; "
        f"speed probe {probe_before:.0f} ms before the runs, {probe_after:.0f} ms after. "
        f"The same CSV rows of a {args.days}-day period to /dev/null; median of {args.runs} runs, alternating. "
        "Memory: the peak resident size a fresh process gains doing one export.",
        "",
        "| database | tickets | ours | plain ORM | ratio | ours memory | plain memory | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(body)
    if args.write:
        write_section("export", body)


if __name__ == "__main__":
    main()
