"""`paidan customers show | merge | unmerge`: one person across channels, as a supervisor sees it.

The lead's `paidan.cli` registers the group with ``cli.add_command(customers)``. Settings come from
the click context object when it is a ``Settings`` (the main group), else from ``Settings()``.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from models.errors import PaidanError
from paidan.console import make_console
from paidan.settings import Settings


def _settings() -> Settings:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Settings) if ctx is not None else None
    return obj if isinstance(obj, Settings) else Settings()


def _engine():
    from paidan.db import make_engine

    return make_engine(_settings().database_url)


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Refusals and unknown customers become one line and exit status 1, never a traceback."""
    try:
        yield
    except PaidanError as exc:
        raise click.ClickException(str(exc)) from exc


def _console() -> Console:
    return make_console()


@click.group()
def customers() -> None:
    """Customers: who wrote from which address, phone or Telegram account; merge and unmerge them.

    A CUSTOMER is given by id (12 or #12) or by any of their identities: an email address,
    a phone number (+8613800138000, or a local number read in the configured phone region),
    telegram:123456789 or web_session:….
    """


@customers.command("show")
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show(customer: str, as_json: bool) -> None:
    """Show CUSTOMER: identities, tickets, merges (with the ids `unmerge` takes) and open reviews."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from models.tables import ReviewItem
    from router.identity import customer_view, find_customer

    with _clear_errors(), Session(_engine()) as session:
        row = find_customer(session, customer, default_region=_settings().phone_region)
        view = customer_view(session, row.id)
        reviews = session.scalars(
            select(ReviewItem).where(ReviewItem.customer_id == row.id, ReviewItem.resolved_at.is_(None))
            .order_by(ReviewItem.id)
        ).all()
        data = asdict(view) | {
            "created_at": view.created_at.isoformat(),
            "identities": [f"{k}:{v}" for k, v in view.identities],
            "tickets": [{"number": n, "state": s, "subject": subj} for n, s, subj in view.tickets],
            "merges": list(view.merges),
            "open_reviews": [{"id": r.id, "kind": r.kind, "ticket_id": r.ticket_id, "detail": r.detail,
                              "created_at": r.created_at.isoformat()} for r in reviews],
        }
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    out = _console()
    vip = "  VIP" if data["vip"] else ""
    out.print(f"[bold]customer #{data['id']}[/bold] {data['display_name']}{vip}  since {data['created_at'][:10]}")
    if data["merged_into_id"]:
        out.print(f"merged into customer #{data['merged_into_id']}: its identities and tickets are there now")
    out.print("identities: " + (", ".join(data["identities"]) or "-"), markup=False)
    if data["tickets"]:
        table = Table("ticket", "state", "subject", title="tickets", title_justify="left")
        for t in data["tickets"]:
            table.add_row(t["number"], t["state"], t["subject"][:60])
        out.print(table)
    if data["merges"]:
        table = Table("merge", "what", "evidence", "by", "when (UTC)", "undone", title="merges", title_justify="left")
        for m in data["merges"]:
            table.add_row(str(m["id"]), f"#{m['source_id']} → #{m['target_id']}", m["evidence"], m["actor"],
                          m["at"][:16].replace("T", " "),
                          f"{m['undone_at'][:16].replace('T', ' ')} by {m['undone_by']}" if m["undone_at"] else "-")
        out.print(table)
    for r in data["open_reviews"]:
        out.print(f"open review #{r['id']} ({r['kind']}): {r['detail'].get('evidence') or r['detail']}", markup=False)


@customers.command("merge")
@click.argument("source")
@click.argument("target")
@click.option("--evidence", required=True,
              help="What shows they are one person, e.g. 'called from +86… and confirmed the email'.")
@click.option("--force", is_flag=True,
              help="Merge even though both hold a different email, phone or Telegram account (recorded as forced).")
@click.option("--actor", help="Who decided (default: cli:<your user name>).")
def merge(source: str, target: str, evidence: str, force: bool, actor: str | None) -> None:
    """Merge customer SOURCE into TARGET: SOURCE's identities and tickets move to TARGET.

    Undo it with `paidan customers unmerge MERGE_ID` (the id is printed here and by `show`).
    """
    from paidan.db import transaction
    from router.identity import find_customer, merge_customers

    region = _settings().phone_region
    with _clear_errors(), transaction(_engine()) as session:
        src = find_customer(session, source, default_region=region)
        dst = find_customer(session, target, default_region=region)
        done = merge_customers(session, src.id, dst.id, actor=_actor(actor), evidence=evidence,
                               now=datetime.now(UTC), force=force)
        message = (f"merge #{done.id}: customer #{done.source_id} merged into #{done.target_id} "
                   f"({len(done.identity_ids)} identities, {len(done.ticket_ids)} tickets moved)"
                   f"{' — forced over conflicting identities' if force else ''}")
    _console().print(message, markup=False)


@customers.command("unmerge")
@click.argument("merge_id", type=int)
@click.option("--actor", help="Who decided (default: cli:<your user name>).")
def unmerge(merge_id: int, actor: str | None) -> None:
    """Undo merge MERGE_ID: what moved goes back, and the source customer stands alone again."""
    from paidan.db import transaction
    from router.identity import unmerge as undo

    with _clear_errors(), transaction(_engine()) as session:
        done = undo(session, merge_id, actor=_actor(actor), now=datetime.now(UTC))
        message = (f"merge #{done.id} undone: customer #{done.source_id} has its {len(done.identity_ids)} "
                   f"identities and {len(done.ticket_ids)} tickets back from #{done.target_id}")
    _console().print(message, markup=False)
