"""A machine speed probe for the benchmarks: this virtual machine's speed changes during a day (the
same run has taken 60 s and 120 s hours apart), so each bench prints the probe next to its figures."""

from __future__ import annotations

import os
import platform
import statistics
import time


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
