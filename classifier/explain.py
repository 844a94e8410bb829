"""Why the model chose a label: the features of the message that moved it most towards that label.

Each head is linear, so the log-odds of the chosen label over the runner-up is a sum over the
message's features (tf-idf value x the difference between the two labels' weights, over the head's
temperature) plus the difference of their intercepts. The largest terms of that sum are the cues a
supervisor can check before correcting a label: "连不上" pushed the category to technical, "refund"
to transaction. Rules (classifier/rules.py) are reported by the prediction itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.fast import FastModel


@dataclass(frozen=True, slots=True)
class Cue:
    term: str  # as the model sees it, in the normalised text (see FastModel.term_of)
    kind: str  # "word", "chars" or "pair"
    weight: float  # log-odds it adds to the chosen label over the runner-up

    def as_dict(self) -> dict[str, object]:
        return {"term": self.term, "kind": self.kind, "weight": round(self.weight, 4)}


@dataclass(frozen=True, slots=True)
class HeadExplanation:
    label: str  # the model's own choice (a priority rule may have raised the final priority)
    runner_up: str
    log_odds: float  # log(p(label) / p(runner_up)) before coverage damping: the sum of every cue plus the intercepts'
    cues: tuple[Cue, ...]  # the strongest that favour the label, strongest first (spaces and punctuation left out)

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "runner_up": self.runner_up, "log_odds": round(self.log_odds, 4),
                "cues": [c.as_dict() for c in self.cues]}


def explain(fast: FastModel, text: str, top: int = 5) -> dict[str, HeadExplanation]:
    """Per head with at least two labels: the chosen label, the runner-up and the ``top`` strongest cues."""
    columns, values, _coverage, _normalised = fast.features(text)
    weights = fast.stored_weights.take(columns, axis=0).astype(np.float64)  # the fast path's own weights
    raw = values @ weights + fast.intercepts
    out: dict[str, HeadExplanation] = {}
    for head in fast.heads:
        span = fast.slices[head]
        labels = fast.labels[head]
        if len(labels) < 2:
            continue
        order = np.argsort(-raw[span], kind="stable")  # ties: the first label, as argmax
        best, runner_up = span.start + int(order[0]), span.start + int(order[1])
        temperature = fast.column_temperatures[best]
        contribution = values * (weights[:, best] - weights[:, runner_up]) / temperature
        cues: list[Cue] = []
        for j in np.argsort(-contribution, kind="stable"):
            if len(cues) == top or contribution[j] <= 0:
                break
            term, kind = fast.term_of(int(columns[j]))
            if any(ch.isalnum() for ch in term):  # a lone space or comma says nothing a person can check
                cues.append(Cue(term, kind, float(contribution[j])))
        log_odds = float((raw[best] - raw[runner_up]) / temperature)
        out[head] = HeadExplanation(labels[order[0]], labels[order[1]], log_odds, tuple(cues))
    return out
