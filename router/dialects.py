"""INSERT … ON CONFLICT, which SQLAlchemy spells with each dialect's own `insert`: paidan runs on
SQLite and PostgreSQL, so such a statement is built once for both and picked per session."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert


class PerDialect:
    """`build(insert)` made with PostgreSQL's and with SQLite's `insert`; `for_session` picks one."""

    def __init__(self, build: Callable[[Callable[..., Insert]], Insert]):
        self._built = {"postgresql": build(postgresql.insert), "sqlite": build(sqlite.insert)}

    def for_session(self, session: Session) -> Insert:
        name = session.get_bind().dialect.name
        return self._built["postgresql" if name == "postgresql" else "sqlite"]
