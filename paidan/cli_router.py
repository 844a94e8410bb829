"""`paidan queue`, `paidan tickets find` and the agent actions `paidan tickets accept|decline|reply|wait|resolve|reopen|assign|relabel|merge|explain`.

The lead's `paidan.cli` adds them: ``cli.add_command(queue)`` and ``tickets.add_command(...)`` for
each of `TICKET_COMMANDS`. Every action runs in one transaction through `router.actions`, the same
API the Telegram console and the web use; refusals (our PaidanError types) reach the root group,
which prints them as one line with exit status 1.
"""

from __future__ import annotations

import json
import mimetypes
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from paidan.console import make_console
from paidan.settings import Settings

if TYPE_CHECKING:
    from router.search import Found

AS_HELP = "The agent acting (name or id); defaults to $PAIDAN_AGENT."


def _settings() -> Settings:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Settings) else Settings()


def _engine():
    from paidan.db import make_engine

    return make_engine(_settings().database_url)


def _router_config():
    """The same RouterConfig `paidan serve` builds from these settings."""
    from paidan.service import router_config

    return router_config(_settings())


def _now() -> datetime:
    return datetime.now(UTC)


def _console() -> Console:
    return make_console()


def _run(action: Callable, number: str, actor: str, as_json: bool, **kwargs) -> None:
    """One action in one transaction, then its outcome on stdout."""
    from paidan.db import transaction

    engine = _engine()
    try:
        with transaction(engine) as session:
            outcome = action(session, number, actor, config=_router_config(), now=_now(), **kwargs)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(outcome.as_dict(), ensure_ascii=False, indent=2, default=str))
        return
    holder = f"  (held by {outcome.agent})" if outcome.agent else ""
    click.echo(f"{outcome.summary}\nstate: {outcome.state}{holder}")
    if outcome.data.get("warning"):
        click.echo(f"note: {outcome.data['warning']}")


def _as_option(f):
    return click.option("--as", "actor", envvar="PAIDAN_AGENT", required=True, metavar="AGENT", help=AS_HELP)(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")(f)


# ---------------------------------------------------------------- queue


@click.command("queue")
@click.option("--queue", "which", type=click.Choice(["assignment", "triage"]),
              help="Only this queue: assignment (no agent free) or triage (a supervisor must look).")
@click.option("--priority", type=click.Choice(["P0", "P1", "P2", "P3"], case_sensitive=False), help="Only this priority.")
@click.option("--category", help="Only this category (technical, service, transaction, product, …).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def queue(which: str | None, priority: str | None, category: str | None, limit: int, as_json: bool) -> None:
    """Unassigned tickets waiting for an agent or for triage: most urgent, then oldest, first."""
    from sqlalchemy.orm import Session

    from router.actions import waiting

    engine = _engine()
    try:
        with Session(engine) as session:
            rows = waiting(session, _now(), queue=which, priority=priority, category=category, limit=limit)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("the queue is empty: every open ticket has an agent")
        return
    table = Table("number", "queue", "priority", "category", "age", "channel", "subject", "why waiting")
    for r in rows:
        table.add_row(r["number"], r["queue"], r["priority"] or "-", r["category"] or "-", age_text(r["age_seconds"]),
                      r["channel"], r["subject"][:40], r["reason"])
    _console().print(table)


def age_text(seconds: int) -> str:
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


# ---------------------------------------------------------------- find


@click.command("find")
@click.argument("query", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Show at most this many tickets.")
@click.option("--json", "as_json", is_flag=True, help="Print the tickets found as JSON.")
def find(query: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Find tickets by QUERY (several words are one phrase; case does not matter).

    QUERY is looked for as a ticket number (GD…, or its date part for that day's tickets), a customer's
    email address, phone number or Telegram id, part of a customer's name, and words in the subject or
    in any message: customers' messages, agents' replies and internal notes. Customers merged into one
    count as one person. Open tickets come first, then the most recently active; each ticket is listed
    once, with the strongest reason it matched.
    """
    from sqlalchemy.orm import Session

    from paidan.logs import mask
    from router.search import find_tickets

    text = " ".join(query)
    engine = _engine()
    try:
        with Session(engine) as session:
            found = find_tickets(session, text, limit=limit, default_region=_settings().phone_region)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in found], ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo(f'no tickets match "{text.strip()}" (searched ticket numbers, customers\' emails, phones, '
                   f"Telegram ids and names, subjects and messages)")
        return
    now = _now()
    for f in found:
        click.echo(format_found(f, now, mask=mask))


def format_found(found: Found, now: datetime, *, mask: Callable[[str], str] = lambda s: s) -> str:
    """One search result as two plain-text lines (a terminal, a Telegram chat): the ticket, then why it
    matched. `mask` hides contact details where a nameless customer is shown by their address."""
    age = age_text(max(0, int((now - found.last_activity).total_seconds())))
    subject = _clip(found.subject, 40) or "(no subject)"
    holder = f"  ({found.agent})" if found.agent else ""
    ticket = (f"{found.number}  {found.state}  {found.priority or '-'}  {age}  "
              f"{mask(found.customer) or '(no name)'}  {subject}{holder}")
    why = f"matched {found.matched}" + (f": {found.snippet}" if found.snippet else "")
    if found.merged_into:
        why = f"merged into {found.merged_into}; {why}"
    return f"{ticket}\n  {why}"


def _clip(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 1] + "…"


# ---------------------------------------------------------------- actions


@click.command("accept")
@click.argument("number")
@_as_option
@_json_option
def accept(number: str, actor: str, as_json: bool) -> None:
    """Accept ticket NUMBER offered to you: it moves to in_progress."""
    from router import actions

    _run(actions.accept, number, actor, as_json)


@click.command("decline")
@click.argument("number")
@_as_option
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@_json_option
def decline(number: str, actor: str, reason: str, as_json: bool) -> None:
    """Decline ticket NUMBER offered to you: it goes to another agent or back to the queue."""
    from router import actions

    _run(actions.decline, number, actor, as_json, reason=reason)


@click.command("reply")
@click.argument("number")
@click.argument("text", required=False)
@_as_option
@click.option("--note", is_flag=True, help="An internal note: stored on the ticket, never sent to the customer.")
@click.option("--file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Attach this file (repeat for more; up to 10): attached to the mail, or sent on Telegram.")
@_json_option
def reply(number: str, text: str | None, actor: str, note: bool, files: tuple[Path, ...], as_json: bool) -> None:
    """Reply to the customer of ticket NUMBER with TEXT (or read it from stdin with - or no TEXT).

    The reply goes through the outbox on the customer's channel; the first one stops the
    first-response SLA clock.
    """
    from models.message import Attachment
    from router import actions

    if text is None and files:
        text = ""  # the files alone
    elif text is None or text == "-":
        text = sys.stdin.read()
    attachments = tuple(Attachment(path.name, mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                                   path.read_bytes()) for path in files)
    _run(actions.reply, number, actor, as_json, text=text, public=not note, attachments=attachments)


@click.command("open")
@click.argument("to", metavar="CUSTOMER")
@click.argument("text", required=False)
@_as_option
@click.option("--subject", default="", help="The mail's subject (default: the message's first line).")
@click.option("--via", type=click.Choice(["email", "telegram"]), default=None,
              help="The channel, when the customer has both (default: the one CUSTOMER names, else email).")
@click.option("--name", default="", help="The customer's name, for an address nobody has written from yet.")
@click.option("--type", "type_", default="", metavar="TYPE", help="Label it now (else the customer's answer labels it).")
@click.option("--category", default="", help="Label it now: technical, service, transaction or product.")
@click.option("--priority", default="", help="Label it now: P0-P3.")
@_json_option
def open_(to: str, text: str | None, actor: str, subject: str, via: str | None, name: str, type_: str, category: str,
          priority: str, as_json: bool) -> None:
    """Open a ticket by writing to CUSTOMER first: #12, an email address, or telegram:ID of someone who
    has written to the bot. TEXT is the message (or read it from stdin with - or no TEXT).

    The ticket is yours from the start and waits for the customer's answer, which threads back to it
    and comes to you; if they never answer, they are reminded and it is resolved like any ticket that
    waits (`[routing] remind_waiting_after_days`). Its resolution clock is paused until they answer (no
    first response is owed: you wrote first), and reports count it apart from the customers' own contacts.
    """
    from router import outreach

    if text is None or text == "-":
        text = sys.stdin.read()
    _run(outreach.open_ticket, to, actor, as_json, text=text, subject=subject, via=via, name=name,
         labels={"type": type_, "category": category, "priority": priority},
         default_region=_settings().phone_region)


@click.command("take")
@click.argument("number")
@_as_option
@_json_option
def take(number: str, actor: str, as_json: bool) -> None:
    """Take ticket NUMBER from the queue yourself: yours at once, in progress (`paidan queue` lists them).

    Not a ticket someone holds; one in triage only as a supervisor. You need its skills (a supervisor
    may take it regardless) and room in your capacity.
    """
    from router import actions

    _run(actions.take, number, actor, as_json)


@click.command("wait")
@click.argument("number")
@_as_option
@click.option("--note", default="", help="What you are waiting for (kept in the audit trail).")
@_json_option
def wait(number: str, actor: str, note: str, as_json: bool) -> None:
    """Ticket NUMBER waits for the customer: its SLA clocks pause until they write again."""
    from router import actions

    _run(actions.wait_for_customer, number, actor, as_json, note=note)


@click.command("resolve")
@click.argument("number")
@_as_option
@click.option("--note", default="", help="How it was solved (kept in the audit trail).")
@_json_option
def resolve(number: str, actor: str, note: str, as_json: bool) -> None:
    """Resolve ticket NUMBER: clocks stop and your freed capacity goes to the queue."""
    from router import actions

    _run(actions.resolve, number, actor, as_json, note=note)


@click.command("reopen")
@click.argument("number")
@_as_option
@click.option("--reason", default="", help="Why it is not solved (kept in the audit trail).")
@_json_option
def reopen(number: str, actor: str, reason: str, as_json: bool) -> None:
    """Reopen resolved or closed ticket NUMBER (a supervisor or its last holder); it is assigned again."""
    from router import actions

    _run(actions.reopen, number, actor, as_json, reason=reason)


@click.command("assign")
@click.argument("number")
@click.argument("agent", required=False)
@_as_option
@click.option("--force", is_flag=True, help="Supervisors: assign even without the skills the ticket needs.")
@click.option("--reason", default="", help="Why (kept in the audit trail).")
@_json_option
def assign(number: str, agent: str | None, actor: str, force: bool, reason: str, as_json: bool) -> None:
    """Give ticket NUMBER to AGENT (name or id), or without AGENT to the best other available agent.

    The holder or a supervisor may reassign. AGENT needs the ticket's skills (unless a supervisor
    uses --force) and spare capacity (never forced).
    """
    from router import actions

    _run(actions.reassign, number, actor, as_json, to=agent, force=force, reason=reason)


@click.command("relabel")
@click.argument("number")
@click.argument("head", type=click.Choice(["type", "category", "priority"], case_sensitive=False))
@click.argument("label")
@_as_option
@_json_option
def relabel(number: str, head: str, label: str, actor: str, as_json: bool) -> None:
    """Correct one label of ticket NUMBER, e.g. `relabel GD… priority P1`; kept as a label correction
    the classifier retrains from."""
    from router import actions

    _run(actions.relabel, number, actor, as_json, head=head, new_label=label)


@click.command("merge")
@click.argument("number")
@click.argument("into", metavar="INTO")
@_as_option
@click.option("--reason", default="", help="Why they are one request (kept in the audit trail).")
@_json_option
def merge(number: str, into: str, actor: str, reason: str, as_json: bool) -> None:
    """Merge ticket NUMBER into ticket INTO: one customer's two tickets about one request.

    NUMBER's messages move to INTO, which carries on with the more urgent priority of the two;
    NUMBER ends as merged, and a reply to it continues INTO. A supervisor or the holder of either.
    """
    from router import actions

    _run(actions.merge, number, actor, as_json, into=into, reason=reason)


@click.command("split")
@click.argument("number")
@click.option("--last", default=1, show_default=True, type=click.IntRange(1, 20),
              help="How many of the customer's latest messages move to the new ticket.")
@_as_option
@click.option("--reason", default="", help="Why they are another matter (kept in the audit trail).")
@_json_option
def split(number: str, last: int, actor: str, reason: str, as_json: bool) -> None:
    """Move the customer's latest message(s) on ticket NUMBER to a new ticket: another matter that was
    threaded here, or raised in the same conversation.

    The new ticket is routed like any new one: labelled, acknowledged to the customer with its own
    number, and assigned. `paidan tickets merge NEW NUMBER` undoes it. The holder or a supervisor.
    """
    from router import actions

    _run(actions.split, number, actor, as_json, last=last, reason=reason)


@click.command("export")
@click.option("--days", type=click.IntRange(1, 3660), default=30, show_default=True,
              help="The last DAYS local calendar days, today included.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="From this local date instead (YYYY-MM-DD), up to --until or today.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Up to and including this local date.")
@click.option("--out", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write the CSV here (readable by its owner only) instead of to standard output.")
@click.option("--bom/--no-bom", default=True, show_default=True,
              help="Start with a UTF-8 byte-order mark, without which Excel shows Chinese as mojibake.")
def export(days: int, since: datetime | None, until: datetime | None, out: Path | None, bom: bool) -> None:
    """Tickets created in a period as CSV, one row each, for a spreadsheet or a BI tool: labels, agent,
    first response and resolution (local time, and minutes), each SLA clock's outcome, reopens, the
    satisfaction rating, and whether a customer, an agent (writing first) or a mail system opened it.

    Customers appear as their number only; `paidan customers export` is for one person's data.
    """
    import csv
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from rich.progress import BarColumn, Progress, TextColumn

    from router import export as tickets_export
    from router.reports import last_days

    settings = _settings()
    zone = ZoneInfo(settings.timezone)
    if since is None and until is None:
        start, end = last_days(days, _now(), settings.timezone)
    else:
        first = since.date() if since else (until.date() - timedelta(days=days - 1))
        last = until.date() if until else _now().astimezone(zone).date()
        if last < first:
            raise click.BadParameter(f"--until {last} is before --since {first}", param_hint="--until")
        start = datetime.combine(first, datetime.min.time(), zone).astimezone(UTC)
        end = datetime.combine(last + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    engine = _engine()
    stream = open(out, "w", encoding="utf-8", newline="", opener=_private_file) if out else sys.stdout
    try:
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            total = tickets_export.count(session, start, end)
            if bom:
                stream.write("\ufeff")
            writer = csv.DictWriter(stream, fieldnames=tickets_export.COLUMNS)
            writer.writeheader()
            shown = out is not None and sys.stderr.isatty()  # stdout is the CSV: the bar goes to a terminal only
            with Progress(TextColumn("[bold]tickets"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
                          console=make_console(err=True), disable=not shown, transient=True) as bar:
                task = bar.add_task("export", total=total)
                for row in tickets_export.rows(session, start, end, settings.timezone):
                    writer.writerow(row)
                    bar.advance(task)
    finally:
        if out:
            stream.close()
        engine.dispose()
    if out:
        period = f"{start.astimezone(zone):%Y-%m-%d} – {(end.astimezone(zone) - timedelta(days=1)):%Y-%m-%d}"
        click.echo(f"{total:,} tickets created {period} ({settings.timezone}) written to {out}", err=True)


def _private_file(path: str, flags: int) -> int:
    """Open for writing with mode 0600: the export lists every ticket's subject."""
    import os

    return os.open(path, flags, 0o600)


@click.command("due")
@click.option("--within", "within", default="2h", show_default=True, metavar="WHEN",
              help="How far ahead to look: 30m, 2h or 1d.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@_json_option
def due(within: str, limit: int, as_json: bool) -> None:
    """Open tickets whose SLA clock runs out within WHEN, or ran out: overdue first, then the soonest.
    Paused clocks (waiting on the customer) are not counted."""
    from sqlalchemy.orm import Session

    from connectors.telegram.console import read_duration
    from paidan.dashboard import duration_text
    from router.queries import due_soon

    ahead = read_duration(within)
    if ahead is None:
        raise click.BadParameter(f"{within!r} is not a time from now; say 30m, 2h or 1d", param_hint="--within")
    now, engine = _now(), _engine()
    try:
        with Session(engine) as session:
            rows = due_soon(session, now, ahead, limit)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps([{"ticket": r.number, "priority": r.priority, "state": r.state, "agent": r.agent,
                                "clock": r.kind, "due_at": r.due_at.isoformat(),
                                "seconds_left": round((r.due_at - now).total_seconds())} for r in rows],
                              ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo(f"no running SLA clock runs out within {within}")
        return
    table = Table("ticket", "priority", "clock", "due", "agent", "state", "subject", box=None)
    for r in rows:
        left = (r.due_at - now).total_seconds()
        when = f"{duration_text(-left)} overdue" if left < 0 else f"in {duration_text(left)}"
        table.add_row(r.number, r.priority, r.kind.replace("_", " "), when, r.agent or "(queue)", r.state,
                      r.subject[:40])
    _console().print(table)


@click.command("remind")
@click.argument("number")
@click.option("--in", "after", required=True, metavar="WHEN", help="How long from now: 30m, 2h or 3d.")
@click.option("--note", default="", help="What to do then (shown with the reminder).")
@_as_option
@_json_option
def remind(number: str, after: str, note: str, actor: str, as_json: bool) -> None:
    """Remind yourself of ticket NUMBER later, in Telegram ("the customer calls back at three").

    The reminder waits in the outbox until it is due, so a restart does not lose it. The holder or a
    supervisor.
    """
    from connectors.telegram.console import read_duration
    from router import actions

    when = read_duration(after)
    if when is None:
        raise click.BadParameter(f"{after!r} is not a time from now; say 30m, 2h or 3d", param_hint="--in")
    _run(actions.follow_up, number, actor, as_json, after=when, note=note)


@click.command("spam")
@click.argument("number")
@_as_option
@click.option("--reason", default="", help="What makes it spam or abuse (kept in the audit trail).")
@_json_option
def spam(number: str, actor: str, reason: str, as_json: bool) -> None:
    """Close ticket NUMBER as spam and block its sender.

    What the sender writes afterwards, on any channel, is still stored, on closed tickets, but nobody
    is assigned and nothing is sent back. Their other open tickets that nobody has answered close too.
    `paidan tickets not-spam NUMBER` undoes all of it. A supervisor, or an agent for a ticket that is
    theirs or nobody's.
    """
    from router import actions

    _run(actions.mark_spam, number, actor, as_json, reason=reason)


@click.command("not-spam")
@click.argument("number")
@_as_option
@click.option("--reason", default="", help="Why it is not spam after all (kept in the audit trail).")
@_json_option
def not_spam(number: str, actor: str, reason: str, as_json: bool) -> None:
    """Undo `spam` for ticket NUMBER: unblock its sender and hand what was kept to the router.

    Tickets closed as spam, and those opened while the sender was blocked, reopen and are labelled,
    acknowledged and assigned as if they had just arrived. A supervisor, or the agent who marked it.
    """
    from router import actions

    _run(actions.not_spam, number, actor, as_json, reason=reason)


@click.command("explain")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def explain(number: str, as_json: bool) -> None:
    """Why ticket NUMBER went where it went: identity and merges, thread, labels and rules (with the
    words that favoured each label, when the model that chose them is still in the store), candidate
    agents and the choice, SLA targets and state, and the audit trail."""
    from sqlalchemy.orm import Session

    from paidan.logs import mask
    from router.explain import explain as explain_ticket, format_explanation

    engine = _engine()
    try:
        with Session(engine) as session:
            data = explain_ticket(session, number, now=_now(), config=_router_config())
            data["labels"]["cues"] = _label_cues(session, data)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
        return
    click.echo(format_explanation(data, mask=mask))


def _label_cues(session, data: dict) -> dict | str:
    """Why the model chose the ticket's labels: per head, the words that favoured them most
    (classifier/explain.py), from the model version that classified the ticket, re-reading what
    routing read (the subject and the first message). Or a sentence saying why there are none."""
    from sqlalchemy import select

    from classifier.errors import ClassifierError
    from classifier.explain import explain as explain_labels
    from classifier.service import ModelClassifier
    from classifier.store import ModelStore
    from models.tables import Ticket
    from router.routing import opening_text

    labels = data["labels"]
    prediction, version = labels.get("prediction") or {}, labels.get("model_version")
    if not prediction or not version:
        return "not classified by a model"
    _first, text = opening_text(session, session.scalar(select(Ticket).where(Ticket.number == data["ticket"]["number"])))
    try:
        model = ModelClassifier.load(ModelStore(_settings().model_dir).path(version))
    except ClassifierError as exc:
        return f"model {version} cannot be loaded here: {exc}"
    reasons = explain_labels(model.fast, text)
    heads = [h for h in ("type", "category") + (() if labels.get("rules") else ("priority",)) if h in reasons]
    if any(reasons[h].label != (prediction.get(h) or {}).get("label") for h in heads):
        return f"the text model {version} read cannot be reproduced (later messages joined it before routing)"
    return {head: reason.as_dict() for head, reason in reasons.items()}


TICKET_COMMANDS = (find, open_, accept, take, decline, reply, wait, resolve, reopen, assign, relabel, merge, split, remind, export, due, spam, not_spam,
                   explain)
