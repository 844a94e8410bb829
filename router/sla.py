"""SLA clocks: first response and resolution per ticket, on the calendar of its priority and channel.

A clock runs in segments. `resumed_at` starts the running segment; `consumed_seconds` is the
calendar time of all the segments before it; a pause ends the segment at `paused_since` and a
stop at `stopped_at`. So the time used is always

    consumed_seconds + elapsed(resumed_at, paused_since or stopped_at or now)

Pausing and stopping need no calendar (their contract carries none): the open segment is
folded into `consumed_seconds` by the next step that has the configuration (resume, retarget,
restart). While a clock runs, `warn_at` and `due_at` hold its projections, so the sweep is a
plain indexed query on stored state: nothing is kept in memory, and a restart loses nothing.

Each warning and each breach fires once per clock: the sweep claims it with a conditional
UPDATE of `warned_at` / `breached_at` and acts only when its own update changed the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, case, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from models.errors import InvalidInput
from models.tables import Agent, SlaClock, Ticket, TicketEvent
from router import states
from router.calendar import BUSINESS, advance, elapsed, working_day_seconds, zone_of
from router.config import RouterConfig, SlaTarget
from router.outbox import notify_agent, notify_supervisors

FIRST_RESPONSE, RESOLUTION = "first_response", "resolution"
CLOCK_KINDS = (FIRST_RESPONSE, RESOLUTION)
ON_CALL_PRIORITIES = frozenset({"P0", "P1"})
ACTOR = "sla"

_LABELS = {FIRST_RESPONSE: "first response", RESOLUTION: "resolution"}


# ---------------------------------------------------------------- the clock's life


def start_clocks(session: Session, ticket: Ticket, config: RouterConfig, now: datetime, *,
                 existing: list[SlaClock] | None = None, kinds: Sequence[str] = CLOCK_KINDS) -> list[SlaClock]:
    """Start the clocks (both, or `kinds`) from the ticket's creation; on a ticket that has them,
    retarget them. Returns the ticket's clocks. `existing`: its clocks, when the caller has read them
    already (the routing step reads those of its whole batch at once). A ticket an agent opened by
    writing first (router/outreach.py) starts only its resolution clock, which runs once the customer
    answers: a first response of ours it already has."""
    clocks = _clocks(session, ticket) if existing is None else existing
    if clocks:
        _retarget(session, ticket, clocks, config, now)
        return clocks
    priority, target = _target(config, ticket)
    created = []
    for kind in kinds:
        clock = SlaClock(ticket_id=ticket.id, kind=kind, priority=priority, calendar=target.calendar,
                         target_seconds=_target_seconds(target, kind), started_at=ticket.created_at,
                         consumed_seconds=0, resumed_at=ticket.created_at)
        _project(clock, config)
        session.add(clock)
        created.append(clock)
    session.add(TicketEvent(
        ticket_id=ticket.id, at=now, actor=ACTOR, kind="sla_started",
        reason=f"SLA {priority}: " + "; ".join(_due_phrase(c, config, now) for c in created),
        data={"priority": priority, "channel": ticket.channel, "clocks": [_facts(c) for c in created]},
    ))
    return created


def pause_clocks(session: Session, ticket: Ticket, now: datetime, config: RouterConfig | None = None) -> None:
    """The ticket waits on the customer: the running clocks stop counting until resumed.

    With `config`, consumed_seconds is brought up to date at once; without it, the segment
    resumed_at → now is folded in by the next step that knows the calendar (resume).
    """
    for clock in _clocks(session, ticket):
        if clock.stopped_at is None and clock.paused_since is None:
            clock.paused_since = max(now, clock.resumed_at)
            clock.warn_at = clock.due_at = None
            if config is not None:
                _fold(clock, config, now)


def resume_clocks(session: Session, ticket: Ticket, config: RouterConfig, now: datetime) -> None:
    """The customer answered: paused clocks run again from `now`, with the time they had used."""
    for clock in _clocks(session, ticket):
        if clock.stopped_at is None and clock.paused_since is not None:
            _fold(clock, config, now)
            clock.paused_since = None
            clock.resumed_at = max(now, clock.resumed_at)
            _project(clock, config)


def stop_clock(session: Session, ticket: Ticket, kind: str, now: datetime, config: RouterConfig | None = None) -> None:
    """The target is met ("first_response" by a reply, "resolution" by resolving); no-op when stopped.

    With `config`, consumed_seconds then holds the clock's whole count (see pause_clocks).
    """
    stop_clocks(session, ticket, (kind,), now, config)


def stop_clocks(session: Session, ticket: Ticket, kinds: Sequence[str], now: datetime,
                config: RouterConfig | None = None) -> None:
    """`stop_clock` for several kinds at once (a ticket resolved before any reply stops both).

    One UPDATE … RETURNING stops the running ones and gives what their events say: a reply or a
    resolve costs one statement here, not a read of the clocks and a write of them at the flush.
    """
    unknown = [k for k in kinds if k not in CLOCK_KINDS]
    if unknown:
        raise InvalidInput("kind", f"must be one of {', '.join(CLOCK_KINDS)}, not {unknown[0]!r}")
    if any(isinstance(o, SlaClock) for o in (*session.new, *session.dirty)):
        session.flush()  # a clock started or restarted in this transaction: the UPDATE must see it
    kinds = list(kinds)
    stopped = session.execute(_STOP, {"of_ticket": ticket.id, "kinds": kinds, "now": now}).all()
    for row in sorted(stopped, key=lambda r: kinds.index(r.kind)):  # events in the order asked
        clock = session.identity_map.get(identity_key(SlaClock, row.id))
        if clock is not None:  # already loaded in this session: show the row as it now is
            set_committed_value(clock, "stopped_at", row.stopped_at)
        if config is not None:
            clock = clock or session.get(SlaClock, row.id)
            _fold(clock, config, now)
        facts = _facts(clock if clock is not None else row)
        on_time = row.breached_at is None and (row.due_at is None or now <= row.due_at)
        due = f" (due {_iso(row.due_at)})" if row.due_at else ""
        session.add(TicketEvent(
            ticket_id=ticket.id, at=now, actor=ACTOR, kind="sla_met" if on_time else "sla_stopped",
            reason=f"{_LABELS[row.kind]} {'met' if on_time else 'done late'}{due}",
            data={**facts, "on_time": on_time},
        ))


_C = SlaClock.__table__.c
_NOW = bindparam("now", type_=_C.stopped_at.type)
# Stopped at `now`, or at the start of its running segment if that lies ahead (as the ORM code
# did with max()); CASE rather than GREATEST/MAX, which SQLite and PostgreSQL spell differently.
_STOP = (
    update(SlaClock.__table__)
    .where(_C.ticket_id == bindparam("of_ticket"), _C.kind.in_(bindparam("kinds", expanding=True)),
           _C.stopped_at.is_(None))
    .values(stopped_at=case((_C.resumed_at > _NOW, _C.resumed_at), else_=_NOW))
    .returning(_C.id, _C.kind, _C.priority, _C.calendar, _C.target_seconds, _C.consumed_seconds, _C.warn_at,
               _C.due_at, _C.breached_at, _C.stopped_at)
)


def restart_clocks(session: Session, ticket: Ticket, config: RouterConfig, now: datetime) -> None:
    """A reopened ticket: the resolution clock runs again from `now`, keeping the time it had used
    (and the first-response clock too when the customer never had an answer)."""
    clocks = _clocks(session, ticket)
    if not clocks:
        start_clocks(session, ticket, config, now)
        return
    for clock in clocks:
        owed = clock.kind == RESOLUTION or (clock.kind == FIRST_RESPONSE and ticket.first_response_at is None)
        if clock.stopped_at is None or not owed:
            continue
        _fold(clock, config, now)
        clock.stopped_at = clock.paused_since = None
        clock.resumed_at = max(now, clock.resumed_at)
        _project(clock, config)
        session.add(TicketEvent(
            ticket_id=ticket.id, at=now, actor=ACTOR, kind="sla_restarted",
            reason=f"reopened: {_due_phrase(clock, config, now)}", data=_facts(clock),
        ))
    # Anything a status change left behind (a ticket reopened from waiting) runs again too.
    if ticket.state != states.AWAITING_CUSTOMER:
        resume_clocks(session, ticket, config, now)


def reprioritise(session: Session, ticket: Ticket, config: RouterConfig, now: datetime) -> None:
    """The ticket's priority changed: new targets, the time already used kept."""
    clocks = _clocks(session, ticket)
    if not clocks:
        start_clocks(session, ticket, config, now)
    else:
        _retarget(session, ticket, clocks, config, now)
    if ticket.priority in ON_CALL_PRIORITIES and ticket.state in states.OPEN_STATES:
        # The on-call supervisor hears of every P0/P1, however it became one.
        notify_on_call_at_creation(session, ticket, now)


def used_seconds(clock: SlaClock, config: RouterConfig, now: datetime) -> int:
    """Calendar seconds this clock has counted so far (for explanations and reports)."""
    end = clock.paused_since or clock.stopped_at or now
    cal = config.calendar
    return clock.consumed_seconds + max(0, elapsed(cal, clock.calendar, clock.resumed_at, end))


def clock_summary(clock: SlaClock, config: RouterConfig, now: datetime) -> dict:
    """What `tickets explain` shows of one clock."""
    if clock.stopped_at is not None:
        state = "met" if clock.breached_at is None else "met late"
    elif clock.paused_since is not None:
        state = "paused"
    else:
        state = "breached" if clock.breached_at is not None else "running"
    return {
        **_facts(clock), "state": state, "used_seconds": used_seconds(clock, config, now),
        "target": describe_target(clock.target_seconds, clock.calendar, config),
        "paused_since": _iso(clock.paused_since), "warned_at": _iso(clock.warned_at),
        "breached_at": _iso(clock.breached_at), "stopped_at": _iso(clock.stopped_at),
    }


# ---------------------------------------------------------------- the sweep


def sweep(session: Session, config: RouterConfig, now: datetime, *, limit: int = 500) -> int:
    """Fire the warnings and breaches that are due, each exactly once; returns how many fired.

    Safe with several sweepers on one database: rows are taken with SKIP LOCKED where the
    database has it, and every firing is claimed by a conditional UPDATE whose row count says
    whether this sweeper won it.
    """
    warn_due = and_(SlaClock.warned_at.is_(None), SlaClock.warn_at <= now)
    breach_due = and_(SlaClock.breached_at.is_(None), SlaClock.due_at <= now)
    clocks = session.scalars(
        select(SlaClock)
        .join(Ticket, Ticket.id == SlaClock.ticket_id)
        .where(SlaClock.stopped_at.is_(None), SlaClock.paused_since.is_(None),
               Ticket.state.in_(states.OPEN_STATES), or_(warn_due, breach_due))
        .order_by(SlaClock.due_at, SlaClock.id)
        .limit(limit)
        .with_for_update(of=SlaClock, skip_locked=True)
    ).all()
    if not clocks:
        return 0
    tickets = {t.id: t for t in session.scalars(select(Ticket).where(Ticket.id.in_({c.ticket_id for c in clocks})))}
    fired = 0
    for clock in clocks:
        ticket = tickets[clock.ticket_id]
        if clock.warned_at is None and clock.warn_at is not None and clock.warn_at <= now \
                and _claim(session, clock, SlaClock.warned_at, SlaClock.warn_at, now):
            _warn(session, ticket, clock, config, now)
            fired += 1
        if clock.breached_at is None and clock.due_at is not None and clock.due_at <= now \
                and _claim(session, clock, SlaClock.breached_at, SlaClock.due_at, now):
            _escalate(session, ticket, clock, config, now)
            fired += 1
    return fired


def _claim(session: Session, clock: SlaClock, mark, threshold, now: datetime) -> bool:
    """Set `mark` to now unless someone already did: True only for the one sweeper that set it."""
    result = session.execute(
        update(SlaClock)
        .where(SlaClock.id == clock.id, mark.is_(None), SlaClock.stopped_at.is_(None),
               SlaClock.paused_since.is_(None), threshold <= now)
        .values({mark.key: now})
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    set_committed_value(clock, mark.key, now)  # the row already says so; no second write at flush
    return True


def _warn(session: Session, ticket: Ticket, clock: SlaClock, config: RouterConfig, now: datetime) -> None:
    percent = round(config.warn_fraction * 100)
    reason = f"{_due_phrase(clock, config, now)}: {percent} % used"
    data = {**_facts(clock), "warn_fraction": config.warn_fraction}
    text = f"{ticket.number}: {reason}"
    key = f"sla:{clock.id}:warn"
    agent = session.get(Agent, ticket.assigned_agent_id) if ticket.assigned_agent_id else None
    if agent is not None:
        notify_agent(session, agent, kind="sla_warning", ticket=ticket, text=text, now=now, dedupe_key=key,
                     clock=clock.kind, due_at=_iso(clock.due_at))
        data["notified"] = [agent.name]
    else:
        items = notify_supervisors(session, kind="sla_warning", ticket=ticket, text=text, now=now, dedupe_key=key,
                                   clock=clock.kind, due_at=_iso(clock.due_at))
        data["notified"] = [i.recipient for i in items]
        reason += "; unassigned, so the supervisors were told"
    session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=ACTOR, kind="sla_warning", reason=reason, data=data))


def _escalate(session: Session, ticket: Ticket, clock: SlaClock, config: RouterConfig, now: datetime) -> None:
    reason = (f"{_LABELS[clock.kind]} overdue since {_when(clock.due_at, config, now)} "
              f"({clock.priority}, {describe_target(clock.target_seconds, clock.calendar, config)}): "
              "escalated to the supervisors")
    items = notify_supervisors(session, kind="escalation", ticket=ticket, text=f"{ticket.number}: {reason}", now=now,
                               dedupe_key=f"sla:{clock.id}:breach", clock=clock.kind, due_at=_iso(clock.due_at),
                               assigned_agent_id=ticket.assigned_agent_id)
    session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=ACTOR, kind="sla_breach", reason=reason,
                            data={**_facts(clock), "notified": [i.recipient for i in items]}))


def notify_on_call_at_creation(session: Session, ticket: Ticket, now: datetime, *,
                               supervisors: Sequence[Agent] | None = None) -> int:
    """A P0/P1 ticket: tell the on-call supervisors (all of them when nobody is on call), once.
    `supervisors`: `supervisors_of(session)`, when the caller routes many tickets."""
    if ticket.priority not in ON_CALL_PRIORITIES:
        return 0
    items = notify_supervisors(
        session, kind="on_call", ticket=ticket, now=now, on_call_only=True, supervisors=supervisors,
        dedupe_key=f"oncall:{ticket.id}:{ticket.priority}", priority=ticket.priority,
        text=f"{ticket.priority} ticket {ticket.number} on {ticket.channel}: {ticket.subject or '(no subject)'}",
    )
    if items:
        recipients = [i.recipient for i in items]
        session.add(TicketEvent(
            ticket_id=ticket.id, at=now, actor=ACTOR, kind="on_call_notified",
            reason=f"{ticket.priority}: the on-call supervisor was told ({', '.join(recipients)})",
            data={"priority": ticket.priority, "notified": recipients},
        ))
    return len(items)


# ---------------------------------------------------------------- projections and targets


def _clocks(session: Session, ticket: Ticket) -> list[SlaClock]:
    return list(session.scalars(select(SlaClock).where(SlaClock.ticket_id == ticket.id).order_by(SlaClock.id)))


def _target(config: RouterConfig, ticket: Ticket) -> tuple[str, SlaTarget]:
    """The priority whose targets apply (an unknown or missing priority gets P3's) and the targets."""
    known = set(config.sla) | set(config.sla_by_channel.get(ticket.channel, {}))
    priority = ticket.priority if ticket.priority in known else "P3"
    return priority, config.sla_for(priority, ticket.channel)


def _target_seconds(target: SlaTarget, kind: str) -> int:
    span = target.first_response if kind == FIRST_RESPONSE else target.resolution
    return int(span.total_seconds())


def _fold(clock: SlaClock, config: RouterConfig, now: datetime) -> None:
    """Move the open segment into consumed_seconds, so the clock can change calendar or restart."""
    end = clock.paused_since or clock.stopped_at or now
    if end > clock.resumed_at:
        clock.consumed_seconds += elapsed(config.calendar, clock.calendar, clock.resumed_at, end)
        clock.resumed_at = end


def _project(clock: SlaClock, config: RouterConfig) -> None:
    """warn_at and due_at of a running clock, from where its segment started."""
    base = clock.resumed_at
    warn_seconds = round(clock.target_seconds * config.warn_fraction)
    clock.warn_at = _after(clock, config, base, warn_seconds - clock.consumed_seconds)
    clock.due_at = _after(clock, config, base, clock.target_seconds - clock.consumed_seconds)


def _after(clock: SlaClock, config: RouterConfig, base: datetime, remaining: int) -> datetime:
    # Already past the point (a retarget to a shorter target): it is due right away.
    if remaining <= 0:
        return base
    return advance(config.calendar, clock.calendar, base, remaining)


def _retarget(session: Session, ticket: Ticket, clocks: list[SlaClock], config: RouterConfig, now: datetime) -> None:
    priority, target = _target(config, ticket)
    changed = []
    for clock in clocks:
        seconds = _target_seconds(target, clock.kind)
        if clock.stopped_at is not None or (clock.priority, clock.calendar, clock.target_seconds) == (
                priority, target.calendar, seconds):
            continue
        before = {"priority": clock.priority, "calendar": clock.calendar, "target_seconds": clock.target_seconds}
        _fold(clock, config, now)  # on the old calendar: the time used so far keeps its meaning
        clock.priority, clock.calendar, clock.target_seconds = priority, target.calendar, seconds
        if clock.paused_since is None:
            _project(clock, config)
        changed.append((clock, before))
    if changed:
        session.add(TicketEvent(
            ticket_id=ticket.id, at=now, actor=ACTOR, kind="sla_retargeted",
            reason=f"SLA {changed[0][1]['priority']} → {priority}, time used kept: "
                   + "; ".join(_due_phrase(c, config, now) for c, _ in changed),
            data={"priority": priority, "clocks": [{**_facts(c), "before": b} for c, b in changed]},
        ))


# ---------------------------------------------------------------- words


def describe_target(seconds: int, calendar: str, config: RouterConfig) -> str:
    """'15 min around the clock', '4 business hours', '3 business days'."""
    if calendar != BUSINESS:
        return f"{_duration(seconds)} around the clock"
    day = working_day_seconds(config.calendar)
    if seconds >= day and seconds % day == 0:
        days = seconds // day
        return f"{days} business day{'s' if days != 1 else ''}"
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} business hour{'s' if hours != 1 else ''}"
    return f"{_duration(seconds)} of business time"


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    parts = ([f"{hours} h"] if hours else []) + ([f"{minutes} min"] if minutes or not hours else [])
    return " ".join(parts)


def _due_phrase(clock: SlaClock, config: RouterConfig, now: datetime) -> str:
    """'first response due 14:30 (P2, 4 business hours)'."""
    target = describe_target(clock.target_seconds, clock.calendar, config)
    if clock.due_at is None:
        return f"{_LABELS[clock.kind]} paused ({clock.priority}, {target})"
    return f"{_LABELS[clock.kind]} due {_when(clock.due_at, config, now)} ({clock.priority}, {target})"


def _when(at: datetime, config: RouterConfig, now: datetime) -> str:
    """Local time in the calendar's zone, named ("14:30 CST"), as the team reads a clock; with the date
    when it is not today. Named because the same trail shows other times in UTC."""
    zone = zone_of(config.calendar)
    local = at.astimezone(zone)
    return local.strftime("%H:%M %Z" if local.date() == now.astimezone(zone).date() else "%Y-%m-%d %H:%M %Z")


def _facts(clock: SlaClock | Row) -> dict:
    return {"clock": clock.kind, "priority": clock.priority, "calendar": clock.calendar,
            "target_seconds": clock.target_seconds, "consumed_seconds": clock.consumed_seconds,
            "warn_at": _iso(clock.warn_at), "due_at": _iso(clock.due_at)}


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
