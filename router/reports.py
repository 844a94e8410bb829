"""What supervisors read: what came in, how fast it was answered, where the SLA held, what waits now.

One question, `build_report(session, since=…, until=…, now=…, timezone=…)`, answered as plain data
that the CLI prints (`paidan report`), the dashboard draws (/dashboard) and the API returns as JSON
(/api/v1/report). Everything is counted from the rows the router already keeps — tickets, their audit
events, SLA clocks, offers, surveys, the outbox — so a report can be asked for any past period.

Counting rules, so the numbers mean one thing wherever they are shown:
- A ticket belongs to the period it was *created* in (volume, labels, response times, SLA).
- Auto-replies and bounces kept on tickets of their own (closed from the start) are not contacts:
  they are counted apart as `machine` and left out of everything else. So are tickets an agent opened
  by writing first (`opened_by_agents`): the customer asked nothing, and their "first response" of
  zero seconds would flatter every average.
- Response and resolution times are wall-clock, what the customer lived through; the SLA lines use the
  clocks' own calendars (business hours for P2/P3 by default).
- Resolutions and reopens are counted when they happened (audit events), whenever the ticket was created.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Text, case, cast, func, or_, select
from sqlalchemy.orm import Session

from models.message import MACHINE_FLAGS, OUTBOUND_FLAG
from models.tables import Agent, Assignment, LabelCorrection, OutboxItem, SlaClock, Survey, Ticket, TicketEvent
from router import states
from router.dialects import epoch_seconds
from router.queries import Operations, operations_sync

PRIORITIES = ("P0", "P1", "P2", "P3")
HEADS = ("type", "category", "priority")
SLA_KINDS = ("first_response", "resolution")
SATISFIED = 4  # ratings of 4 and 5 count as satisfied (the usual CSAT reading)


@dataclass(frozen=True)
class Durations:
    """How long something took, over `count` tickets (seconds; None when there were none)."""

    count: int
    median: float | None
    p90: float | None

    @classmethod
    def of(cls, seconds: list[float]) -> Durations:
        if not seconds:
            return cls(0, None, None)
        ordered = sorted(seconds)
        return cls(len(ordered), _quantile(ordered, 0.5), _quantile(ordered, 0.9))


@dataclass(frozen=True)
class SlaLine:
    """One priority's clocks of one kind for the period's tickets."""

    priority: str
    kind: str  # first_response | resolution
    met: int
    breached: int  # a breach counts whether or not the ticket was answered later
    running: int  # not yet answered or resolved, not yet late

    @property
    def met_share(self) -> float | None:
        """Met among the finished clocks; None until one has finished."""
        done = self.met + self.breached
        return self.met / done if done else None


@dataclass(frozen=True)
class AgentLine:
    name: str
    role: str
    online: bool
    load: int
    capacity: int
    offered: int  # offers made in the period
    accepted: int
    declined: int
    expired: int  # not accepted in time
    resolved: int  # resolutions they made in the period
    first_response: Durations  # of the period's tickets assigned to them
    rating_average: float | None
    ratings: int


@dataclass(frozen=True)
class Satisfaction:
    sent: int
    answered: int
    distribution: dict[int, int]  # rating 1..5 → answers
    average: float | None
    satisfied_share: float | None  # 4 and 5 among the answers


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    timezone: str
    generated_at: datetime
    days: list[str]  # the period's local dates, oldest first
    created_by_day: dict[str, list[int]]  # channel → contacts per day, aligned with `days`
    resolved_by_day: list[int]
    created: int
    machine: int  # auto-replies and bounces kept closed, not counted anywhere else
    opened_by_agents: int  # tickets agents opened by writing first (router/outreach.py): not contacts
    resolved: int
    reopened: int
    merged: int
    labels: dict[str, dict[str, int]]  # head → label → tickets ("unlabelled" for none yet)
    first_response: dict[str, Durations]  # priority → wall-clock time to the first reply
    resolution: dict[str, Durations]  # priority → wall-clock time to resolution (resolved tickets)
    sla: list[SlaLine]
    now: Operations  # the desk at `generated_at`
    at_risk: int  # running clocks past their warning, not yet breached
    oldest_waiting_seconds: float | None  # the longest an open ticket without an agent has waited
    agents: list[AgentLine]
    satisfaction: Satisfaction
    delivery_failed: dict[str, int]  # channel → outbox rows given up on
    corrections: dict[str, int]  # head → labels a human corrected in the period

    @property
    def reopen_share(self) -> float | None:
        return self.reopened / self.resolved if self.resolved else None

    def sla_share(self, kind: str) -> float | None:
        """Met among all finished clocks of one kind, over every priority."""
        lines = [line for line in self.sla if line.kind == kind]
        met, breached = sum(x.met for x in lines), sum(x.breached for x in lines)
        return met / (met + breached) if met + breached else None

    def as_dict(self) -> dict:
        data = asdict(self)
        for line, raw in zip(self.sla, data["sla"], strict=True):
            raw["met_share"] = line.met_share
        data["reopen_share"] = self.reopen_share
        data["sla_met_share"] = {kind: self.sla_share(kind) for kind in SLA_KINDS}
        return _jsonable(data)


def build_report(session: Session, *, since: datetime, until: datetime, now: datetime, timezone: str) -> Report:
    """The help desk between `since` and `until` (UTC, `until` exclusive), and its state at `now`."""
    zone = ZoneInfo(timezone)
    days = _local_days(since, until, zone)

    # Core rows, not ORM ones: the period's tickets can be a month of a busy desk, and the ORM's per-row
    # bookkeeping was most of the time (bench/report.py).
    # Core rows of numbers: the period's tickets can be a month of a busy desk, and the ORM's per-row
    # bookkeeping and parsing a datetime per value were most of the time (bench/report.py). Times come
    # as epoch seconds; a local day is found among the days' starts, which the zone gives.
    db = session.connection()
    day_starts = [datetime.combine(d, datetime.min.time(), zone).timestamp() for d in days]
    created_at = epoch_seconds(Ticket.created_at)
    rows = db.execute(
        select(Ticket.channel, Ticket.state, Ticket.type, Ticket.category, Ticket.priority,
               _MACHINE.label("machine"), _OUTBOUND.label("outbound"), Ticket.assigned_agent_id, created_at.label("created"),
               (epoch_seconds(Ticket.first_response_at) - created_at).label("waited"),
               (epoch_seconds(Ticket.resolved_at) - created_at).label("took"))
        .where(Ticket.created_at >= since, Ticket.created_at < until)
    ).all()
    contacts = [r for r in rows if not r.machine and not r.outbound]
    machine = sum(1 for r in rows if r.machine)
    counted = [r for r in contacts if r.state != states.MERGED]  # a merged ticket lives on in its target

    created_by_day: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    for r in contacts:
        created_by_day[r.channel][bisect_right(day_starts, r.created) - 1] += 1

    labels = {head: Counter(getattr(r, head) or "unlabelled" for r in counted) for head in HEADS}
    first_response: dict[str, list[float]] = defaultdict(list)
    resolution: dict[str, list[float]] = defaultdict(list)
    by_agent_response: dict[int, list[float]] = defaultdict(list)
    for r in counted:
        if r.waited is not None:
            first_response[r.priority or "unlabelled"].append(round(r.waited, 3))
            if r.assigned_agent_id is not None:
                by_agent_response[r.assigned_agent_id].append(round(r.waited, 3))
        if r.took is not None:
            resolution[r.priority or "unlabelled"].append(round(r.took, 3))

    resolved_by_day = [0] * len(days)
    resolved_by_actor: Counter[str] = Counter()
    reopened = 0
    for to_state, actor, at in db.execute(
        select(TicketEvent.to_state, TicketEvent.actor, epoch_seconds(TicketEvent.at))
        .where(TicketEvent.kind == "transition", TicketEvent.to_state.in_((states.RESOLVED, states.REOPENED)),
               TicketEvent.at >= since, TicketEvent.at < until)
    ):
        if to_state == states.REOPENED:
            reopened += 1
        else:
            resolved_by_day[bisect_right(day_starts, at) - 1] += 1
            resolved_by_actor[actor] += 1

    ratings = _ratings(session, since, until)
    return Report(
        since=since, until=until, timezone=timezone, generated_at=now, days=[d.isoformat() for d in days],
        created_by_day=dict(sorted(created_by_day.items())), resolved_by_day=resolved_by_day,
        created=len(contacts), machine=machine, opened_by_agents=sum(1 for r in rows if r.outbound and not r.machine),
        resolved=sum(resolved_by_day), reopened=reopened,
        merged=len(contacts) - len(counted),
        labels={head: dict(counts.most_common()) for head, counts in labels.items()},
        first_response=_by_priority(first_response), resolution=_by_priority(resolution),
        sla=_sla_lines(session, since, until),
        now=operations_sync(session, now),
        at_risk=session.scalar(
            select(func.count()).select_from(SlaClock).where(
                SlaClock.stopped_at.is_(None), SlaClock.warned_at.is_not(None), SlaClock.breached_at.is_(None))
        ) or 0,
        oldest_waiting_seconds=_oldest_waiting(session, now),
        agents=_agent_lines(session, since, until, by_agent_response, resolved_by_actor, ratings),
        satisfaction=_satisfaction(session, since, until),
        delivery_failed=dict(session.execute(
            select(OutboxItem.channel, func.count())
            .where(OutboxItem.status == "failed", OutboxItem.created_at >= since, OutboxItem.created_at < until)
            .group_by(OutboxItem.channel)
        ).all()),
        corrections=dict(session.execute(
            select(LabelCorrection.head, func.count())
            .where(LabelCorrection.corrected_at >= since, LabelCorrection.corrected_at < until)
            .group_by(LabelCorrection.head)
        ).all()),
    )


# A ticket of auto-replies or bounces, told in SQL from the flags' JSON text (the same on SQLite and
# PostgreSQL), rather than decoding every ticket's flags in Python.
_MACHINE = or_(*(cast(Ticket.flags, Text).like(f'%"{flag}"%') for flag in sorted(MACHINE_FLAGS)))
_OUTBOUND = cast(Ticket.flags, Text).like(f'%"{OUTBOUND_FLAG}"%')


def last_days(days: int, now: datetime, timezone: str) -> tuple[datetime, datetime]:
    """The `days` local calendar days up to and including today, as a UTC [since, until) pair."""
    zone = ZoneInfo(timezone)
    today = now.astimezone(zone).date()
    start = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), zone)
    end = datetime.combine(today + timedelta(days=1), datetime.min.time(), zone)
    return start.astimezone(now.tzinfo), end.astimezone(now.tzinfo)


def _sla_lines(session: Session, since: datetime, until: datetime) -> list[SlaLine]:
    outcome = case((SlaClock.breached_at.is_not(None), "breached"), (SlaClock.stopped_at.is_not(None), "met"),
                   else_="running")
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for priority, kind, result, n in session.execute(
        select(SlaClock.priority, SlaClock.kind, outcome, func.count())
        .join(Ticket, Ticket.id == SlaClock.ticket_id)
        .where(Ticket.created_at >= since, Ticket.created_at < until, Ticket.state != states.MERGED)
        .group_by(SlaClock.priority, SlaClock.kind, outcome)
    ):
        counts[(priority, kind)][result] += n
    order = {p: i for i, p in enumerate(PRIORITIES)}
    return [SlaLine(priority, kind, c["met"], c["breached"], c["running"])
            for (priority, kind), c in sorted(counts.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0]))]


def _oldest_waiting(session: Session, now: datetime) -> float | None:
    oldest = session.scalar(
        select(func.min(Ticket.created_at))
        .where(Ticket.queue.is_not(None), Ticket.assigned_agent_id.is_(None), Ticket.state.in_(states.OPEN_STATES))
    )
    return max(0.0, (now - oldest).total_seconds()) if oldest is not None else None


def _ratings(session: Session, since: datetime, until: datetime) -> dict[int, tuple[int, int]]:
    """Agent id → (answers, sum of ratings) of surveys sent in the period about tickets they resolved."""
    return {agent_id: (n, total) for agent_id, n, total in session.execute(
        select(Survey.agent_id, func.count(), func.sum(Survey.rating))
        .where(Survey.sent_at >= since, Survey.sent_at < until, Survey.rating.is_not(None),
               Survey.agent_id.is_not(None))
        .group_by(Survey.agent_id)
    )}


def _satisfaction(session: Session, since: datetime, until: datetime) -> Satisfaction:
    sent = session.scalar(
        select(func.count()).select_from(Survey).where(Survey.sent_at >= since, Survey.sent_at < until)) or 0
    distribution = dict.fromkeys(range(1, 6), 0)
    distribution.update(session.execute(
        select(Survey.rating, func.count())
        .where(Survey.sent_at >= since, Survey.sent_at < until, Survey.rating.is_not(None))
        .group_by(Survey.rating)
    ).all())
    answered = sum(distribution.values())
    total = sum(rating * n for rating, n in distribution.items())
    satisfied = sum(n for rating, n in distribution.items() if rating >= SATISFIED)
    return Satisfaction(sent, answered, distribution, total / answered if answered else None,
                        satisfied / answered if answered else None)


def _agent_lines(session: Session, since: datetime, until: datetime, response: dict[int, list[float]],
                 resolved_by_actor: Counter[str], ratings: dict[int, tuple[int, int]]) -> list[AgentLine]:
    ended = lambda reason: func.sum(case((Assignment.accepted_at.is_(None) & (Assignment.end_reason == reason), 1),  # noqa: E731
                                         else_=0))
    offers = {row.agent_id: row for row in session.execute(
        select(Assignment.agent_id, func.count().label("offered"), func.count(Assignment.accepted_at).label("accepted"),
               ended("declined").label("declined"), ended("expired").label("expired"))
        .where(Assignment.offered_at >= since, Assignment.offered_at < until)
        .group_by(Assignment.agent_id)
    )}
    lines = []
    for agent in session.scalars(select(Agent).order_by(Agent.name)):
        o = offers.get(agent.id)
        answers, total = ratings.get(agent.id, (0, 0))
        lines.append(AgentLine(
            name=agent.name, role=agent.role, online=agent.online, load=agent.load, capacity=agent.capacity,
            offered=o.offered if o else 0, accepted=o.accepted if o else 0,
            declined=int(o.declined or 0) if o else 0, expired=int(o.expired or 0) if o else 0,
            resolved=resolved_by_actor.get(f"agent:{agent.id}", 0),
            first_response=Durations.of(response.get(agent.id, [])),
            rating_average=total / answers if answers else None, ratings=answers,
        ))
    return lines


def _by_priority(seconds: dict[str, list[float]]) -> dict[str, Durations]:
    keys = [p for p in PRIORITIES if p in seconds] + sorted(k for k in seconds if k not in PRIORITIES)
    return {k: Durations.of(seconds[k]) for k in keys}


def _local_days(since: datetime, until: datetime, zone: ZoneInfo) -> list[date]:
    first, last = _local_day(since, zone), _local_day(until - timedelta(microseconds=1), zone)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _local_day(at: datetime, zone: ZoneInfo) -> date:
    return at.astimezone(zone).date()


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
