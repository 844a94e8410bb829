"""The router's knobs, as one plain frozen object (paidan builds it from the settings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, time, timedelta

PRIORITIES = ("P0", "P1", "P2", "P3")
ROLES = ("agent", "supervisor", "admin")  # who a staff member is (Agent.role)
SUPERVISOR_ROLES = frozenset({"supervisor", "admin"})  # may act on any ticket; told of escalations


@dataclass(frozen=True, slots=True)
class SlaTarget:
    """First substantive response and resolution, and the calendar they are counted on."""

    first_response: timedelta
    resolution: timedelta
    calendar: str  # "24x7" or "business"


# DESIGN.md: P0 15 min / 4 h around the clock; P1 1 h / 24 h; P2 4 business hours / 3 business
# days; P3 24 business hours / 5 business days. A business day is the calendar's working hours.
DEFAULT_SLA: dict[str, SlaTarget] = {
    "P0": SlaTarget(timedelta(minutes=15), timedelta(hours=4), "24x7"),
    "P1": SlaTarget(timedelta(hours=1), timedelta(hours=24), "24x7"),
    "P2": SlaTarget(timedelta(hours=4), timedelta(hours=3 * 9), "business"),
    "P3": SlaTarget(timedelta(hours=24), timedelta(hours=5 * 9), "business"),
}


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    timezone: str = "Asia/Shanghai"
    start: time = time(9, 0)
    end: time = time(18, 0)
    weekdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday = 0
    holidays: frozenset[date] = frozenset()


@dataclass(frozen=True, slots=True)
class RouterConfig:
    calendar: BusinessCalendar = BusinessCalendar()
    # Per priority; `sla_by_channel[channel][priority]` overrides it for one channel.
    sla: dict[str, SlaTarget] = field(default_factory=lambda: dict(DEFAULT_SLA))
    sla_by_channel: dict[str, dict[str, SlaTarget]] = field(default_factory=dict)
    warn_fraction: float = 0.8
    # Category → the skill an agent needs; a language skill ("zh", "en") is needed too when known.
    category_skills: dict[str, str] = field(default_factory=lambda: {
        "technical": "technical", "service": "service", "transaction": "transaction", "product": "product",
    })
    language_skills: bool = True
    # Complaints and these priorities prefer agents of at least this seniority.
    senior_priorities: frozenset[str] = frozenset({"P0", "P1"})
    senior_types: frozenset[str] = frozenset({"complaint"})
    senior_level: int = 3
    accept_timeout: timedelta = timedelta(minutes=10)
    # Below this classifier confidence (on type or category) a supervisor triages the ticket.
    triage_threshold: float = 0.45
    topic_window: timedelta = timedelta(hours=72)
    # Measured on labelled same/different-topic pairs (router/topics.py): precision 0.94, recall 1.0.
    topic_threshold: float = 0.20
    second_contact_window: timedelta = timedelta(hours=24)
    # Ask the customer how we did when a ticket is resolved (router/surveys.py).
    surveys: bool = True
    # A resolved ticket the customer has not written to again for this long is closed (0: never).
    close_resolved_after: timedelta = timedelta(days=7)
    # A ticket waiting on the customer with nothing happening for this long: they are reminded once
    # (router/waiting.py), then it is resolved (each 0: never). A word from them reopens it as usual.
    remind_waiting_after: timedelta = timedelta(days=3)
    resolve_waiting_after: timedelta = timedelta(days=7)

    def sla_for(self, priority: str, channel: str) -> SlaTarget:
        by_channel = self.sla_by_channel.get(channel, {})
        return by_channel.get(priority) or self.sla.get(priority) or self.sla["P3"]
