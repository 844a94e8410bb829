"""Assignment: which agent gets a ticket, and why (DESIGN.md "Assignment").

A pure core, `rank(facts, agents, config, now) -> Choice`, decides on plain values. Around it,
`assign_many` (and `assign`, a batch of one) reads the agents with one query, claims capacity with
a conditional UPDATE (`load < capacity`, so nobody ever goes over capacity, whatever runs
concurrently) and writes the offers, the audit events and the agents' notifications in the
caller's transaction, set-based (a few multi-row statements per batch, as intake's store_batch).

The rules, in order:
- Only role "agent" is routed to. Supervisors and admins oversee (triage, escalations, expiries)
  and take a ticket only when someone assigns it to them by hand (`offer_to`).
- Eligible: has the skills (the category's skill from `config.category_skills`, plus the
  language skill "zh"/"en" when `config.language_skills` and the ticket's language is known;
  an agent who lists no language skill at all counts as speaking both), online, within their
  shift (no shift set means no restriction), under capacity, and has not already declined or
  let this ticket expire.
- Order: the customer's previous agent first; then, for complaints and `config.senior_priorities`,
  agents with seniority >= `config.senior_level` (falling back to the others); then the least
  loaded, as the share of their capacity in use (capacity says how much each can carry), then
  the plain count; then the longest idle (never assigned first); then the lowest id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (Float, Text, and_, bindparam, case, cast, func, insert, literal_column, or_, select,
                        type_coerce, union_all, update)
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from models.errors import ActionRefused, IllegalTransition, NotFound
from models.tables import Agent, Assignment, AttachmentRow, Message, Ticket, TicketEvent
from router import states
from router.config import RouterConfig
from router.outbox import enqueue_many, staff_item, supervisor_items, supervisors_of

# Language skills agents list; a ticket in another language (or none) needs no language skill.
LANGUAGES = frozenset({"zh", "en"})
# How an offer ends when the agent refused it: they are not offered the same ticket again.
REFUSALS = frozenset({"declined", "expired"})
# A release for these reasons keeps `ticket.assigned_agent_id` as the record of who worked it
# (a reopened ticket goes back to them first); any other release leaves the ticket without an agent.
FINISHED = frozenset({"resolved", "closed", "merged"})
QUEUE = "assignment"
TOP_CANDIDATES = 5  # candidates stored with each decision: enough to explain it, small enough to keep
_PRIORITY_ORDER = {"P0": 0, "P1": 1, "P2": 2, "P3": 3}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# --------------------------------------------------------------------------------------------
# Plain values


@dataclass(frozen=True, slots=True)
class Shift:
    """Working hours: on `days` (Monday = 0, the day the shift starts) from `start` to `end`
    (minutes after midnight, local time in `tz`). `end <= start` is an overnight shift."""

    tz: str | None  # None: the business calendar's time zone
    days: frozenset[int] = frozenset(range(7))
    start: int = 0
    end: int = 24 * 60
    problem: str | None = None  # an unreadable shift is ignored (as if none were set); the reason says so

    def covers(self, now: datetime, default_tz: str) -> bool:
        if self.problem is not None:
            return True
        today, minute = _local(now, self.tz or default_tz)
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Overnight (22:00–06:00) or round the clock (start == end): the evening belongs to the
        # day the shift starts, the small hours to the day before.
        return (today in self.days and minute >= self.start) or ((today - 1) % 7 in self.days and minute < self.end)

    def describe(self, default_tz: str) -> str:
        if self.problem is not None:
            return f"unreadable shift ({self.problem}), ignored"
        days = "every day" if len(self.days) == 7 else ",".join(_DAYS[d] for d in sorted(self.days)) or "no days"
        return f"{_hhmm(self.start)}–{_hhmm(self.end)} {days} {self.tz or default_tz}"


@dataclass(frozen=True, slots=True)
class AgentState:
    """What ranking needs to know about one agent (read with one query, or built in tests)."""

    id: int
    name: str
    skills: frozenset[str]
    capacity: int
    load: int
    seniority: int = 1
    online: bool = True
    shift: Shift | None = None
    last_assigned_at: datetime | None = None
    role: str = "agent"
    telegram_id: int | None = None  # where the agent console reaches them (router.outbox.agent_address)


@dataclass(frozen=True, slots=True)
class TicketFacts:
    number: str
    type: str | None
    category: str | None
    priority: str | None
    language: str | None
    previous_agent_id: int | None = None  # the agent of this customer's most recent ticket
    exclude: frozenset[int] = frozenset()  # agents who declined or let this ticket expire


@dataclass(frozen=True, slots=True)
class Choice:
    agent_id: int | None
    reason: str
    candidates: list[dict] = field(default_factory=list)  # the best eligible agents, best first
    facts: dict = field(default_factory=dict)  # required skills, counts of who was ruled out and why


@dataclass(frozen=True, slots=True)
class AssignmentResult:
    agent_id: int | None
    agent_name: str | None
    reason: str
    queued: bool
    assignment_id: int | None = None
    changed: bool = True  # False: the ticket was already with an agent, or already queued for this reason


# --------------------------------------------------------------------------------------------
# The pure core


@dataclass(frozen=True, slots=True)
class Needs:
    category_skill: str | None
    language: str | None
    notes: tuple[str, ...]
    unmapped: bool = False  # the category is not in config.category_skills

    def label(self) -> str:
        parts = [s for s in (self.category_skill, self.language) if s]
        return "+".join(parts) if parts else "(none needed)"


def needs(facts: TicketFacts, config: RouterConfig) -> Needs:
    """The skills a ticket needs, with notes on anything unusual (no category, unmapped category …)."""
    notes = []
    unmapped = False
    if not facts.category:
        skill = None
        notes.append("no category yet, so no category skill needed")
    elif facts.category in config.category_skills:
        skill = config.category_skills[facts.category]
    else:
        skill, unmapped = facts.category.strip().lower(), True
        notes.append(f"category {facts.category!r} is not in the skills map; looking for the skill {skill!r}")
    language = _language(facts.language)
    if not config.language_skills:
        language = None
    elif facts.language and language is None:
        notes.append(f"language {facts.language!r} has no language skill; any language will do")
    return Needs(skill, language, tuple(notes), unmapped)


def wants_senior(facts: TicketFacts, config: RouterConfig) -> str | None:
    """Why this ticket prefers senior agents ("a complaint", "P1"), or None."""
    if facts.type in config.senior_types:
        return f"a {facts.type}"
    if facts.priority in config.senior_priorities:
        return facts.priority
    return None


def rank(facts: TicketFacts, agents: Sequence[AgentState], config: RouterConfig, now: datetime) -> Choice:
    """Choose the agent for a ticket among `agents`, or nobody; either way with the reason."""
    need = needs(facts, config)
    default_tz = config.calendar.timezone
    ruled_out: Counter[str] = Counter()
    with_skills = 0
    eligible: list[AgentState] = []
    previous_problem = None
    for agent in agents:
        problem = _problem(agent, need, facts, now, default_tz)
        if problem != "lacks the skills" and agent.role == "agent":
            with_skills += 1
        if problem is None:
            eligible.append(agent)
        else:
            ruled_out[problem] += 1
            if agent.id == facts.previous_agent_id:
                previous_problem = f"previous agent {agent.name} {_verb(problem)}"

    senior_for = wants_senior(facts, config)
    level = config.senior_level

    def key(a: AgentState):
        return (
            a.id != facts.previous_agent_id,
            bool(senior_for) and a.seniority < level,
            a.load / a.capacity,
            a.load,
            a.last_assigned_at is not None,
            a.last_assigned_at or now,
            a.id,
        )

    eligible.sort(key=key)
    summary = {
        "required_skills": [s for s in (need.category_skill, need.language) if s],
        "considered": len(agents),
        "with_skills": with_skills,
        "eligible": len(eligible),
        "ruled_out": dict(ruled_out),
    }
    if not eligible:
        return Choice(None, _nobody_reason(need, with_skills, ruled_out, previous_problem), [], summary)

    winner = eligible[0]
    why = _why(winner, eligible[1] if len(eligible) > 1 else None, key, facts, senior_for, level)
    notes = [why, f"skills {need.label()}", f"load {winner.load}/{winner.capacity}"]
    if senior_for and winner.seniority < level:
        notes.append(f"no senior agent free ({senior_for} prefers seniority >= {level})")
    if previous_problem:
        notes.append(previous_problem)
    if need.language and not (winner.skills & LANGUAGES):
        notes.append("lists no language skill, so counts as speaking both")
    if winner.shift is None:
        notes.append("no shift set: available whenever online")
    elif winner.shift.problem:
        notes.append(winner.shift.describe(default_tz))
    notes.extend(need.notes)
    candidates = [_candidate(a, facts, level) for a in eligible[:TOP_CANDIDATES]]
    return Choice(winner.id, f"{winner.name}: " + "; ".join(notes), candidates, summary)


def _problem(agent: AgentState, need: Needs, facts: TicketFacts, now: datetime, default_tz: str) -> str | None:
    """Why `agent` cannot take the ticket now, or None; the first reason in the order a supervisor asks."""
    if agent.role != "agent":
        return f"is a {agent.role} (not routed to automatically)"
    if _lacks_skills(agent, need):
        return "lacks the skills"
    if agent.id in facts.exclude:
        return "already declined or let this ticket expire"
    if not agent.online:
        return "offline"
    if agent.shift is not None and not agent.shift.covers(now, default_tz):
        return "outside their shift"
    if agent.load >= agent.capacity:
        return "at capacity"
    return None


def _lacks_skills(agent: AgentState, need: Needs) -> bool:
    if need.category_skill and need.category_skill not in agent.skills:
        return True
    # An agent who lists no language skill at all counts as speaking both.
    return bool(need.language and need.language not in agent.skills and agent.skills & LANGUAGES)


def _verb(problem: str) -> str:
    return problem if problem.startswith(("is ", "lacks", "already")) else f"is {problem}"


def _why(winner: AgentState, runner_up: AgentState | None, key: Callable, facts: TicketFacts,
         senior_for: str | None, level: int) -> str:
    """The first rule that put `winner` ahead of the next best agent."""
    if winner.id == facts.previous_agent_id:
        return "previous agent of this customer"
    if runner_up is None:
        return "the only agent available"
    mine, theirs = key(winner), key(runner_up)
    if mine[1] != theirs[1]:
        return f"senior (seniority {winner.seniority}) preferred for {senior_for}"
    if mine[2:4] != theirs[2:4]:
        return f"least loaded (next best {runner_up.name} at {runner_up.load}/{runner_up.capacity})"
    if mine[4:6] != theirs[4:6]:
        idle = "never assigned before" if winner.last_assigned_at is None else \
            f"last assigned {winner.last_assigned_at.strftime('%Y-%m-%d %H:%M')} UTC"
        return f"equally loaded, idle longest ({idle})"
    return "equally loaded and idle; lowest id"


def _nobody_reason(need: Needs, with_skills: int, ruled_out: Counter[str], previous_problem: str | None) -> str:
    if with_skills == 0:
        reason = f"no agent has the skills {need.label()}"
        if need.unmapped:
            reason += " (an unknown skill: map the category in the router settings or relabel the ticket)"
    else:
        blockers = ", ".join(f"{n} {p}" for p, n in sorted(ruled_out.items(), key=lambda pn: (-pn[1], pn[0]))
                             if p != "lacks the skills" and not p.startswith("is a "))
        reason = f"no agent available: {with_skills} with the skills {need.label()}, but {blockers}"
    parts = [reason, *need.notes]
    if previous_problem:
        parts.append(previous_problem)
    return "; ".join(parts)


def _candidate(agent: AgentState, facts: TicketFacts, level: int) -> dict:
    return {
        "id": agent.id, "name": agent.name, "load": agent.load, "capacity": agent.capacity,
        "seniority": agent.seniority, "senior": agent.seniority >= level,
        "previous": agent.id == facts.previous_agent_id,
        "last_assigned_at": agent.last_assigned_at.isoformat() if agent.last_assigned_at else None,
    }


def _language(tag: str | None) -> str | None:
    if not tag:
        return None
    primary = tag.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in LANGUAGES else None


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=256)
def _local(now: datetime, tz: str) -> tuple[int, int]:
    """(weekday, minute of the day) of `now` in `tz`; cached, as every agent of a zone asks the same."""
    local = now.astimezone(_zone(tz))
    return local.weekday(), local.hour * 60 + local.minute


# --------------------------------------------------------------------------------------------
# Reading agents


def parse_shift(value: dict | str | None) -> Shift | None:
    """Agent.shift JSON ({"tz", "days", "start", "end"}) as a Shift; never raises: an unreadable
    shift comes back with `problem` set. None when no shift is set."""
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_shift_text(value)
    return _parse_shift(value)


@lru_cache(maxsize=1024)
def _parse_shift_text(text: str) -> Shift | None:
    try:
        value = json.loads(text)
    except ValueError:
        return Shift(None, problem="not JSON")
    return None if value is None else _parse_shift(value)


def _parse_shift(value) -> Shift:
    if not isinstance(value, dict):
        return Shift(None, problem="not an object")
    tz = value.get("tz")
    try:
        if tz is not None:
            _zone(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        return Shift(None, problem=f"unknown time zone {tz!r}")
    days = value.get("days", list(range(7)))
    if not isinstance(days, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in days):
        return Shift(None, problem="days must be a list of 0 (Monday) … 6 (Sunday)")
    try:
        start = _minutes(value.get("start", "00:00"))
        end = _minutes(value.get("end", "24:00"))
    except ValueError as exc:
        return Shift(None, problem=str(exc))
    return Shift(str(tz) if tz is not None else None, frozenset(days), start, end)


def _minutes(hhmm) -> int:
    try:
        hours, minutes = str(hhmm).split(":")
        value = int(hours) * 60 + int(minutes)
    except ValueError:
        raise ValueError(f"time {hhmm!r} is not HH:MM") from None
    if not 0 <= value <= 24 * 60 or not 0 <= int(minutes) < 60:
        raise ValueError(f"time {hhmm!r} is not HH:MM")
    return value


def _skills(value) -> frozenset[str]:
    """Agent.skills as a set: stored text (parsed once per distinct value) or the driver's list."""
    return _skills_text(value) if isinstance(value, str) else _skill_set(value)


@lru_cache(maxsize=4096)
def _skills_text(text: str) -> frozenset[str]:
    try:
        return _skill_set(json.loads(text))
    except ValueError:
        return frozenset()


def _skill_set(value) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()  # not a list of skills: the agent matches nothing that needs a skill
    return frozenset(s.strip().lower() for s in value if isinstance(s, str))


_A = Agent.__table__.c
_T = Ticket.__table__.c
_O = Assignment.__table__.c
# skills and shift as their stored text, so each distinct value is parsed once (cached), and so
# the skills can be filtered with LIKE on PostgreSQL's json type too.
_SKILLS_TEXT = cast(_A.skills, Text)
# The timestamp unprocessed: SQLite's text parsed by `_utc` costs a tenth of the generic DateTime
# processing (PostgreSQL's driver returns a datetime, which `_utc` accepts too).
_AGENT_COLUMNS = (_A.id, _A.name, _A.role, _SKILLS_TEXT, _A.capacity, _A.load, _A.seniority,
                  _A.online, cast(_A.shift, Text), type_coerce(_A.last_assigned_at, Text), _A.telegram_id)

# Statements are built once: building one costs more than running it on a small table.
_EVERY_AGENT = select(*_AGENT_COLUMNS).where(_A.role == "agent")
# For one ticket: the first `top` agents in `rank`'s own order, among those online with room and
# plausibly skilled (the category skill and, when a language is needed, that language or no
# language skill at all, tested as substrings of the stored text: a coarse filter, `rank` decides
# exactly), plus the previous agent whatever their state, so the reason can say why they were
# passed over. Ranking a few rows instead of every agent is what makes a lone decision cheap.
_TOP_AGENTS = (
    select(*_AGENT_COLUMNS)
    .where(_A.role == "agent", or_(
        and_(_A.online.is_(True), _A.load < _A.capacity, _A.id.not_in(bindparam("exclude", expanding=True)),
             _SKILLS_TEXT.ilike(bindparam("skill_like")),
             or_(_SKILLS_TEXT.ilike(bindparam("language_like")),
                 and_(*(~_SKILLS_TEXT.ilike(f'%"{lang}"%') for lang in sorted(LANGUAGES))))),
        _A.id == bindparam("previous"),
    ))
    .order_by(
        case((_A.id == bindparam("previous"), 0), else_=1),
        case((_A.seniority < bindparam("senior_level"), 1), else_=0),
        cast(_A.load, Float) / cast(_A.capacity, Float),  # double precision, as Python's division
        _A.load,
        case((_A.last_assigned_at.is_(None), 0), else_=1),
        _A.last_assigned_at,
        _A.id,
    )
    .limit(bindparam("top"))
)
TOP_AGENTS = 12
# Each customer's latest offer that was not refused, on tickets other than those being routed:
# "the previous agent". Offers, not tickets.assigned_agent_id: offers are written at once, so a
# later call in the same transaction sees them.
_LATEST_OFFERS = (
    select(func.max(_O.id).label("id"))
    .select_from(Assignment.__table__.join(Ticket.__table__, _T.id == _O.ticket_id))
    .where(_T.customer_id.in_(bindparam("customers", expanding=True)),
           _T.id.not_in(bindparam("tickets", expanding=True)),
           or_(_O.end_reason.is_(None), _O.end_reason.not_in(sorted(REFUSALS))))
    .group_by(_T.customer_id)
    .subquery()
)
# What ranking needs from the past, in one statement of two parts (column "part"): the agents who
# refused the tickets being routed (declined, let expire), keyed by ticket; each customer's
# previous agent, keyed by customer.
_REFUSED, _PREVIOUS = 1, 2
_HISTORY = union_all(
    select(literal_column(str(_REFUSED)).label("part"), _O.ticket_id.label("key"), _O.agent_id)
    .where(_O.ticket_id.in_(bindparam("offered", expanding=True)), _O.end_reason.in_(sorted(REFUSALS))),
    select(literal_column(str(_PREVIOUS)), _T.customer_id, _O.agent_id)
    .select_from(Assignment.__table__.join(_LATEST_OFFERS, _LATEST_OFFERS.c.id == _O.id)
                 .join(Ticket.__table__, _T.id == _O.ticket_id)),
)
_OPEN_OFFERS = (
    select(_O.ticket_id, _O.id, _O.agent_id, _A.name)
    .join(Agent.__table__, _A.id == _O.agent_id)
    .where(_O.ticket_id.in_(bindparam("tickets", expanding=True)), _O.ended_at.is_(None))
    .order_by(_O.id)
)
# The assignment queue, most urgent first, then oldest (tickets without a priority last), at most
# `places` tickets of each kind (category, language) that would take a place: the tickets of each
# kind are counted in queue order, and one is read only while fewer than `places` of its kind are
# ahead of it. One that someone refused before (assigned_at set) may be passed over again, so it
# takes no place. A drain after one resolved ticket reads a few rows, not the queue.
_QUEUE_ORDER = (case(_PRIORITY_ORDER, value=_T.priority, else_=len(_PRIORITY_ORDER)), _T.created_at, _T.id)
_QUEUED_ROWS = (
    select(_T.id, _T.category, _T.language, _T.assigned_at, *(c.label(f"o{i}") for i, c in enumerate(_QUEUE_ORDER)),
           func.coalesce(func.sum(case((_T.assigned_at.is_(None), 1), else_=0)).over(
               partition_by=(_T.category, _T.language), order_by=_QUEUE_ORDER, rows=(None, -1)), 0).label("ahead"))
    .where(_T.queue == QUEUE, _T.state.in_(sorted(states.OPEN_STATES)))
    .subquery()
)
_QUEUED = (
    select(_QUEUED_ROWS.c.id, _QUEUED_ROWS.c.category, _QUEUED_ROWS.c.language, _QUEUED_ROWS.c.assigned_at)
    .where(_QUEUED_ROWS.c.ahead < bindparam("places"))
    .order_by(_QUEUED_ROWS.c.o0, _QUEUED_ROWS.c.o1, _QUEUED_ROWS.c.o2)
)
_CLAIM = (update(Agent.__table__)
          .where(_A.id == bindparam("agent_id"), _A.load < _A.capacity, _A.online.is_(True), _A.role == "agent")
          .values(load=_A.load + 1, last_assigned_at=bindparam("now")))
_CLAIM_BY_HAND = (update(Agent.__table__).where(_A.id == bindparam("agent_id"), _A.load < _A.capacity)
                  .values(load=_A.load + 1, last_assigned_at=bindparam("now")))
_UNLOAD = update(Agent.__table__).where(_A.id == bindparam("agent_id"), _A.load > 0).values(load=_A.load - 1)
_EXPIRE = (update(Assignment.__table__)
           .where(_O.id.in_(bindparam("ids", expanding=True)), _O.ended_at.is_(None), _O.accepted_at.is_(None))
           .values(ended_at=bindparam("now"), end_reason="expired")
           .returning(_O.id))
_NEW_OFFER = insert(Assignment.__table__).returning(_O.id)
_NEW_OFFERS = insert(Assignment.__table__)
_OFFER_IDS = select(_O.id, _O.ticket_id, _O.agent_id).where(
    _O.ticket_id.in_(bindparam("tickets", expanding=True)), _O.ended_at.is_(None))
_TICKETS_OFFERED = (
    update(Ticket.__table__).where(_T.id == bindparam("ticket_id"))
    .values(state=states.ASSIGNED, updated_at=bindparam("now"), assigned_agent_id=bindparam("agent_id"),
            assigned_at=bindparam("now"), accepted_at=None, queue=None, queue_reason=None)
)
_NEW_EVENTS = insert(TicketEvent.__table__)


@lru_cache(maxsize=4096)
def _agent(r: tuple) -> AgentState:
    # Cached on the whole row: an agent read again unchanged (the usual case) costs a hash.
    return AgentState(id=r[0], name=r[1], role=r[2], skills=_skills(r[3]), capacity=r[4], load=r[5], seniority=r[6],
                      online=bool(r[7]), shift=parse_shift(r[8]), last_assigned_at=_utc(r[9]), telegram_id=r[10])


def _utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite: naive UTC text, as UTCDateTime stores it
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def load_agents(session: Session) -> list[AgentState]:
    """Every agent that routing may consider (role "agent"), whatever their state."""
    return [_agent(tuple(r)) for r in session.execute(_EVERY_AGENT).all()]


def _like(skill: str | None) -> str:
    """A LIKE pattern that surely matches stored skills text containing `skill` ('%' when unsure)."""
    if not skill or not skill.isascii() or any(c in skill for c in '%_\\"'):
        return "%"
    return f"%{skill}%"


def ticket_facts(session: Session, ticket: Ticket, exclude: Iterable[int] = ()) -> TicketFacts:
    """What ranking needs to know about `ticket`: its labels, the customer's previous agent and
    the agents who already refused it."""
    return _history(session, [ticket], exclude)[ticket.id]


def _facts(ticket: Ticket, previous: int | None, refused: frozenset[int]) -> TicketFacts:
    return TicketFacts(ticket.number, ticket.type, ticket.category, ticket.priority, ticket.language,
                       previous, refused)


def _history(session: Session, tickets: Sequence[Ticket], exclude: Iterable[int]) -> dict[int, TicketFacts]:
    """Each ticket's facts, read with one statement for the batch. The agents who refused it
    (declined, let it expire) plus `exclude` are not offered it again. Its previous agent is the
    ticket's own last one when release() kept it (a finished ticket, reopened), else the agent of
    the customer's latest offer on another ticket (not one being routed)."""
    if not tickets:
        return {}
    exclude = frozenset(exclude)
    refused: dict[int, set[int]] = {t.id: set(exclude) for t in tickets}
    previous: dict[int, int] = {}
    rows = session.execute(_HISTORY, {
        "offered": [t.id for t in tickets if t.assigned_at is not None],  # never offered: never refused
        "customers": sorted({t.customer_id for t in tickets}), "tickets": [t.id for t in tickets]})
    for part, key, agent_id in rows:
        if part == _REFUSED:
            refused[key].add(agent_id)
        else:
            previous[key] = agent_id
    return {t.id: _facts(t, _own_agent(t) or previous.get(t.customer_id), frozenset(refused[t.id])) for t in tickets}


def _own_agent(ticket: Ticket) -> int | None:
    """The ticket's last agent, which release() keeps only when it finished the ticket (a reopened one)."""
    return ticket.assigned_agent_id if ticket.assigned_at is not None else None


class Roster:
    """The agents one call may choose from, kept in step with that call's own claims.

    A lone ticket reads only the top of the list for its skills (`_TOP_AGENTS`); a batch reads
    every agent once. Other processes may claim in between: `_claim`'s conditional UPDATE is the
    judge, and a lost claim moves on to the next best.
    """

    def __init__(self, session: Session, now: datetime, *, everyone: bool):
        self.session, self.now = session, now
        self.agents: dict[int, AgentState] | None = None
        self._skilled: dict[tuple[str | None, str | None], list[int]] = {}
        # Skills nobody free can serve. Loads only grow within one call, so it stays true: a long
        # queue of such tickets costs a look-up each, not a ranking each.
        self._nobody: set[tuple[str | None, str | None]] = set()
        if everyone:
            self.read_everyone()

    def read_everyone(self) -> dict[int, AgentState]:
        self.agents = {a.id: a for a in load_agents(self.session)}
        self._skilled.clear()
        self._nobody.clear()
        return self.agents

    def anyone_free(self) -> bool:
        return self.agents is None or any(a.online and a.load < a.capacity for a in self.agents.values())

    def can_take_work(self, agent_id: int, config: RouterConfig) -> bool:
        """Online, on shift and under capacity now."""
        agent = self.agents.get(agent_id)
        return agent is not None and agent.online and agent.load < agent.capacity and (
            agent.shift is None or agent.shift.covers(self.now, config.calendar.timezone))

    def free_places(self, need: Needs, config: RouterConfig) -> int:
        """How many more tickets needing `need` the agents free now (online, on shift) could take."""
        return sum(a.capacity - a.load for a in map(self.agents.__getitem__, self._skilled_for(need))
                   if self.can_take_work(a.id, config))

    def _skilled_for(self, need: Needs) -> list[int]:
        key = (need.category_skill, need.language)
        if key not in self._skilled:
            self._skilled[key] = [a.id for a in self.agents.values() if not _lacks_skills(a, need)]
        return self._skilled[key]

    def choose(self, facts: TicketFacts, config: RouterConfig, *,
               explain_nobody: bool = True) -> tuple[Choice, AgentState | None]:
        """The best agent who could be claimed (their load is already counted), or nobody; with the
        reason (when nobody, only if `explain_nobody`: the full reason means ranking everyone)."""
        need = needs(facts, config)
        key = (need.category_skill, need.language)
        if not explain_nobody and key in self._nobody and not facts.exclude:
            return Choice(None, "nobody free has these skills", [], {}), None
        pool, cut_short = self._pool(facts, need, config)
        while True:
            choice = rank(facts, pool, config, self.now)
            if self.agents is None and (choice.agent_id is None or (cut_short and choice.facts["eligible"] < 2)):
                # The top of the list named nobody, or nobody to compare the winner with: everyone.
                self.read_everyone()
                pool, cut_short = self._pool(facts, need, config)
                continue
            if choice.agent_id is None:
                if not explain_nobody:
                    if not facts.exclude:  # (with exclusions, others may still find someone)
                        self._nobody.add(key)
                    return choice, None
                if len(pool) < len(self.agents):
                    # Nobody: rank everyone, so the reason says who was ruled out and why.
                    choice = rank(facts, list(self.agents.values()), config, self.now)
                return choice, None
            agent = next(a for a in pool if a.id == choice.agent_id)
            if _claim(self.session, agent.id, self.now):
                if self.agents is not None:
                    self.agents[agent.id] = replace(agent, load=agent.load + 1, last_assigned_at=self.now)
                return choice, agent
            # Their last slot went to another router (process or thread): the next best, with its own reason.
            if self.agents is not None:
                self.agents[agent.id] = replace(agent, load=agent.capacity)
            pool = [a for a in pool if a.id != agent.id]

    def _pool(self, facts: TicketFacts, need: Needs, config: RouterConfig) -> tuple[list[AgentState], bool]:
        if self.agents is None:
            rows = self.session.execute(_TOP_AGENTS, {
                "previous": facts.previous_agent_id, "exclude": sorted(facts.exclude),
                "skill_like": _like(need.category_skill), "language_like": _like(need.language),
                "senior_level": config.senior_level if wants_senior(facts, config) else 0, "top": TOP_AGENTS,
            }).all()
            return [_agent(tuple(r)) for r in rows], len(rows) >= TOP_AGENTS
        pool = [a for a in map(self.agents.__getitem__, self._skilled_for(need)) if a.online and a.load < a.capacity]
        previous = self.agents.get(facts.previous_agent_id)
        if previous is not None and all(a.id != previous.id for a in pool):
            pool.append(previous)  # so the reason can say why the previous agent was passed over
        return pool, False


# --------------------------------------------------------------------------------------------
# Decisions applied


def assign(session: Session, ticket: Ticket, config: RouterConfig, now: datetime, *, actor: str = "router",
           exclude: Iterable[int] = frozenset()) -> AssignmentResult:
    """Offer `ticket` to the best available agent, or queue it; either way with a reason event.

    Never commits. Refuses (ActionRefused) only a ticket that is no longer open.
    """
    return assign_many(session, [ticket], config, now, actor=actor, exclude=exclude)[0]


def assign_many(session: Session, tickets: Sequence[Ticket], config: RouterConfig, now: datetime, *,
                actor: str = "router", exclude: Iterable[int] = frozenset()) -> list[AssignmentResult]:
    """`assign` for several tickets, in the order given, set-based: the agents are read once and
    the offers, events and notifications of the whole batch written with a few multi-row statements
    (what lets one routing transaction take hundreds of tickets). Results in the tickets' order."""
    results = _assign_batch(session, tickets, config, now, actor=actor, exclude=exclude,
                            roster=Roster(session, now, everyone=len(tickets) > 1))
    return [results[t.id] for t in tickets]


def _assign_batch(session: Session, tickets: Sequence[Ticket], config: RouterConfig, now: datetime, *,
                  actor: str, exclude: Iterable[int], roster: Roster, requeue_event: bool = True,
                  stop_when_full: bool = False) -> dict[int, AssignmentResult]:
    for ticket in tickets:
        _refuse_closed(ticket)
    if any(t.id is None for t in tickets):
        session.flush()  # tickets added through the ORM and not yet written need their ids
    # Nothing read below depends on unflushed ORM changes (offers and loads are written with Core
    # statements at once), so the ORM's own writes wait for the caller's flush, all in one.
    with session.no_autoflush:
        results = _open_offers(session, tickets)
        todo = list({t.id: t for t in tickets if t.id not in results}.values())  # each ticket once
        history = _history(session, todo, exclude)
        previous: dict[int, int] = {}  # customer → the agent this batch gave their earlier ticket
        offers: list[tuple[Ticket, AgentState, Choice]] = []
        for ticket in todo:
            if stop_when_full and not roster.anyone_free():
                break
            facts = history[ticket.id]
            if ticket.customer_id in previous and not _own_agent(ticket):
                facts = replace(facts, previous_agent_id=previous[ticket.customer_id])
            choice, agent = roster.choose(facts, config, explain_nobody=requeue_event or ticket.queue != QUEUE)
            if agent is None and not requeue_event and ticket.queue == QUEUE:
                # Still waiting: its reason stays the one recorded when it was queued.
                results[ticket.id] = AssignmentResult(None, None, ticket.queue_reason or "", queued=True, changed=False)
            elif agent is None:
                results[ticket.id] = _queue(session, ticket, choice, now, actor=actor, event=True)
            else:
                offers.append((ticket, agent, choice))
                previous[ticket.customer_id] = agent.id  # the customer's next ticket in this batch
        for ticket, result in zip([t for t, _, _ in offers], _write_offers(session, offers, config, now, actor=actor)):
            results[ticket.id] = result
    return results


def offer_to(session: Session, ticket: Ticket, agent_id: int, config: RouterConfig, now: datetime, *,
             actor: str, reason: str) -> AssignmentResult:
    """Offer `ticket` to one named agent (a supervisor's choice): skills, shift and online status
    are the supervisor's call, capacity is not. Refuses with the reason when the agent is full."""
    _refuse_closed(ticket)
    held = _open_offers(session, [ticket]).get(ticket.id)
    if held is not None:
        raise ActionRefused(f"{ticket.number} is already with {held.agent_name}; release it first")
    row = session.execute(select(*_AGENT_COLUMNS).where(_A.id == agent_id)).first()
    if row is None:
        raise NotFound(f"no agent #{agent_id}")
    agent = _agent(tuple(row))
    if not _claim(session, agent.id, now, by_hand=True):
        raise ActionRefused(f"{agent.name} is at capacity ({agent.load}/{agent.capacity})")
    choice = Choice(agent.id, f"{agent.name}: {reason}", [], {"chosen_by": actor})
    return _write_offers(session, [(ticket, agent, choice)], config, now, actor=actor)[0]


def take_by_hand(session: Session, ticket: Ticket, agent: Agent, now: datetime, *, actor: str, reason: str) -> int:
    """The agent takes `ticket` themselves, accepted at once: a ticket they opened by writing to the
    customer first (router/outreach.py), or one they took from the queue (`actions.take`). No offer
    waits and no notice goes out (they are the one acting); capacity holds as ever. Returns the
    assignment's id."""
    _refuse_closed(ticket)
    if not _claim(session, agent.id, now, by_hand=True):
        raise ActionRefused(f"{agent.name} is at capacity ({agent.load}/{agent.capacity} open tickets): resolve or "
                            f"hand on one first, or ask a supervisor to raise it (nothing was sent)")
    offer_id = session.execute(_NEW_OFFER, {
        "ticket_id": ticket.id, "agent_id": agent.id, "offered_at": now, "expires_at": now, "accepted_at": now,
        "ended_at": None, "end_reason": None, "reason": reason, "data": {"chosen_by": actor}}).scalar_one()
    ticket.assigned_agent_id, ticket.assigned_at, ticket.accepted_at = agent.id, now, now
    ticket.queue = ticket.queue_reason = None
    data = {"agent_id": agent.id, "assignment_id": offer_id, "how": "by hand"}
    if ticket.state in (states.IN_PROGRESS, states.AWAITING_CUSTOMER):  # handed back to the queue mid-work
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=actor, kind="assigned", reason=reason, data=data))
        states.touch(ticket, now)
    else:
        states.transition(session, ticket, states.IN_PROGRESS, actor=actor, reason=reason, at=now).data = data
    return offer_id


def release(session: Session, ticket: Ticket, now: datetime, *, why: str, actor: str = "router") -> int | None:
    """The ticket leaves its agent (declined, expired, reassigned, resolved …): end the open offer
    and give the agent their capacity back. Returns the released agent's id, or None."""
    ended = session.execute(
        update(Assignment)
        .where(Assignment.ticket_id == ticket.id, Assignment.ended_at.is_(None))
        .values(ended_at=now, end_reason=why[:40])
        .returning(Assignment.agent_id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    _unload(session, ended)
    if ticket.state in states.OPEN_STATES and why not in FINISHED:
        ticket.assigned_agent_id = None
    if ended:
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=actor, kind="released",
                                reason=f"released from agent #{ended[-1]}: {why}", data={"agent_ids": ended}))
    return ended[-1] if ended else None


def drain_queue(session: Session, config: RouterConfig, now: datetime, limit: int = 200, *,
                freed_by: int | None = None) -> int:
    """Assign waiting tickets while capacity lasts, most urgent first, then oldest; returns how many.

    Only tickets that someone free has the skills for are loaded and ranked, as many per kind as
    there are free places. The queue is read in one statement that stops each kind at the number of
    free places, so a long queue of tickets nobody can take yet is a few rows, and never hides the
    ones behind it. A ticket that stays queued keeps the reason it was queued with.

    `freed_by`: the agent whose ticket just ended. Only their capacity changed, so when they cannot
    take work now (offline, off shift) there is nothing new to drain; the periodic drain does the rest.
    """
    roster = Roster(session, now, everyone=True)
    if not roster.anyone_free():
        return 0  # nobody online with room: no need to even look at the queue
    if freed_by is not None and not roster.can_take_work(freed_by, config):
        return 0
    # Free places by kind of ticket (category, language; a queue has few kinds), and per kind no
    # more tickets than places: a drain after one resolved ticket loads one or two, not the queue.
    # No kind has more places than all free agents together: the most the statement reads per kind.
    free = roster.free_places(Needs(None, None, ()), config)
    if free <= 0:
        return 0  # those online with room are all off shift
    places: dict[tuple[str | None, str | None], int] = {}
    servable: list[int] = []
    for row in session.execute(_QUEUED, {"places": free}):
        kind = (row.category, row.language)
        if kind not in places:
            places[kind] = roster.free_places(needs(TicketFacts("", None, row.category, None, row.language), config),
                                              config)
        if places[kind] <= 0:
            continue
        servable.append(row.id)
        if row.assigned_at is None:  # one that someone refused may be passed over again: it takes no place
            places[kind] -= 1
        if len(servable) >= limit:
            break
    if not servable:
        return 0
    position = {ticket_id: i for i, ticket_id in enumerate(servable)}
    tickets = sorted(session.scalars(
        select(Ticket).where(Ticket.id.in_(servable), Ticket.queue == QUEUE).with_for_update(skip_locked=True)
    ).all(), key=lambda t: position[t.id])
    results = _assign_batch(session, tickets, config, now, actor="router", exclude=(), roster=roster,
                            requeue_event=False, stop_when_full=True)
    for ticket in tickets:
        result = results.get(ticket.id)
        if result is not None and not result.changed and not result.queued:
            ticket.queue = ticket.queue_reason = None  # assigned by hand while it waited
    return sum(1 for r in results.values() if r.changed and not r.queued)


def expire_offers(session: Session, config: RouterConfig, now: datetime, limit: int = 200) -> int:
    """Offers not accepted in time: end each once, free the agent, offer the ticket to the next
    agent (never back to one who refused it) and tell the supervisor. Returns how many expired."""
    offers = session.execute(
        select(Assignment.id, Assignment.ticket_id, Assignment.agent_id, Assignment.offered_at)
        .where(Assignment.accepted_at.is_(None), Assignment.ended_at.is_(None), Assignment.expires_at <= now)
        .order_by(Assignment.expires_at, Assignment.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not offers:
        return 0
    # Claimed with one conditional UPDATE: an offer another process expired, or that its agent
    # accepted in the meantime, is not among the returned ids and is left alone.
    claimed = set(session.execute(_EXPIRE, {"ids": [o.id for o in offers], "now": now}).scalars())
    offers = [o for o in offers if o.id in claimed]
    if not offers:
        return 0
    _unload(session, [o.agent_id for o in offers])
    names = dict(session.execute(select(_A.id, _A.name).where(_A.id.in_({o.agent_id for o in offers}))).all())
    tickets = {t.id: t for t in session.scalars(select(Ticket).where(Ticket.id.in_({o.ticket_id for o in offers})))}
    ended: list[tuple[Row, Ticket, str]] = []  # (offer, its ticket, what happened)
    for offer in offers:
        ticket = tickets[offer.ticket_id]
        name = names.get(offer.agent_id) or f"#{offer.agent_id}"
        minutes = int((now - offer.offered_at).total_seconds() // 60)
        what = f"{name} did not accept {ticket.number} within {_duration(config.accept_timeout)}"
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor="router", kind="offer_expired", reason=what,
                                data={"assignment_id": offer.id, "agent_id": offer.agent_id,
                                      "offered_minutes_ago": minutes}))
        if ticket.assigned_agent_id == offer.agent_id:
            ticket.assigned_agent_id = None
        ended.append((offer, ticket, what))
    # All the freed capacity first, then one set-based assignment for the tickets that moved on.
    open_ones = [ticket for _, ticket, _ in ended if ticket.state in states.OPEN_STATES]
    results = dict(zip((t.id for t in open_ones), assign_many(session, open_ones, config, now))) if open_ones else {}
    supervisors = supervisors_of(session)
    notices = []
    for offer, ticket, what in ended:
        result = results.get(ticket.id)
        if result is None:
            outcome = f"the ticket is {ticket.state}; nothing to reassign"
        else:
            outcome = f"now offered to {result.reason}" if result.agent_id else f"queued: {result.reason}"
        notices += supervisor_items(supervisors, kind="offer_expired", ticket=ticket, now=now, on_call_only=True,
                                    dedupe_key=f"offer_expired:{offer.id}", text=f"{what}; {outcome}")
    enqueue_many(session, notices)  # the sweep's notices in one statement
    return len(ended)


# --------------------------------------------------------------------------------------------
# Helpers that touch the database


def _refuse_closed(ticket: Ticket) -> None:
    if ticket.state not in states.OPEN_STATES:
        raise ActionRefused(f"{ticket.number} is {ticket.state}: only open tickets are assigned")


def _open_offers(session: Session, tickets: Sequence[Ticket]) -> dict[int, AssignmentResult]:
    """The tickets already offered to (or held by) an agent: there is nothing to assign for them."""
    # assign always sets assigned_agent_id, so a ticket without one has no open offer: no query
    asked = [t.id for t in tickets if t.assigned_agent_id is not None]
    if not asked:
        return {}
    return {r.ticket_id: AssignmentResult(r.agent_id, r.name, f"already with {r.name}", queued=False,
                                          assignment_id=r.id, changed=False)
            for r in session.execute(_OPEN_OFFERS, {"tickets": asked})}


def _claim(session: Session, agent_id: int, now: datetime, *, by_hand: bool = False) -> bool:
    """One more ticket for the agent, only if they have room: the guard that keeps every agent
    within capacity, however many routers run at once. By hand, the agent need not be online."""
    claimed = session.execute(_CLAIM_BY_HAND if by_hand else _CLAIM, {"agent_id": agent_id, "now": now}).rowcount == 1
    if claimed:
        _forget(session, agent_id)
    return claimed


def _unload(session: Session, agent_ids: Sequence[int]) -> None:
    """One ticket less for each agent listed (an agent listed twice gives back two), in one statement."""
    if agent_ids:
        session.execute(_UNLOAD, [{"agent_id": agent_id} for agent_id in agent_ids])
    for agent_id in set(agent_ids):
        _forget(session, agent_id)


def _forget(session: Session, agent_id: int) -> None:
    """An Agent already loaded in this session must not show the old load (updated behind the ORM)."""
    agent = session.identity_map.get(identity_key(Agent, agent_id))
    if agent is not None:
        session.expire(agent, ["load", "last_assigned_at"])


def _write_offers(session: Session, offers: list[tuple[Ticket, AgentState, Choice]], config: RouterConfig,
                  now: datetime, *, actor: str) -> list[AssignmentResult]:
    """The offers, the tickets' new state, their audit events and the agents' notifications, for
    a whole batch at once, with a handful of multi-row statements: through the ORM (or with
    RETURNING) SQLite writes such rows one statement each, which was most of a decision's cost."""
    if not offers:
        return []
    # Whatever the ORM holds (a release, a classification, an agent's action) happened first: written
    # first, so the audit trail reads in the order things happened (ids ascend in time).
    session.flush()
    expires = now + config.accept_timeout
    within = _duration(config.accept_timeout)
    for ticket, _, _ in offers:
        if not states.allowed(ticket.state, states.ASSIGNED):  # as states.transition checks
            raise IllegalTransition(ticket.number, ticket.state, states.ASSIGNED, states.TRANSITIONS[ticket.state])
    rows = [{"ticket_id": ticket.id, "agent_id": agent.id, "offered_at": now, "expires_at": expires,
             "accepted_at": None, "ended_at": None, "end_reason": None, "reason": choice.reason,
             "data": {"candidates": choice.candidates, **choice.facts}}
            for ticket, agent, choice in offers]
    if len(rows) == 1:
        offer_ids = {(rows[0]["ticket_id"], rows[0]["agent_id"]): session.execute(_NEW_OFFER, rows[0]).scalar_one()}
    else:
        # RETURNING with many rows is one statement per row on SQLite; one insert and one select
        # instead. A ticket has one open offer (held tickets were skipped): (ticket, agent) finds it.
        session.execute(_NEW_OFFERS, rows)
        offer_ids = {(r.ticket_id, r.agent_id): r.id
                     for r in session.execute(_OFFER_IDS, {"tickets": [t.id for t, _, _ in offers]})}
    session.execute(_TICKETS_OFFERED, [{"ticket_id": t.id, "agent_id": a.id, "now": now} for t, a, _ in offers])
    files = _customer_files(session, [t.id for t, _, _ in offers])
    events, notices, results = [], [], []
    for ticket, agent, choice in offers:
        offer_id = offer_ids[(ticket.id, agent.id)]
        # The state change and its event as states.transition writes them, set-based.
        events.append(_event_row(ticket, now, actor, "transition", f"offered to {agent.name}, to accept within {within}",
                                 from_state=ticket.state, to_state=states.ASSIGNED))
        events.append(_event_row(ticket, now, actor, "assigned", choice.reason,
                                 data={"agent_id": agent.id, "assignment_id": offer_id, "expires_at": expires.isoformat(),
                                       "candidates": choice.candidates, **choice.facts}))
        # The UPDATE above wrote these; the loaded ticket shows them without writing them again.
        for key, value in (("state", states.ASSIGNED), ("updated_at", now), ("assigned_agent_id", agent.id),
                           ("assigned_at", now), ("accepted_at", None), ("queue", None), ("queue_reason", None)):
            set_committed_value(ticket, key, value)
        notices.append(staff_item(  # type: ignore[arg-type]  (an AgentState has what the row needs)
            agent, kind="assigned", ticket=ticket, now=now, assignment_id=offer_id,
            text=f"{ticket.number}: {ticket.subject or '(no subject)'} — accept within {within}",
            expires_at=expires.isoformat(), reason=choice.reason,
            # What an agent decides on from the notice alone (the Telegram console shows them).
            priority=ticket.priority, type=ticket.type, category=ticket.category, files=files.get(ticket.id, 0)))
        results.append(AssignmentResult(agent.id, agent.name, choice.reason, queued=False, assignment_id=offer_id))
    session.execute(_NEW_EVENTS, events)
    enqueue_many(session, notices)
    return results


def _customer_files(session: Session, ticket_ids: list[int]) -> dict[int, int]:
    """How many files the customer sent on each ticket, so an offer can say so (one grouped query).
    On the connection, not through the session: the customer's messages were committed by intake,
    and an autoflush here would write the batch's pending rows one statement at a time."""
    return dict(session.connection().execute(
        select(Message.ticket_id, func.count(AttachmentRow.id))
        .join(AttachmentRow, AttachmentRow.message_id == Message.id)
        .where(Message.ticket_id.in_(ticket_ids), Message.direction == "in")
        .group_by(Message.ticket_id)
    ).all())


def _event_row(ticket: Ticket, at: datetime, actor: str, kind: str, reason: str, *, from_state: str | None = None,
               to_state: str | None = None, data: dict | None = None) -> dict:
    return {"ticket_id": ticket.id, "at": at, "actor": actor, "kind": kind, "from_state": from_state,
            "to_state": to_state, "reason": reason, "data": data or {}}


def _queue(session: Session, ticket: Ticket, choice: Choice, now: datetime, *, actor: str,
           event: bool) -> AssignmentResult:
    same = ticket.queue == QUEUE and ticket.queue_reason == choice.reason
    if ticket.state in (states.ASSIGNED, states.IN_PROGRESS):
        states.transition(session, ticket, states.NEW, actor=actor, at=now,
                          reason="no agent available; waiting in the assignment queue")
    ticket.queue, ticket.queue_reason = QUEUE, choice.reason
    if event and not same:
        session.add(TicketEvent(ticket_id=ticket.id, at=now, actor=actor, kind="queued", reason=choice.reason,
                                data={"queue": QUEUE, **choice.facts}))
    return AssignmentResult(None, None, choice.reason, queued=True, changed=not same)


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h"


__all__ = [
    "AgentState", "AssignmentResult", "Choice", "Roster", "Shift", "TicketFacts", "assign", "assign_many",
    "drain_queue", "expire_offers", "load_agents", "needs", "offer_to", "parse_shift", "rank", "release",
    "ticket_facts",
]
