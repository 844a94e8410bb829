"""How the classifier does in production: what supervisors corrected, by model version, label and confidence.

The router records every classification as a ticket event with the model's labels and confidences, and
every label correction names the message whose ticket it fixed. Joining the two answers the questions a
supervisor asks before retraining or moving the triage threshold: which version is corrected how often,
which labels it confuses, whether low confidence really means wrong, and how many corrections the active
model has not learned from yet.

A ticket counts as corrected on a head when its *final* corrected label differs from the model's: a
correction that only undoes something else (a VIP bump of the priority, an earlier mistaken correction)
is not the model's error. Corrections are a floor, not a count of errors: nobody corrects every ticket.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from classifier.data import SERVICE_HEADS as HEADS
# Confidence bands; the triage threshold is added as an edge so the first band is "went to triage".
BAND_EDGES = (0.0, 0.6, 0.75, 0.9, 1.0)
EXAMPLES_PER_PAIR = 3


@dataclass(frozen=True, slots=True)
class Classified:
    """One ticket as the model labelled it (its first classification)."""

    ticket: str  # ticket number
    version: str
    labels: Mapping[str, str]  # head -> label
    confidence: float  # min(type, category): the figure the triage threshold is compared with
    at: datetime


@dataclass(frozen=True, slots=True)
class TicketCorrection:
    """A label correction tied to the ticket it corrected."""

    ticket: str
    head: str
    new_label: str
    id: int


@dataclass(frozen=True, slots=True)
class VersionRow:
    version: str
    tickets: int
    corrected: dict[str, int]  # head -> tickets corrected on that head
    any_corrected: int


@dataclass(frozen=True, slots=True)
class LabelRow:
    head: str
    label: str
    predicted: int  # tickets the model gave this label
    corrected_away: int  # ... whose final label is another one (the label's precision, seen by supervisors)
    corrected_to: int  # tickets the model labelled otherwise that supervisors moved to this label (missed ones)


@dataclass(frozen=True, slots=True)
class Confusion:
    head: str
    model_label: str
    final_label: str
    tickets: int
    examples: tuple[str, ...]  # a few ticket numbers to open with `paidan tickets show`


@dataclass(frozen=True, slots=True)
class Band:
    low: float
    high: float
    tickets: int
    corrected: int  # corrected on type or category, the heads the confidence is about
    triaged: bool  # below the triage threshold: these went to a supervisor first


@dataclass(frozen=True, slots=True)
class QualityReport:
    since: datetime
    until: datetime
    tickets: int
    any_corrected: int
    corrected: dict[str, int]
    versions: list[VersionRow]
    labels: list[LabelRow]
    confusions: list[Confusion]
    bands: list[Band]
    triage_threshold: float
    pending: int | None = None  # corrections the active model has not learned from (None: unknown)
    active_version: str | None = None
    unclassified_corrections: int = 0  # corrections of tickets with no model labels in the period

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["since"], data["until"] = self.since.isoformat(), self.until.isoformat()
        data["pending_corrections"] = data.pop("pending")
        for confusion in data["confusions"]:
            confusion["examples"] = list(confusion["examples"])
        return data


def band_edges(triage_threshold: float) -> list[float]:
    return sorted({*BAND_EDGES, min(max(triage_threshold, 0.0), 1.0)})


def final_labels(corrections: Iterable[TicketCorrection]) -> dict[tuple[str, str], str]:
    """(ticket, head) -> the label the newest correction left."""
    final: dict[tuple[str, str], str] = {}
    for c in sorted(corrections, key=lambda c: c.id):
        final[(c.ticket, c.head)] = c.new_label
    return final


def quality_report(
    classified: Sequence[Classified],
    corrections: Iterable[TicketCorrection],
    *,
    since: datetime,
    until: datetime,
    triage_threshold: float,
    pending: int | None = None,
    active_version: str | None = None,
) -> QualityReport:
    """Join classifications with the corrections of the same tickets (see the module docstring)."""
    final = final_labels(corrections)
    by_ticket = {c.ticket: c for c in classified}
    unclassified = len({ticket for ticket, _head in final if ticket not in by_ticket})

    wrong: dict[str, dict[str, str]] = defaultdict(dict)  # ticket -> head -> the supervisors' label
    for (ticket, head), label in final.items():
        c = by_ticket.get(ticket)
        if c is not None and head in c.labels and c.labels[head] != label:
            wrong[ticket][head] = label

    versions: dict[str, list[Classified]] = defaultdict(list)
    for c in classified:
        versions[c.version].append(c)
    version_rows = [
        VersionRow(
            version, len(rows),
            {h: sum(1 for c in rows if h in wrong.get(c.ticket, {})) for h in HEADS},
            sum(1 for c in rows if c.ticket in wrong),
        )
        for version, rows in sorted(versions.items(), key=lambda kv: min(c.at for c in kv[1]))
    ]

    predicted: Counter[tuple[str, str]] = Counter()
    away: Counter[tuple[str, str]] = Counter()
    to: Counter[tuple[str, str]] = Counter()
    pairs: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for c in classified:
        for head, label in c.labels.items():
            predicted[(head, label)] += 1
            fixed = wrong.get(c.ticket, {}).get(head)
            if fixed is not None:
                away[(head, label)] += 1
                to[(head, fixed)] += 1
                pairs[(head, label, fixed)].append(c.ticket)
    label_rows = [
        LabelRow(head, label, predicted[(head, label)], away[(head, label)], to[(head, label)])
        for head, label in sorted({*predicted, *to}, key=lambda k: (HEADS.index(k[0]), k[1]))
    ]
    confusions = [
        Confusion(head, old, new, len(tickets), tuple(tickets[:EXAMPLES_PER_PAIR]))
        for (head, old, new), tickets in sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]

    edges = band_edges(triage_threshold)
    bands = []
    for low, high in zip(edges, edges[1:], strict=False):
        last = high >= 1.0
        inside = [c for c in classified if low <= c.confidence < high or (last and c.confidence >= high)]
        bands.append(Band(
            low, high, len(inside),
            sum(1 for c in inside if {"type", "category"} & set(wrong.get(c.ticket, {}))),
            high <= triage_threshold,
        ))

    return QualityReport(
        since, until, len(classified), len(wrong),
        {h: sum(1 for fixes in wrong.values() if h in fixes) for h in HEADS},
        version_rows, label_rows, confusions, bands, triage_threshold,
        pending, active_version, unclassified,
    )


def load_quality_inputs(session, since: datetime, until: datetime) -> tuple[list[Classified], list[TicketCorrection]]:
    """Tickets first classified in [since, until) and every correction of those tickets."""
    from sqlalchemy import select

    from models.tables import LabelCorrection, Message, Ticket, TicketEvent

    events = session.execute(
        select(TicketEvent.ticket_id, TicketEvent.at, TicketEvent.data, Ticket.number, Ticket.confidence)
        .join(Ticket, Ticket.id == TicketEvent.ticket_id)
        .where(TicketEvent.kind == "classified", TicketEvent.at >= since, TicketEvent.at < until)
        .order_by(TicketEvent.id)
    )
    classified: dict[int, Classified] = {}
    for ticket_id, at, data, number, confidence in events:
        prediction = (data or {}).get("prediction")
        if ticket_id in classified or not prediction:
            continue  # a ticket is judged by its first classification; "no model" ones have no labels
        labels = {h: prediction[h]["label"] for h in HEADS if isinstance(prediction.get(h), dict)}
        # The ticket's confidence is the figure routing compared with the triage threshold.
        classified[ticket_id] = Classified(
            number, str(prediction.get("model_version") or "?"), labels, float(confidence or 0.0), at
        )
    rows = session.execute(
        select(LabelCorrection.id, LabelCorrection.head, LabelCorrection.new_label, Ticket.number)
        .join(Message, Message.id == LabelCorrection.message_id)
        .join(Ticket, Ticket.id == Message.ticket_id)
        .where(LabelCorrection.corrected_at >= since)
    )
    corrections = [TicketCorrection(number, head, label, cid) for cid, head, label, number in rows]
    return list(classified.values()), corrections


def corrections_after(session, last_id: int | None, trained_at: datetime | None) -> int:
    """Corrections the model trained at ``trained_at`` (having seen ids up to ``last_id``) has not learned from."""
    from sqlalchemy import func, select

    from models.tables import LabelCorrection

    query = select(func.count(LabelCorrection.id))
    if last_id is not None:
        query = query.where(LabelCorrection.id > last_id)
    elif trained_at is not None:
        query = query.where(LabelCorrection.corrected_at > trained_at)
    return int(session.scalar(query) or 0)
