"""What SQLite and PostgreSQL spell differently, written once for both: INSERT … ON CONFLICT (each
dialect's own `insert`, picked per session) and a timestamp as epoch seconds (compiled per dialect)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Float
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.functions import FunctionElement


class PerDialect:
    """`build(insert)` made with PostgreSQL's and with SQLite's `insert`; `for_session` picks one."""

    def __init__(self, build: Callable[[Callable[..., Insert]], Insert]):
        self._built = {"postgresql": build(postgresql.insert), "sqlite": build(sqlite.insert)}

    def for_session(self, session: Session) -> Insert:
        name = session.get_bind().dialect.name
        return self._built["postgresql" if name == "postgresql" else "sqlite"]


class epoch_seconds(FunctionElement):
    """A UTC timestamp column as seconds since 1970, computed by the database: reports that read a month
    of tickets then handle numbers instead of parsing a datetime per value (SQLite stores them as text)."""

    type = Float()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element, compiler, **kw) -> str:
    # Our UTCDateTime stores naive UTC text on SQLite; julianday reads it as UTC.
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element, compiler, **kw) -> str:
    return f"EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})"
