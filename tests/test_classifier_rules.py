"""Priority rules: each fires on its cue (Chinese and English) and not on its negation."""

from __future__ import annotations

import random
import re

import pytest

from classifier.cues import cue_filter, required_literals
from classifier.rules import RULES, _fires, apply_rules, fired_rules
from classifier.text import normalise

# rule name -> (texts that must fire it, texts with the same cue negated/hypothetical/over that must not)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "all_users_blocked": (
        ["全部用户无法登录，紧急！", "我们所有客户都登不上 app 了", "All users can't log in since 9am", "全部 users 都登录不了 app",
         "Nobody can log in to the dashboard"],
        ["不是所有用户都无法登录，只有部分安卓用户", "Not all users are unable to log in, only a few", "如果所有用户无法登录，你们的应急预案是什么？",
         "所有用户无法登录的问题已经恢复了，谢谢"],
    ),
    "payment_system_down": (
        ["支付系统宕机了，顾客都付不了款", "你们的支付网关是不是挂了", "The payment gateway is down for us", "All payments are failing with error 502",
         "所有订单支付失败"],
        ["支付网关没有宕机吧？我只是问问", "What happens if the payment gateway is down? Do you have a failover?",
         "昨天支付系统宕机，现在已经恢复正常了，想要一份事故报告"],
    ),
    "platform_down": (
        ["整个平台宕机了", "商城大面积故障，用户都进不来", "Your whole platform is completely down", "major outage on your side?"],
        ["万一平台宕机我们的数据会丢吗", "If the site is down, how do we know?"],
    ),
    "data_leak": (
        ["发现数据泄露，客户手机号被公开了", "我们的客户信息泄露了", "We think there was a data breach: customer emails are on a forum",
         "our api keys were leaked on github"],
        ["你们怎么防止数据泄露？", "没有数据泄露吧？", "How do you prevent a data breach?"],
    ),
    "funds_stolen": (
        ["我的卡被盗刷了三笔", "账户余额被转走了5000元", "There are unauthorized withdrawals from our merchant balance"],
        ["不是盗刷，是我自己买的", "如何避免被盗刷？", "How do you prevent unauthorized transactions?"],
    ),
    "mass_wrong_charges": (
        ["大量用户反馈重复扣款", "上百个顾客被扣了两次钱，被重复扣款", "Hundreds of our customers were charged twice today"],
        ["不是大量用户重复扣款，就我一个", "Not many customers were charged twice, just one"],
    ),
    "charged_twice": (
        ["同一笔订单被重复扣款了", "我被扣了两次钱", "You charged me twice for the same order", "double charge on my card"],
        ["没有重复扣款，只是想确认一下", "I was not charged twice, the second one is pending"],
    ),
    "store_tills_down": (
        ["我们店所有收银机都连不上了", "收银台全部离线了，只能收现金", "All of our tills are offline, cash still works"],
        ["不是所有收银机都连不上，只有一台", "Not all of our tills are down, only till 3"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_fires_on_its_cue(name: str) -> None:
    for text in CASES[name][0]:
        fired = {r.name for r in fired_rules(normalise(text))}
        assert name in fired, f"{name} should fire on {text!r} (fired: {fired})"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_does_not_fire_on_negated_or_hypothetical_cue(name: str) -> None:
    for text in CASES[name][1]:
        fired = {r.name for r in fired_rules(normalise(text))}
        assert name not in fired, f"{name} should not fire on {text!r}"


def test_every_rule_is_documented_and_tested() -> None:
    assert {r.name for r in RULES} == set(CASES)
    for rule in RULES:
        assert rule.priority in ("P0", "P1") and len(rule.doc) > 20


@pytest.mark.parametrize(
    "text",
    ["在吗", "how long does a refund to alipay take?", "希望增加夜间模式", "发票抬头开错了，麻烦重开", "the app crashes when I open my orders"],
)
def test_ordinary_messages_fire_nothing(text: str) -> None:
    assert fired_rules(normalise(text)) == ()


def test_rules_raise_priority_but_never_lower_it() -> None:
    p0 = next(r for r in RULES if r.priority == "P0")
    p1 = next(r for r in RULES if r.priority == "P1")
    assert apply_rules("P3", (p1,)) == "P1"
    assert apply_rules("P2", (p1, p0)) == "P0"
    assert apply_rules("P0", (p1,)) == "P0"
    assert apply_rules("P1", ()) == "P1"


# -- cue filters (classifier/cues.py): a rule's pattern is skipped only when it cannot match ---------------


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"数据泄露", {"数据泄露"}),
        (r"(?:数据|信息)泄露", {"泄露"}),  # the longer required string wins over the alternation
        (r"\b(?:all|every) (?:of )?users?\b", {"user"}),
        (r"(?:拖库|撞库)|被黑(?:了|客)", {"拖库", "撞库", "被黑"}),  # an alternation: one string per branch
        (r"[家个]店", {"店"}),
        (r"x[家个]", {"x"}),
        (r"[家个]+", {"家", "个"}),
        (r"(?:ab)?c?", None),  # nothing is required
        (r"[a-z]+ing", {"ing"}),
        (r"(?<![0-9])1[3-9][0-9]{9}", {"1"}),
        (r"a|[0-9]", None),  # a branch without a literal: unknown
    ],
)
def test_required_literals(pattern: str, literals: set[str] | None) -> None:
    found = required_literals(re.compile(pattern))
    assert (set(found) if found is not None else None) == literals


def test_a_case_insensitive_pattern_gets_no_filter() -> None:
    assert cue_filter(re.compile("payment", re.IGNORECASE)) is None
    assert cue_filter(re.compile("(?i)payment")) is None


def test_cue_filters_never_skip_a_pattern_that_matches() -> None:
    # Random messages built from the rules' own vocabulary, cues and vetoes: wherever a pattern matches,
    # its filter must have let it through; and the rules fire exactly as without filters.
    rng = random.Random(7)
    vocabulary = [*" ".join(t for ts in CASES.values() for group in ts for t in group).split(), "，", "。", "都", "了"]
    patterns = [p for rule in RULES for p in (rule.zh, rule.en) if p is not None]
    filters = {p: cue_filter(p) for p in patterns}
    assert sum(f is not None for f in filters.values()) >= len(patterns) - 2  # the filters exist at all
    texts = [normalise(t) for ts in CASES.values() for group in ts for t in group]
    texts += [normalise(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 12)))) for _ in range(3000)]
    for text in texts:
        for p in patterns:
            if p.search(text):
                assert filters[p] is None or filters[p].search(text), (p.pattern, text)
        scripts = (re.search("[\u4e00-\u9fff]", text) is not None, re.search("[a-z]", text) is not None)
        unfiltered = tuple(
            r for r in RULES
            if _fires(r, text, [p for p, present in zip((r.zh, r.en), scripts) if present and p is not None])
        )
        assert fired_rules(text) == unfiltered, text
