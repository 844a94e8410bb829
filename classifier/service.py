"""The classifier the router uses: fast-path scores, out-of-vocabulary damping, then priority rules.

Confidence is the calibrated probability of the chosen label, damped towards uniform when little of
the message is known to the model (empty text, emoji, binary junk, a language never seen): with
coverage c, the share of the message's character n-grams of length >= 3 seen in training,
p' = a*p + (1-a)/K, a = min(1, c / COVERAGE_FULL). Damping never changes a label, only how sure we
say we are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import ModelIncompatible
from classifier.fast import FastModel
from classifier.rules import PriorityRule, apply_rules, fired_rules
from classifier.store import ModelStore, load_serving_arrays
from models.prediction import LabelScore, Prediction

SERVICE_HEADS = ("type", "category", "priority")
# Measured on the held-out split: 95 % of real messages have coverage >= 0.17 (median 0.42; 4-grams
# are often new), while emoji, junk and unseen scripts have 0-0.03. Below 0.15 the model is
# mostly guessing from a few fragments.
COVERAGE_FULL = 0.15
# Confidence reported for a priority set by a rule: the cue is explicit, but rules are not perfect.
RULE_CONFIDENCE = 0.9
PRIORITY_HEAD = "priority"
# Per head, for a batch: index of the best label and its probability per message, and the label names.
_Best = tuple[list[int], list[float], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class HeadsResult:
    """Labels for every head of a (possibly generic) model, with the rules that fired."""

    labels: Mapping[str, LabelScore]
    rules: tuple[str, ...]
    coverage: float
    model_labels: Mapping[str, str]  # the model's own choice per head, before rules


class ModelClassifier:
    """Implements ``models.prediction.Classifier`` over a trained model directory."""

    def __init__(self, fast: FastModel, version: str, metadata: Mapping[str, Any] | None = None, use_rules: bool = True):
        self.fast = fast
        self.version = version
        self.metadata = dict(metadata or {})
        self.use_rules = use_rules and PRIORITY_HEAD in fast.heads and {"P0", "P1"} <= set(fast.labels[PRIORITY_HEAD])

    @classmethod
    def load(cls, path: Path | str, **kwargs) -> ModelClassifier:
        """Load a version directory (serving arrays only: no scikit-learn, skops, jieba or zhconv import)."""
        arrays, meta = load_serving_arrays(path)
        return cls(FastModel(arrays), str(meta.get("version", Path(path).name)), meta, **kwargs)

    @classmethod
    def load_active(cls, model_dir: Path | str, **kwargs) -> ModelClassifier:
        return cls.load(ModelStore(model_dir).active_path(), **kwargs)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.fast.heads

    # -- any heads ---------------------------------------------------------------------------

    def predict_heads(self, text: str) -> HeadsResult:
        probabilities, coverage, normalised = self.fast.probabilities_many([text])
        # One message: the best label per head from Python floats (numpy's per-call cost dominates at this size).
        best = {}
        for head, p in probabilities.items():
            row = p[0].tolist()
            index = max(range(len(row)), key=row.__getitem__)  # the first of equal maxima, as argmax
            best[head] = ([index], [row[index]], self.fast.labels[head])
        return self._finish(0, best, float(coverage[0]), normalised[0])

    def predict_heads_many(self, texts: Sequence[str]) -> list[HeadsResult]:
        if not texts:
            return []
        probabilities, coverages, normalised = self.fast.probabilities_many(list(texts))
        # Best label and its probability per head for every message at once, as Python values.
        best = {}
        for head, p in probabilities.items():
            index = p.argmax(axis=1)
            best[head] = (index.tolist(), p[np.arange(len(index)), index].tolist(), self.fast.labels[head])
        return [self._finish(i, best, c, text) for i, (c, text) in enumerate(zip(coverages.tolist(), normalised))]

    def _finish(self, i: int, best: Mapping[str, _Best], coverage: float, normalised: str) -> HeadsResult:
        """Message ``i``'s labels from the batch's best labels, damped by its coverage, then the rules."""
        weight = min(1.0, coverage / COVERAGE_FULL)
        labels: dict[str, LabelScore] = {}
        model_labels: dict[str, str] = {}
        for head, (index, p, names) in best.items():
            label = names[index[i]]
            model_labels[head] = label
            labels[head] = LabelScore(label, weight * p[i] + (1 - weight) / len(names))
        fired: tuple[PriorityRule, ...] = fired_rules(normalised) if self.use_rules and normalised else ()
        if fired:
            current = labels[PRIORITY_HEAD].label
            raised = apply_rules(current, fired)
            if raised != current:
                labels[PRIORITY_HEAD] = LabelScore(raised, RULE_CONFIDENCE)
        return HeadsResult(labels, tuple(r.name for r in fired), coverage, model_labels)

    # -- the Classifier protocol -------------------------------------------------------------

    def predict(self, text: str) -> Prediction:
        return self._prediction(self.predict_heads(text))

    def predict_many(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction(r) for r in self.predict_heads_many(texts)]

    def _prediction(self, result: HeadsResult) -> Prediction:
        missing = [h for h in SERVICE_HEADS if h not in result.labels]
        if missing:
            raise ModelIncompatible(
                f"model {self.version} has heads {list(self.heads)}; paidan needs {list(SERVICE_HEADS)} "
                f"(missing {missing}): promote a model trained on paidan's training_data"
            )
        return Prediction(
            type=result.labels["type"],
            category=result.labels["category"],
            priority=result.labels["priority"],
            rules=result.rules,
            model_version=self.version,
        )
