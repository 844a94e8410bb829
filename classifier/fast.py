"""The serving path: the same features and linear scores as the scikit-learn pipeline, without it.

A message costs a normalisation and a jieba cut in Python (cut cached per clause); after that every
word and character n-gram of a whole batch (or of one message) is one integer key (:func:`_window_keys`:
the n-gram's symbol ids packed in base ``len(alphabet)``; word pairs: one key per pair), and all keys are
counted with one sort and looked up with one ``searchsorted`` in the vocabulary's sorted keys, instead
of a dict look-up per n-gram string. They are then tf-idf weighted and scored for all heads with one
product, with none of scikit-learn's input validation or estimator dispatch. The arrays come from
:func:`export_arrays` (see ``store.py``: ``serving.npz``, loaded with ``allow_pickle=False``), so serving
imports neither scikit-learn nor skops; the vocabulary's keys are built from those arrays at load, so
the model directory format is unchanged. Tests check that labels and probabilities equal the
scikit-learn pipeline's on every held-out message."""

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
# Messages featurised at once: ~1,000 keys each, so a chunk's key arrays are ~8 MB and stay in the
# L3 cache while they are sorted and searched. A/B on 8,896 distinct messages: chunks of 768-2,048
# gave 7,100-7,200 msg/s, of 4,096 (~30 MB) 6,200.
_BATCH = 1024


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


def _pack(symbols: np.ndarray, lengths: np.ndarray, base: int) -> np.ndarray:
    """The key of each term: its symbol ids (``lengths[i]`` of them, one after another in ``symbols``)
    as the digits of one number in ``base``, the first symbol most significant."""
    starts = np.cumsum(lengths) - lengths
    key = np.zeros(len(lengths), dtype=np.int64)
    for depth in range(int(lengths.max(initial=0))):
        deep = np.flatnonzero(lengths > depth)
        key[deep] = key[deep] * base + symbols[starts[deep] + depth]
    return key


def _window_keys(symbols: np.ndarray, min_n: int, max_n: int, base: int, whole_short: bool, separator: int):
    """Yields the keys of every window of n symbols, n = min_n..max_n: ``keys[i]`` packs
    ``symbols[i:i + n]`` as :func:`_pack` does, so position i's window has index i for every n.

    Symbol ids start at 1, so keys of different lengths never meet (an n-key lies in
    [base**(n-1), base**n)). ``symbols`` are segments (a message's words, or one padded word) joined and
    surrounded by ``separator``, which no vocabulary term contains: a window across segments, or over an
    unknown symbol, has a key no term has. With ``whole_short`` (char_wb) a segment shorter than
    ``min_n`` is also one n-gram by itself; other windows that short get key 0, which nothing packs to.
    """
    key = symbols
    for n in range(1, max_n + 1):
        if n > 1:
            key = key[:-1] * base + symbols[n - 1 :]
        if n >= min_n:
            yield key
        elif whole_short:
            whole = np.zeros(len(key), dtype=bool)
            whole[1:-1] = (symbols[: -n - 1] == separator) & (symbols[n + 1 :] == separator)
            yield np.where(whole, key, 0)


@dataclass(slots=True)
class _Batch:
    """Sparse tf-idf rows of a batch: message ``row`` has ``columns[indptr[row]:indptr[row + 1]]``."""

    indptr: np.ndarray
    columns: np.ndarray
    values: np.ndarray
    coverage: np.ndarray
    normalised: list[str]


# Joins segments in the texts whose char windows are keyed: normalise() turns every control character into
# a space, so no normalised text or n-gram contains it.
_SEPARATOR = "\x00"
_WB_JOIN = f" {_SEPARATOR} "  # between two words: the first's closing pad, the separator, the next's opening pad


class FastModel:
    """Scores messages from exported arrays; ``scores`` (one) and ``scores_many`` (batch) agree exactly.

    Both paths share one vectorised feature builder: each message is normalised and segmented in
    Python (segmentation cached per clause), then every word n-gram, character n-gram and word pair of
    the whole batch becomes one integer key, ``row * key_space + block offset + packed n-gram``. One sort
    counts them, one ``searchsorted`` finds them among the vocabulary's sorted keys (``index_keys``,
    whose blocks follow each other: words, chars, pairs), and a key's place there is its feature;
    then they are weighted, l2-normalised per block and scored with one product for all heads.
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
        self.n_pair_start = self.n_word_features + len(arrays["char_idf"])
        # Kept packed (a few MB of bytes); unpacked only to name a column (term_of), e.g. to explain a label.
        self._packed_terms = [arrays["word_terms"], arrays["char_terms"], arrays.get("pair_terms", np.zeros(0, np.uint8))]
        self.pair_max_words = int(arrays.get("pair_max_words", 0))
        word_keys = self._word_vocabulary(word_terms)
        char_keys = self._char_vocabulary(arrays["char_terms"])
        pair_keys = self._pair_vocabulary(arrays["pair_terms"] if self.pair_max_words else np.zeros(0, np.uint8))
        # Each block's keys in its own range, in column order: words, then chars, then pairs (Python
        # ints here, so an oversized vocabulary is caught instead of wrapping around).
        word_space = self.word_base**self.word_max_n
        char_space = self.char_base**self.char_max_n
        self.char_offset, self.pair_offset = word_space, word_space + char_space
        self.key_space = self.pair_offset + self.pair_base**2
        # A batch's keys carry their message's row: chunks keep row * key_space within 63 bits.
        self.batch_limit = min(_BATCH, (2**63 - 1) // self.key_space)
        if not self.batch_limit:
            raise ValueError(
                f"n-grams too long for 64-bit keys: {self.char_base - 3} characters up to {self.char_max_n} long "
                f"and {self.word_base - 3} words up to {self.word_max_n} long (shorten char_ngram_range)"
            )
        # Coverage counts the known char n-grams at least coverage_n long: their keys, and only theirs, are this large.
        self.long_char_key = self.char_offset + self.char_base ** (self.coverage_n - 1)
        # In the model's column order: the words', then the chars', then the pairs' terms.
        keys = np.concatenate([word_keys, char_keys + self.char_offset, pair_keys + self.pair_offset])
        # Features are served in key order: a key's place in the sorted keys is its feature's row in
        # ``idf`` and the weights, so no column table is looked up, and a message's rows (its keys come
        # sorted) are gathered in ascending address order. ``model_columns`` maps back to the model's order.
        self.model_columns = np.argsort(keys)
        self.index_keys = keys[self.model_columns]
        for name, rows in (("idf values", len(self.idf)), ("weight rows", arrays["weights"].shape[0])):
            if rows != len(keys):
                raise ValueError(f"{rows} {name} for {len(keys)} vocabulary terms")
        self.idf = self.idf[self.model_columns]
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
        in_key_order = arrays["weights"][self.model_columns]
        self.weights = np.ascontiguousarray(in_key_order, dtype=np.float64)  # for the sparse batch product
        # The weights at float32 (exact: older models store float32, newer ones float16), for
        # one message: its few hundred rows are gathered from memory that other work has usually evicted
        # from the caches, and a float32 row (52 bytes) is one cache line where a float64 row is two.
        # (Not float16 in memory: numpy converts half floats in software, 9 vs 4 us for 300 rows.)
        self.stored_weights = np.ascontiguousarray(in_key_order, dtype=np.float32)
        self.intercepts = np.asarray(arrays["intercepts"], dtype=np.float64)
        self.n_features = len(self.idf)

    def _word_vocabulary(self, word_terms: list[str]) -> np.ndarray:
        """Word ids (1.., then the separator and the unknown word) and each word n-gram's key."""
        # Vocabulary terms are space-joined tokens ("收银机 连不上"); tokens never contain spaces.
        tokens = " ".join(word_terms).split(" ") if word_terms else []
        self.word_ids = dict(zip(dict.fromkeys(tokens), range(1, len(tokens) + 1)))
        self.word_separator = len(self.word_ids) + 1
        self.word_ids[_SEPARATOR] = self.word_separator  # never a token: normalised text has no control characters
        self.unknown_word = self.word_separator + 1
        self.word_base = self.unknown_word + 1
        symbols = np.fromiter(map(self.word_ids.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        lengths = np.fromiter(map(str.count, word_terms, repeat(" ")), dtype=np.int64, count=len(word_terms)) + 1
        return _pack(symbols, lengths, self.word_base)

    def _char_vocabulary(self, packed_terms: np.ndarray) -> np.ndarray:
        """Char ids (code point -> 1.., then the separator and any unknown character) and each char n-gram's key."""
        # From the packed terms directly (newline-separated; no n-gram contains a newline): one decode
        # and one encode instead of a list of 50,000 strings.
        codes = _codes(packed_terms.tobytes().decode("utf-8"))
        breaks = np.flatnonzero(codes == ord("\n"))
        lengths = np.diff(np.concatenate([[-1], breaks, [len(codes)]])) - 1 if len(codes) else np.zeros(0, dtype=np.int64)
        codes = np.delete(codes, breaks)
        present = np.zeros(0x110000, dtype=bool)
        present[codes] = True
        alphabet = np.flatnonzero(present)
        self.char_separator = len(alphabet) + 1
        self.char_base = self.char_separator + 2  # the last id is every character no n-gram contains
        self.char_ids = np.full(0x110000, self.char_base - 1, dtype=np.int64)
        self.char_ids[alphabet] = np.arange(1, len(alphabet) + 1)
        self.char_ids[ord(_SEPARATOR)] = self.char_separator
        return _pack(self.char_ids[codes], lengths, self.char_base)

    def _pair_vocabulary(self, packed_terms: np.ndarray) -> np.ndarray:
        """Each word pair's key."""
        # Words get ids in sorted order, so a message's sorted pair words give ascending ids and a pair
        # (a, b), a < b, is the single key a * base + b.
        # Every term is "a+b" (the joiner is never inside a word), so one split of the packed terms gives
        # a, b, a, b, ...: no Python work per term (76,000 pairs: about 100 -> 30 ms of a model's load).
        text = packed_terms.tobytes().decode("utf-8")
        flat = text.replace(PAIR_JOINER, "\n").split("\n") if text else []
        words = sorted(set(flat))
        self.pair_ids = dict(zip(words, range(len(words))))
        self.pair_base = max(len(words), 1)
        ids = np.fromiter(map(self.pair_ids.__getitem__, flat), dtype=np.int64, count=len(flat))
        return ids[0::2] * self.pair_base + ids[1::2]

    def _pair_keys(self, words: list[list[str]]) -> list[np.ndarray]:
        """The batch keys of every word pair of the batch's segmented messages, known or not."""
        # Messages with the same number of pair words are paired in one matrix operation, so a
        # batch costs a few numpy calls per distinct count (at most pair_max_words), not per message.
        by_count: dict[int, tuple[list[int], list[list[int]]]] = {}
        for row, ws in enumerate(words):
            ids = [i for i in map(self.pair_ids.get, pair_words(ws, self.pair_max_words)) if i is not None]
            if len(ids) >= 2:  # ascending: pair_words is sorted, and ids follow word order
                message_rows, id_lists = by_count.setdefault(len(ids), ([], []))
                message_rows.append(row)
                id_lists.append(ids)
        keys = []
        for count, (message_rows, id_lists) in by_count.items():
            ids = np.array(id_lists, dtype=np.int64)  # messages x count
            first, second = _upper_pairs(count)
            offsets = np.array(message_rows, dtype=np.int64)[:, None] * self.key_space + self.pair_offset
            keys.append((ids[:, first] * self.pair_base + ids[:, second] + offsets).ravel())
        return keys

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

    def _word_symbols(self, words: list[list[str]]) -> tuple[np.ndarray, np.ndarray | int]:
        """Word ids of the batch, each message followed by the separator, and what turns a word n-gram's
        key at each position into its batch key (row * key_space; a number for a single message)."""
        flat = [_SEPARATOR, *chain.from_iterable(ws + [_SEPARATOR] for ws in words)]
        symbols = np.fromiter(map(self.word_ids.get, flat, repeat(self.unknown_word)), dtype=np.int64, count=len(flat))
        if len(words) == 1:
            return symbols, 0
        sizes = np.fromiter(map(len, words), dtype=np.int64, count=len(words)) + 1
        return symbols, np.concatenate([[0], np.repeat(np.arange(len(words)), sizes)]) * self.key_space

    def _char_symbols(self, normalised: list[str]) -> tuple[np.ndarray, np.ndarray | int, np.ndarray]:
        """Char ids of the batch with separators, what turns a char n-gram's key at each position into
        its batch key, and how many windows of at least ``coverage_n`` characters each message has."""
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
            return symbols, self.char_offset, long_windows
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
        rows = np.concatenate([[0], np.repeat(np.arange(len(texts)), sizes)])
        return symbols, rows * self.key_space + self.char_offset, long_windows

    def batch_features(self, texts: Sequence[str]) -> _Batch:
        """Normalised tf-idf rows (word, char and pair blocks each l2-normalised) and coverage."""
        normalised = [normalise(text, self.simplified) for text in texts]
        m = len(normalised)
        if m > self.batch_limit:
            raise ValueError(f"{m} messages in one batch; at most {self.batch_limit} (raw_scores_many splits them)")
        words = [self.segmenter.words(text) for text in normalised]
        word_symbols, word_offsets = self._word_symbols(words)
        char_symbols, char_offsets, long_windows = self._char_symbols(normalised)
        windows = [
            (word_offsets, _window_keys(word_symbols, self.word_min_n, self.word_max_n, self.word_base, False, self.word_separator)),
            (char_offsets, _window_keys(
                char_symbols, self.char_min_n, self.char_max_n, self.char_base, self.char_wb, self.char_separator
            )),
        ]
        keys = [key + (offsets if m == 1 else offsets[: len(key)]) for offsets, block in windows for key in block]
        if self.pair_max_words:
            keys += self._pair_keys(words)
        # One sort counts every (message, n-gram) pair, known or not, and leaves them in row order;
        # one search then finds the known ones among the vocabulary's keys.
        keys, counts = _count(np.concatenate(keys))
        local = keys if m == 1 else keys % self.key_space
        at = self.index_keys.searchsorted(local)
        known = self.index_keys.take(at, mode="clip") == local
        local, counts, column = local[known], counts[known], at[known]
        tf = np.log(counts) + 1.0 if self.sublinear else counts.astype(np.float64)
        values = tf * self.idf[column]
        if m == 1:
            # One message: its keys are sorted, so each block, and the long char n-grams, are a run.
            char, long, pair = local.searchsorted([self.char_offset, self.long_char_key, self.pair_offset]).tolist()
            for start, end in ((0, char), (char, pair), (pair, len(local))):
                part = values[start:end]
                if len(part):
                    part /= np.sqrt(part @ part)
            known_long = np.array([float(counts[long:pair].sum())])
            indptr = np.array([0, len(column)])
        else:
            row = keys[known] // self.key_space
            after_char, after_pair = local >= self.char_offset, local >= self.pair_offset
            known_long = np.bincount(row, weights=counts * ((local >= self.long_char_key) & ~after_pair), minlength=m)
            block = row * 3 + after_char + after_pair
            values /= np.sqrt(np.bincount(block, weights=values * values, minlength=3 * m))[block]
            indptr = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(np.bincount(row, minlength=m), out=indptr[1:])
        coverage = np.divide(known_long, long_windows, out=np.zeros(m), where=long_windows > 0)
        return _Batch(indptr, column, values, coverage, normalised)

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray, float, str]:
        """(columns, tf-idf values, coverage, normalised text) of one message, as TextFeatures.transform.

        Coverage is the share of the message's char n-grams of length >= ``coverage_n`` that the
        vocabulary knows (0 for none): single characters are known for almost any junk, so they do
        not count.
        """
        batch = self.batch_features([text])
        return batch.columns, batch.values, float(batch.coverage[0]), batch.normalised[0]

    def term_of(self, feature: int) -> tuple[str, str]:
        """The n-gram behind a feature (a column of ``features``) and its block: "word" (word n-gram,
        words joined by a space), "chars" (character n-gram; char_wb pads words with a space) or "pair"
        (two words anywhere in the message, joined by ``PAIR_JOINER``)."""
        column = int(self.model_columns[feature])
        if column < self.n_word_features:
            return self._terms[column], "word"
        return self._terms[column], "chars" if column < self.n_pair_start else "pair"

    @functools.cached_property
    def _terms(self) -> list[str]:
        return [term for packed in self._packed_terms for term in unpack_terms(packed)]

    # -- scores ------------------------------------------------------------------------------

    def raw_scores_many(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Linear scores (messages x all heads' labels), coverage per message and normalised texts."""
        if len(texts) > self.batch_limit:  # in chunks: each chunk's keys fit in 64 bits and its arrays in the L3 cache
            chunks = [self.raw_scores_many(texts[i : i + self.batch_limit]) for i in range(0, len(texts), self.batch_limit)]
            return (np.vstack([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]),
                    [t for c in chunks for t in c[2]])
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
    """Distinct keys in ascending order and how often each occurs (``np.unique(return_counts=True)``);
    sorts ``keys`` in place.

    The keys come as a few runs already ordered by message, which a stable sort (timsort for int64)
    merges ~3x faster than ``np.unique``'s quicksort.
    """
    if not len(keys):
        return keys, np.zeros(0, dtype=np.int64)
    keys.sort(kind="stable")  # in place: the caller's keys are a fresh array (a chunk's are ~8 MB)
    starts = np.empty(len(keys), dtype=bool)
    starts[0] = True
    np.not_equal(keys[1:], keys[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    counts = np.empty(len(first), dtype=np.int64)
    np.subtract(first[1:], first[:-1], out=counts[:-1])
    counts[-1] = len(keys) - first[-1]
    return keys[first], counts


def _codes(text: str) -> np.ndarray:
    """The code points of a string as an array (one C call, no per-character Python)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
