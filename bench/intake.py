"""Intake throughput and latency: HTTP POST /api/v1/messages → committed ticket.

Ours (group commit: concurrent requests share one transaction and one fsync) against the plain
baseline (the same app and storage code, one transaction per message), side by side in one run,
on SQLite and, when a PostgreSQL URL is given or a server is installed, on PostgreSQL.

    python bench/intake.py [--requests 20000] [--concurrency 32] [--runs 5] [--pg URL] [--write]

The server runs in its own process (as `paidan serve` does), the load generator in this one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path

from probe import machine, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path, where bench/router.py would hide the
# `router` package: the project root goes there instead.
sys.path[0] = str(ROOT)
TOKEN = "bench-token"


def intake_sink(database_url: str, mode: str):
    """A migrated database's Intake, and what a channel hands messages to: ours (`accept`: concurrent
    messages share one transaction and fsync) or plain (one transaction per message)."""
    from paidan.db import make_engine, upgrade
    from router.intake import Intake

    upgrade(database_url)
    intake = Intake(make_engine(database_url))
    if mode == "ours":
        return intake, intake.accept

    async def plain(msg):
        return await asyncio.to_thread(intake.accept_now, msg)
    return intake, plain


def serve(database_url: str, mode: str) -> None:
    """Child process: run the real web app on a free port and print it."""
    import uvicorn

    from paidan.service import freeze_startup_objects
    from paidan.settings import Settings
    from paidan.web import build_app
    from router.queries import TicketQueries

    # One token sends every request here: the per-token limit (1,200 a minute by default) is off, since
    # this measures intake's capacity, not one integration's allowance.
    settings = Settings(database_url=database_url, api_tokens=[TOKEN], secret_key="bench",
                        web_port=0, log_level="WARNING", api_rate_limit_per_minute=0)
    intake, sink = intake_sink(database_url, mode)
    queries = TicketQueries(intake.engine)
    app = build_app(settings, sink=sink, ticket_view=queries.ticket_view, db_ok=queries.db_ok)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    async def main():
        freeze_startup_objects()
        print(f"PORT={sock.getsockname()[1]}", flush=True)
        await server.serve(sockets=[sock])

    from paidan.service import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
    intake.close()


async def load(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/api/v1/messages"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(requests))
    latencies: list[float] = []

    async def worker(session):
        for i in counter:
            # 5,000 customers: the first message of each opens a ticket, later ones continue it
            body = {"external_id": f"{run_id}-{i}", "email": f"c{i % 5000}@example.com", "name": "客户",
                    "subject": "订单问题", "text": f"订单 {i} 还没有发货，麻烦查一下物流。Order {i} not shipped yet."}
            t0 = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status not in (200, 201):
                    raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm-up (not measured)
        warm = iter(range(200))
        async def warmup():
            for i in warm:
                async with session.post(url, json={"external_id": f"{run_id}-w{i}", "email": "w@example.com",
                                                   "text": "warm"}, headers=headers) as r:
                    await r.read()
        await asyncio.gather(*(warmup() for _ in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return elapsed, latencies


def one_run(database_url: str, mode: str, requests: int, concurrency: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--db", database_url],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = int(proc.stdout.readline().strip().split("=")[1])
        _wait_until_listening(port)
        elapsed, lat = asyncio.run(load(port, requests, concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat.sort()
    return {"rate": requests / elapsed, "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


def _wait_until_listening(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server never listened on port {port}")


def fresh_sqlite() -> tuple[str, Callable[[], None]]:
    """A new database for one run, and what removes it afterwards."""
    d = tempfile.mkdtemp(prefix="paidan-bench-")
    return f"sqlite:///{d}/bench.db", lambda: shutil.rmtree(d, ignore_errors=True)


def fresh_pg(base_url: str) -> tuple[str, Callable[[], None]]:
    """A new database on the server of `base_url` for one run, and what drops it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"paidan_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), drop


def pg_settings(url: str) -> str:
    """The server's version and durability settings, which move its figures a lot."""
    from sqlalchemy import create_engine, text

    from paidan.db import normalise_url

    engine = create_engine(normalise_url(url))
    with engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        fsync, sync = conn.execute(text("SHOW fsync")).scalar(), conn.execute(text("SHOW synchronous_commit")).scalar()
    engine.dispose()
    return f"server {version} on this machine, fsync={fsync}, synchronous_commit={sync}"


def measure(label: str, make_db, args) -> list[str]:
    # Ours and plain alternate within each run, so a change in the machine's load hits both alike.
    # The plain way is slow: it sends a quarter of the requests (its rate is what compares).
    runs: dict[str, list[dict]] = {"ours": [], "plain": []}
    for _ in range(args.runs):
        for mode, requests in (("ours", args.requests), ("plain", max(1000, args.requests // 4))):
            url, remove = make_db()
            try:
                runs[mode].append(one_run(url, mode, requests, args.concurrency))
            finally:
                remove()
            r = runs[mode][-1]
            print(f"  {label} {mode}: {r['rate']:.0f} msg/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms",
                  file=sys.stderr)
    ours, plain = ({k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]} for mode in ("ours", "plain"))
    return [
        f"| {label} | group commit (ours) | {ours['rate']:,.0f} | {ours['p50_ms']:.1f} | {ours['p99_ms']:.1f} |",
        f"| {label} | one transaction per message (plain) | {plain['rate']:,.0f} | {plain['p50_ms']:.1f} | {plain['p99_ms']:.1f} |",
        f"| {label} | ratio ours / plain | **{ours['rate'] / plain['rate']:.1f}×** | | |",
        *([f"| {label} | goal >= 1,000/s, p99 <= 50 ms | "
           f"{'met' if ours['rate'] >= 1000 and ours['p99_ms'] <= 50 else '**not met**'} | | |"] if label == "SQLite" else []),
    ]


def write_results(lines: list[str], args) -> None:
    write_section("intake", "\n".join([
        "## Intake: HTTP POST to committed ticket",
        "",
        f"`python bench/intake.py --requests {args.requests} --concurrency {args.concurrency} --runs {args.runs}"
        f"{' --pg …' if args.pg else ''}`, "
        f"{date.today().isoformat()}, {machine()}. Server (uvicorn, one process) and load generator (aiohttp, "
        f"{args.concurrency} concurrent clients) share the machine. Median of {args.runs} runs, ours and plain "
        f"alternating; each run a fresh database. 5,000 customers: a quarter of the messages open a ticket, "
        f"the rest continue one (idempotency look-up, identity, topic threading, message, audit event).",
        "Goal (SQLite): >= 1,000 accepted messages/s with p99 <= 50 ms. SQLite as `paidan serve` runs it: WAL, "
        "synchronous=FULL (every commit waits for an fsync)."
        + (f" PostgreSQL: {pg_settings(args.pg)}." if args.pg else ""),
        "",
        "| database | intake | messages/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|",
        *lines,
    ]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pg", help="PostgreSQL URL (a fresh database is created on that server for each run)")
    parser.add_argument("--write", action="store_true", help="record the figures in bench/RESULTS.md")
    parser.add_argument("--serve", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.db, args.serve)
        return
    lines = measure("SQLite", fresh_sqlite, args)
    if args.pg:
        lines += measure("PostgreSQL", lambda: fresh_pg(args.pg), args)
    print("\n".join(lines))
    if args.write:
        write_results(lines, args)


if __name__ == "__main__":
    main()
