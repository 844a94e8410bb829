"""The simulated working day (tests/test_simulation.py): its runtime, ours against an earlier revision.

    .venv/bin/python bench/simulation.py [--runs 3] [--against REV] [--pg URL] [--no-sqlite] [--no-write]

The test is the router's end-to-end load: 2,080 messages over three channels, 20 agents, the
scheduler's timers and the agents' actions, minute by minute on a fake clock (issue #4's goal: under
60 s on both databases). Each run starts the test in a fresh process; this checkout and REV (checked
out into a temporary git worktree, default the commit before this session's router work) alternate
run by run (and which goes first alternates), so the machine's changing speed hits both alike. Reported: the test's own "simulated
day ... in X s" and the process's CPU time, medians of the runs, and their ratios.
Writes into bench/RESULTS.md between <!-- simulation:start --> and <!-- simulation:end -->.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from probe import speed_probe, write_section  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_AGAINST = "03e61f2"  # main before 2026-12-06's second session: statements per action cut since
RESULT = re.compile(r"simulated day: .* in ([0-9.]+) s")


def run_once(checkout: Path, pg_url: str | None) -> tuple[float, float]:
    """(the test's own seconds, CPU seconds of the process) for one run in `checkout`."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PAIDAN_TEST_DATABASE_URL", None)
    if pg_url:
        env["PAIDAN_TEST_DATABASE_URL"] = pg_url
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_simulation.py", "-q", "-s", "-p", "no:cacheprovider"],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = RESULT.search(done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit(f"the simulation failed in {checkout}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return float(found.group(1)), (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per side and database (medians are reported)")
    parser.add_argument("--against", default=DEFAULT_AGAINST, help="git revision to compare with")
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL server URL (as PAIDAN_TEST_DATABASE_URL); omit to skip")
    parser.add_argument("--no-sqlite", action="store_true", help="only the PostgreSQL leg")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    legs = ([] if args.no_sqlite else [("SQLite", None)]) + ([("PostgreSQL", args.pg)] if args.pg else [])
    if not legs:
        raise SystemExit("nothing to run: give --pg URL or leave out --no-sqlite")
    worktree = Path(tempfile.mkdtemp(prefix="paidan-sim-")) / "against"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), args.against], cwd=ROOT, check=True)
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rows = []
    probes = [speed_probe()]
    try:
        for label, url in legs:
            seconds: dict[str, list[tuple[float, float]]] = {"ours": [], "against": []}
            for i in range(args.runs):
                # Which side goes first alternates too: a machine speeding up or slowing down during
                # the runs then favours neither.
                sides = (("ours", ROOT), ("against", worktree))
                for side, checkout in (sides if i % 2 == 0 else sides[::-1]):
                    seconds[side].append(run_once(checkout, url))
                    print(f"{label} run {i + 1} {side}: {seconds[side][-1][0]:.1f} s (CPU {seconds[side][-1][1]:.1f} s)",
                          flush=True)
            ours = [statistics.median(v) for v in zip(*seconds["ours"])]
            then = [statistics.median(v) for v in zip(*seconds["against"])]
            rows.append((label, ours, then, [s for s, _ in seconds["ours"]], [s for s, _ in seconds["against"]]))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
    probes.append(speed_probe())
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [
        "## Router: the simulated working day",
        "",
        f"`python bench/simulation.py --runs {args.runs}{' --pg …' if args.pg else ''}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}. tests/test_simulation.py (2,080 messages, "
        f"20 agents, one day on a fake clock) at {here} and at {args.against}, alternating run by run; medians of "
        f"{args.runs}. PostgreSQL is the throwaway test cluster (tests/peers/postgres.sh: fsync off, autovacuum every "
        f"second). Goal: under 60 s on both databases.",
        "",
        f"| database | ours ({here}) | CPU | {args.against} | CPU | ratio | each run, ours / {args.against} | goal |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, ours, then, each, each_then in rows:
        runs = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(each, each_then))
        lines.append(f"| {label} | {ours[0]:.1f} s | {ours[1]:.1f} s | {then[0]:.1f} s | {then[1]:.1f} s | "
                     f"**{then[0] / ours[0]:.2f}×** | {runs} s | {'met' if ours[0] < 60 else '**not met**'} |")
    lines += ["", f"Load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}; speed probe "
                  f"(bench/probe.py, lower is faster) {probes[0]:.0f} ms before, {probes[1]:.0f} ms after."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("simulation", body)


if __name__ == "__main__":
    main()
