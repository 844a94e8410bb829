"""What every CLI command shares: the rich console (the terminal's width on a terminal, whole rows
when piped or captured), our errors as one line, and who is acting."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console

from models.errors import PaidanError


def make_console(*, err: bool = False) -> Console:
    stream = sys.stderr if err else sys.stdout
    # Piped or captured output (`paidan agents list | grep`, logs, tests) keeps whole rows (skills,
    # ticket numbers, reasons) instead of cutting every cell to fit 80 columns.
    return Console(stderr=err, highlight=False, soft_wrap=True, width=None if stream.isatty() else 200)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Refusals and unknown names become one line and exit status 1, never a traceback."""
    try:
        yield
    except PaidanError as exc:
        raise click.ClickException(str(exc)) from exc


def cli_actor(actor: str | None) -> str:
    """Who a change is recorded as: `--as NAME`, else the operating-system user."""
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"
