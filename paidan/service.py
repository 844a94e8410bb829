"""`paidan serve`: build every part from the settings and run them until told to stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from time import monotonic

import uvicorn

from models.errors import PaidanError
from paidan.db import make_engine, normalise_url, upgrade
from paidan.settings import Settings
from router.config import DEFAULT_SLA, BusinessCalendar, RouterConfig, SlaTarget
from router.intake import Intake
from router.queries import TicketQueries
from router.scheduler import Job, Scheduler, router_jobs

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
        surveys=r.surveys,
        close_resolved_after=timedelta(days=r.close_resolved_after_days),
        remind_waiting_after=timedelta(days=r.remind_waiting_after_days),
        resolve_waiting_after=timedelta(days=r.resolve_waiting_after_days),
    )


def freeze_startup_objects() -> None:
    """Move everything built at start-up (modules, app, mappers) out of the collector's sight.

    Without this a full collection walks hundreds of thousands of long-lived objects and stalls
    every request for ~100 ms; with it, collections only see what requests create.
    """
    gc.collect()
    gc.freeze()


class CannotListen(PaidanError):
    """A port paidan was told to serve on is taken (or not ours to take)."""


def bind(host: str, port: int, *, what: str = "web", setting: str = "web_port") -> socket.socket:
    """Bind before serving so port 0 works and the log can name the real address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}; is another paidan (or "
                           f"another server) running there? Stop it, or choose another port with "
                           f"PAIDAN_{setting.upper()} (or `{setting}` in paidan.toml)") from exc
    # Listening at once: a client that reads the address from the log and connects before the
    # server loop is up waits in the backlog instead of being refused.
    sock.listen(2048)
    return sock


async def run(settings: Settings, *, migrate: bool = True) -> None:
    from paidan.digest import send_digest
    from paidan.backup import scheduled_backups
    from paidan.dashboard import dashboard_for, purge_dashboard_sessions
    from paidan.surveys import SurveyDesk
    from paidan.web import build_app, solved_hook

    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    routing = router_config(settings)
    intake = Intake(engine, timezone=settings.timezone, first_response=settings.default_first_response,
                    config=routing)
    queries = TicketQueries(engine)
    classifier = ActiveModel(settings.model_dir)
    classifier()  # load (or say why not) before serving
    # The router's timers, the dashboard's old sign-ins cleared away hourly, and backups when [backup] asks.
    jobs = [*router_jobs(classifier, routing), Job("sign_ins", 3600.0, purge_dashboard_sessions)]
    if settings.reports.daily_digest_at:
        at = time.fromisoformat(settings.reports.daily_digest_at)
        jobs.append(Job("digest", 60.0, lambda session, now: send_digest(session, now, at=at, config=routing)))
    backups = scheduled_backups(settings)
    if backups is not None:
        jobs.append(Job("backup", backups.check_every, backups.run_if_due))
    scheduler = Scheduler(engine, jobs)

    async def sink(message):
        receipt = await intake.accept(message)
        scheduler.wake()  # route it now rather than at the next tick
        return receipt

    telegram_webhook = None
    if settings.telegram.token and settings.telegram.webhook_url:
        from paidan.telegram import TelegramWebhook, webhook_secret

        telegram_webhook = TelegramWebhook(webhook_secret(settings), settings.telegram.webhook_path)
    dashboard = dashboard_for(engine, secret=settings.secret, timezone=settings.timezone,
                              api_tokens=tuple(settings.api_tokens))
    app = build_app(settings, sink=sink, ticket_view=queries.ticket_view, db_ok=queries.db_ok,
                    operations=queries.operations, telegram_webhook=telegram_webhook, dashboard=dashboard,
                    surveys=SurveyDesk(engine).store(), mark_solved=solved_hook(engine, routing))
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on",
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    ))
    sock = bind(settings.web_host, settings.web_port)
    smtp = await start_smtp(settings, sink) if settings.email.smtp_enabled else None
    freeze_startup_objects()
    host, port = sock.getsockname()[:2]
    log.info("paidan serving http://%s:%s (web form /, status /status, API /api/v1/messages, docs /docs, "
             "dashboard /dashboard: sign in with `paidan dashboard --as NAME`) on %s", host, port,
             normalise_url(settings.database_url).split(":", 1)[0])
    # uvicorn shuts down gracefully on SIGTERM or Ctrl-C, then re-raises the signal to whatever
    # handler was there before: for SIGTERM the default "die now", for SIGINT asyncio's, which cancels
    # this task, so the shutdown below would stop at its first await. No-ops while uvicorn serves let
    # it run; the handlers are back before it starts, so a second Ctrl-C still interrupts.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in _STOP_SIGNALS} if _main_thread() else {}
    stop = asyncio.Event()
    timers = asyncio.create_task(scheduler.run_forever(stop))
    mail_out = asyncio.create_task(deliver_email_forever(settings, engine, stop)) if settings.email.relay_host else None
    if mail_out is None:
        log.info("email acknowledgements and replies wait in the outbox: no relay is set ([email] relay_host)")
    mail_in = asyncio.create_task(poll_imap_forever(settings, engine, sink, stop)) if settings.email.imap_host else None
    retention = (asyncio.create_task(purge_expired_forever(engine, settings.privacy.retain_days, stop))
                 if settings.privacy.retain_days > 0 else None)
    telegram = None
    if settings.telegram.token:
        from paidan.telegram import run_telegram

        # By webhook or by polling, the outbox's Telegram items are sent either way; in webhook mode
        # every process sends, each claiming its own rows.
        telegram = asyncio.create_task(run_telegram(settings, engine, routing, sink, stop, webhook=telegram_webhook))
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
        if smtp is not None:
            smtp.close()  # no new mail; a DATA already being stored still gets its answer below
        await timers
        if backups is not None:
            await asyncio.to_thread(backups.close)  # a backup in progress is abandoned, its temporary file removed
        for task in (mail_out, mail_in, telegram, retention):
            if task is not None:
                await task
        intake.close()  # finishes what is queued: nothing acknowledged is left behind
        engine.dispose()
        log.info("paidan stopped")


async def start_smtp(settings: Settings, sink) -> asyncio.AbstractServer:
    """The SMTP server of the email channel, on the settings' address (port 0 picks a free one)."""
    from connectors.email.smtp import SmtpConfig, start_smtp_server

    config = SmtpConfig(host=settings.smtp_host, port=settings.smtp_port, domains=tuple(settings.email.smtp_domains),
                        max_bytes=settings.email.smtp_max_bytes)
    sock = bind(settings.smtp_host, settings.smtp_port, what="SMTP", setting="smtp_port")
    server = await start_smtp_server(sink, config, sock=sock)
    host, port = server.sockets[0].getsockname()[:2]
    log.info("paidan taking email by SMTP on %s:%s (%s)", host, port,
             f"for {', '.join(config.domains)}" if config.domains else "for any recipient")
    return server


# How long a claimed outbox row is ours: longer than a round can take (EMAIL_BATCH items at the relay's
# 30 s timeout each), so a slow round never sees its last items claimed and sent again by another process.
EMAIL_BATCH = 20
EMAIL_LEASE = timedelta(minutes=15)


async def deliver_email_forever(settings: Settings, engine, stop: asyncio.Event) -> None:
    """Send the outbox's email items through the configured relay until `stop` is set."""
    from functools import partial

    from connectors.email.send import RelayConfig, SmtpSender, build_outbox_email
    from paidan.linking import link_key
    from paidan.outbound import send_outbox_forever
    from paidan.surveys import survey_link
    from router import delivery

    e = settings.email
    config = RelayConfig(host=e.relay_host, port=e.relay_port, from_address=e.from_address, from_name=e.from_name,
                         username=e.relay_username,
                         password=e.relay_password.get_secret_value() if e.relay_password else None,
                         starttls=e.relay_starttls, code_key=link_key(settings),
                         status_url=f"{settings.public_url.rstrip('/')}/status",
                         own_domains=tuple(e.smtp_domains), sign_replies=e.sign_replies)
    log.info("paidan sending email through %s:%s as %s", e.relay_host, e.relay_port, e.from_address)
    build = partial(build_outbox_email, config=config, survey_link=survey_link(settings),
                    load_file=partial(delivery.attachment_file, engine))
    await send_outbox_forever(engine, "email", build, SmtpSender(config).send,
                              batch=EMAIL_BATCH, lease=EMAIL_LEASE, every=e.relay_poll_seconds, stop=stop)


async def poll_imap_forever(settings: Settings, engine, sink, stop: asyncio.Event) -> None:
    """Poll the configured mailbox until `stop` is set; each mail through `sink`, as SMTP's are."""
    from connectors.email.imap import ImapConfig, ImapPoller, ImapUnavailable
    from paidan.outbound import pause
    from router.cursors import load_cursor, save_cursor

    e = settings.email
    config = ImapConfig(host=e.imap_host, port=e.imap_port, ssl=e.imap_ssl, username=e.imap_username,
                        password=e.imap_password.get_secret_value() if e.imap_password else "",
                        folder=e.imap_folder, processed_folder=e.imap_processed_folder)
    loop = asyncio.get_running_loop()

    def deliver(message):  # in the poller's thread: the mail joins the group commit of every channel
        return asyncio.run_coroutine_threadsafe(sink(message), loop).result()

    poller = ImapPoller(config, deliver=deliver, load_cursor=lambda name: load_cursor(engine, name),
                        save_cursor=lambda name, value: save_cursor(engine, name, value))
    log.info("paidan polling %r every %g s", config, e.imap_poll_seconds)
    while not stop.is_set():
        try:
            report = await asyncio.to_thread(poller.poll)
            if report.fetched or report.stopped_because:
                log.info("imap: %d fetched, %d stored (%d already were)%s", report.fetched, report.delivered,
                         report.duplicates, f"; stopped: {report.stopped_because}" if report.stopped_because else "")
        except ImapUnavailable as exc:
            log.warning("imap: %s; trying again in %g s", exc, e.imap_poll_seconds)
        except Exception:  # noqa: BLE001 — e.g. the database away for a moment: the cursor did not move
            log.exception("imap: a poll failed; trying again in %g s", e.imap_poll_seconds)
        await pause(stop, e.imap_poll_seconds)


# Retention is measured in days: an hourly look is plenty, and a round is batches of tickets, each its
# own short transaction, so intake and the router never wait long behind it.
PURGE_EVERY_SECONDS = 3600.0
PURGE_BATCH = 200


async def purge_expired_forever(engine, retain_days: int, stop: asyncio.Event, *,
                                every: float = PURGE_EVERY_SECONDS) -> None:
    """Erase the content of tickets finished more than `retain_days` ago, every `every` seconds until `stop`."""
    from paidan.outbound import pause

    log.info("retention: messages of tickets resolved or closed more than %d days ago are erased hourly", retain_days)
    while not stop.is_set():
        try:
            erased = await asyncio.to_thread(purge_round, engine, retain_days, stop)
            if erased:
                log.info("retention: %d messages erased", erased)
        except Exception:  # noqa: BLE001 — e.g. the database away for a moment: the next round catches up
            log.exception("retention: a round failed; trying again in %g s", every)
        await pause(stop, every)


def purge_round(engine, retain_days: int, stop: asyncio.Event | None = None) -> int:
    """Batches of `router.privacy.purge_expired` until nothing expired is left; returns the messages erased."""
    from paidan.db import transaction
    from router.privacy import purge_expired

    total = 0
    while stop is None or not stop.is_set():
        with transaction(engine) as session:
            erased = purge_expired(session, retain_days=retain_days, now=datetime.now(UTC), limit=PURGE_BATCH)
        if not erased:
            break
        total += erased
    return total


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
