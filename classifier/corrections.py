"""Supervisors' label corrections: reading them from the database and merging them into training data.

A correction overrides the label of the same text (compared after normalisation) for its head only; a
corrected text that is not in the training data becomes a new example labelled for that head only
(other heads simply do not train on it). The newest correction of a (text, head) wins. Corrections of
held-out texts are left out of training so the held-out scores stay an honest yardstick.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from classifier.data import Example
from classifier.text import normalise


@dataclass(frozen=True, slots=True)
class Correction:
    text: str
    head: str
    new_label: str
    corrected_at: datetime
    old_label: str | None = None
    corrected_by: str = ""
    id: int | None = None


@dataclass(frozen=True, slots=True)
class MergeStats:
    corrections: int  # distinct (text, head) corrections considered
    overridden: int  # labels of existing training examples changed
    unchanged: int  # corrections that agreed with the training label already
    added: int  # new examples made from corrected texts
    skipped_heldout: int  # corrections of held-out texts, not used for training
    skipped_unknown: int  # corrections to heads or labels the model does not know


def load_corrections(session) -> list[Correction]:
    """The LabelCorrection rows, oldest first; those whose text was erased (a customer forgotten on
    request) are left out: the text is gone, and "[erased]" must not become a training example."""
    from sqlalchemy import select

    from models.message import ERASED
    from models.tables import LabelCorrection

    rows = session.scalars(select(LabelCorrection).where(LabelCorrection.text != ERASED)
                           .order_by(LabelCorrection.corrected_at, LabelCorrection.id))
    return [
        Correction(r.text, r.head, r.new_label, r.corrected_at, r.old_label, r.corrected_by, r.id) for r in rows
    ]


def merge_corrections(
    examples: Sequence[Example],
    corrections: Iterable[Correction],
    *,
    heldout_texts: Collection[str] = (),
    label_sets: dict[str, Collection[str]] | None = None,
) -> tuple[list[Example], MergeStats]:
    """Training examples with corrections applied (see the module docstring)."""
    latest: dict[tuple[str, str], Correction] = {}
    skipped_unknown = 0
    for c in sorted(corrections, key=lambda c: (_aware(c.corrected_at), c.id or 0)):
        allowed = (label_sets or {}).get(c.head)
        if label_sets is not None and (allowed is None or c.new_label not in allowed):
            skipped_unknown += 1
            continue
        latest[(normalise(c.text), c.head)] = c
    heldout = {normalise(t) for t in heldout_texts}
    by_text: dict[str, dict[str, str]] = {}
    skipped_heldout = 0
    for (key, head), c in latest.items():
        if key in heldout:
            skipped_heldout += 1
            continue
        by_text.setdefault(key, {})[head] = c.new_label
    out: list[Example] = []
    overridden = unchanged = 0
    seen: set[str] = set()
    for example in examples:
        key = normalise(example.text)
        fixes = by_text.get(key)
        if fixes:
            seen.add(key)
            labels = dict(example.labels)
            for head, label in fixes.items():
                if labels.get(head) == label:
                    unchanged += 1
                else:
                    overridden += 1
                labels[head] = label
            example = Example(example.text, labels, example.source)
        out.append(example)
    added = 0
    for (key, head), c in latest.items():
        if key in by_text and key not in seen:
            seen.add(key)
            out.append(Example(c.text, dict(by_text[key]), f"correction:{c.id}"))
            added += 1
    stats = MergeStats(len(latest), overridden, unchanged, added, skipped_heldout, skipped_unknown)
    return out, stats


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def record_version(session, version: str, path: str, metrics: dict[str, Any], *, active: bool) -> None:
    """Audit copy of a model version in model_versions; when active, the only active row."""
    from sqlalchemy import select, update

    from models.tables import ModelVersion

    row = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if row is None:
        row = ModelVersion(version=version, path=path, metrics=metrics, active=False, created_at=datetime.now(UTC))
        session.add(row)
    if active:
        session.execute(update(ModelVersion).where(ModelVersion.version != version).values(active=False))
        row.active = True
        row.promoted_at = datetime.now(UTC)
    session.flush()
