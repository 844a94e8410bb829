"""Scores per head: accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from classifier.data import TAXONOMY, Example


def ordered_labels(head: str, labels: set[str]) -> list[str]:
    """Taxonomy order for paidan's heads (P0 before P1), sorted for any other head."""
    known = [label for label in TAXONOMY.get(head, ()) if label in labels]
    return known + sorted(labels - set(known))


def head_metrics(head: str, y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, Any]:
    """Metrics over the labels that occur in either list (a label never seen nor predicted is left out)."""
    labels = ordered_labels(head, set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(y_true, y_pred):
        matrix[index[t], index[p]] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    for i, label in enumerate(labels):
        tp = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    total = int(matrix.sum())
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])) if per_class else 0.0,
        "per_class": per_class,
        "confusion": {"labels": labels, "matrix": matrix.tolist()},
        "n": total,
    }


def evaluate_examples(classifier, examples: Sequence[Example], heads: Sequence[str] | None = None) -> dict[str, Any]:
    """Score a ModelClassifier (rules included) on examples; heads default to those both sides know."""
    results = classifier.predict_heads_many([e.text for e in examples])
    heads = [h for h in (heads or classifier.heads) if h in classifier.heads]
    metrics: dict[str, Any] = {}
    for head in heads:
        pairs = [(e.labels[head], r.labels[head].label) for e, r in zip(examples, results) if head in e.labels]
        if pairs:
            metrics[head] = head_metrics(head, [t for t, _ in pairs], [p for _, p in pairs])
    if "priority" in metrics and "P0" in metrics["priority"]["per_class"]:
        metrics["priority"]["p0"] = p0_report(examples, results)
    return metrics


def p0_report(examples: Sequence[Example], results: Sequence[Any]) -> dict[str, Any]:
    """P0 recall and false positives with and without the rule layer (what the rules buy and cost)."""
    truth = [e.labels.get("priority") for e in examples]
    final = [r.labels["priority"].label for r in results]
    model = [r.model_labels["priority"] for r in results]

    def stats(pred: list[str]) -> dict[str, float | int]:
        tp = sum(t == "P0" and p == "P0" for t, p in zip(truth, pred))
        fp = sum(t != "P0" and t is not None and p == "P0" for t, p in zip(truth, pred))
        support = sum(t == "P0" for t in truth)
        return {"recall": tp / support if support else 0.0, "false_positives": fp, "true_positives": tp, "support": support}

    return {
        "with_rules": stats(final),
        "model_only": stats(model),
        "rule_fired": sum(bool(r.rules) for r in results),
        "rule_changed": sum(f != m for f, m in zip(final, model)),
    }


def compact(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The --json shape: {head: {accuracy, macro_f1, per_class: {label: {precision, recall, f1, support}}}}."""
    out: dict[str, Any] = {}
    for head, m in metrics.items():
        out[head] = {
            "accuracy": round(m["accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4),
            "per_class": {
                label: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()}
                for label, c in m["per_class"].items()
            },
        }
    return out
