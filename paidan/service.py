"""`paidan serve`: build every part from the settings and run them until told to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable
from datetime import time, timedelta
from pathlib import Path
from time import monotonic

import uvicorn

from paidan.db import make_engine, normalise_url, upgrade
from paidan.settings import Settings
from router.config import DEFAULT_SLA, BusinessCalendar, RouterConfig, SlaTarget
from router.intake import Intake
from router.queries import TicketQueries
from router.scheduler import Scheduler, router_jobs

log = logging.getLogger("paidan")


def loop_factory():
    """uvloop where it is installed (it is a dependency on Linux and macOS): its socket writes
    and callbacks cost a fraction of the standard loop's, which is most of a request's cost."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve_forever(settings: Settings, *, migrate: bool = True) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run(settings, migrate=migrate))


class ActiveModel:
    """The model store's active classifier, followed while `paidan serve` runs.

    `paidan train`, `paidan model promote` and `paidan model rollback` move the store's ACTIVE
    pointer. At most every `check_seconds`, a call here reads that pointer (one small file) and, when
    it names another version, loads it (~0.1 s, in the scheduler's thread): the next tickets are
    labelled by it, with no restart. A version that cannot be loaded is logged once and the model in
    use is kept. With no model at all, tickets wait in triage for a human, and the log says why.
    """

    def __init__(self, model_dir: Path, *, check_seconds: float = 5.0, clock: Callable[[], float] = monotonic):
        from classifier.store import ModelStore

        self.store = ModelStore(model_dir)
        self.check_seconds = check_seconds
        self.clock = clock
        self.model = None  # a classifier.service.ModelClassifier once one has loaded
        self._checked_at: float | None = None
        self._tried: object = _NOTHING_YET  # the version last tried, loaded or not: each is tried once

    def __call__(self):
        now = self.clock()
        if self._checked_at is None or now - self._checked_at >= self.check_seconds:
            self._checked_at = now
            self._follow()
        return self.model

    def _follow(self) -> None:
        from classifier.errors import ClassifierError
        from classifier.service import ModelClassifier

        version = self.store.active()
        if version == self._tried:
            return
        self._tried = version
        try:  # with no ACTIVE pointer, active_path() raises the error that says what to run
            model = ModelClassifier.load(self.store.path(version) if version else self.store.active_path())
        except ClassifierError as exc:
            if self.model is None:
                log.error("no classifier: %s — tickets go to the triage queue until `paidan model ensure` has run", exc)
            else:
                log.error("classifier model %s cannot be used (%s); still labelling with %s",
                          version, exc, self.model.version)
            return
        previous, self.model = self.model, model
        if previous is None:
            log.info("classifier model %s loaded from %s", model.version, self.store.root)
        else:
            log.info("classifier model %s loaded from %s (was %s): it labels the tickets from now on",
                     model.version, self.store.root, previous.version)


_NOTHING_YET = object()


def router_config(settings: Settings) -> RouterConfig:
    """The router's config from the settings' [routing] table, DESIGN.md's defaults for the rest."""
    r = settings.routing

    def target(t) -> SlaTarget:
        return SlaTarget(timedelta(minutes=t.first_response_minutes), timedelta(minutes=t.resolution_minutes), t.calendar)

    start, end = (time.fromisoformat(v) for v in r.business_hours)
    defaults = RouterConfig()
    return RouterConfig(
        calendar=BusinessCalendar(timezone=settings.timezone, start=start, end=end,
                                  weekdays=frozenset(r.weekdays), holidays=frozenset(r.holidays)),
        sla={**DEFAULT_SLA, **{p: target(t) for p, t in r.sla.items()}},
        sla_by_channel={c: {p: target(t) for p, t in by.items()} for c, by in r.sla_by_channel.items()},
        category_skills=r.category_skills or defaults.category_skills,
        accept_timeout=timedelta(minutes=r.accept_timeout_minutes),
        triage_threshold=r.triage_threshold,
        topic_window=timedelta(hours=r.topic_window_hours),
        topic_threshold=defaults.topic_threshold if r.topic_threshold is None else r.topic_threshold,
        senior_level=r.senior_level,
    )


def freeze_startup_objects() -> None:
    """Move everything built at start-up (modules, app, mappers) out of the collector's sight.

    Without this a full collection walks hundreds of thousands of long-lived objects and stalls
    every request for ~100 ms; with it, collections only see what requests create.
    """
    gc.collect()
    gc.freeze()


def bind(host: str, port: int) -> socket.socket:
    """Bind before serving so port 0 works and the log can name the real address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening at once: a client that reads the address from the log and connects before the
    # server loop is up waits in the backlog instead of being refused.
    sock.listen(2048)
    return sock


async def run(settings: Settings, *, migrate: bool = True) -> None:
    from paidan.web import build_app

    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    routing = router_config(settings)
    intake = Intake(engine, timezone=settings.timezone, first_response=settings.default_first_response,
                    config=routing)
    queries = TicketQueries(engine)
    classifier = ActiveModel(settings.model_dir)
    classifier()  # load (or say why not) before serving
    scheduler = Scheduler(engine, router_jobs(classifier, routing))

    async def sink(message):
        receipt = await intake.accept(message)
        scheduler.wake()  # route it now rather than at the next tick
        return receipt

    app = build_app(settings, sink=sink, ticket_view=queries.ticket_view, db_ok=queries.db_ok,
                    operations=queries.operations)
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on",
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    ))
    sock = bind(settings.web_host, settings.web_port)
    freeze_startup_objects()
    host, port = sock.getsockname()[:2]
    log.info("paidan serving http://%s:%s (web form /, status /status, API /api/v1/messages, docs /docs) "
             "on %s", host, port, normalise_url(settings.database_url).split(":", 1)[0])
    # uvicorn shuts down gracefully on SIGTERM or Ctrl-C, then re-raises the signal to whatever
    # handler was there before: for SIGTERM the default "die now", for SIGINT asyncio's, which cancels
    # this task, so the shutdown below would stop at its first await. No-ops while uvicorn serves let
    # it run; the handlers are back before it starts, so a second Ctrl-C still interrupts.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in _STOP_SIGNALS} if _main_thread() else {}
    stop = asyncio.Event()
    timers = asyncio.create_task(scheduler.run_forever(stop))
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
        await timers
        intake.close()  # finishes what is queued: nothing acknowledged is left behind
        engine.dispose()
        log.info("paidan stopped")


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
