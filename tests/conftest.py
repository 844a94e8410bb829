"""Shared fixtures: a fresh migrated database per test, on SQLite or on PostgreSQL.

Set PAIDAN_TEST_DATABASE_URL=postgresql+psycopg://… to run the suite against PostgreSQL: each
test then gets its own throwaway database on that server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


PG_URL = os.environ.get("PAIDAN_TEST_DATABASE_URL", "")


def pytest_report_header(config) -> str:
    return f"paidan test database: {'PostgreSQL ' + make_url(PG_URL).render_as_string(hide_password=True) if PG_URL else 'SQLite (temporary files)'}"


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:
    """A freshly migrated, empty database that only this test uses."""
    from paidan.db import upgrade

    if not PG_URL:
        url = f"sqlite:///{tmp_path / 'paidan-test.db'}"
        upgrade(url)
        yield url
        return
    admin_url = make_url(PG_URL)
    name = f"paidan_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def engine(database_url):
    from paidan.db import make_engine

    eng = make_engine(database_url)
    yield eng
    eng.dispose()
