"""What the classifier tells the router: three labels with confidences, and the rules that fired.

Plain frozen dataclasses and a Protocol, so the router depends on this shape and not on the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    confidence: float  # calibrated probability of ``label``, 0..1

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "confidence": round(self.confidence, 4)}


@dataclass(frozen=True, slots=True)
class Prediction:
    type: LabelScore
    category: LabelScore
    priority: LabelScore
    rules: tuple[str, ...]  # names of the priority rules that fired, e.g. ("payment_system_down",)
    model_version: str

    def as_dict(self) -> dict[str, object]:
        return {
            "type": self.type.as_dict(),
            "category": self.category.as_dict(),
            "priority": self.priority.as_dict(),
            "rules": list(self.rules),
            "model_version": self.model_version,
        }


@runtime_checkable
class Classifier(Protocol):
    def predict(self, text: str) -> Prediction: ...

    def predict_many(self, texts: Sequence[str]) -> list[Prediction]: ...
