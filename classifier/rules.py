"""Priority rules: explicit business-impact cues that set a floor under the model's priority.

A missed outage is the costliest error, and some cues are unambiguous whatever the model thinks:
"全部用户无法登录", "数据泄露", "支付系统宕机", "all users are locked out". Each rule is a named pattern
in Chinese and English over the *normalised* text (Simplified, lower case, full-width folded). A rule
only ever raises priority (to P0 or P1), never lowers it, and the service records which rules fired.

A match does not fire when, in the same clause, it is negated or hypothetical just before the cue
("不是所有用户", "not all users", "如果支付系统宕机", "what happens if the gateway is down"), limited
("只有部分用户") or reported as over ("已经恢复", "is back up").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from classifier.cues import cue_filter

PRIORITY_ORDER = ("P0", "P1", "P2", "P3")


@dataclass(frozen=True, slots=True)
class PriorityRule:
    name: str
    priority: str
    doc: str
    zh: re.Pattern[str] | None  # run on text with Chinese characters
    en: re.Pattern[str] | None  # run on text with Latin letters

_HAS_CJK = re.compile("[\u4e00-\u9fff]")
_HAS_LATIN = re.compile("[a-z]")


def _rx(*parts: str) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    """(Chinese pattern, English pattern): a part with a Chinese character belongs to the first."""
    zh = [p for p in parts if _HAS_CJK.search(p)]
    en = [p for p in parts if not _HAS_CJK.search(p)]
    join = lambda ps: re.compile("|".join(f"(?:{p})" for p in ps)) if ps else None  # noqa: E731
    return join(zh), join(en)


_ALL_ZH = r"(?:所有|全部|全体|整个|全站|全平台|每个|一切|任何)"
# Customers write code-mixed Chinese ("全部 users 都登录不了"), so the Chinese patterns take English nouns too.
_PEOPLE_ZH = (
    r"(?:用户|客户|顾客|客人|会员|买家|商家|商户|门店|店铺|员工|店员|收银员|人|账号|账户"
    r"|users?|customers?|clients?|merchants?|stores?|shops?|cashiers?|accounts?)"
)
_CANNOT_ZH = (
    r"(?:无法|不能|没法|没办法|登不上|登不进|登录不了|登陆不了|进不去|打不开|用不了|都失败|全部失败|都不行|都报错"
    r"|offline|离线|掉线|fail|error)"
)
_DOWN_ZH = r"(?:宕机|瘫痪|挂了|挂掉|崩了|崩溃了|全挂|中断|停摆|不可用|完全不能用|彻底用不了)"
_ALL_EN = r"(?:all|every|everyone of|none of) (?:of )?(?:our |my |the |your )?"
_PEOPLE_EN = r"(?:users?|customers?|clients?|staff|employees|merchants?|members?|accounts?|stores?|shops?|cashiers?)"
_CANNOT_EN = r"(?:can ?not|can't|cant|unable|are unable|could not|couldn't|fail(?:s|ed|ing)?|locked out|blocked|down)"

RULES: tuple[PriorityRule, ...] = (
    PriorityRule(
        "all_users_blocked",
        "P0",
        "Everyone is blocked: all users/customers/stores cannot log in, pay or use the service. "
        "zh 全部用户无法登录, 所有客户都登不上; en all users can't log in, no one can log in.",
        *_rx(
            _ALL_ZH + r"的? ?(?:\d+ ?(?:家|个) ?)?" + _PEOPLE_ZH + r"[^。！？!?；;]{0,12}?" + _CANNOT_ZH,
            r"(?:没有人|没人|谁都|大家都)[^。！？!?]{0,6}(?:能|可以)?(?:登录|登陆|登不|支付|付款|下单|进不|用不)",
            _ALL_EN + _PEOPLE_EN + r"\b[^.!?;]{0,40}?\b" + _CANNOT_EN,
            r"\bevery (?:single )?(?:customer|user|client|store|shop|order|payment|transaction|checkout)\b[^.!?;]{0,40}?\b(?:fail|error|declin|rejected|can ?not|can't|unable)",
            r"\b(?:no ?one|nobody|no users?|no customers?)\b[^.!?;]{0,20}\b(?:can|is able to|are able to)\b[^.!?;]{0,5}\b(?:log ?in|sign ?in|pay|check ?out|access|order)",
        ),
    ),
    PriorityRule(
        "payment_system_down",
        "P0",
        "Payments are down for everyone: 支付系统/支付网关/收款 宕机 or all payments failing; "
        "en payment gateway down, all payments failing.",
        *_rx(
            r"(?:支付系统|支付网关|网关|支付通道|支付渠道|支付接口|收款系统|收单|支付服务|支付功能)[^。！？!?；;]{0,8}?" + _DOWN_ZH,
            r"(?:所有|全部|每一?笔|任何)的?(?:订单|交易|支付|付款|收款)[^。！？!?；;]{0,8}?(?:失败|付不了|无法支付|报错|不成功|都不行)",
            r"(?:拒绝|拒掉)(?:了)?(?:所有|全部)[^。！？!?；;]{0,30}?(?:交易|支付|付款)",
            r"(?:扫码支付|刷卡|支付|付款|收款|下单)[^。！？!?；;]{0,4}?(?:全部|都)(?:失败|不行了|付不了|fail)",
            r"\b(?:payment gateway|payment system|payments?|payment service|checkout|card processing)\b[^.!?;]{0,20}?\b(?:is |are )?(?:completely |totally )?(?:down|offline|outage|unavailable|dead)\b",
            r"\b(?:all|every|any) (?:of (?:our|the) )?(?:payments?|transactions?|orders?|checkouts?)\b[^.!?;]{0,30}?\b(?:fail|failing|failed|declin|error|rejected|bounce)",
        ),
    ),
    PriorityRule(
        "platform_down",
        "P0",
        "The whole platform is down: 全站/整个平台/系统 宕机/瘫痪, 大面积故障, all tills of every store down; "
        "en site/platform/API is down, major outage. (A bare 'outage' is left to the model: it is often a past one.)",
        *_rx(
            r"(?:全站|全平台|整个平台|整个系统|整个网站|整个商城|整个后台|平台|系统|服务器|网站|商城|后台|app|小程序|api|接口)[^。！？!?；;]{0,6}?(?:宕机|瘫痪|全挂|彻底挂了|全部挂了)",
            r"大面积(?:故障|宕机|瘫痪|不可用|报错)|全线(?:瘫痪|故障|中断)",
            r"(?:所有|全部)门店的?(?:收银|pos)",
            r"\b(?:site|website|platform|system|service|servers?|api|app|dashboard|everything|mall)\b (?:is |are |went |has gone |seems )?(?:completely |totally |entirely )?(?:down|offline)\b",
            r"\b(?:major|total|complete|full|global|site-wide|platform-wide) (?:outage|downtime)\b",
        ),
    ),
    PriorityRule(
        "data_leak",
        "P0",
        "Customer data exposed or systems breached: 数据泄露, 信息泄露, 拖库, 被黑客入侵; en data leak/breach, hacked.",
        *_rx(
            r"(?:数据|信息|隐私|资料|订单信息|手机号|身份证)[^。！？!?；;]{0,4}?(?:泄露|泄漏|外泄|被盗|被窃)",
            r"(?:泄露|泄漏|外泄)了?[^。！？!?；;]{0,6}?(?:数据|信息|隐私|资料)",
            r"拖库|撞库|被黑了|被黑客|黑客入侵|被入侵|钓鱼(?:短信|邮件|网站|链接)",
            r"(?:密钥|秘钥|secret key|api key|私钥)[^。！？!?；;.]{0,30}?(?:公开|泄|public|github)",
            r"\bphishing\b|\b(?:secret|api|private) keys? (?:is |was |were )?(?:leaked|exposed|public)|\bdata (?:leak|breach)|\bleak(?:ed|ing)? (?:of )?(?:customer|user|personal|our|all)|\bbreach(?:ed)?\b|\bhacked\b|\bexposed (?:customer|user|personal)",
        ),
    ),
    PriorityRule(
        "funds_stolen",
        "P0",
        "Money is being stolen: 盗刷, 资金被盗/被转走, 异常提现; en stolen funds, fraudulent or unauthorised transactions.",
        *_rx(
            r"盗刷|盗用|(?:账号|账户)被盗|(?:资金|钱|余额|货款)[^。！？!?；;]{0,4}?(?:被盗|被转走|被偷|不翼而飞)"
            r"|(?:大量|多笔|异常)(?:未授权|异常)?(?:提现|转账|交易)|转到[^。！？!?；;]{0,10}?不认识的",
            r"\b(?:account|login|admin) (?:was |has been |got )?(?:compromised|taken over|hijacked)\b"
            r"|\bwithdr[ae]w[^.!?;]{0,60}?\b(?:we don't recogni[sz]e|we do not recogni[sz]e|unknown|not ours)\b|\bfraudulent (?:charges?|transactions?|withdrawals?|payments?)|\bunauthori[sz]ed (?:charges?|transactions?|withdrawals?|transfers?|payments?)",
        ),
    ),
    PriorityRule(
        "mass_wrong_charges",
        "P0",
        "Many customers charged wrongly: 大量用户重复扣款/多扣; en many customers double charged.",
        *_rx(
            r"(?:大量|很多|好多|大批|一大批|上百|几百|数百|成百|所有|全部)(?:多?[个名位笔])?的?(?:用户|客户|顾客|会员|买家|订单)[^。！？!?；;]{0,10}?(?:重复扣款|重复扣费|扣了两次|多扣|被扣|乱扣|扣错)",
            r"\b(?:many|lots of|hundreds of|dozens of|all|multiple|several) (?:of )?(?:our |the )?(?:customers|users|buyers|members)\b[^.!?;]{0,30}?\b(?:double[- ]charged|charged twice|charged multiple times|overcharged|wrongly charged)",
        ),
    ),
    PriorityRule(
        "charged_twice",
        "P1",
        "One customer's money is wrong: 重复扣款, 扣了两次, 多扣钱; en charged twice, double charge. (P1 floor)",
        *_rx(
            r"重复扣款|重复扣费|重复支付|扣了两次|扣了两笔|扣两次|多扣了?",
            r"\b(?:charged|billed|debited) (?:me )?(?:twice|two times|double)|\bdouble[- ](?:charged|charge|billed|payment)\b",
        ),
    ),
    PriorityRule(
        "store_tills_down",
        "P1",
        "All tills/POS of a store are offline (cash may still work): 收银机全部离线; en all our tills are down. (P1 floor)",
        *_rx(
            r"(?:所有|全部|整个店|店里)的?(?:收银机|收银台|收银系统|pos机?|收款机)[^。！？!?；;]{0,8}?(?:离线|掉线|连不上|无法|用不了|不能用|宕机|死机|登不上)",
            r"(?:收银机|收银台|收银系统|pos机?)[^。！？!?；;]{0,4}?(?:全部|都)(?:离线|掉线|连不上|用不了|不能用|宕机|死机)",
            r"\ball (?:of )?(?:our |the |my )?(?:tills|registers|pos|pos terminals|terminals|cash registers)\b[^.!?;]{0,25}?\b(?:down|offline|not working|can't|cannot|unable|frozen|failing)",
        ),
    ),
)

# Just before a cue, in the same clause: negation, hypothesis, prevention or a question about it.
_BEFORE_VETO = re.compile(
    r"(?:(?<!是)不是|并非|并不是|没有|并没有|不会|不算|未必|如果|假如|假设|万一|要是|是否|会不会|能否|防止|避免|预防|以防|担心|演练|测试环境)"
    r"|\b(?:not|isn't|aren't|wasn't|weren't|never|if|whether|in case|prevent|avoid|protect against|worried|what happens|hypothetically|test environment|staging)\b"
)
# Just after a cue, in the same clause: it is limited to a few, or it is already over.
_AFTER_VETO = re.compile(
    r"^[^。！？!?；;]{0,16}?(?:已经?恢复|恢复了|恢复正常|已解决|已经好了|现在好了|已修复)"
    r"|^[^.!?;]{0,30}?\b(?:is back|are back|back up|back to normal|resolved|restored|recovered|fixed now)\b"
)
_PARTIAL = re.compile(r"部分|个别|少数|有些|一些|只有|仅有|\bsome\b|\ba few\b|\bonly\b|\bcertain\b")
_CLAUSE_START = re.compile(r"[。！？!?；;,，\n]")
_SCOPE_RULES = frozenset({"all_users_blocked", "mass_wrong_charges", "store_tills_down"})


def _clause_before(text: str, start: int, width: int) -> str:
    window = text[max(0, start - width) : start]
    cut = max((m.end() for m in _CLAUSE_START.finditer(window)), default=0)
    return window[cut:]


def _fires(rule: PriorityRule, text: str, patterns: list[re.Pattern[str]]) -> bool:
    for match in (m for pattern in patterns for m in pattern.finditer(text)):
        before = _clause_before(text, match.start(), 24)
        if _BEFORE_VETO.search(before) or _BEFORE_VETO.search(match.group(0)[:6]):
            continue
        if _AFTER_VETO.search(text[match.end() :]):
            continue
        if rule.name in _SCOPE_RULES and _PARTIAL.search(before + match.group(0)):
            continue
        return True
    return False


# Each pattern's cue filter (classifier/cues.py): a quick scan for the strings every match of the
# pattern contains; on paidan's messages 1.3 of the 16 patterns get past it.
_CUES = {pattern: cue_filter(pattern) for rule in RULES for pattern in (rule.zh, rule.en) if pattern is not None}
# For each combination of scripts present (Chinese?, Latin?): every (rule, pattern, cue filter) to try,
# in rule order.
_CHECKS: dict[tuple[bool, bool], tuple[tuple[PriorityRule, re.Pattern[str], re.Pattern[str] | None], ...]] = {
    (zh, en): tuple(
        (rule, pattern, _CUES[pattern])
        for rule in RULES
        for pattern, present in ((rule.zh, zh), (rule.en, en))
        if present and pattern is not None
    )
    for zh in (False, True)
    for en in (False, True)
}


def fired_rules(normalised_text: str) -> tuple[PriorityRule, ...]:
    """The rules whose cue occurs (not negated, not hypothetical, not over) in a normalised text."""
    text = normalised_text
    # Only the patterns for the scripts present, and only where their cue filter finds a string every
    # match needs. Separate patterns beat one alternation of them all: each keeps re's literal-prefix scan.
    candidates: dict[PriorityRule, list[re.Pattern[str]]] = {}
    for rule, pattern, cue in _CHECKS[_HAS_CJK.search(text) is not None, _HAS_LATIN.search(text) is not None]:
        if cue is None or cue.search(text):
            candidates.setdefault(rule, []).append(pattern)
    return tuple(rule for rule, patterns in candidates.items() if _fires(rule, text, patterns))


def apply_rules(priority: str, fired: tuple[PriorityRule, ...]) -> str:
    """The model's priority raised to the most urgent floor set by the fired rules (never lowered)."""
    best = priority
    for rule in fired:
        if rule.priority in PRIORITY_ORDER and (
            best not in PRIORITY_ORDER or PRIORITY_ORDER.index(rule.priority) < PRIORITY_ORDER.index(best)
        ):
            best = rule.priority
    return best
