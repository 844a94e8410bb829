"""The migrations are the schema: applying them must give exactly what models/tables.py says."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from models.tables import Base, declared
from paidan.db import alembic_config, make_engine, upgrade


def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False,
                                                         "include_object": declared})
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


def test_a_pooled_connection_cut_while_idle_is_replaced_before_use(database_url, monkeypatch):
    """PostgreSQL: a connection the server dropped while it sat in the pool is pinged and replaced,
    so the next transaction works (no error reaches intake or the scheduler)."""
    import psycopg
    import pytest
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    import paidan.db as db

    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server to drop a connection")
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every checkout is "after idle"
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        plain = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain, autocommit=True) as admin:  # what a server restart does to it
            admin.execute("SELECT pg_terminate_backend(%s)", [first])
        with engine.connect() as conn:
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert second != first
    finally:
        engine.dispose()


def test_search_patterns_can_use_the_trigram_indexes_on_postgresql(database_url):
    """Ticket search's ILIKE '%…%' (router/search.py) is answered from pg_trgm's GIN indexes where the
    server has them; SQLite has none and scans."""
    import pytest
    from sqlalchemy import select, text

    from models.tables import Message, SEARCH_INDEXES

    engine = make_engine(database_url)
    try:
        present = {ix["name"] for t in ("messages", "tickets", "customers") for ix in inspect(engine).get_indexes(t)}
        if not database_url.startswith("postgresql"):
            assert not present & SEARCH_INDEXES
            pytest.skip("SQLite has no trigram indexes: search scans")
        assert SEARCH_INDEXES <= present
        query = select(Message.id).where(Message.text.icontains("1234567890", autoescape=True))
        with engine.connect() as conn:
            conn.execute(text("SET enable_seqscan = off"))  # an empty table: make the planner show its options
            compiled = query.compile(engine)
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars())
        assert "ix_messages_text_trgm" in plan, plan
    finally:
        engine.dispose()
