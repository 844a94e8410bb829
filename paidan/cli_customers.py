"""`paidan customers show | merge | unmerge | block | unblock | export | forget`: one person across
channels, as a supervisor sees it; spammers blocked; their personal data on request (PIPL / GDPR).

The lead's `paidan.cli` registers the group with ``cli.add_command(customers)``. Settings come from
the click context object when it is a ``Settings`` (the main group), else from ``Settings()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from paidan.console import cli_actor, clear_errors, make_console
from paidan.settings import Settings


def _settings() -> Settings:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Settings) if ctx is not None else None
    return obj if isinstance(obj, Settings) else Settings()


def _engine():
    from paidan.db import make_engine

    return make_engine(_settings().database_url)


def _console() -> Console:
    return make_console()


@click.group()
def customers() -> None:
    """Customers: who wrote from which address, phone or Telegram account; merge and unmerge them;
    block spammers; export or erase their personal data on request.

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

    with clear_errors(), Session(_engine()) as session:
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
    if data["blocked"]:
        out.print(f"🚫 {data['blocked']} (`paidan customers unblock {data['id']}` lifts it)", markup=False)
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
    with clear_errors(), transaction(_engine()) as session:
        src = find_customer(session, source, default_region=region)
        dst = find_customer(session, target, default_region=region)
        done = merge_customers(session, src.id, dst.id, actor=cli_actor(actor), evidence=evidence,
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
    from models.tables import Customer, CustomerMerge
    from router.blocking import came_with_merge
    from router.identity import unmerge as undo

    with clear_errors(), transaction(_engine()) as session:
        merge = session.get(CustomerMerge, merge_id)
        block_came_with_it = merge is not None and came_with_merge(session.get(Customer, merge.target_id), merge.source_id)
        done = undo(session, merge_id, actor=cli_actor(actor), now=datetime.now(UTC))
        message = (f"merge #{done.id} undone: customer #{done.source_id} has its {len(done.identity_ids)} "
                   f"identities and {len(done.ticket_ids)} tickets back from #{done.target_id}")
        if block_came_with_it:
            message += f"; #{done.target_id} was blocked only by the merge and is unblocked"
    _console().print(message, markup=False)


@customers.command("block")
@click.argument("customer")
@click.option("--reason", required=True, help="Why, for the audit trail: e.g. 'sends advertising every hour'.")
@click.option("--as", "--actor", "actor", help="Who decided (default: cli:<your user name>).")
def block(customer: str, reason: str, actor: str | None) -> None:
    """Block CUSTOMER as a spammer or abuser.

    What they send afterwards, on any channel, is still stored, on closed tickets, but nobody is
    assigned and nothing is sent back. Their open tickets that nobody has answered close as spam.
    `paidan customers unblock` undoes it.
    """
    from paidan.db import transaction
    from router import blocking
    from router.identity import find_customer

    who = cli_actor(actor)
    with clear_errors(), transaction(_engine()) as session:
        row = find_customer(session, customer, default_region=_settings().phone_region)
        if not blocking.block(session, row, by=who, reason=reason, now=datetime.now(UTC)):
            raise click.ClickException(f"customer #{row.id} is already blocked")
        closed = blocking.close_unanswered(session, row, first=None, actor=who, reason=f"{who} blocked the customer: "
                                           f"{reason}", config=_router_config(), now=datetime.now(UTC))
        message = (f"customer #{row.id} blocked: what they send now is kept closed and never answered"
                   + (f"; closed {', '.join(t.number for t in closed)} (nobody had answered them)" if closed else ""))
    _console().print(message, markup=False)


@customers.command("unblock")
@click.argument("customer")
@click.option("--reason", default="", help="Why, for the audit trail.")
@click.option("--as", "--actor", "actor", help="Who decided (default: cli:<your user name>).")
def unblock(customer: str, reason: str, actor: str | None) -> None:
    """Lift CUSTOMER's block: what was kept while they were blocked goes to the router, which labels,
    acknowledges and assigns it as if it had just arrived."""
    from paidan.db import transaction
    from router import blocking
    from router.identity import find_customer

    who = cli_actor(actor)
    with clear_errors(), transaction(_engine()) as session:
        row = find_customer(session, customer, default_region=_settings().phone_region)
        if not blocking.unblock(session, row):
            raise click.ClickException(f"customer #{row.id} is not blocked")
        reopened, rerouted = blocking.release_kept(session, row, actor=who, now=datetime.now(UTC),
                                                   reason=f"{who} unblocked the customer" + (f": {reason}" if reason else ""))
        message = blocking.released(row.id, reopened, rerouted)
    _console().print(message, markup=False)


def _router_config():
    from paidan.service import router_config

    return router_config(_settings())


@customers.command("export")
@click.argument("customer")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, writable=True),
              help="Write the JSON to this file (readable by you only) instead of printing it.")
def export(customer: str, out_file: str | None) -> None:
    """Export everything held about CUSTOMER as JSON, for a data access request (PIPL / GDPR).

    Follows merges: the customer and every customer merged into them are one person. Holds their
    identities, tickets (labels, states, times), every message (internal notes marked "public": false),
    attachment names, sizes and types (the bytes stay in the database; each says where), surveys, link
    codes, label corrections of their messages and what we sent or will send them.
    """
    from sqlalchemy.orm import Session

    from router.identity import find_customer
    from router.privacy import export_customer

    with clear_errors(), Session(_engine()) as session:
        row = find_customer(session, customer, default_region=_settings().phone_region)
        data = export_customer(session, row.id, now=datetime.now(UTC))
    text = json.dumps(data, ensure_ascii=False, indent=2)
    if out_file is None:
        click.echo(text)
        return
    path = Path(out_file)
    try:
        # Personal data: created readable by its owner only, never left readable by others on a shared machine.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from exc
    _console().print(f"customer #{data['customer_id']}: {len(data['tickets'])} tickets, {len(data['messages'])} messages, "
                     f"{len(data['identities'])} identities written to {path}", markup=False)


@customers.command("forget")
@click.argument("customer")
@click.option("--reason", required=True, help="Why, for the audit trail: e.g. 'erasure request of 2026-11-20, ref 118'.")
@click.option("--force", is_flag=True, help="Erase even though the customer has open tickets (agents then see erased messages).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--as", "--actor", "actor", help="Who decided (default: cli:<your user name>).")
def forget(customer: str, reason: str, force: bool, yes: bool, actor: str | None) -> None:
    """Erase CUSTOMER's personal data (right to erasure, PIPL / GDPR), keeping the desk's statistics.

    Erased: message bodies, subjects and raw mail, attachment names and bytes, survey comments, the
    text label corrections copied from their messages, their identities (a new message from the same
    address makes a new customer), their name and link codes; pending mail or Telegram messages to them
    are cancelled. Kept: tickets with their labels, states, times, SLA clocks and ratings, so reports
    count the same. Every ticket gets a `personal_data_erased` audit event. Follows merges. Refused
    while they have open tickets, unless --force. Running it again is harmless.
    """
    from sqlalchemy.orm import Session

    from paidan.db import transaction
    from router.identity import find_customer
    from router.privacy import forget_customer, same_person

    engine = _engine()
    region = _settings().phone_region
    if not yes:
        with clear_errors(), Session(engine) as session:
            row = find_customer(session, customer, default_region=region)
            person = same_person(session, row.id)
            data = _summary(session, person)
        click.confirm(f"Erase the personal data of customer #{person[0]} ({data}) for good? This cannot be undone",
                      abort=True)
    with clear_errors(), transaction(engine) as session:
        row = find_customer(session, customer, default_region=region)
        done = forget_customer(session, row.id, actor=cli_actor(actor), reason=reason, now=datetime.now(UTC), force=force)
    out = _console()
    if not done.changed:
        out.print(f"customer #{done.customer_id}: nothing left to erase (forgotten before)", markup=False)
        return
    out.print(f"customer #{done.customer_id} forgotten: {done.messages} messages, {done.attachments} attachments, "
              f"{done.identities} identities, {done.link_codes} link codes, {done.surveys} survey comments and "
              f"{done.corrections} label-correction texts erased; {done.outbox_cancelled} pending outgoing messages "
              f"cancelled; {done.audit_records + done.outbox_erased} audit and outbox records cleaned", markup=False)
    out.print(f"kept for the reports: {len(done.tickets)} tickets ({', '.join(done.tickets) or '-'}) with their "
              f"labels and times, each with a personal_data_erased event", markup=False)
    if done.open_tickets:
        out.print(f"forced: {', '.join(done.open_tickets)} still open, now with erased messages", markup=False)
    if done.email_messages:
        out.print(f"{done.email_messages} of the messages came by email: if paidan polls a mailbox (IMAP), delete "
                  f"them there too, paidan never deletes mail", markup=False)


def _summary(session, person: list[int]) -> str:
    """`2 identities, 3 tickets (1 open), 12 messages`: what the confirmation question is about."""
    from sqlalchemy import func, or_, select

    from models.tables import Identity, Message, Ticket
    from router.states import OPEN_STATES

    identities = session.scalar(select(func.count()).select_from(Identity).where(Identity.customer_id.in_(person)))
    states = session.scalars(select(Ticket.state).where(Ticket.customer_id.in_(person))).all()
    ticket_ids = select(Ticket.id).where(Ticket.customer_id.in_(person)).scalar_subquery()
    messages = session.scalar(select(func.count()).select_from(Message).where(
        or_(Message.ticket_id.in_(ticket_ids), Message.customer_id.in_(person))))
    open_ = sum(1 for s in states if s in OPEN_STATES)
    return (f"{identities} identities, {len(states)} tickets{f' ({open_} open)' if open_ else ''}, "
            f"{messages} messages")
