"""`paidan report` (the help desk's report in the terminal or as JSON) and `paidan dashboard` (a sign-in
link to the web dashboard for a supervisor)."""

from __future__ import annotations

import json

import click
from rich.table import Table

from paidan.cli_router import _console, _engine, _now, _settings

BARS = " ▁▂▃▄▅▆▇█"


@click.command("report")
@click.option("--days", type=click.IntRange(1, 366), default=7, show_default=True,
              help="The last N local days, today included (in the `timezone` setting).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def report(days: int, as_json: bool) -> None:
    """What came in, how fast it was answered, where the SLA held, and what waits now.

    The same numbers as the web dashboard (/dashboard) and GET /api/v1/report."""
    from sqlalchemy.orm import Session

    from router.reports import build_report, last_days

    settings, now = _settings(), _now()
    since, until = last_days(days, now, settings.timezone)
    engine = _engine()
    try:
        with Session(engine) as session:
            result = build_report(session, since=since, until=until, now=now, timezone=settings.timezone)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
        return
    _print(result)


@click.command("dashboard")
@click.option("--as", "actor", envvar="PAIDAN_AGENT", required=True, metavar="SUPERVISOR",
              help="The supervisor or admin the link signs in (name or id); defaults to $PAIDAN_AGENT.")
def dashboard(actor: str) -> None:
    """Print a sign-in link to the supervisor dashboard (works once, within 12 hours).

    Supervisors can also send /dashboard to the bot in Telegram. The link starts at the `public_url`
    setting; whoever opens it first is signed in (for 12 hours, or until they sign out), so send it
    only to its owner."""
    from sqlalchemy.orm import Session

    from models.errors import PaidanError
    from paidan.dashboard import SignInLinks, sign_in_url
    from router.actions import is_supervisor, resolve_agent

    settings = _settings()
    engine = _engine()
    try:
        with Session(engine) as session:
            agent = resolve_agent(session, actor)
            if not is_supervisor(agent):
                raise PaidanError(f"{agent.name} is an {agent.role}; only supervisors and admins see the dashboard "
                                  f"(paidan agents set '{agent.name}' --role supervisor)")
            url = sign_in_url(settings.public_url, SignInLinks(settings.secret), agent.id, _now())
    finally:
        engine.dispose()
    click.echo(url)


def sparkline(values: list[int]) -> str:
    peak = max(values, default=0)
    return "".join(BARS[0 if not v else max(1, round(v / peak * (len(BARS) - 1)))] for v in values)


def summary_lines(r) -> list[str]:
    """The report's headline figures as plain lines: the top of `paidan report`, and /report in Telegram."""
    from paidan.dashboard import duration_text, share_text

    machine = f"  (+{r.machine:,} auto-replies and bounces set aside)" if r.machine else ""
    if r.opened_by_agents:
        machine += f"  (+{r.opened_by_agents:,} opened by agents writing first)"
    lines = [
        f"contacts {r.created:,}{machine}; resolved {r.resolved:,}, reopened {r.reopened:,} "
        f"({share_text(r.reopen_share)}); merged {r.merged:,}",
        f"SLA met: first response {share_text(r.sla_share('first_response'))}, "
        f"resolution {share_text(r.sla_share('resolution'))}",
        f"now: {sum(r.now.tickets.values()):,} open, {sum(r.now.waiting.values()):,} waiting for an agent "
        f"(oldest {duration_text(r.oldest_waiting_seconds)}); SLA clocks: {sum(r.now.sla_overdue.values()):,} overdue, "
        f"{r.at_risk:,} more past their warning",
    ]
    s = r.satisfaction
    if s.sent:
        lines.append(f"satisfaction: {s.answered:,} of {s.sent:,} answered, average "
                     f"{'–' if s.average is None else f'{s.average:.2f}'} / 5, {share_text(s.satisfied_share)} satisfied")
    return lines


def _print(r) -> None:
    from paidan.dashboard import duration_text, share_text

    out = _console()
    out.print(f"[bold]paidan report[/bold]  {r.days[0]} – {r.days[-1]} ({r.timezone}), counted {r.generated_at:%Y-%m-%d %H:%M} UTC")
    for line in summary_lines(r):
        out.print(line, markup=False)

    volume = Table(title="contacts per day", title_justify="left")
    volume.add_column("channel")
    volume.add_column("total", justify="right")
    volume.add_column(f"{r.days[0]} … {r.days[-1]}")
    for channel, per_day in r.created_by_day.items():
        volume.add_row(channel, f"{sum(per_day):,}", sparkline(per_day))
    volume.add_row("resolved", f"{r.resolved:,}", sparkline(r.resolved_by_day))
    out.print(volume)

    sla = Table(title="SLA by priority (met / breached / running)", title_justify="left")
    for column in ("priority", "clock", "met", "breached", "running", "met share"):
        sla.add_column(column, justify="left" if column in ("priority", "clock") else "right")
    for line in r.sla:
        sla.add_row(line.priority, line.kind.replace("_", " "), f"{line.met:,}", f"{line.breached:,}",
                    f"{line.running:,}", share_text(line.met_share))
    if r.sla:
        out.print(sla)

    times = Table(title="wall-clock times by priority", title_justify="left")
    for column in ("priority", "first response median", "p90", "resolution median", "p90 ", "tickets"):
        times.add_column(column, justify="left" if column == "priority" else "right")
    for priority in dict.fromkeys([*r.first_response, *r.resolution]):
        fr, res = r.first_response.get(priority), r.resolution.get(priority)
        times.add_row(priority, duration_text(fr and fr.median), duration_text(fr and fr.p90), duration_text(res and res.median),
                      duration_text(res and res.p90), f"{fr.count if fr else 0:,} / {res.count if res else 0:,}")
    if r.first_response or r.resolution:
        out.print(times)

    agents = Table(title="agents", title_justify="left")
    for column in ("agent", "online", "load", "accepted", "declined", "expired", "resolved", "first response", "rating"):
        agents.add_column(column, justify="left" if column in ("agent", "online") else "right")
    for a in r.agents:
        if a.role != "agent" and not (a.offered or a.resolved):
            continue
        agents.add_row(a.name, "yes" if a.online else "no", f"{a.load}/{a.capacity}", f"{a.accepted:,}",
                       f"{a.declined:,}", f"{a.expired:,}", f"{a.resolved:,}", duration_text(a.first_response.median),
                       "–" if a.rating_average is None else f"{a.rating_average:.1f} ({a.ratings})")
    out.print(agents)
    if r.delivery_failed:
        out.print("could not deliver: " + ", ".join(f"{c} {n:,}" for c, n in r.delivery_failed.items()))
    if r.corrections:
        out.print("labels corrected: " + ", ".join(f"{h} {n:,}" for h, n in r.corrections.items()))
