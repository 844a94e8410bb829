"""The migrations are the schema: applying them must give exactly what models/tables.py says."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from models.tables import Base
from paidan.db import alembic_config, make_engine, upgrade


def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        drift = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert drift == [], f"models and migrations differ; write a migration (alembic revision --autogenerate): {drift}"


def test_upgrade_is_idempotent_and_downgrade_reverses_it(database_url):
    from alembic import command

    upgrade(database_url)  # second time: nothing to do, no error
    command.downgrade(alembic_config(database_url), "base")
    engine = make_engine(database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(database_url)
    engine = make_engine(database_url)
    assert {"tickets", "messages", "identities", "outbox", "label_corrections"} <= set(inspect(engine).get_table_names())
    engine.dispose()
