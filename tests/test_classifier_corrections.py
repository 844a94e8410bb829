"""Retraining from supervisors' corrections stored in the database."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from classifier.corrections import Correction, load_corrections, merge_corrections
from classifier.data import TAXONOMY, Example
from classifier.evaluate import head_metrics
from classifier.service import SERVICE_HEADS, ModelClassifier
from classifier.store import ModelStore
from classifier.train import TrainConfig, load_split, train_version
from models.tables import LabelCorrection
from paidan.db import make_engine, transaction, upgrade

DATA = Path(__file__).resolve().parent.parent / "training_data"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _ex(text: str, **labels: str) -> Example:
    return Example(text, labels)


def test_a_correction_overrides_the_label_of_the_same_text_for_its_head_only() -> None:
    examples = [_ex("你们什么时候发货？", type="inquiry", category="service", priority="P3"), _ex("在吗", type="inquiry", category="service", priority="P3")]
    corrections = [
        Correction("你们什么时候发货？？", "type", "request", T0),  # differs only in punctuation width/count: not the same text
        Correction("你们什么时候发货？", "type", "request", T0),
        Correction("你们什么时候发货？", "type", "complaint", T0 + timedelta(hours=1)),  # the newest wins
        Correction("ＨＥＬＬＯ", "priority", "P3", T0),  # a new text, same after normalisation as "hello"
        Correction("保密", "type", "nonsense", T0),  # unknown label: ignored
    ]
    merged, stats = merge_corrections(examples, corrections, heldout_texts=["你们什么时候发货？？"], label_sets=TAXONOMY)
    assert merged[0].labels == {"type": "complaint", "category": "service", "priority": "P3"}
    assert merged[1] == examples[1]
    assert merged[2].text == "ＨＥＬＬＯ" and merged[2].labels == {"priority": "P3"}  # trains the priority head only
    assert (stats.overridden, stats.added, stats.skipped_heldout, stats.skipped_unknown) == (1, 1, 1, 1)


def _write(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", *SERVICE_HEADS])
        for e in examples:
            writer.writerow([e.text, *(e.labels[h] for h in SERVICE_HEADS)])


def _pair_f1(classifier: ModelClassifier, examples: list[Example]) -> float:
    truth = [e.labels["type"] for e in examples]
    predicted = [p.type.label for p in classifier.predict_many([e.text for e in examples])]
    per_class = head_metrics("type", truth, predicted)["per_class"]
    return (per_class["complaint"]["f1"] + per_class["inquiry"]["f1"]) / 2


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="training_data is absent")
def test_fifty_corrections_of_complaint_vs_inquiry_raise_that_pairs_f1(tmp_path) -> None:
    """Complaints mislabelled as inquiries in the training data; 50 supervisor corrections fix them."""
    train, _ = load_split(DATA, "train")
    heldout, _ = load_split(DATA, "heldout")
    rng = random.Random(7)
    base = rng.sample(train, min(1400, len(train)))
    complaints = [i for i, e in enumerate(base) if e.labels["type"] == "complaint"]
    flipped = set(rng.sample(complaints, 50))
    noisy = [Example(e.text, {**e.labels, "type": "inquiry"}) if i in flipped else e for i, e in enumerate(base)]
    data = tmp_path / "data"
    _write(data / "train" / "train.csv", noisy)
    # The fixed evaluation set: every held-out complaint and inquiry.
    evaluation = [e for e in heldout if e.labels["type"] in ("complaint", "inquiry")]
    _write(data / "heldout" / "heldout.csv", heldout)

    store = ModelStore(tmp_path / "models")
    config = TrainConfig(calibration_folds=0)
    before = train_version(data, store, config=config)
    f1_before = _pair_f1(ModelClassifier.load(before.path), evaluation)

    url = f"sqlite:///{tmp_path / 'paidan.db'}"
    upgrade(url)
    engine = make_engine(url)
    with transaction(engine) as session:
        for n, i in enumerate(sorted(flipped)):
            session.add(LabelCorrection(
                text=base[i].text, head="type", old_label="inquiry", new_label="complaint",
                corrected_by="supervisor:li", corrected_at=T0 + timedelta(minutes=n),
            ))
    with transaction(engine) as session:
        corrections = load_corrections(session)
    engine.dispose()
    assert len(corrections) == 50

    after = train_version(data, store, corrections, config=config)
    assert after.merge.overridden == 50
    f1_after = _pair_f1(ModelClassifier.load(after.path), evaluation)
    assert f1_after > f1_before + 0.01, (f1_before, f1_after)
    assert after.promoted
