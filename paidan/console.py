"""The CLI's rich console: the terminal's width on a terminal, whole rows when piped or captured."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(*, err: bool = False) -> Console:
    stream = sys.stderr if err else sys.stdout
    # Piped or captured output (`paidan agents list | grep`, logs, tests) keeps whole rows (skills,
    # ticket numbers, reasons) instead of cutting every cell to fit 80 columns.
    return Console(stderr=err, highlight=False, soft_wrap=True, width=None if stream.isatty() else 200)
