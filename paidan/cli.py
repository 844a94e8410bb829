"""The `paidan` command: serve, database, agents, tickets (and the classifier's commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from models.errors import PaidanError
from paidan.cli_router import _now, _router_config
from paidan.console import make_console
from paidan.settings import Settings
from router.config import ROLES

console = make_console()


def _settings() -> Settings:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def _engine():
    from paidan.db import make_engine

    return make_engine(_settings().database_url)


class PaidanGroup(click.Group):
    """Turns our own errors into one readable line and exit code 1, instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PaidanError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=PaidanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), envvar="PAIDAN_CONFIG",
              help="TOML settings file (default: paidan.toml in the working directory, if present).")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """paidan (派单): omnichannel intake bot and router for customer-support teams.

    Settings come from paidan.toml and PAIDAN_* environment variables; the defaults run on
    one machine (SQLite file paidan.db, web on 127.0.0.1:8080).
    """
    if config is not None:
        import os

        if not config.exists():
            raise click.BadParameter(f"{config} does not exist", param_hint="--config")
        os.environ["PAIDAN_CONFIG"] = str(config)


def main() -> None:
    cli(prog_name="paidan")


# ---------------------------------------------------------------- serve


@cli.command()
@click.option("--host", help="Web address to listen on (default: settings web_host, 127.0.0.1).")
@click.option("--port", type=int, help="Web port (default: settings web_port, 8080; 0 picks a free one).")
@click.option("--smtp-port", type=int, help="Port of our SMTP server for customer mail (default: settings "
              "smtp_port, 2525; 0 picks a free one).")
@click.option("--no-migrate", is_flag=True, help="Do not apply database migrations at start.")
def serve(host: str | None, port: int | None, smtp_port: int | None, no_migrate: bool) -> None:
    """Run paidan: every channel, the router and its timers, until Ctrl-C.

    \b
    - the web form, status page and JSON API (web_host:web_port);
    - email: our SMTP server (smtp_host:smtp_port), and when [email] says so, a polled IMAP
      mailbox and a relay for acknowledgements and replies;
    - Telegram, when [telegram] token is set: customers' chats and the agents' console.
    """
    from paidan import logs
    from paidan.service import CannotListen, serve_forever

    settings = _settings()
    logs.setup(settings.log_level, settings.log_json)
    overrides = {k: v for k, v in {"web_host": host, "web_port": port, "smtp_port": smtp_port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        serve_forever(settings, migrate=not no_migrate)
    except KeyboardInterrupt:
        pass
    except CannotListen as exc:
        raise click.ClickException(str(exc)) from None


# ---------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Database: migrations and backups."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target migration revision.")
def db_upgrade(revision: str) -> None:
    """Apply database migrations up to REVISION (safe to run repeatedly)."""
    from paidan.db import normalise_url, upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    console.print(f"database at {_redact(normalise_url(settings.database_url))} is at revision {revision}")


@db.command("backup")
@click.option("--out", type=click.Path(path_type=Path),
              help="A directory to write the backup in, or the backup's file name "
                   "(default: beside the SQLite database; the working directory for PostgreSQL).")
@click.option("--keep", type=click.IntRange(min=1),
              help="Afterwards, delete the oldest paidan-backup-* files in that directory beyond the newest N "
                   "(no other file is touched).")
def db_backup(out: Path | None, keep: int | None) -> None:
    """Back up the database; safe while `paidan serve` keeps running.

    \b
    SQLite: a consistent copy of the live file (SQLite's online backup), checked with
    PRAGMA integrity_check, as paidan-backup-YYYYMMDDTHHMMSSZ.db.
    PostgreSQL: pg_dump --format=custom (needs the PostgreSQL client on PATH), checked
    with pg_restore, as paidan-backup-YYYYMMDDTHHMMSSZ.dump.
    The file appears only once it is whole and checked, readable by its owner only (it holds
    personal data). `paidan serve` can make them itself: [backup] every_hours in paidan.toml.

    \b
    To restore SQLite: stop paidan, delete paidan.db-wal and paidan.db-shm if they are
    there, and copy the backup over paidan.db.
    To restore PostgreSQL: stop paidan, then
      pg_restore --clean --if-exists --dbname postgresql://USER@HOST/DB BACKUP.dump
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from paidan.backup import back_up, prune, restore_hint
    from paidan.console import clear_errors

    database_url = _settings().database_url
    with clear_errors():
        if console.is_terminal:
            columns = (TextColumn("backing up"), BarColumn(), MofNCompleteColumn(), TextColumn("pages"),
                       TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("backup", total=None)
                backup = back_up(database_url, out,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
        else:
            backup = back_up(database_url, out)
        removed = prune(backup.path.parent, keep, backup.path.suffix, spare=backup.path) if keep else []
    console.print(f"backed up to {backup.summary()}", markup=False)
    if removed:
        console.print(f"removed {len(removed)} older: {', '.join(p.name for p in removed)}", markup=False)
    console.print(restore_hint(database_url, backup.path), markup=False)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------- agents


@cli.group()
def agents() -> None:
    """Agents and supervisors: skills, capacity, seniority, Telegram id."""


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v for v in value.split(",") if v.strip()]


@agents.command("add")
@click.argument("name")
@click.option("--skills", default="", help="Comma-separated skills, e.g. technical,transaction,zh,en.")
@click.option("--capacity", type=int, default=5, show_default=True, help="Open tickets at once.")
@click.option("--seniority", type=click.IntRange(1, 3), default=1, show_default=True, help="1 junior … 3 senior.")
@click.option("--role", type=click.Choice(ROLES), default="agent", show_default=True)
@click.option("--telegram-id", type=int, help="The agent's Telegram user id (for the agent console).")
@click.option("--email", help="The agent's email address.")
def agents_add(name, skills, capacity, seniority, role, telegram_id, email) -> None:
    """Add an agent called NAME."""
    from paidan.db import transaction
    from router.agents import add_agent

    with transaction(_engine()) as session:
        agent = add_agent(session, name, skills=_split(skills) or [], capacity=capacity, seniority=seniority,
                          role=role, telegram_id=telegram_id, email=email)
        console.print(f"added {agent.role} {agent.name} (id {agent.id}) skills={','.join(agent.skills) or '-'}")
        _warn_unknown_skills(agent.skills, _router_config())


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def agents_list(as_json: bool) -> None:
    """List agents with their skills, capacity and current load."""
    from sqlalchemy.orm import Session

    from models.tables import Agent
    from router.agents import open_load

    with Session(_engine()) as session:
        rows = session.scalars(select(Agent).order_by(Agent.id)).all()
        load = open_load(session)
    data = [
        {"id": a.id, "name": a.name, "role": a.role, "skills": a.skills, "capacity": a.capacity,
         "load": load.get(a.id, 0), "seniority": a.seniority, "online": a.online, "telegram_id": a.telegram_id}
        for a in rows
    ]
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    table = Table("id", "name", "role", "skills", "load/capacity", "seniority", "online", "telegram")
    for a in data:
        table.add_row(str(a["id"]), a["name"], a["role"], ",".join(a["skills"]) or "-",
                      f"{a['load']}/{a['capacity']}", str(a["seniority"]), "yes" if a["online"] else "no",
                      str(a["telegram_id"] or "-"))
    console.print(table if data else "no agents yet: add one with `paidan agents add NAME --skills ...`")


@agents.command("set")
@click.argument("agent")
@click.option("--skills", help="Replace the skills (comma-separated).")
@click.option("--capacity", type=int)
@click.option("--seniority", type=click.IntRange(1, 3))
@click.option("--role", type=click.Choice(ROLES))
@click.option("--telegram-id", type=int)
@click.option("--email")
@click.option("--online/--offline", default=None,
              help="Mark the agent available or not; going offline hands on the offers they have not accepted.")
@click.option("--hand-on", is_flag=True, help="With --offline: hand on the tickets they hold too (gone for the day).")
def agents_set(agent, skills, capacity, seniority, role, telegram_id, email, online, hand_on) -> None:
    """Change AGENT (name or id)."""
    from paidan.db import transaction
    from router.actions import set_availability
    from router.agents import get_agent, update_agent

    with transaction(_engine()) as session:
        row = update_agent(session, get_agent(session, agent), skills=_split(skills), capacity=capacity,
                           seniority=seniority, role=role, telegram_id=telegram_id, email=email)
        config = _router_config()
        availability = None
        if online is not None:  # offers handed on when going offline, the queue drained when coming online
            availability = set_availability(session, row, online, config, _now(), hand_on=hand_on)
        console.print(f"{row.name}: role={row.role} skills={','.join(row.skills) or '-'} capacity={row.capacity} "
                      f"seniority={row.seniority} online={'yes' if row.online else 'no'}")
        if skills is not None:
            _warn_unknown_skills(row.skills, config)
        if availability is not None and (availability.handed_on or availability.kept or availability.assigned):
            console.print(availability.summary)
        elif row.online and capacity is not None:
            # Capacity just appeared: waiting tickets need not wait for serve's next queue tick.
            from router.assignment import drain_queue

            assigned = drain_queue(session, config, _now())
            if assigned:
                console.print(f"assigned {assigned} waiting ticket(s) from the queue")


def _warn_unknown_skills(skills: list[str], config) -> None:
    from router.agents import known_skills, unknown_skills

    unknown = unknown_skills(skills, config)
    if unknown:
        known = ", ".join(sorted(known_skills(config)))
        console.print(f"[yellow]warning:[/] no ticket asks for the skill(s) {', '.join(unknown)} "
                      f"(the router asks for: {known}; map categories to skills under [routing] in paidan.toml)")


# ---------------------------------------------------------------- tickets


@cli.group()
def tickets() -> None:
    """Tickets: list, find and show them; the agent actions on one (accept, reply, resolve, merge, spam …)."""


@tickets.command("list")
@click.option("--state", help="Only tickets in this state (new, assigned, in_progress, …).")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tickets_list(state: str | None, limit: int, as_json: bool) -> None:
    """List the newest tickets."""
    from sqlalchemy.orm import Session

    from models.tables import Ticket

    query = select(Ticket).options(selectinload(Ticket.assigned_agent)).order_by(Ticket.id.desc()).limit(limit)
    if state:
        query = query.where(Ticket.state == state)
    with Session(_engine()) as session:
        rows = session.scalars(query).all()
        data = [
            {"number": t.number, "state": t.state, "channel": t.channel, "subject": t.subject,
             "type": t.type, "category": t.category, "priority": t.priority,
             "agent": t.assigned_agent.name if t.assigned_agent else None, "created_at": t.created_at.isoformat()}
            for t in rows
        ]
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    table = Table("number", "state", "channel", "priority", "category", "agent", "subject", "created")
    for t in data:
        table.add_row(t["number"], t["state"], t["channel"], t["priority"] or "-", t["category"] or "-",
                      t["agent"] or "-", t["subject"][:50], t["created_at"][:16])
    console.print(table if data else "no tickets")


@tickets.command("show")
@click.argument("number")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def tickets_show(number: str, as_json: bool) -> None:
    """Show ticket NUMBER (GD…): details, messages and the audit trail."""
    from sqlalchemy.orm import Session

    from models.errors import NotFound
    from models.tables import Survey, Ticket

    with Session(_engine()) as session:
        ticket = session.scalar(
            select(Ticket).where(Ticket.number == number.strip().upper())
            .options(selectinload(Ticket.messages), selectinload(Ticket.events), selectinload(Ticket.customer),
                     selectinload(Ticket.assigned_agent))
        )
        if ticket is None:
            raise NotFound(f"no ticket {number} (see `paidan tickets list`)")
        survey = session.scalar(select(Survey).where(Survey.ticket_id == ticket.id))
        data = {
            "number": ticket.number, "state": ticket.state, "channel": ticket.channel, "subject": ticket.subject,
            "customer": {"id": ticket.customer.id, "name": ticket.customer.display_name},
            "labels": {"type": ticket.type, "category": ticket.category, "priority": ticket.priority,
                       "confidence": ticket.confidence, "model_version": ticket.model_version},
            "agent": ticket.assigned_agent.name if ticket.assigned_agent else None,
            "created_at": ticket.created_at.isoformat(),
            "messages": [
                {"id": m.id, "direction": m.direction, "channel": m.channel, "sender": m.sender,
                 "received_at": m.received_at.isoformat(), "text": m.text, "flags": m.flags,
                 "attachments": len(m.attachments)}
                for m in ticket.messages
            ],
            "events": [
                {"at": e.at.isoformat(), "actor": e.actor, "kind": e.kind, "from": e.from_state,
                 "to": e.to_state, "reason": e.reason}
                for e in ticket.events
            ],
            "survey": None if survey is None else {
                "channel": survey.channel, "sent_at": survey.sent_at.isoformat(), "rating": survey.rating,
                "comment": survey.comment, "answered_at": survey.answered_at.isoformat() if survey.answered_at else None},
        }
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    from paidan.logs import mask

    out = console
    out.print(f"[bold]{data['number']}[/bold]  {data['state']}  via {data['channel']}  created {data['created_at'][:19]}",
              highlight=False)
    out.print(f"subject:  {data['subject']}", markup=False, highlight=False)
    out.print(f"customer: #{data['customer']['id']} {data['customer']['name']}", markup=False, highlight=False)
    labels = data["labels"]
    out.print(f"labels:   type={labels['type'] or '-'} category={labels['category'] or '-'} "
              f"priority={labels['priority'] or '-'}   agent: {data['agent'] or '-'}", highlight=False)
    if (survey := data["survey"]) is not None:
        answer = f"{survey['rating']}/5" if survey["rating"] else "not answered yet"
        out.print(f"survey:   {answer} (asked on {survey['channel']} {survey['sent_at'][:16]})"
                  + (f": {survey['comment']}" if survey["comment"] else ""), markup=False, highlight=False)
    out.print("\n[bold]messages[/bold]")
    for m in data["messages"]:
        flags = f" flags={','.join(m['flags'])}" if m["flags"] else ""
        out.print(f"  #{m['id']} {m['direction']} {m['channel']} {mask(m['sender'])} {m['received_at'][:19]}"
                  f" attachments={m['attachments']}{flags}", markup=False, highlight=False)
        for line in m["text"].splitlines()[:20]:
            out.print(f"    {line}", markup=False, highlight=False)
    table = Table("when (UTC)", "who", "what", "from → to", "why", title="audit trail", title_justify="left")
    for e in data["events"]:
        table.add_row(e["at"][:19], e["actor"], e["kind"],
                      f"{e['from'] or ''} → {e['to'] or ''}" if e["to"] else "", e["reason"])
    out.print(table)


# ---------------------------------------------------------------- classifier


def _add_classifier_commands() -> None:
    from paidan.cli_classifier import benchmark, classify, evaluate, model, train

    for command in (classify, evaluate, benchmark, train, model):
        cli.add_command(command)


_add_classifier_commands()


def _add_router_commands() -> None:
    from paidan.cli_customers import customers
    from paidan.cli_report import dashboard, report
    from paidan.cli_replies import replies
    from paidan.cli_router import TICKET_COMMANDS, queue

    cli.add_command(customers)
    cli.add_command(replies)
    cli.add_command(queue)
    cli.add_command(report)
    cli.add_command(dashboard)
    for command in TICKET_COMMANDS:
        tickets.add_command(command)


_add_router_commands()


if __name__ == "__main__":
    main()
