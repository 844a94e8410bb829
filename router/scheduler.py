"""Timers inside `paidan serve`: routing, SLA sweeps, offer expiry and queue draining.

Each job is one short transaction that claims its rows through the database (conditional updates,
`FOR UPDATE SKIP LOCKED`), so it is idempotent and several processes on one PostgreSQL can run
the same jobs side by side. A failing job is logged and tried again on its next tick; it never
stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models.errors import PaidanError
from models.prediction import Classifier
from router.config import RouterConfig

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Job:
    name: str
    every: float  # seconds between runs
    run: Callable[[Session, datetime], int]  # returns how much it did, for logs and metrics
    batch: int | None = None  # a run that did this much left more behind: run again at once
    next_at: float = 0.0
    runs: int = 0
    done: int = 0
    failures: int = 0


@dataclass
class Scheduler:
    engine: Engine
    jobs: list[Job]
    clock: Callable[[], datetime] = utcnow
    _wake: asyncio.Event | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    def run_once(self, now: datetime | None = None, *, only: set[str] | None = None) -> dict[str, int]:
        """Run every job once (or those named), each in its own transaction; for tests and the simulation."""
        now = now or self.clock()
        return {job.name: self._run(job, now) for job in self.jobs if only is None or job.name in only}

    def _run(self, job: Job, now: datetime) -> int:
        job.runs += 1
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                done = job.run(session, now)
        except (SQLAlchemyError, PaidanError):
            job.failures += 1
            log.exception("scheduler job %s failed; it runs again on its next tick", job.name)
            return 0
        except Exception:  # noqa: BLE001 — a bug in one job must not stop the others
            # Left to propagate, it would end run_forever: no SLA sweep, no offer expiry, no routing, until a
            # restart. Its transaction rolled back; the traceback is in the log, and the job tries again.
            job.failures += 1
            log.exception("scheduler job %s failed with an unexpected error (a bug); the other jobs go on, and "
                          "it runs again on its next tick", job.name)
            return 0
        job.done += done
        if done:
            log.debug("scheduler job %s did %d", job.name, done)
        return done

    def wake(self) -> None:
        """Run the jobs now rather than at the next tick (intake calls this after a commit); thread-safe."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run_forever(self, stop: asyncio.Event) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while not stop.is_set():
            started = time.monotonic()
            for job in self.jobs:
                if job.next_at <= started or (self._wake.is_set() and job.name == "route"):
                    done = await asyncio.to_thread(self._run, job, self.clock())
                    busy = job.batch is not None and done >= job.batch
                    job.next_at = started if busy else started + job.every
            self._wake.clear()
            delay = max(0.0, min(job.next_at for job in self.jobs) - time.monotonic())
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()


ROUTE_BATCH = 200


def router_jobs(classifier: Callable[[], Classifier | None], config: RouterConfig) -> list[Job]:
    """The router's timers, in the order a tick runs them. `classifier()` gives the model for each
    routing step (`paidan serve` follows the model store's active version; None: tickets go to triage)."""
    from router import assignment, sla, states, waiting
    from router.routing import route_pending

    return [
        Job("route", 1.0, lambda s, now: route_pending(s, classifier(), config, now, limit=ROUTE_BATCH),
            batch=ROUTE_BATCH),
        Job("sla", 5.0, lambda s, now: sla.sweep(s, config, now)),
        Job("offers", 5.0, lambda s, now: assignment.expire_offers(s, config, now)),
        Job("queue", 5.0, lambda s, now: assignment.drain_queue(s, config, now)),
        Job("close", 60.0, lambda s, now: states.close_resolved(s, config.close_resolved_after, now)),
        Job("waiting", 60.0, lambda s, now: waiting.remind_and_resolve(s, config, now)),
    ]
