"""Ticket search (router/search.py, `paidan tickets find`, /find): how long an agent waits.

A desk's year or so of mail — 300,000 messages on 100,000 tickets by default, Chinese and English,
with order numbers — written once with bulk inserts; then the same searches, side by side in one run:

- ours: PostgreSQL with migration 0006's pg_trgm GIN indexes on message text, subjects and names;
- plain: the same database and the same queries with those indexes dropped (what search is without
  them, and what it is on a server that refuses the extension): every search scans every message.
- SQLite, for reference: it has no such index and always scans.

Each search is `find_tickets(session, query, limit=10)` in a fresh session; median of `--runs`.

    python bench/search.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres [--messages 300000]
                           [--runs 5] [--write]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from probe import machine, speed_probe, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from intake import fresh_pg, fresh_sqlite, pg_settings  # noqa: E402
from models.tables import SEARCH_INDEXES, Customer, Identity, Message, Ticket  # noqa: E402
from paidan.db import make_engine, upgrade  # noqa: E402
from router.search import find_tickets  # noqa: E402

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
SENTENCES = [
    "您好，订单 {order} 的退款还没有到账，麻烦帮忙查一下", "支付的时候提示错误码 E{code}，付不了款",
    "快递单号 SF{order} 三天没有更新物流了", "发票抬头写错了，能重新开一张吗？订单 {order}",
    "会员积分兑换失败，页面一直转圈", "I was charged twice for order {order}, please refund one",
    "The app crashes with error E{code} when I open my orders", "Where is my parcel? Tracking SF{order}",
    "Please change the delivery address of order {order}", "你们客服 {code} 号态度很差，我要投诉",
]
# (what an agent types, what it is): an order number seen once, a customer's email, a rare phrase,
# a common two-character Chinese word (too short for a trigram: scans either way), an English phrase.
QUERIES = [("{order}", "order number"), ("c{customer}@mail.example", "email"), ("发票抬头写错", "Chinese phrase"),
           ("退款", "two Chinese characters"), ("crashes with error", "English phrase")]


def build(url: str, messages: int) -> dict[str, str]:
    """Customers, tickets and messages with multi-row INSERTs; returns the queries' values."""
    rng = random.Random(2026)
    upgrade(url)
    engine = make_engine(url)
    tickets = max(1, messages // 3)
    customers = max(1, tickets // 2)
    orders = []
    with Session(engine) as session, session.begin():
        session.execute(insert(Customer), [{"id": c + 1, "display_name": f"客户{c}", "created_at": NOW}
                                           for c in range(customers)])
        session.execute(insert(Identity), [{"customer_id": c + 1, "kind": "email", "value": f"c{c}@mail.example",
                                            "created_at": NOW} for c in range(customers)])
        for start in range(0, tickets, 20_000):
            session.execute(insert(Ticket), [
                {"id": t + 1, "number": f"GD{20260101 + t // 1000 % 28:08d}{t:06d}", "customer_id": t % customers + 1,
                 "channel": "email", "subject": SENTENCES[t % len(SENTENCES)].split("，")[0][:40], "state":
                 "resolved" if t % 4 else "in_progress", "priority": "P2", "created_at": NOW - timedelta(minutes=t),
                 "updated_at": NOW - timedelta(minutes=t)} for t in range(start, min(tickets, start + 20_000))])
        for start in range(0, messages, 20_000):
            rows = []
            for m in range(start, min(messages, start + 20_000)):
                order, sentence = rng.randrange(10**9, 10**10), rng.choice(SENTENCES)
                if "{order}" in sentence:
                    orders.append(order)  # a number some message really holds
                rows.append({"ticket_id": m % tickets + 1, "customer_id": m % tickets % customers + 1,
                             "direction": "in", "channel": "email", "external_id": f"bench-{m}",
                             "text": sentence.format(order=order, code=rng.randrange(1000, 9999)),
                             "raw": b"", "received_at": NOW - timedelta(seconds=m), "created_at": NOW})
            session.execute(insert(Message), rows)
    if url.startswith("postgresql"):
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    engine.dispose()
    return {"order": str(orders[len(orders) // 2]), "customer": str(customers // 2)}


def time_queries(url: str, values: dict[str, str], runs: int) -> dict[str, tuple[float, int]]:
    """Median milliseconds and tickets found, per kind of query."""
    engine = make_engine(url)
    out = {}
    try:
        for pattern, kind in QUERIES:
            query = pattern.format(**values)
            times, found = [], 0
            for _ in range(runs):
                with Session(engine) as session:
                    started = time.perf_counter()
                    found = len(find_tickets(session, query, limit=10))
                    times.append((time.perf_counter() - started) * 1000)
            out[kind] = (statistics.median(times), found)
    finally:
        engine.dispose()
    return out


def drop_search_indexes(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for name in SEARCH_INDEXES:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    engine.dispose()


NOTES = """Reading the table:
- An order number, an email address or any rare string is what agents search for most ("I wrote last week
  about order …"); the trigram index answers it from a handful of rows, so it stays in milliseconds as
  mail accumulates, where the scan grows with every message (plain / ours is the ratio in one run).
- The phrases here come from 10 sentence templates, so each is in ~1 of 10 messages (30,000 rows): the
  index finds them all, then the newest tickets are picked, which costs what it costs. Real phrases are rarer.
- Two Chinese characters (退款) make no trigram: pg_trgm cannot narrow the search and scans, as plain does
  (the 0.8× is the planner trying the index first). Three characters or more use it.
- SQLite has no trigram index and always scans; a team with this much mail belongs on PostgreSQL."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", required=True, help="a PostgreSQL server URL (a database is created and dropped)")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    probe_before = speed_probe()
    pg_url, drop_pg = fresh_pg(args.pg)
    lite_url, drop_lite = fresh_sqlite()
    try:
        started = time.perf_counter()
        values = build(pg_url, args.messages)
        build(lite_url, args.messages)
        print(f"built {args.messages:,} messages twice in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        ours = time_queries(pg_url, values, args.runs)
        drop_search_indexes(pg_url)
        plain = time_queries(pg_url, values, args.runs)
        lite = time_queries(lite_url, values, args.runs)
        settings = pg_settings(pg_url)
    finally:
        drop_pg()
        drop_lite()
    lines = [
        f"`python bench/search.py --messages {args.messages} --runs {args.runs} --pg …`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {machine()} (at the start {probe_before:.0f} ms). "
        f"{args.messages:,} messages on {args.messages // 3:,} tickets of {args.messages // 6:,} customers; "
        f"one `find_tickets(limit=10)` per search in a fresh session, median of {args.runs}. {settings}.",
        "",
        "| search | tickets found | PostgreSQL, trigram indexes (ours) ms | PostgreSQL, no index (plain) ms | "
        "plain / ours | SQLite (scans) ms |",
        "|---|---|---|---|---|---|",
    ]
    for _, kind in QUERIES:
        (o, found), (p, _), (s, _) = ours[kind], plain[kind], lite[kind]
        lines.append(f"| {kind} | {found} | {o:.1f} | {p:.1f} | {p / o:.1f}× | {s:.1f} |")
    body = "## Ticket search\n\n" + "\n".join(lines) + "\n\n" + NOTES
    print(body)
    if args.write:
        write_section("search", body)


if __name__ == "__main__":
    main()
