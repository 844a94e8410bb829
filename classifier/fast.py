"""The serving path: the same features and linear scores as the scikit-learn pipeline, without it.

One message costs a normalisation, a jieba cut, a few hundred dict look-ups and a gather of a dense
weight matrix, with none of scikit-learn's input validation, sparse-matrix construction or estimator
dispatch. The arrays come from :func:`export_arrays` (see ``store.py``: ``serving.npz``, loaded with
``allow_pickle=False``), so serving imports neither scikit-learn nor skops. Tests check that labels
and probabilities equal the scikit-learn pipeline's on every held-out message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from classifier.text import Segmenter, join_words, normalise

SERVING_FORMAT = 1
_WHITE_SPACES = re.compile(r"\s\s+")  # as scikit-learn's analyzers


@dataclass(frozen=True, slots=True)
class HeadScores:
    """One head's calibrated probabilities for one message, labels in model order."""

    labels: tuple[str, ...]
    probabilities: np.ndarray

    @property
    def best(self) -> tuple[str, float]:
        i = int(np.argmax(self.probabilities))
        return self.labels[i], float(self.probabilities[i])


def export_arrays(features, heads: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Everything the fast path needs from a fitted TextFeatures and {head: BlendedLinearClassifier}."""
    terms = features.term_arrays()
    names = list(heads)
    weights = np.hstack([heads[h].coef_.T for h in names])
    intercepts = np.concatenate([heads[h].intercept_ + heads[h].bias_ * heads[h].temperature_ for h in names])
    return {
        "format": np.array(SERVING_FORMAT),
        "word_terms": terms["word_terms_"],
        "word_idf": terms["word_idf_"],
        "char_terms": terms["char_terms_"],
        "char_idf": terms["char_idf_"],
        "word_ngram_range": np.array(features.word_ngram_range),
        "char_ngram_range": np.array(features.char_ngram_range),
        "char_analyzer": np.array(features.char_analyzer),
        "sublinear_tf": np.array(bool(features.sublinear_tf)),
        "dictionary_words": features.dictionary_words_,
        "dictionary_freqs": features.dictionary_freqs_,
        "dictionary_total": np.array(features.dictionary_total_),
        "heads": np.array(names, dtype=str),
        "head_sizes": np.array([len(heads[h].classes_) for h in names]),
        "labels": np.concatenate([np.asarray(heads[h].classes_, dtype=str) for h in names]),
        "temperatures": np.array([heads[h].temperature_ for h in names]),
        "weights": np.ascontiguousarray(weights, dtype=np.float64),
        "intercepts": intercepts.astype(np.float64),
    }


class FastModel:
    """Scores messages from exported arrays; ``scores`` (one) and ``scores_many`` (batch) agree exactly."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        if int(arrays["format"]) != SERVING_FORMAT:
            raise ValueError(f"serving arrays format {int(arrays['format'])}, this code reads {SERVING_FORMAT}")
        self.word_index = {t: i for i, t in enumerate(arrays["word_terms"].tolist())}
        n_words = len(self.word_index)
        self.char_index = {t: i + n_words for i, t in enumerate(arrays["char_terms"].tolist())}
        self.idf = np.concatenate([arrays["word_idf"], arrays["char_idf"]]).tolist()
        self.word_min_n, self.word_max_n = (int(v) for v in arrays["word_ngram_range"])
        self.char_min_n, self.char_max_n = (int(v) for v in arrays["char_ngram_range"])
        self.char_wb = str(arrays["char_analyzer"]) == "char_wb"
        if str(arrays["char_analyzer"]) not in ("char", "char_wb"):
            raise ValueError(f"unsupported char analyzer {arrays['char_analyzer']}")
        self.sublinear = bool(arrays["sublinear_tf"])
        self.segmenter = Segmenter(
            arrays["dictionary_words"].tolist(), arrays["dictionary_freqs"].tolist(), int(arrays["dictionary_total"])
        )
        self.heads = tuple(arrays["heads"].tolist())
        sizes = [int(s) for s in arrays["head_sizes"]]
        labels = arrays["labels"].tolist()
        self.slices: dict[str, slice] = {}
        self.labels: dict[str, tuple[str, ...]] = {}
        start = 0
        for head, size in zip(self.heads, sizes):
            self.slices[head] = slice(start, start + size)
            self.labels[head] = tuple(labels[start : start + size])
            start += size
        self.temperatures = dict(zip(self.heads, (float(t) for t in arrays["temperatures"])))
        self.weights = np.ascontiguousarray(arrays["weights"], dtype=np.float64)
        self.intercepts = np.asarray(arrays["intercepts"], dtype=np.float64)
        self.n_features = len(self.idf)

    # -- features ----------------------------------------------------------------------------

    def _word_counts(self, words: list[str], counts: dict[int, int]) -> None:
        index = self.word_index
        n_tokens = len(words)
        for n in range(self.word_min_n, min(self.word_max_n, n_tokens) + 1):
            for i in range(n_tokens - n + 1):
                column = index.get(words[i] if n == 1 else " ".join(words[i : i + n]))
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1

    def _char_counts(self, text: str, counts: dict[int, int]) -> tuple[int, int]:
        """Adds char n-gram counts; returns (n-grams seen in the vocabulary, all n-grams)."""
        index = self.char_index
        min_n, max_n = self.char_min_n, self.char_max_n
        known = total = 0
        text = _WHITE_SPACES.sub(" ", text)
        pieces = [f" {w} " for w in text.split()] if self.char_wb else [text]
        for w in pieces:
            length = len(w)
            for n in range(min_n, max_n + 1):
                if self.char_wb and length <= n:
                    # scikit-learn's char_wb counts a word no longer than n once, then stops.
                    grams = (w,)
                elif length < n:
                    break
                else:
                    grams = (w[i : i + n] for i in range(length - n + 1))
                for gram in grams:
                    total += 1
                    column = index.get(gram)
                    if column is not None:
                        known += 1
                        counts[column] = counts.get(column, 0) + 1
                if self.char_wb and length <= n:
                    break
        return known, total

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray, float, str]:
        """(columns, tf-idf values, coverage, normalised text) of one message, as TextFeatures.transform."""
        normalised = normalise(text)
        words = self.segmenter.words(normalised)
        word_counts: dict[int, int] = {}
        self._word_counts(join_words(words).split(), word_counts)
        char_counts: dict[int, int] = {}
        known, total = self._char_counts(normalised, char_counts)
        columns: list[int] = []
        values: list[float] = []
        for counts in (word_counts, char_counts):
            block = [(c, (1.0 + math.log(n) if self.sublinear else float(n)) * self.idf[c]) for c, n in counts.items()]
            norm = math.sqrt(sum(v * v for _, v in block))
            if norm > 0:
                columns.extend(c for c, _ in block)
                values.extend(v / norm for _, v in block)
        coverage = known / total if total else 0.0
        return np.array(columns, dtype=np.intp), np.array(values), coverage, normalised

    # -- scores ------------------------------------------------------------------------------

    def scores(self, text: str) -> tuple[dict[str, HeadScores], float, str]:
        """Calibrated probabilities per head for one message, its n-gram coverage and normalised text."""
        columns, values, coverage, normalised = self.features(text)
        raw = values @ self.weights[columns] + self.intercepts if len(columns) else self.intercepts.copy()
        return self._split(raw), coverage, normalised

    def scores_many(self, texts: Sequence[str]) -> tuple[list[dict[str, HeadScores]], list[float], list[str]]:
        """The same as ``scores`` for many messages, with one sparse-dense product."""
        import scipy.sparse as sp

        indptr = [0]
        all_columns: list[np.ndarray] = []
        all_values: list[np.ndarray] = []
        coverages: list[float] = []
        normalised: list[str] = []
        for text in texts:
            columns, values, coverage, norm = self.features(text)
            all_columns.append(columns)
            all_values.append(values)
            coverages.append(coverage)
            normalised.append(norm)
            indptr.append(indptr[-1] + len(columns))
        if not texts:
            return [], [], []
        matrix = sp.csr_matrix(
            (np.concatenate(all_values), np.concatenate(all_columns), np.array(indptr)),
            shape=(len(texts), self.n_features),
        )
        raw = np.asarray(matrix @ self.weights) + self.intercepts
        return [self._split(row) for row in raw], coverages, normalised

    def _split(self, raw: np.ndarray) -> dict[str, HeadScores]:
        out = {}
        for head in self.heads:
            scores = raw[self.slices[head]] / self.temperatures[head]
            exp = np.exp(scores - scores.max())
            out[head] = HeadScores(self.labels[head], exp / exp.sum())
        return out
