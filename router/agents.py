"""The agent directory: who can take tickets, with which skills, how many at once."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.errors import InvalidInput, NotFound
from models.tables import Agent, Ticket
from router.assignment import LANGUAGES
from router.config import ROLES, RouterConfig
from router.states import OPEN_STATES



def _check(role: str | None, capacity: int | None, seniority: int | None) -> None:
    if role is not None and role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}, not {role!r}")
    if capacity is not None and not 0 <= capacity <= 1000:
        raise InvalidInput("capacity", "must be between 0 and 1000")
    if seniority is not None and not 1 <= seniority <= 3:
        raise InvalidInput("seniority", "must be 1 (junior), 2 or 3 (senior)")


def normalise_skills(skills: list[str]) -> list[str]:
    return sorted({s.strip().lower() for s in skills if s.strip()})


def known_skills(config: RouterConfig) -> frozenset[str]:
    """The skills tickets ask for: each category's skill and the language skills."""
    return frozenset(config.category_skills.values()) | LANGUAGES


def unknown_skills(skills: list[str], config: RouterConfig) -> list[str]:
    """Skills no ticket will ever ask for (a typo such as "tecnical" leaves an agent without work).

    They are kept, not refused: a team may tag agents before mapping a category to the skill."""
    known = known_skills(config)
    return [s for s in normalise_skills(skills) if s not in known]


def add_agent(
    session: Session, name: str, *, skills: list[str], capacity: int = 5, seniority: int = 1,
    role: str = "agent", telegram_id: int | None = None, email: str | None = None,
) -> Agent:
    name = name.strip()
    if not name:
        raise InvalidInput("name", "must not be empty")
    _check(role, capacity, seniority)
    if session.scalar(select(Agent.id).where(Agent.name == name)) is not None:
        raise InvalidInput("name", f"an agent called {name!r} already exists")
    if telegram_id is not None and session.scalar(select(Agent.id).where(Agent.telegram_id == telegram_id)):
        raise InvalidInput("telegram_id", f"Telegram id {telegram_id} already belongs to another agent")
    agent = Agent(name=name, skills=normalise_skills(skills), capacity=capacity, seniority=seniority,
                  role=role, telegram_id=telegram_id, email=email)
    session.add(agent)
    session.flush()
    return agent


def get_agent(session: Session, name_or_id: str) -> Agent:
    agent = session.scalar(select(Agent).where(Agent.name == name_or_id))
    if agent is None and name_or_id.isdigit():
        agent = session.get(Agent, int(name_or_id))
    if agent is None:
        raise NotFound(f"no agent called {name_or_id!r} (see `paidan agents list`)")
    return agent


def update_agent(session: Session, agent: Agent, **changes) -> Agent:
    """Apply the given changes (None means 'leave as is')."""
    changes = {k: v for k, v in changes.items() if v is not None}
    _check(changes.get("role"), changes.get("capacity"), changes.get("seniority"))
    if "skills" in changes:
        changes["skills"] = normalise_skills(changes["skills"])
    for key, value in changes.items():
        setattr(agent, key, value)
    session.flush()
    return agent


def open_load(session: Session) -> dict[int, int]:
    """Open tickets held by each agent."""
    rows = session.execute(
        select(Ticket.assigned_agent_id, func.count())
        .where(Ticket.assigned_agent_id.is_not(None), Ticket.state.in_(OPEN_STATES))
        .group_by(Ticket.assigned_agent_id)
    ).all()
    return dict(rows)
