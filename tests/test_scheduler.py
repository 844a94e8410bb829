"""The scheduler (router/scheduler.py) keeps every job running when one of them fails."""

from __future__ import annotations

import asyncio
import logging

from router.scheduler import Job, Scheduler


def test_a_job_that_raises_does_not_stop_the_others(engine, caplog):
    ticks: list[int] = []

    def buggy(session, now) -> int:
        raise ValueError("a bug in one job")

    def counting(session, now) -> int:
        ticks.append(1)
        return 0

    broken, healthy = Job("broken", 0.01, buggy), Job("healthy", 0.01, counting)
    scheduler = Scheduler(engine, [broken, healthy])

    async def run_a_while() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run_forever(stop))
        for _ in range(500):  # up to 5 s on a loaded machine; usually a few hundredths
            await asyncio.sleep(0.01)
            if broken.failures >= 3 and len(ticks) >= 3:
                break
        stop.set()
        await asyncio.wait_for(task, 10)  # it ends because it was told to, not because a job raised

    with caplog.at_level(logging.ERROR, logger="router.scheduler"):
        asyncio.run(run_a_while())
    assert broken.failures >= 3 and len(ticks) >= 3
    assert "scheduler job broken failed with an unexpected error (a bug)" in caplog.text
    assert scheduler.run_once(only={"broken"}) == {"broken": 0}  # and run_once answers too
