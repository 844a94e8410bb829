"""Routing decisions: `router.assignment` with 200 agents and 20,000 open tickets.

Ours (the maintained `agents.load` column, the agents read with one query, a conditional UPDATE
to claim capacity, set-based writes) against the plain baseline (the same ranking and writes,
but every decision reads all agents through the ORM and counts each one's load with COUNT(*)
over the open tickets), side by side in one run, on SQLite and, with --pg, on PostgreSQL.

    python bench/router.py [--agents 200] [--open 20000] [--decisions 2000] [--runs 5] [--pg URL] [--write]

Every run starts from a copy of the same freshly built database. A decision routes one new
ticket: rank, claim, offer row, two audit events, the agent's notification. Timed four ways:
- `assign` with one transaction per decision (what the brief asks), with the product's
  `synchronous=FULL`: every commit waits for an fsync, which on most disks alone caps the rate;
- the same with `synchronous=NORMAL` (WAL; durable against a crash of the process, not of the
  machine), to show what the decision itself costs;
- `assign` per ticket, 200 tickets per transaction: the shape `route_pending` had at first;
- `assign_many`, 200 tickets per call and transaction: the set-based path `route_pending` takes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from probe import machine, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, insert, select, text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from models.tables import Agent, Assignment, Customer, Ticket  # noqa: E402
from paidan.db import make_engine, upgrade  # noqa: E402
from router import assignment  # noqa: E402
from router.agents import open_load  # noqa: E402
from router.config import RouterConfig  # noqa: E402

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 11:00 in Asia/Shanghai
CONFIG = RouterConfig()
CATEGORIES = ("technical", "service", "transaction", "product")
BATCH = 200  # router.scheduler.ROUTE_BATCH


# --------------------------------------------------------------------------------------------
# The data


def build(url: str, *, agents: int, open_tickets: int, new_tickets: int, seed: int = 7) -> list[int]:
    """Agents, customers, open assigned tickets and the new tickets to route; returns the new ids."""
    upgrade(url)
    rnd = random.Random(seed)
    engine = make_engine(url)
    shifts = [
        None,
        {"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4], "start": "09:00", "end": "18:00"},
        {"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4, 5, 6], "start": "08:00", "end": "20:00"},
        {"tz": "Asia/Shanghai", "days": [0, 1, 2, 3, 4], "start": "22:00", "end": "06:00"},  # off now
        {"tz": "Europe/London", "days": [0, 1, 2, 3, 4], "start": "00:00", "end": "09:00"},
    ]
    agent_rows = []
    for i in range(agents):
        skills = rnd.sample(CATEGORIES, rnd.choice((1, 2, 2, 3)))
        skills += [lang for lang, p in (("zh", 0.9), ("en", 0.4)) if rnd.random() < p]
        agent_rows.append({
            "name": f"agent-{i:03d}", "role": "agent", "skills": sorted(skills),
            "capacity": rnd.randint(120, 160), "seniority": rnd.choice((1, 1, 2, 2, 3)),
            "online": rnd.random() < 0.8, "on_call": False, "load": 0,
            "shift": rnd.choices(shifts, weights=(3, 4, 3, 1, 1))[0], "telegram_id": 10_000 + i,
            "last_assigned_at": NOW - timedelta(minutes=rnd.randint(1, 600)) if rnd.random() < 0.9 else None,
            "created_at": NOW,
        })
    agent_rows.append({"name": "supervisor", "role": "supervisor", "skills": [], "capacity": 0, "seniority": 3,
                       "online": True, "on_call": True, "load": 0, "shift": None, "telegram_id": 1,
                       "created_at": NOW})
    customers = max(1, open_tickets // 3)
    with Session(engine) as session, session.begin():
        session.execute(insert(Agent), agent_rows)
        session.execute(insert(Customer), [{"display_name": f"客户{i}", "vip": False, "created_at": NOW}
                                           for i in range(customers + new_tickets)])
        agent_ids = session.scalars(select(Agent.id).where(Agent.role == "agent").order_by(Agent.id)).all()
        capacity = {a: r["capacity"] for a, r in zip(agent_ids, agent_rows)}
        load = dict.fromkeys(agent_ids, 0)
        open_rows, seq = [], 0
        for _ in range(open_tickets):
            agent_id = rnd.choice(agent_ids)
            while load[agent_id] >= capacity[agent_id] * 0.75:
                agent_id = rnd.choice(agent_ids)
            load[agent_id] += 1
            seq += 1
            open_rows.append(_ticket(seq, rnd.randint(1, customers), rnd, state=rnd.choice(
                ("assigned", "in_progress", "in_progress", "awaiting_customer")), agent_id=agent_id))
        ids = session.execute(insert(Ticket).returning(Ticket.id, sort_by_parameter_order=True), open_rows).scalars().all()
        session.execute(insert(Assignment), [
            {"ticket_id": tid, "agent_id": row["assigned_agent_id"], "offered_at": NOW - timedelta(hours=2),
             "expires_at": NOW - timedelta(hours=1, minutes=50),
             "accepted_at": None if row["state"] == "assigned" else NOW - timedelta(hours=1, minutes=55),
             "reason": "bench", "data": {}}
            for tid, row in zip(ids, open_rows)])
        for agent_id, n in load.items():
            session.execute(Agent.__table__.update().where(Agent.id == agent_id).values(load=n))
        new_rows = []
        for i in range(new_tickets):
            seq += 1
            # half of them from customers who already have a ticket: the previous-agent rule applies
            customer = rnd.randint(1, customers) if i % 2 == 0 else customers + 1 + i
            new_rows.append(_ticket(seq, customer, rnd, state="new", agent_id=None))
        new_ids = session.execute(insert(Ticket).returning(Ticket.id, sort_by_parameter_order=True),
                                  new_rows).scalars().all()
    if engine.dialect.name == "postgresql":
        # Planner statistics, as autovacuum would have gathered them on a database in use; without
        # them PostgreSQL plans the freshly bulk-loaded tables as if they were empty.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()  # the last SQLite connection to close checkpoints the WAL into the file we copy
    return list(new_ids)


def _ticket(seq: int, customer_id: int, rnd: random.Random, *, state: str, agent_id: int | None) -> dict:
    priority = rnd.choices(("P0", "P1", "P2", "P3"), weights=(2, 15, 50, 33))[0]
    return {
        "number": f"GD20261124{seq:06d}", "customer_id": customer_id, "channel": rnd.choice(("email", "telegram", "web")),
        "subject": "订单问题", "state": state, "type": rnd.choices(("inquiry", "incident", "complaint", "request"),
                                                               weights=(40, 30, 10, 20))[0],
        "category": rnd.choices(CATEGORIES, weights=(35, 35, 20, 10))[0], "priority": priority,
        "language": rnd.choices(("zh", "en", None), weights=(70, 20, 10))[0],
        "assigned_agent_id": agent_id, "assigned_at": NOW - timedelta(hours=2) if agent_id else None,
        "routed_at": NOW - timedelta(hours=2) if agent_id else None, "flags": [],
        "created_at": NOW - timedelta(hours=3), "updated_at": NOW - timedelta(hours=2),
    }


# --------------------------------------------------------------------------------------------
# The two ways to decide


def ours(session: Session, ticket: Ticket) -> assignment.AssignmentResult:
    return assignment.assign(session, ticket, CONFIG, NOW)


def plain(session: Session, ticket: Ticket) -> assignment.AssignmentResult:
    """The obvious implementation: every agent through the ORM, each one's load counted from the
    open tickets, the same ranking, then the same writes (and a plain load increment)."""
    counted = open_load(session)
    agents = [
        assignment.AgentState(id=a.id, name=a.name, role=a.role, skills=frozenset(a.skills or []),
                              capacity=a.capacity, load=counted.get(a.id, 0), seniority=a.seniority,
                              online=a.online, shift=assignment.parse_shift(a.shift),
                              last_assigned_at=a.last_assigned_at, telegram_id=a.telegram_id)
        for a in session.scalars(select(Agent)).all()
    ]
    facts = assignment.ticket_facts(session, ticket)
    choice = assignment.rank(facts, agents, CONFIG, NOW)
    if choice.agent_id is None:
        return assignment._queue(session, ticket, choice, NOW, actor="router", event=True)
    agent = session.get(Agent, choice.agent_id)
    agent.load += 1
    agent.last_assigned_at = NOW
    chosen = next(a for a in agents if a.id == choice.agent_id)
    [result] = assignment._write_offers(session, [(ticket, chosen, choice)], CONFIG, NOW, actor="router")
    return result


# --------------------------------------------------------------------------------------------
# Timing


def per_transaction(url: str, ids: list[int], decide, *, synchronous: str | None = None) -> dict:
    engine = make_engine(url)
    if synchronous:
        event.listen(engine, "connect", lambda conn, _r: conn.execute(f"PRAGMA synchronous={synchronous}"))
    latencies, outcomes = [], {"assigned": 0, "queued": 0}
    _warm(engine, decide)
    start = time.perf_counter()
    for ticket_id in ids:
        t0 = time.perf_counter()
        with Session(engine, expire_on_commit=False) as session, session.begin():
            result = decide(session, session.get(Ticket, ticket_id))
        latencies.append(time.perf_counter() - t0)
        outcomes["queued" if result.queued else "assigned"] += 1
    elapsed = time.perf_counter() - start
    engine.dispose()
    return _figures(len(ids), elapsed, latencies, outcomes)


def set_based(url: str, ids: list[int], _decide=None) -> dict:
    """Batches of BATCH tickets, each batch one `assign_many` call in one transaction; a decision's
    latency is the batch's time (reading, deciding, writing, commit) divided by its tickets."""
    engine = make_engine(url)
    latencies, outcomes = [], {"assigned": 0, "queued": 0}
    _warm(engine, ours)
    start = time.perf_counter()
    for first in range(0, len(ids), BATCH):
        chunk = ids[first:first + BATCH]
        t0 = time.perf_counter()
        with Session(engine, expire_on_commit=False) as session, session.begin():
            tickets = session.scalars(select(Ticket).where(Ticket.id.in_(chunk)).order_by(Ticket.id)).all()
            for result in assignment.assign_many(session, tickets, CONFIG, NOW):
                outcomes["queued" if result.queued else "assigned"] += 1
        latencies += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return _figures(len(ids), elapsed, latencies, outcomes)


def batched(url: str, ids: list[int], decide) -> dict:
    """route_pending's first shape: up to BATCH tickets in one transaction, `assign` called for
    each; a decision's latency is its own call plus its share of the batch's commit."""
    engine = make_engine(url)
    latencies, outcomes = [], {"assigned": 0, "queued": 0}
    _warm(engine, decide)
    start = time.perf_counter()
    for first in range(0, len(ids), BATCH):
        chunk = ids[first:first + BATCH]
        with Session(engine, expire_on_commit=False) as session:
            with session.begin():
                tickets = session.scalars(select(Ticket).where(Ticket.id.in_(chunk)).order_by(Ticket.id)).all()
                own = []
                for ticket in tickets:
                    t0 = time.perf_counter()
                    result = decide(session, ticket)
                    own.append(time.perf_counter() - t0)
                    outcomes["queued" if result.queued else "assigned"] += 1
                c0 = time.perf_counter()
            commit_share = (time.perf_counter() - c0) / len(own)
        latencies += [t + commit_share for t in own]
    elapsed = time.perf_counter() - start
    engine.dispose()
    return _figures(len(ids), elapsed, latencies, outcomes)


def _warm(engine, decide) -> None:
    """Compile the statements once (not measured): a decision on a throwaway ticket, rolled back."""
    with Session(engine) as session:
        session.begin()
        ticket = session.scalar(select(Ticket).where(Ticket.state == "new").limit(1))
        decide(session, ticket)
        session.rollback()


def _figures(n: int, elapsed: float, latencies: list[float], outcomes: dict) -> dict:
    latencies.sort()
    return {"rate": n / elapsed, "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "assigned": outcomes["assigned"], "queued": outcomes["queued"]}


# --------------------------------------------------------------------------------------------
# Databases, runs, results


def fresh_pg(base_url: str) -> str:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"paidan_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_pg(url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


MODES = [
    # label, decide, how, how many decisions (the baseline is slow: fewer, the rate is what counts)
    ("ours: `assign`, one transaction per decision", "ours", "txn", 1.0),
    ("ours: `assign`, one transaction per decision, synchronous=NORMAL", "ours", "txn-normal", 1.0),
    ("ours: `assign` per ticket, 200 per transaction (route_pending before it used assign_many)", "ours", "batch", 1.0),
    ("ours: `assign_many`, 200 per call and transaction (route_pending)", "ours", "set", 1.0),
    ("plain: one transaction per decision", "plain", "txn", 0.15),
    ("plain: 200 per transaction", "plain", "batch", 0.15),
]
RUNNERS = {"batch": batched, "set": set_based}


def commit_floor(workdir: Path, n: int = 300) -> float:
    """Milliseconds one bare commit takes on this disk with the product's SQLite settings: the
    floor under any one-transaction-per-decision rate."""
    engine = make_engine(f"sqlite:///{workdir / 'floor.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, 0)")
    start = time.perf_counter()
    for _ in range(n):
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE t SET v = v + 1 WHERE id = 1")
    engine.dispose()
    return (time.perf_counter() - start) / n * 1000


def run_sqlite(args) -> list[tuple[str, dict]]:
    workdir = Path(tempfile.mkdtemp(prefix="paidan-bench-router-"))
    args.commit_ms = commit_floor(workdir)
    print(f"a bare commit (synchronous=FULL): {args.commit_ms:.2f} ms", file=sys.stderr)
    template = workdir / "template.db"
    t0 = time.perf_counter()
    ids = build(f"sqlite:///{template}", agents=args.agents, open_tickets=args.open, new_tickets=args.decisions)
    print(f"built {args.agents} agents, {args.open} open tickets, {len(ids)} new in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    results = []
    try:
        for label, who, how, share in MODES:
            if args.only and args.only not in label:
                continue
            runs = []
            for run in range(args.runs):
                db = workdir / f"run-{run}.db"
                shutil.copyfile(template, db)
                url = f"sqlite:///{db}"
                decide = ours if who == "ours" else plain
                subset = ids[:max(BATCH, int(len(ids) * share))]
                if how in RUNNERS:
                    runs.append(RUNNERS[how](url, subset, decide))
                else:
                    runs.append(per_transaction(url, subset, decide,
                                                synchronous="NORMAL" if how == "txn-normal" else None))
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                r = runs[-1]
                print(f"  SQLite {label}: {r['rate']:.0f}/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                      f"({r['assigned']} assigned, {r['queued']} queued)", file=sys.stderr)
            results.append((label, _median(runs)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def run_pg(args) -> list[tuple[str, dict]]:
    results = []
    for label, who, how, share in MODES:
        if how == "txn-normal" or (args.only and args.only not in label):
            continue
        runs = []
        for _ in range(args.runs):
            url = fresh_pg(args.pg)
            try:
                ids = build(url, agents=args.agents, open_tickets=args.open, new_tickets=args.decisions)
                decide = ours if who == "ours" else plain
                subset = ids[:max(BATCH, int(len(ids) * share))]
                runs.append(RUNNERS[how](url, subset, decide) if how in RUNNERS else per_transaction(url, subset, decide))
            finally:
                drop_pg(url)
            r = runs[-1]
            print(f"  PostgreSQL {label}: {r['rate']:.0f}/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms",
                  file=sys.stderr)
        results.append((label, _median(runs)))
    return results


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


GOAL_RATE, GOAL_P99_MS = 2000, 5.0  # on SQLite


def table(database: str, results: list[tuple[str, dict]]) -> list[str]:
    def goal(label: str, r: dict) -> str:
        if database != "SQLite" or not label.startswith("ours"):
            return ""
        return "met" if r["rate"] >= GOAL_RATE and r["p99_ms"] <= GOAL_P99_MS else "**not met**"

    lines = [f"| {database} | {label} | {r['rate']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
             f"{r['assigned']:.0f} / {r['queued']:.0f} | {goal(label, r)} |" for label, r in results]
    by = dict(results)
    pairs = [("one transaction per decision", MODES[0][0], MODES[4][0]),
             ("200 per transaction", MODES[2][0], MODES[5][0]),
             ("200 per transaction, set-based", MODES[3][0], MODES[5][0])]
    for shape, mine, theirs in pairs:
        if mine in by and theirs in by:
            lines.append(f"| {database} | ratio ours / plain, {shape} | **{by[mine]['rate'] / by[theirs]['rate']:.1f}×** "
                         f"| | {by[theirs]['p99_ms'] / by[mine]['p99_ms']:.1f}× lower p99 | | |")
    return lines


def write_results(lines: list[str], args) -> None:
    write_section("router", "\n".join([
        "## Router: assignment decisions",
        "",
        f"`python bench/router.py --agents {args.agents} --open {args.open} --decisions {args.decisions} "
        f"--runs {args.runs}{' --pg …' if args.pg else ''}`, {date.today().isoformat()}, {machine()}. "
        f"{args.agents} agents (skills, capacities 120–160, seniorities, shifts in two time zones, 80 % online), "
        f"{args.open:,} open assigned tickets; each decision routes one new ticket (rank, claim capacity, "
        "offer row, two audit events, agent notification in the outbox). Median of "
        f"{args.runs} runs, each on a fresh copy of the database (PostgreSQL: a fresh database). The plain "
        "baseline routes 15 % as many tickets (it is slow; the rate is what compares).",
        "Goal (SQLite): >= 2,000 decisions/s with p99 <= 5 ms per decision.",
        "",
        "| database | decisions | per second | p50 ms | p99 ms | assigned / queued | goal |",
        "|---|---|---:|---:|---:|---:|---|",
        *lines,
        "",
        f"A commit with the product's `synchronous=FULL` waits for an fsync of the WAL: on this disk a bare "
        f"commit took {args.commit_ms:.2f} ms in this run, so one transaction per decision cannot pass "
        f"~{1000 / args.commit_ms:,.0f}/s whatever the decision costs. The `synchronous=NORMAL` row shows a "
        "lone decision's own cost with its own commit: about seven statements (the customer's previous agent, "
        "the top agents for the skills, the claim, the offer, the ticket, its two events, the notification), "
        "each a round trip through SQLAlchemy. The 200-per-transaction rows are production's shape (the route "
        "step commits up to 200 tickets at once); `assign_many` reads the agents once per batch, ranks in "
        "memory and writes each kind of row with one multi-row statement. PostgreSQL statistics are gathered "
        "(ANALYZE) after each build, as autovacuum would on a database in use. The machine is shared: load "
        f"average {args.load_before} before the run, {args.load_after} after.",
    ]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--open", type=int, default=20000)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pg", help="PostgreSQL URL (a fresh database is created on that server for each run)")
    parser.add_argument("--only", help="run only the modes whose label contains this")
    parser.add_argument("--write", action="store_true", help="record the figures in bench/RESULTS.md")
    args = parser.parse_args()
    args.load_before = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = table("SQLite", run_sqlite(args))
    if args.pg:
        lines += table("PostgreSQL", run_pg(args))
    args.load_after = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print("\n".join(lines))
    if args.write:
        write_results(lines, args)


if __name__ == "__main__":
    main()
