"""A machine speed probe for the benchmarks: this virtual machine's speed changes during a day (the
same run has taken 60 s and 120 s hours apart), so each bench prints the probe next to its figures."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def speed_probe() -> float:
    """Milliseconds for a fixed pure-Python workload (median of 5); lower is a faster machine."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def machine() -> str:
    """Cores, CPU, Python, kernel and the speed probe, for a benchmark's results line."""
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
            f"speed probe {speed_probe():.0f} ms (bench/probe.py; lower is faster)")


def write_section(name: str, body: str) -> None:
    """Put `body` into bench/RESULTS.md between `<!-- name:start -->` and `<!-- name:end -->`, replacing
    what was there (or appending the section); every other bench's section is left as it is."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip(chr(10))}\n{end}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")
