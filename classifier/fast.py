"""The serving path: the same features and linear scores as the scikit-learn pipeline, without it.

A message costs a normalisation and a jieba cut in Python (cut cached per clause); after that the
word and character n-grams of a whole batch (or of one message) are found with a few numpy passes
over vocabulary tries (:class:`_Trie`) instead of a dict look-up per n-gram string (word pairs: one
integer key per pair, one ``searchsorted``), counted with one sort, tf-idf weighted, and scored for all
heads with one product, with none of scikit-learn's input validation or estimator dispatch. The arrays come from :func:`export_arrays` (see ``store.py``:
``serving.npz``, loaded with ``allow_pickle=False``), so serving imports neither scikit-learn nor
skops; the tries are built from those arrays at load, so the model directory format is unchanged.
Tests check that labels and probabilities equal the scikit-learn pipeline's on every held-out message."""

from __future__ import annotations

import functools
import re
from itertools import chain, repeat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from classifier.text import MAX_CHARS, PAIR_JOINER, NativeSegmenter, normalise, pair_words, unpack_table, unpack_terms

SERVING_FORMAT = 3  # 3: a word-pair block after the word and char blocks (2, without it, is still read)
_READABLE_FORMATS = (2, 3)
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
        "pair_terms": terms["pair_terms_"],
        "pair_idf": terms["pair_idf_"],
        "pair_max_words": np.array(int(features.pair_max_words) if len(terms["pair_idf_"]) else 0),
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
        # float16 is exact: the heads keep their weights at float16 precision (BlendedLinearClassifier.fit)
        "weights": np.ascontiguousarray(weights, dtype=np.float16),
        "intercepts": intercepts.astype(np.float64),
    }


class _Trie:
    """A vocabulary of n-grams as paths of symbol ids (characters, or words), for array-wide look-ups.

    Node 0 is the root. A node's children are found by binary search on ``node * base + symbol``:
    nodes are numbered depth by depth in sorted key order, so the sorted keys are simply
    ``keys[i]`` -> node ``i + 1``. Extending every open window of a batch by one symbol is then one
    ``searchsorted`` (a few µs plus ~20-150 ns a window, against ~0.2-0.5 µs for making, hashing and
    looking up each n-gram string in a dict). ``column`` is the feature column of the n-gram ending at
    a node (-1 where the node is only a prefix).
    """

    def __init__(self, symbols: np.ndarray, lengths: np.ndarray, columns: np.ndarray, base: int):
        self.base = base
        starts = np.cumsum(lengths) - lengths
        node = np.zeros(len(lengths), dtype=np.int64)
        keys = [np.zeros(0, dtype=np.int64)]
        n_nodes = 1
        for depth in range(1, int(lengths.max(initial=0)) + 1):
            deep = np.flatnonzero(lengths >= depth)
            key = node[deep] * base + symbols[starts[deep] + depth - 1]
            if np.all(key[1:] >= key[:-1]):  # terms in code point order (scikit-learn's) need no sort
                first = np.concatenate([[True], key[1:] != key[:-1]])
                unique, inverse = key[first], np.cumsum(first) - 1
            else:
                unique, inverse = np.unique(key, return_inverse=True)
            node[deep] = n_nodes + inverse
            n_nodes += len(unique)
            keys.append(unique)  # every key of this depth exceeds the last depth's: parents are larger
        if n_nodes * base >= 2**62:
            raise ValueError("vocabulary too large for 64-bit n-gram keys")
        self.keys = np.concatenate(keys)
        self.column = np.full(n_nodes, -1, dtype=np.int64)
        self.column[node] = columns
        # Depth 1 by direct indexing: the root's child by each symbol (the root's keys are the symbols).
        self.first = np.full(base, -1, dtype=np.int64)
        self.first[keys[1]] = np.arange(1, len(keys[1]) + 1) if len(keys) > 1 else []


def _grams(trie: _Trie, symbols: np.ndarray, min_n: int, max_n: int, whole_short: bool, separator: int):
    """Yields (positions, columns, n) for every window of n symbols that is an n-gram, n in 1..max_n.

    ``symbols`` are segments (a message's words, or one padded word) joined and surrounded by
    ``separator``, a symbol with no trie node: a window that reaches it dies, so windows never cross
    segments. Windows of ``n >= min_n`` are scikit-learn's n-grams; with ``whole_short`` (char_wb) a
    segment shorter than ``min_n`` is also one n-gram by itself. Columns are -1 for n-grams outside
    the vocabulary that are still a prefix of one (the caller drops them).
    """
    node = trie.first[symbols]
    pos = np.flatnonzero(node >= 0)
    node = node[pos]
    keys, base = trie.keys, trie.base
    for n in range(1, max_n + 1):
        if n > 1:
            key = node * base + symbols[pos + (n - 1)]
            at = keys.searchsorted(key)
            alive = keys.take(at, mode="clip") == key
            pos, node = pos[alive], at[alive] + 1  # a window that is no vocabulary prefix stays dead
        if not len(pos):
            return
        if n >= min_n:
            yield pos, trie.column[node], n
        elif whole_short:
            whole = (symbols[pos - 1] == separator) & (symbols[pos + n] == separator)
            yield pos[whole], trie.column[node[whole]], n


@dataclass(slots=True)
class _Batch:
    """Sparse tf-idf rows of a batch: message ``row`` has ``columns[indptr[row]:indptr[row + 1]]``."""

    indptr: np.ndarray
    columns: np.ndarray
    values: np.ndarray
    coverage: np.ndarray
    normalised: list[str]


# Joins segments in the texts the char trie walks: normalise() turns every control character into
# a space, so no normalised text or n-gram contains it.
_SEPARATOR = "\x00"
_WB_JOIN = f" {_SEPARATOR} "  # between two words: the first's closing pad, the separator, the next's opening pad


class FastModel:
    """Scores messages from exported arrays; ``scores`` (one) and ``scores_many`` (batch) agree exactly.

    Both paths share one vectorised feature builder: each message is normalised and segmented in
    Python (segmentation cached per clause), then every word and character n-gram of the whole batch
    is looked up at once by walking vocabulary tries with numpy (:class:`_Trie`), counted with one
    sort, weighted and l2-normalised per block, and scored with one product for all heads.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        if int(arrays["format"]) not in _READABLE_FORMATS:
            raise ValueError(f"serving arrays format {int(arrays['format'])}, this code reads {SERVING_FORMAT}")
        word_terms = unpack_terms(arrays["word_terms"])
        pair_idf = arrays.get("pair_idf", np.zeros(0))
        self.idf = np.concatenate([arrays["word_idf"], arrays["char_idf"], pair_idf]).astype(np.float64)
        self.word_min_n, self.word_max_n = (int(v) for v in arrays["word_ngram_range"])
        self.char_min_n, self.char_max_n = (int(v) for v in arrays["char_ngram_range"])
        self.char_wb = str(arrays["char_analyzer"]) == "char_wb"
        if str(arrays["char_analyzer"]) not in ("char", "char_wb"):
            raise ValueError(f"unsupported char analyzer {arrays['char_analyzer']}")
        self.sublinear = bool(arrays["sublinear_tf"])
        self.simplified = unpack_table(arrays["simplified_from"], arrays["simplified_to"])
        self.coverage_n = min(3, self.char_max_n)
        self.n_word_features = len(word_terms)
        self._build_word_trie(word_terms)
        self._build_char_trie(arrays["char_terms"])
        self.n_pair_start = self.n_word_features + len(arrays["char_idf"])
        # Kept packed (a few MB of bytes); unpacked only to name a column (term_of), e.g. to explain a label.
        self._packed_terms = [arrays["word_terms"], arrays["char_terms"], arrays.get("pair_terms", np.zeros(0, np.uint8))]
        self.pair_max_words = int(arrays.get("pair_max_words", 0))
        self._build_pair_index(arrays["pair_terms"] if self.pair_max_words else np.zeros(0, np.uint8))
        # Column where each l2-normalised block starts (word, char, pair).
        self.block_starts = np.array([0, self.n_word_features, self.n_pair_start])
        self.long_windows = self._long_windows_by_length()
        self.segmenter = NativeSegmenter(
            unpack_terms(arrays["dictionary_words"]), arrays["dictionary_freqs"].tolist(), int(arrays["dictionary_total"])
        )
        self.heads = tuple(arrays["heads"].tolist())
        # Where each head's label columns are; every head's softmax runs at once over these spans.
        self.head_sizes = np.asarray(arrays["head_sizes"], dtype=np.int64)
        self.head_starts = np.cumsum(self.head_sizes) - self.head_sizes
        self.slices = {head: slice(start, start + size)
                       for head, start, size in zip(self.heads, self.head_starts.tolist(), self.head_sizes.tolist())}
        labels = arrays["labels"].tolist()
        self.labels = {head: tuple(labels[span]) for head, span in self.slices.items()}
        self.column_temperatures = np.repeat(np.asarray(arrays["temperatures"], dtype=np.float64), self.head_sizes)
        self.weights = np.ascontiguousarray(arrays["weights"], dtype=np.float64)  # for the sparse batch product
        # The weights at float32 (exact: older models store float32, newer ones float16), for
        # one message: its few hundred rows are gathered from memory that other work has usually evicted
        # from the caches, and a float32 row (52 bytes) is one cache line where a float64 row is two.
        # (Not float16 in memory: numpy converts half floats in software, 9 vs 4 us for 300 rows.)
        self.stored_weights = np.ascontiguousarray(arrays["weights"], dtype=np.float32)
        self.intercepts = np.asarray(arrays["intercepts"], dtype=np.float64)
        self.n_features = len(self.idf)
        if self.weights.shape[0] != self.n_features:
            raise ValueError(f"weights have {self.weights.shape[0]} rows for {self.n_features} features")

    def _build_word_trie(self, word_terms: list[str]) -> None:
        # Vocabulary terms are space-joined tokens ("收银机 连不上"); tokens never contain spaces.
        tokens = " ".join(word_terms).split(" ") if word_terms else []
        self.word_ids = dict(zip(dict.fromkeys(tokens), range(1, len(tokens) + 1)))  # 0: unknown word
        self.word_separator = len(self.word_ids) + 1
        self.word_ids[_SEPARATOR] = self.word_separator  # never a token: normalised text has no control characters
        symbols = np.fromiter(map(self.word_ids.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        lengths = np.fromiter(map(str.count, word_terms, repeat(" ")), dtype=np.int64, count=len(word_terms)) + 1
        self.word_trie = _Trie(symbols, lengths, np.arange(len(word_terms)), self.word_separator + 1)

    def _build_char_trie(self, packed_terms: np.ndarray) -> None:
        # From the packed terms directly (newline-separated; no n-gram contains a newline): one decode
        # and one encode instead of a list of 50,000 strings.
        codes = _codes(packed_terms.tobytes().decode("utf-8"))
        breaks = np.flatnonzero(codes == ord("\n"))
        lengths = np.diff(np.concatenate([[-1], breaks, [len(codes)]])) - 1 if len(codes) else np.zeros(0, dtype=np.int64)
        codes = np.delete(codes, breaks)
        present = np.zeros(0x110000, dtype=bool)
        present[codes] = True
        alphabet = np.flatnonzero(present)
        # Code point -> symbol id: 1..len(alphabet) for characters some n-gram contains, else 0.
        self.char_ids = np.zeros(0x110000, dtype=np.int32)
        self.char_ids[alphabet] = np.arange(1, len(alphabet) + 1)
        self.char_separator = len(alphabet) + 1
        self.char_ids[ord(_SEPARATOR)] = self.char_separator
        columns = np.arange(self.n_word_features, self.n_word_features + len(lengths))
        self.char_trie = _Trie(self.char_ids[codes], lengths, columns, self.char_separator + 1)

    def _build_pair_index(self, packed_terms: np.ndarray) -> None:
        # Words get ids in sorted order, so a message's sorted pair words give ascending ids and a pair
        # (a, b), a < b, is the single key a * base + b; the vocabulary is those keys sorted.
        # Every term is "a+b" (the joiner is never inside a word), so one split of the packed terms gives
        # a, b, a, b, ...: no Python work per term (76,000 pairs: about 100 -> 30 ms of a model's load).
        text = packed_terms.tobytes().decode("utf-8")
        flat = text.replace(PAIR_JOINER, "\n").split("\n") if text else []
        words = sorted(set(flat))
        self.pair_ids = dict(zip(words, range(len(words))))
        self.pair_base = max(len(words), 1)
        ids = np.fromiter(map(self.pair_ids.__getitem__, flat), dtype=np.int64, count=len(flat))
        keys = ids[0::2] * self.pair_base + ids[1::2]
        order = np.argsort(keys)
        self.pair_keys = keys[order]
        self.pair_columns = order + self.n_pair_start

    def _pairs(self, words: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(message of each known word pair, its column) for the batch's segmented messages."""
        # Messages with the same number of known pair words are paired in one matrix operation, so a
        # batch costs a few numpy calls per distinct count (at most pair_max_words), not per message.
        by_count: dict[int, tuple[list[int], list[list[int]]]] = {}
        for row, ws in enumerate(words):
            ids = [i for i in map(self.pair_ids.get, pair_words(ws, self.pair_max_words)) if i is not None]
            if len(ids) >= 2:  # ascending: pair_words is sorted, and ids follow word order
                message_rows, id_lists = by_count.setdefault(len(ids), ([], []))
                message_rows.append(row)
                id_lists.append(ids)
        if not by_count:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows, keys = [], []
        for count, (message_rows, id_lists) in by_count.items():
            ids = np.array(id_lists, dtype=np.int64)  # messages x count
            first, second = _upper_pairs(count)
            keys.append((ids[:, first] * self.pair_base + ids[:, second]).ravel())
            rows.append(np.repeat(np.array(message_rows, dtype=np.int64), len(first)))
        key = np.concatenate(keys) if len(keys) > 1 else keys[0]
        at = self.pair_keys.searchsorted(key)
        known = self.pair_keys.take(at, mode="clip") == key
        return (np.concatenate(rows) if len(rows) > 1 else rows[0])[known], self.pair_columns[at[known]]

    def _long_windows_by_length(self) -> np.ndarray:
        """How many char n-grams at least ``coverage_n`` long a segment of each length has (known or not)."""
        length = np.arange(MAX_CHARS + 3)  # a padded word of a whole message: MAX_CHARS + 2
        count = np.zeros(len(length))
        for n in range(max(self.coverage_n, self.char_min_n), self.char_max_n + 1):
            count += np.maximum(length - n + 1, 0)
        if self.char_wb:
            count += (length < self.char_min_n) & (length >= self.coverage_n)  # a short word is one n-gram
        return count

    # -- features ----------------------------------------------------------------------------

    def _word_symbols(self, words: list[list[str]]) -> tuple[np.ndarray, np.ndarray | None]:
        """Word ids of the batch, each message followed by the separator, and the message of each
        (None for a single message)."""
        flat = [_SEPARATOR, *chain.from_iterable(ws + [_SEPARATOR] for ws in words)]
        symbols = np.fromiter(map(self.word_ids.get, flat, repeat(0)), dtype=np.int64, count=len(flat))
        if len(words) == 1:
            return symbols, None
        sizes = np.fromiter(map(len, words), dtype=np.int64, count=len(words)) + 1
        return symbols, np.concatenate([[0], np.repeat(np.arange(len(words)), sizes)])

    def _char_symbols(self, normalised: list[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Char ids of the batch with separators, the message of each (None for a single message),
        and how many windows of at least ``coverage_n`` characters each message has."""
        if self.char_wb:
            # scikit-learn's char_wb: each whitespace-separated word padded with one space each side.
            split = [text.split() for text in normalised]
            texts = [" " + _WB_JOIN.join(ws) + " " if ws else "" for ws in split]
            words = list(chain.from_iterable(split))
            windows = self.long_windows[np.fromiter(map(len, words), dtype=np.int64, count=len(words)) + 2]
            if len(split) == 1:
                long_windows = np.array([windows.sum()])
            else:
                per_message = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
                message = np.repeat(np.arange(len(split)), per_message)
                long_windows = np.bincount(message, weights=windows, minlength=len(split))
        else:
            texts = [_WHITE_SPACES.sub(" ", text) for text in normalised]
            long_windows = self.long_windows[np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))]
        symbols = self.char_ids[_codes(_SEPARATOR + _SEPARATOR.join(texts) + _SEPARATOR)]
        if len(texts) == 1:
            return symbols, None, long_windows
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
        return symbols, np.concatenate([[0], np.repeat(np.arange(len(texts)), sizes)]), long_windows

    def batch_features(self, texts: Sequence[str]) -> _Batch:
        """Normalised tf-idf rows (word, char and pair blocks each l2-normalised) and coverage."""
        normalised = [normalise(text, self.simplified) for text in texts]
        m = len(normalised)
        words = [self.segmenter.words(text) for text in normalised]
        word_symbols, word_rows = self._word_symbols(words)
        char_symbols, char_rows, long_windows = self._char_symbols(normalised)
        word_grams = _grams(self.word_trie, word_symbols, self.word_min_n, self.word_max_n, False, self.word_separator)
        char_grams = _grams(
            self.char_trie, char_symbols, self.char_min_n, self.char_max_n, self.char_wb, self.char_separator
        )
        # (message of each position, positions, columns, n); word n-grams never count for coverage.
        grams = [(word_rows, pos, column, 0) for pos, column, _n in word_grams]
        grams += [(char_rows, pos, column, n) for pos, column, n in char_grams]
        if self.pair_max_words:
            pair_rows, pair_columns = self._pairs(words)
            grams.append((pair_rows, np.arange(len(pair_rows)), pair_columns, 0))
        column = np.concatenate([c for _r, _p, c, _n in grams]) if grams else np.zeros(0, dtype=np.int64)
        known = column >= 0
        long_known = [(r, p, c) for r, p, c, n in grams if n >= self.coverage_n]
        if m == 1:
            # One message: no row bookkeeping, and the two blocks are the two ends of sorted columns.
            known_long = np.array([float(sum(np.count_nonzero(c >= 0) for _r, _p, c in long_known))])
            column, counts = _count(column[known])
        else:
            known_long = np.zeros(m)
            for r, p, c in long_known:
                known_long += np.bincount(r[p], weights=c >= 0, minlength=m)
            rows = np.concatenate([r[p] for r, p, _c, _n in grams]) if grams else np.zeros(0, dtype=np.int64)
            # One sort counts every (message, column) pair and leaves them in row, then column order.
            keys, counts = _count(rows[known] * self.n_features + column[known])
            row, column = np.divmod(keys, self.n_features)
        coverage = np.divide(known_long, long_windows, out=np.zeros(m), where=long_windows > 0)
        tf = np.log(counts) + 1.0 if self.sublinear else counts.astype(np.float64)
        values = tf * self.idf[column]
        if m == 1:
            bounds = [0, *column.searchsorted(self.block_starts[1:]), len(column)]
            for start, end in zip(bounds[:-1], bounds[1:]):
                part = values[start:end]
                if len(part):
                    part /= np.sqrt(part @ part)
            return _Batch(np.array([0, len(column)]), column, values, coverage, normalised)
        n_blocks = len(self.block_starts)
        block = row * n_blocks
        for start in self.block_starts[1:]:  # one comparison per block: cheaper than a search per column
            block += column >= start
        values /= np.sqrt(np.bincount(block, weights=values * values, minlength=n_blocks * m))[block]
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=m), out=indptr[1:])
        return _Batch(indptr, column, values, coverage, normalised)

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray, float, str]:
        """(columns, tf-idf values, coverage, normalised text) of one message, as TextFeatures.transform.

        Coverage is the share of the message's char n-grams of length >= ``coverage_n`` that the
        vocabulary knows (0 for none): single characters are known for almost any junk, so they do
        not count.
        """
        batch = self.batch_features([text])
        return batch.columns, batch.values, float(batch.coverage[0]), batch.normalised[0]

    def term_of(self, column: int) -> tuple[str, str]:
        """The n-gram behind a feature column and its block: "word" (word n-gram, words joined by a
        space), "chars" (character n-gram; char_wb pads words with a space) or "pair" (two words
        anywhere in the message, joined by ``PAIR_JOINER``)."""
        if column < self.n_word_features:
            return self._terms[column], "word"
        return self._terms[column], "chars" if column < self.n_pair_start else "pair"

    @functools.cached_property
    def _terms(self) -> list[str]:
        return [term for packed in self._packed_terms for term in unpack_terms(packed)]

    # -- scores ------------------------------------------------------------------------------

    def raw_scores_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Linear scores (messages x all heads' labels), coverage per message and normalised texts."""
        batch = self.batch_features(texts)
        m = len(batch.normalised)
        if m == 1:
            raw = batch.values @ self.stored_weights.take(batch.columns, axis=0).astype(np.float64) + self.intercepts
            return raw[None, :], batch.coverage, batch.normalised
        import scipy.sparse as sp  # here, not at the top: importing it costs ~0.1 s of every load

        matrix = sp.csr_matrix((batch.values, batch.columns, batch.indptr), shape=(m, self.n_features))
        return np.asarray(matrix @ self.weights) + self.intercepts, batch.coverage, batch.normalised

    def probabilities_many(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        """{head: calibrated probabilities, messages x labels}, coverage per message and normalised texts."""
        raw, coverage, normalised = self.raw_scores_many(texts)
        # One softmax per head, for all heads in a few whole-matrix passes (reduceat over each head's columns).
        scores = raw / self.column_temperatures
        scores -= np.repeat(np.maximum.reduceat(scores, self.head_starts, axis=1), self.head_sizes, axis=1)
        np.exp(scores, out=scores)
        scores /= np.repeat(np.add.reduceat(scores, self.head_starts, axis=1), self.head_sizes, axis=1)
        return {head: scores[:, self.slices[head]] for head in self.heads}, coverage, normalised

    def scores(self, text: str) -> tuple[dict[str, HeadScores], float, str]:
        """Calibrated probabilities per head for one message, its n-gram coverage and normalised text."""
        probabilities, coverage, normalised = self.probabilities_many([text])
        return {h: HeadScores(self.labels[h], p[0]) for h, p in probabilities.items()}, float(coverage[0]), normalised[0]

    def scores_many(self, texts: Sequence[str]) -> tuple[list[dict[str, HeadScores]], list[float], list[str]]:
        """The same as ``scores`` for many messages, with one sparse-dense product."""
        if not texts:
            return [], [], []
        probabilities, coverage, normalised = self.probabilities_many(texts)
        per_message = [
            {h: HeadScores(self.labels[h], probabilities[h][i]) for h in self.heads} for i in range(len(normalised))
        ]
        return per_message, coverage.tolist(), normalised


@functools.cache
def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j < n (cached: n is at most ``pair_max_words``)."""
    return np.triu_indices(n, 1)


def _count(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys in ascending order and how often each occurs (``np.unique(return_counts=True)``).

    The keys come as a few runs already ordered by message, which a stable sort (timsort for int64)
    merges ~3x faster than ``np.unique``'s quicksort.
    """
    if not len(keys):
        return keys, np.zeros(0, dtype=np.int64)
    keys = np.sort(keys, kind="stable")
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[first], np.diff(np.append(first, len(keys)))


def _codes(text: str) -> np.ndarray:
    """The code points of a string as an array (one C call, no per-character Python)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
