"""Text normalisation and jieba word segmentation shared by training and both prediction paths.

Normalisation folds what should not change a label: full-width forms (NFKC), case, Traditional
characters (to Simplified, character by character with zhconv's zh-cn table: ``str.translate`` is
~10x faster than phrase conversion, and a model carries its table so serving need not load zhconv),
invisible/control characters, and volatile identifiers (URLs, emails, phone, ticket and order numbers
become placeholders such as ``xurl``).

Segmentation uses jieba with a *model-owned* dictionary (see :func:`build_dictionary`): the jieba
words that occur in the training texts plus the domain dictionary, with jieba's full frequency total.
On the training texts this segments exactly like jieba's 349k-word dictionary, but it loads in a few
milliseconds instead of ~0.7 s, and the model never changes behaviour when jieba's dictionary does.
HMM new-word discovery is off: character n-grams already cover unknown words, and it keeps
segmentation deterministic.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

# Longer input is cut before any work: the point of a support message is at its start, and
# 100 KB of pasted logs must not cost more than a normal message.
MAX_CHARS = 3000

PLACEHOLDERS = ("xurl", "xemail", "xphone", "xticket", "xorder")

_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff0-\uffff"
    "\ud800-\udfff]"
)
_CJK = re.compile("[\u3400-\u9fff]")
_EMAIL = re.compile(r"[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}")
_URL = re.compile(
    r"(?:https?://|www\.)[^\s<>\"'，。！？、；：“”（）()\[\]【】]+"
    r"|(?<![a-z0-9@.\-])(?:[a-z0-9\-]+\.)+(?:com|cn|net|org|io|example|co|app)(?:/[^\s，。！？]*)?(?![a-z0-9])"
)
_PHONE = re.compile(
    r"(?<![0-9])(?:\+?86[\- ]?)?1[3-9][0-9](?:[\- ]?[0-9]{4}){2}(?![0-9])"  # mainland mobile
    r"|(?<![0-9])0[0-9]{2,3}-[0-9]{7,8}(?![0-9])"  # landline with area code
    r"|\+[0-9][0-9 \-]{7,16}[0-9]"  # international
    r"|(?<![0-9])400-?[0-9]{3}-?[0-9]{4}(?![0-9])"  # 400 hotlines
)
_TICKET = re.compile(r"(?<![a-z0-9])gd[0-9]{11,}(?![a-z0-9])")
# An order/transaction/parcel number: an ASCII token with at least six consecutive digits.
_ORDER = re.compile(r"(?<![a-z0-9])[a-z]{0,6}[0-9\-]*[0-9]{6,}[a-z0-9\-]*(?![a-z0-9])")
# Cheap necessary conditions for the placeholder patterns, each a scan that re's first-character
# filter makes ~10x faster than the pattern itself (whose leading look-behinds defeat that filter).
# A URL has "://", "www." or a dot before one of _URL's endings. A ticket, phone or order number
# has a run of at least six characters of [0-9 +-] that starts with a digit or "+" (ticket: 11
# digits; phones: 10 or more; orders: six digits in a row). A replacement never creates such a run.
_MAYBE_URL = re.compile(r"://|www\.|\.(?:com|cn|net|org|io|example|co|app)")
_MAYBE_NUMBER = re.compile(r"[0-9+][0-9 +\-]{5}")


def normalise(text: str | bytes | None, simplified: Mapping[int, str] | None = None) -> str:
    """Fold width, case, script and volatile identifiers; never raises on any input.

    ``simplified`` is a Traditional-to-Simplified ``str.translate`` table (default: zhconv's).
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    text = text[:MAX_CHARS]
    text = _INVISIBLE.sub(" ", text)
    text = unicodedata.normalize("NFKC", text).casefold()
    if _CJK.search(text):
        text = text.translate(simplified if simplified is not None else simplified_table())
    # Each placeholder pattern runs only where a cheap necessary condition holds (a substring test, or a
    # scan re can filter by first character); a replacement only removes what those conditions look
    # for, so skipping a pattern cannot change a result.
    if "@" in text:
        text = _EMAIL.sub(" xemail ", text)
    if _MAYBE_URL.search(text):
        text = _URL.sub(" xurl ", text)
    if _MAYBE_NUMBER.search(text):
        text = _TICKET.sub(" xticket ", text)
        text = _PHONE.sub(" xphone ", text)
        text = _ORDER.sub(" xorder ", text)
    return " ".join(text.split())[:MAX_CHARS]  # runs of whitespace as one space, as \s+ (both use str.isspace)


@functools.cache
def simplified_table() -> dict[int, str]:
    """zhconv's single-character zh-cn conversions as a ``str.translate`` table (loads in ~70 ms)."""
    from zhconv import zhconv as _zhconv

    mapping = _zhconv.getdict("zh-cn")
    return {ord(k): v for k, v in mapping.items() if len(k) == 1 and len(v) == 1 and k != v}


def pack_table(table: Mapping[int, str]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(table)
    return np.array(keys, dtype=np.int64), np.array([ord(table[k]) for k in keys], dtype=np.int64)


def unpack_table(sources: np.ndarray, targets: np.ndarray) -> dict[int, str]:
    return {int(a): chr(int(b)) for a, b in zip(sources.tolist(), targets.tolist())}


def domain_dictionary() -> dict[str, int]:
    """The shipped domain user dictionary (``domain_dict.txt``: word, frequency, optional tag)."""
    words: dict[str, int] = {}
    text = resources.files("classifier").joinpath("domain_dict.txt").read_text(encoding="utf-8")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#"):
            words[normalise(parts[0])] = int(parts[1])
    return words


@functools.cache
def _jieba_main_dictionary() -> tuple[dict[str, int], frozenset[str], int]:
    """jieba's own dictionary: words containing a CJK character, all their prefixes, the frequency total.

    ASCII-only entries are left out on purpose so English words always come out whole.
    """
    import jieba

    path = Path(jieba.__file__).with_name("dict.txt")
    words: dict[str, int] = {}
    total = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split(" ")
            freq = int(parts[1])
            total += freq
            word = parts[0]
            if _CJK.search(word):
                words[word] = freq
    prefixes = frozenset(word[:stop] for word in words for stop in range(1, len(word) + 1))
    return words, prefixes, total


_JIEBA_BLOCK = re.compile("[\u4e00-\u9fd5a-z0-9+#&._%\\-]+")


def build_dictionary(normalised_texts: Iterable[str]) -> tuple[list[str], list[int], int]:
    """The model's segmentation dictionary: domain words plus every jieba word found in the texts.

    Returns (words, frequencies, total). Like jieba's DAG, a scan from each position stops as soon as
    the fragment is no prefix of a dictionary word, so this costs about one jieba pass over the texts.
    """
    main, prefixes, main_total = _jieba_main_dictionary()
    found: dict[str, int] = {}
    for text in set(normalised_texts):
        for block in _JIEBA_BLOCK.findall(text):
            if not _CJK.search(block):
                continue
            n = len(block)
            for start in range(n):
                stop = start + 1
                while stop <= n and block[start:stop] in prefixes:
                    piece = block[start:stop]
                    freq = main.get(piece)
                    if freq is not None:
                        found[piece] = freq
                    stop += 1
    # Only words with a Chinese character: Segmenter relies on it, and English words stay whole.
    domain = {w: f for w, f in domain_dictionary().items() if _CJK.search(w)}
    found.update(domain)
    words = sorted(found)
    return words, [found[w] for w in words], main_total + sum(domain.values())


# jieba.cut's own block patterns (jieba 0.42: re_han_default, re_skip_default).
_HAN_BLOCK = re.compile("([\u4e00-\u9fd5a-zA-Z0-9+#&\\._%\\-]+)")
_HAN_CHAR = re.compile("[\u4e00-\u9fd5]")
_SKIP = re.compile(r"(\r\n|\s)")
_ASCII_RUN = re.compile("[a-zA-Z0-9]+|[^a-zA-Z0-9]")


class Segmenter:
    """jieba's exact-mode segmentation (HMM off) over a given dictionary; drops whitespace tokens.

    Output equals ``jieba.Tokenizer.cut(text, HMM=False)`` without whitespace. Blocks with no Chinese
    character skip jieba's per-character DAG: every dictionary word contains a Chinese character, so
    jieba would only glue ASCII letters and digits into runs, which one regex does ~20x faster.
    """

    def __init__(self, words: Sequence[str], freqs: Sequence[int], total: int):
        import jieba

        tokenizer = jieba.Tokenizer()
        tokenizer.FREQ = _prefix_dictionary(words, freqs)
        tokenizer.total = int(total)
        tokenizer.initialized = True  # skips loading jieba's default dictionary
        self._jieba_cut = tokenizer.cut

    def _cut_block(self, block: str) -> Iterable[str]:
        return self._jieba_cut(block, HMM=False)

    def words(self, normalised_text: str) -> list[str]:
        out: list[str] = []
        for block in _HAN_BLOCK.split(normalised_text):
            if not block:
                continue
            if _HAN_BLOCK.match(block):
                if _HAN_CHAR.search(block):
                    out.extend(self._cut_block(block))
                else:
                    out.extend(_ASCII_RUN.findall(block))
            else:
                for piece in _SKIP.split(block):
                    if piece and not _SKIP.match(piece):
                        out.extend(piece)  # jieba yields other characters one by one
        return [t for t in out if not t.isspace()]


class NativeSegmenter(Segmenter):
    """The same segmentation without importing jieba: its DAG + max-probability route in one pass.

    A line-for-line port of jieba 0.42's ``get_DAG``, ``calc`` and ``__cut_DAG_NO_HMM`` with the
    word log-probabilities computed once instead of per call (the same float operations, so the
    same routes, ties included). Tests compare it with :class:`Segmenter` on every training text.
    """

    def __init__(self, words: Sequence[str], freqs: Sequence[int], total: int, cache_size: int = 50_000):
        log_total = math.log(int(total))
        # jieba's FREQ in one dict: a word's log-probability, or None for a prefix (or 0-frequency
        # word) that only lets the DAG scan go on; one look-up per fragment instead of two.
        self._dag = dict.fromkeys(_prefix_dictionary(words, freqs))
        self._dag.update({w: math.log(int(f)) - log_total for w, f in zip(words, freqs) if int(f) > 0})
        self._miss = math.log(1) - log_total  # jieba: log(FREQ.get(char) or 1) - logtotal
        # Per instance and bounded: the cut of a piece is a pure function of it, so caching cannot
        # change a result. Short pieces (English words, 您好, 收银机连不上) recur across messages.
        self._cached_piece = functools.lru_cache(maxsize=cache_size)(self._cut_piece)

    def words(self, normalised_text: str) -> list[str]:
        """As :meth:`Segmenter.words` (tests compare them), one regex pass plus a cache per piece."""
        out: list[str] = []
        cached = self._cached_piece
        for piece in _PIECE.findall(normalised_text):
            if len(piece) == 1:
                out.append(piece)  # a lone character is its own token, in or outside a block
            else:
                out.extend(cached(piece) if len(piece) <= _CACHED_PIECE_CHARS else self._cut_piece(piece))
        return out

    def _cut_piece(self, block: str) -> tuple[str, ...]:
        """One block of jieba's block pattern (at least two characters) as tokens."""
        if _HAN_CHAR.search(block):
            return tuple(self._cut_block(block))
        return tuple(_ASCII_RUN.findall(block))

    def _cut_block(self, block: str) -> list[str]:
        n = len(block)
        dag, miss = self._dag.get, self._miss
        score = [0.0] * (n + 1)
        end = [0] * (n + 1)
        for start in range(n - 1, -1, -1):
            best = None
            best_end = start
            stop = start + 1
            p = dag(block[start], _ABSENT)
            while p is not _ABSENT:  # the fragment block[start:stop] is in jieba's FREQ
                if p is not None:
                    candidate = p + score[stop]
                    if best is None or candidate >= best:  # max over (score, end): later end wins ties
                        best, best_end = candidate, stop - 1
                if stop == n:
                    break
                stop += 1
                p = dag(block[start:stop], _ABSENT)
            if best is None:
                best = miss + score[start + 1]
            score[start], end[start] = best, best_end
        out: list[str] = []
        buffer = ""
        x = 0
        while x < n:
            y = end[x] + 1
            word = block[x:y]
            if len(word) == 1 and word in _ASCII_ALNUM:
                buffer += word
            else:
                if buffer:
                    out.append(buffer)
                    buffer = ""
                out.append(word)
            x = y
        if buffer:
            out.append(buffer)
        return out


# jieba's blocks (a run of _HAN_BLOCK characters) or a single character outside them; whitespace is
# skipped. Longer pieces are rarely repeated, so they are cut without touching the cache.
_PIECE = re.compile("[\u4e00-\u9fd5a-zA-Z0-9+#&\\._%\\-]+|\\S")
_CACHED_PIECE_CHARS = 32
_ABSENT = object()
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _prefix_dictionary(words: Sequence[str], freqs: Sequence[int]) -> dict[str, int]:
    """jieba's FREQ: every word with its frequency and every proper prefix with 0 (gen_pfdict)."""
    prefix: dict[str, int] = {}
    for word, freq in zip(words, freqs):
        prefix[word] = int(freq)
        for stop in range(1, len(word)):
            prefix.setdefault(word[:stop], 0)
    return prefix


def join_words(words: Sequence[str]) -> str:
    """Words as one string for a whitespace-token vectorizer (jieba tokens never contain spaces)."""
    return " ".join(words)


PAIR_JOINER = "+"  # never inside an alphanumeric word


def pair_words(words: Sequence[str], limit: int) -> list[str]:
    """The words whose unordered pairs are features: the first ``limit`` distinct alphanumeric words
    of a message (punctuation pairs only add size), sorted so that each pair has one spelling."""
    distinct = dict.fromkeys(w for w in words if w.isalnum())
    return sorted(list(distinct)[:limit])


def pair_document(words: Sequence[str], limit: int) -> str:
    """Every unordered pair of :func:`pair_words` as a space-separated token ("card+arrive")."""
    ws = pair_words(words, limit)
    return " ".join(f"{a}{PAIR_JOINER}{b}" for i, a in enumerate(ws) for b in ws[i + 1 :])


def pack_terms(terms: Sequence[str]) -> np.ndarray:
    """Terms as one UTF-8 byte array (a fixed-width unicode array would be ~8x larger)."""
    blob = "\n".join(terms)
    if blob.count("\n") != max(len(terms) - 1, 0):
        raise ValueError("a term contains a newline")
    return np.frombuffer(blob.encode("utf-8"), dtype=np.uint8)


def unpack_terms(packed: np.ndarray) -> list[str]:
    text = packed.tobytes().decode("utf-8")
    return text.split("\n") if text else []
