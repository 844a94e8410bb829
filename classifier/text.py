"""Text normalisation and jieba word segmentation shared by training and both prediction paths.

Normalisation folds what should not change a label: full-width forms (NFKC), case, Traditional
characters (to Simplified), invisible/control characters, and volatile identifiers (URLs, emails,
phone, ticket and order numbers become placeholders such as ``xurl``).

Segmentation uses jieba with a *model-owned* dictionary (see :func:`build_dictionary`): the jieba
words that occur in the training texts plus the domain dictionary, with jieba's full frequency total.
On the training texts this segments exactly like jieba's 349k-word dictionary, but it loads in a few
milliseconds instead of ~0.7 s, and the model never changes behaviour when jieba's dictionary does.
HMM new-word discovery is off: character n-grams already cover unknown words, and it keeps
segmentation deterministic.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

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
_SPACES = re.compile(r"\s+")


def normalise(text: str | bytes | None) -> str:
    """Fold width, case, script and volatile identifiers; never raises on any input."""
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
        text = _to_simplified(text)
    text = _EMAIL.sub(" xemail ", text)
    text = _URL.sub(" xurl ", text)
    text = _TICKET.sub(" xticket ", text)
    text = _PHONE.sub(" xphone ", text)
    text = _ORDER.sub(" xorder ", text)
    return _SPACES.sub(" ", text).strip()[:MAX_CHARS]


def _to_simplified(text: str) -> str:
    import zhconv  # imported on first Chinese text: its tables cost ~30 ms to load

    return zhconv.convert(text, "zh-cn")


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
def _jieba_main_dictionary() -> tuple[dict[str, int], int, int]:
    """jieba's own dictionary: words containing a CJK character, its frequency total, max word length.

    ASCII-only entries are left out on purpose so English words always come out whole.
    """
    import jieba

    path = Path(jieba.__file__).with_name("dict.txt")
    words: dict[str, int] = {}
    total = 0
    longest = 1
    with path.open(encoding="utf-8") as f:
        for line in f:
            parts = line.split(" ")
            freq = int(parts[1])
            total += freq
            word = parts[0]
            if _CJK.search(word):
                words[word] = freq
                longest = max(longest, len(word))
    return words, total, longest


_JIEBA_BLOCK = re.compile("[\u4e00-\u9fd5a-z0-9+#&._%\\-]+")


def build_dictionary(normalised_texts: Iterable[str]) -> tuple[list[str], list[int], int]:
    """The model's segmentation dictionary: domain words plus every jieba word found in the texts.

    Returns (words, frequencies, total). Only substrings of the blocks jieba segments with its
    dictionary are looked up, so English-only corpora cost almost nothing.
    """
    main, main_total, longest = _jieba_main_dictionary()
    found: dict[str, int] = {}
    for text in normalised_texts:
        for block in _JIEBA_BLOCK.findall(text):
            if not _CJK.search(block):
                continue
            n = len(block)
            for i in range(n):
                for j in range(i + 1, min(n, i + longest) + 1):
                    piece = block[i:j]
                    freq = main.get(piece)
                    if freq is not None:
                        found[piece] = freq
    domain = domain_dictionary()
    found.update(domain)
    words = sorted(found)
    return words, [found[w] for w in words], main_total + sum(domain.values())


class Segmenter:
    """jieba's exact-mode segmentation (HMM off) over a given dictionary; drops whitespace tokens."""

    def __init__(self, words: Sequence[str], freqs: Sequence[int], total: int):
        import jieba

        prefix: dict[str, int] = {}
        # Same prefix dictionary that jieba.Tokenizer.gen_pfdict builds from a file.
        for word, freq in zip(words, freqs):
            prefix[word] = int(freq)
            for end in range(1, len(word)):
                prefix.setdefault(word[:end], 0)
        tokenizer = jieba.Tokenizer()
        tokenizer.FREQ = prefix
        tokenizer.total = int(total)
        tokenizer.initialized = True  # skips loading jieba's default dictionary
        self._cut = tokenizer.cut

    def words(self, normalised_text: str) -> list[str]:
        return [t for t in self._cut(normalised_text, HMM=False) if not t.isspace()]


def join_words(words: Sequence[str]) -> str:
    """Words as one string for a whitespace-token vectorizer (jieba tokens never contain spaces)."""
    return " ".join(words)
