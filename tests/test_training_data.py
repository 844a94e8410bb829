"""training_data/ keeps the promises GUIDELINES.md makes: enough messages, mostly Chinese, every label
well represented, and no message in two splits (a message learned from cannot measure the model)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from classifier.data import TAXONOMY, csv_files
from classifier.text import normalise
from classifier.train import load_split

DATA = Path(__file__).resolve().parent.parent / "training_data"
SPLITS = ("train", "heldout", "blind")
pytestmark = pytest.mark.skipif(not (DATA / "train").is_dir(), reason="training_data is absent")


def rows(split: str) -> list[dict[str, str]]:
    out = []
    for path in csv_files(DATA / split):
        with path.open(encoding="utf-8", newline="") as f:
            out.extend(csv.DictReader(f))
    return out


def test_enough_messages_mostly_chinese_every_label_well_represented() -> None:
    learned = rows("train") + rows("heldout")
    assert len(learned) >= 3000
    langs = Counter(r["lang"] for r in learned)
    assert set(langs) <= {"zh", "zh-Hant", "en", "mixed"}
    assert (langs["zh"] + langs["zh-Hant"]) / len(learned) >= 0.60 and langs["zh-Hant"] > 0
    assert {r["channel"] for r in learned} == {"telegram", "email", "web"}
    for head, labels in TAXONOMY.items():
        counts = Counter(r[head] for r in learned)
        assert set(counts) == set(labels), head
        assert min(counts.values()) >= 150, (head, counts)


def test_no_message_is_in_two_splits() -> None:
    seen: dict[str, str] = {}
    for split in SPLITS:
        if not (DATA / split).is_dir():
            continue
        examples, _ = load_split(DATA, split)
        for e in examples:
            key = normalise(e.text)
            assert seen.setdefault(key, split) == split, f"{e.source} ({split}) is also in {seen[key]}: {e.text[:60]!r}"


def test_the_blind_split_covers_every_label() -> None:
    if not csv_files(DATA / "blind"):
        pytest.skip("no blind split")
    examples, _ = load_split(DATA, "blind")
    for head, labels in TAXONOMY.items():
        counts = Counter(e.labels[head] for e in examples)
        assert set(counts) == set(labels) and min(counts.values()) >= 30, (head, counts)
