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
from collections import Counter
from functools import lru_cache
from itertools import repeat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from classifier.text import NativeSegmenter, normalise, unpack_table, unpack_terms

SERVING_FORMAT = 2
_WHITE_SPACES = re.compile(r"\s\s+")  # as scikit-learn's analyzers
_NO_COLUMNS = np.zeros(0, dtype=np.intp)
_NO_VALUES = np.zeros(0, dtype=np.float64)


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
        "simplified_from": features.simplified_from_,
        "simplified_to": features.simplified_to_,
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
        word_terms = unpack_terms(arrays["word_terms"])
        char_terms = unpack_terms(arrays["char_terms"])
        self.word_index = dict(zip(word_terms, range(len(word_terms))))
        self.char_index = dict(zip(char_terms, range(len(word_terms), len(word_terms) + len(char_terms))))
        self.idf = np.concatenate([arrays["word_idf"], arrays["char_idf"]]).astype(np.float64)
        self.word_min_n, self.word_max_n = (int(v) for v in arrays["word_ngram_range"])
        self.char_min_n, self.char_max_n = (int(v) for v in arrays["char_ngram_range"])
        self.char_wb = str(arrays["char_analyzer"]) == "char_wb"
        if str(arrays["char_analyzer"]) not in ("char", "char_wb"):
            raise ValueError(f"unsupported char analyzer {arrays['char_analyzer']}")
        self.sublinear = bool(arrays["sublinear_tf"])
        self.simplified = unpack_table(arrays["simplified_from"], arrays["simplified_to"])
        self.coverage_n = min(3, self.char_max_n)
        self.n_word_features = len(word_terms)
        self.long_column = np.fromiter(map(len, char_terms), dtype=np.intp, count=len(char_terms)) >= self.coverage_n
        # Bounded per-model cache: a pure function of the word, so it cannot change any result.
        self._cached_wb_grams = lru_cache(maxsize=50_000)(self._wb_grams)
        self.segmenter = NativeSegmenter(
            unpack_terms(arrays["dictionary_words"]), arrays["dictionary_freqs"].tolist(), int(arrays["dictionary_total"])
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
        if self.weights.shape[0] != self.n_features:
            raise ValueError(f"weights have {self.weights.shape[0]} rows for {self.n_features} features")

    # -- features ----------------------------------------------------------------------------

    def _word_grams(self, words: list[str]) -> list[str]:
        n_tokens = len(words)
        grams = list(words) if self.word_min_n == 1 else []
        for n in range(max(self.word_min_n, 2), min(self.word_max_n, n_tokens) + 1):
            grams.extend([" ".join(words[i : i + n]) for i in range(n_tokens - n + 1)])
        return grams

    def _char_grams(self, text: str) -> tuple[list[str], int]:
        """The char n-grams of a normalised text, and how many are at least ``coverage_n`` long."""
        min_n, max_n = self.char_min_n, self.char_max_n
        text = _WHITE_SPACES.sub(" ", text)
        grams: list[str] = []
        if not self.char_wb:
            length = len(text)
            long_grams = 0
            for n in range(min_n, min(max_n, length) + 1):
                grams.extend([text[i : i + n] for i in range(length - n + 1)])
                if n >= self.coverage_n:
                    long_grams += length - n + 1
            return grams, long_grams
        long_grams = 0
        cached = self._cached_wb_grams
        for word in text.split():
            # Short words recur across messages (English words, 您好); long Chinese clauses do not.
            word_grams, word_long = cached(word) if len(word) <= 16 else self._wb_grams(word)
            grams.extend(word_grams)
            long_grams += word_long
        return grams, long_grams

    def _wb_grams(self, word: str) -> tuple[tuple[str, ...], int]:
        """One word's char_wb n-grams as scikit-learn makes them, and how many are >= coverage_n long."""
        w = f" {word} "
        length = len(w)
        grams: list[str] = []
        long_grams = 0
        for n in range(self.char_min_n, self.char_max_n + 1):
            if length <= n:
                grams.append(w)  # scikit-learn's char_wb counts a short word once, then stops
                long_grams += length >= self.coverage_n
                break
            grams.extend([w[i : i + n] for i in range(length - n + 1)])
            if n >= self.coverage_n:
                long_grams += length - n + 1
        return tuple(grams), long_grams

    def _block(self, grams: list[str], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(columns, l2-normalised tf-idf values, raw counts) of the n-grams the vocabulary knows."""
        if not grams:
            return _NO_COLUMNS, _NO_VALUES, _NO_VALUES
        counter = Counter(grams)
        size = len(counter)
        # map/np.fromiter keep the per-gram work in C; -1 marks a gram outside the vocabulary.
        columns = np.fromiter(map(index.get, counter, repeat(-1, size)), dtype=np.intp, count=size)
        known = columns >= 0
        if not known.any():
            return _NO_COLUMNS, _NO_VALUES, _NO_VALUES
        counts = np.fromiter(counter.values(), dtype=np.float64, count=size)[known]
        columns = columns[known]
        tf = np.log(counts) + 1.0 if self.sublinear else counts
        values = tf * self.idf[columns]
        values /= math.sqrt(float(values @ values))
        return columns, values, counts

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray, float, str]:
        """(columns, tf-idf values, coverage, normalised text) of one message, as TextFeatures.transform.

        Coverage is the share of the message's char n-grams of length >= ``coverage_n`` that the
        vocabulary knows (0 for none): single characters are known for almost any junk, so they do
        not count.
        """
        normalised = normalise(text, self.simplified)
        word_cols, word_values, _ = self._block(self._word_grams(self.segmenter.words(normalised)), self.word_index)
        char_grams, long_grams = self._char_grams(normalised)
        char_cols, char_values, char_counts = self._block(char_grams, self.char_index)
        known_long = float(char_counts[self.long_column[char_cols - self.n_word_features]].sum()) if len(char_cols) else 0.0
        coverage = known_long / long_grams if long_grams else 0.0
        return np.concatenate([word_cols, char_cols]), np.concatenate([word_values, char_values]), coverage, normalised

    # -- scores ------------------------------------------------------------------------------

    def scores(self, text: str) -> tuple[dict[str, HeadScores], float, str]:
        """Calibrated probabilities per head for one message, its n-gram coverage and normalised text."""
        columns, values, coverage, normalised = self.features(text)
        raw = values @ self.weights[columns] + self.intercepts if len(columns) else self.intercepts.copy()
        return self._split(raw), coverage, normalised

    def scores_many(self, texts: Sequence[str]) -> tuple[list[dict[str, HeadScores]], list[float], list[str]]:
        """The same as ``scores`` for many messages, with one sparse-dense product."""
        import scipy.sparse as sp  # here, not at the top: importing it costs ~0.1 s of every load

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
