"""`paidan serve`: build every part from the settings and run them until told to stop."""

from __future__ import annotations

import logging

import uvicorn

from paidan.db import make_engine, normalise_url, upgrade
from paidan.settings import Settings
from router.intake import Intake
from router.queries import TicketQueries

log = logging.getLogger("paidan")


async def run(settings: Settings, *, migrate: bool = True) -> None:
    from paidan.web import build_app

    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    intake = Intake(engine, timezone=settings.timezone, first_response=settings.default_first_response)
    queries = TicketQueries(engine)
    app = build_app(settings, sink=intake.accept, ticket_view=queries.ticket_view, db_ok=queries.db_ok)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.web_host, port=settings.web_port, log_config=None, access_log=False,
        loop="auto", http="auto", lifespan="on",
    ))
    log.info("paidan serving web on http://%s:%s (database %s)", settings.web_host, settings.web_port,
             normalise_url(settings.database_url).split("://", 1)[0])
    try:
        await server.serve()
    finally:
        intake.close()  # finishes what is queued: nothing acknowledged is left behind
        engine.dispose()
