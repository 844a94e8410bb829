"""A machine speed probe for the benchmarks: this virtual machine's speed changes during a day (the
same run has taken 60 s and 120 s hours apart), so each bench prints the probe next to its figures."""

from __future__ import annotations

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
