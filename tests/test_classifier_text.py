"""Normalisation and jieba segmentation."""

from __future__ import annotations

import csv
import random
import re
import unicodedata
from pathlib import Path

import jieba
import pytest

from classifier.text import (
    MAX_CHARS,
    NativeSegmenter,
    Segmenter,
    build_dictionary,
    domain_dictionary,
    normalise,
    pair_document,
    pair_words,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３，ＯＫ！", "abc123,ok!"),  # full-width to half-width, case folded
        ("HELLO Support", "hello support"),
        ("這個訂單的發票還沒開", "这个订单的发票还没开"),  # Traditional folded to Simplified
        ("  多余\t\n 空白  ", "多余 空白"),
        ("零宽\u200b字符\x00和\x07控制符", "零宽 字符 和 控制符"),
    ],
)
def test_normalise_folds_width_case_script_and_whitespace(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "placeholder"),
    [
        ("详情见 https://status.lianyun.example/incidents/42?x=1 谢谢", "xurl"),
        ("see www.example.com/help", "xurl"),
        ("状态页 status.lianyun.example 一直显示故障", "xurl"),
        ("请回复到 Zhang.Wei+shop@example.com.cn", "xemail"),
        ("电话13812345678或者+86 138 1234 5678", "xphone"),
        ("座机 021-63451234", "xphone"),
        ("订单号：DD2026112300123456 还没发货", "xorder"),
        ("order 1234567890 is late", "xorder"),
        ("工单GD20261123001有进展吗", "xticket"),
    ],
)
def test_normalise_replaces_identifiers_with_placeholders(raw: str, placeholder: str) -> None:
    out = normalise(raw)
    assert placeholder in out.split()
    assert not any(ch.isdigit() for ch in out.replace(placeholder, "")) or placeholder == "xurl"


def test_traditional_folding_uses_the_given_table() -> None:
    assert normalise("發票") == "发票"
    assert normalise("發票", {ord("發"): "X"}) == "X票"  # a model's own table wins over zhconv's


def test_placeholder_pre_checks_never_change_a_result() -> None:
    # normalise() runs the URL and number patterns only where a cheap scan finds what any match needs;
    # the same text with every pattern always run must come out identical.
    from classifier import text as t

    def reference(raw: str) -> str:
        s = unicodedata.normalize("NFKC", t._INVISIBLE.sub(" ", raw[:MAX_CHARS])).casefold()
        if t._CJK.search(s):
            s = s.translate(t.simplified_table())
        for pattern, placeholder in ((t._EMAIL, "xemail"), (t._URL, "xurl"), (t._TICKET, "xticket"),
                                     (t._PHONE, "xphone"), (t._ORDER, "xorder")):
            s = pattern.sub(f" {placeholder} ", s)
        return re.sub(r"\s+", " ", s).strip()[:MAX_CHARS]

    rng = random.Random(3)
    alphabet = "0123456789  +-./:@wcomnxgd \u3000１２\u00a0\t\nab订单号"
    texts = ["+1 2 3 4 5 6 7 8 9 0", "tel 010-12345678", "400-123-4567", "gd201611230012", "a.cn/x", "foo.co", "x://y"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    for path in sorted((ROOT / "training_data" / "train").glob("*.csv")):
        texts += [row["text"] for row in csv.DictReader(path.open(encoding="utf-8"))]
    for raw in texts:
        assert normalise(raw) == reference(raw), raw


def test_normalise_keeps_amounts_and_short_numbers() -> None:
    assert normalise("扣了我299.00元，三笔") == "扣了我299.00元,三笔"


@pytest.mark.parametrize("raw", [None, "", b"\xff\xfe\x00binary", "😀" * 10, "x" * 200_000, 12345])
def test_normalise_never_raises_and_bounds_length(raw) -> None:
    out = normalise(raw)
    assert isinstance(out, str)
    assert len(out) <= MAX_CHARS


def test_segmenter_keeps_domain_words_and_english_words_whole() -> None:
    texts = [normalise("收银机连不上支付网关，支付宝和微信支付都报错"), normalise("The payment gateway returns HTTP 502")]
    words, freqs, total = build_dictionary(texts)
    segmenter = Segmenter(words, freqs, total)
    zh = segmenter.words(texts[0])
    assert {"收银机", "支付网关", "支付宝", "微信支付", "报错"} <= set(zh)
    assert segmenter.words(texts[1]) == ["the", "payment", "gateway", "returns", "http", "502"]


def test_model_dictionary_segments_training_texts_like_full_jieba() -> None:
    """On the texts it was built from, the small dictionary cuts exactly like jieba's 349k-word one."""
    texts: list[str] = [
        normalise(t)
        for t in (
            "我们店里的会员积分昨天突然清零了，顾客很不满意",
            "希望商家后台能增加按门店导出对账单的功能",
            "申请开具增值税专用发票，抬头是杭州某某科技有限公司",
            "小程序下单后一直显示待支付，但是钱已经扣了",
            "Hi, 我们的 POS v2.4.1 在 iOS 17 上 crash 了, error_code=E-1023 #urgent 50% 的单都失败",
            "T恤 size M，order no. ab-12.5 和 c++ 接口 test_case；\t ¥299 😀 привет",
        )
    ]
    training = ROOT / "training_data" / "train"
    for path in sorted(training.glob("*.csv"))[:3]:
        with path.open(encoding="utf-8", newline="") as f:
            texts += [normalise(row["text"]) for row in list(csv.DictReader(f))[:150]]
    words, freqs, total = build_dictionary(texts)
    small = Segmenter(words, freqs, total)
    full = jieba.Tokenizer()
    full.initialize()
    for word in [w for w, f in full.FREQ.items() if f and not re.search("[\u4e00-\u9fff]", w)]:
        full.FREQ[word] = 0  # by design English-only entries (e.g. "c++") are not words for us
    for word, freq in domain_dictionary().items():
        full.add_word(word, freq)  # the domain dictionary, as jieba.load_userdict would add it
    for text in texts:
        expected = [w for w in full.lcut(text, HMM=False) if not w.isspace()]
        assert small.words(text) == expected
    assert len(words) < 10_000  # the point: a small dictionary, not 349k words


def test_native_segmenter_equals_jieba_on_every_training_text() -> None:
    """The fast path's jieba port cuts exactly like jieba itself (same dictionary, same routes)."""
    texts = ["T恤 size M，order no. ab-12.5 和 c++ 接口；结婚的和尚未结婚的", "研究生命起源", "", "😀 привет 123abc中文abc"]
    for path in sorted((ROOT / "training_data").glob("*/*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    normalised = [normalise(t) for t in texts]
    words, freqs, total = build_dictionary(normalised)
    reference, native = Segmenter(words, freqs, total), NativeSegmenter(words, freqs, total)
    for text in normalised:
        assert native.words(text) == reference.words(text), text


def test_pair_words_are_the_first_distinct_alphanumeric_words_sorted() -> None:
    words = ["收银机", "又", "连不上", "了", "!", "收银机", "wifi", "c++"]
    assert pair_words(words, 3) == sorted(["收银机", "又", "连不上"])
    assert pair_words(words, 10) == sorted(["收银机", "又", "连不上", "了", "wifi"])
    assert pair_document(["card", "arrive", "my", "card"], 10) == "arrive+card arrive+my card+my"
    assert pair_document(["hello", "?"], 10) == ""
