"""Cue filters: a cheap scan that tells when a regular expression cannot match, so it need not run.

Every match of ``所有用户[^。]{0,12}?无法登录`` contains "所有用户"; every match of
``\\b(?:payment gateway|checkouts?)\\b…`` contains "payment gateway" or "checkout". A text without any
of a pattern's *required literals* cannot match it. Most messages contain none of a rule's cues, and
an alternation of plain strings is a scan that ``re`` filters by first character, several times
faster than a pattern that starts with a look-behind, ``\\b`` or a long alternation of groups.

The literals come from ``re``'s own parse tree. That parser is private (``re._parser``), so anything
this module does not understand, or a Python whose parser differs, yields ``None``: no filter, the
pattern always runs. A filter can only skip work, never change a result.
"""

from __future__ import annotations

import re

try:
    from re import _constants as _ops, _parser as _parse
except ImportError:  # pragma: no cover - a Python whose re is laid out differently: no filters
    _ops = _parse = None


def required_literals(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Strings one of which every match of ``pattern`` contains, or None when that is not known."""
    if _parse is None or pattern.flags & re.IGNORECASE:
        return None
    try:
        return _required(_parse.parse(pattern.pattern, pattern.flags))
    except Exception:  # noqa: BLE001 - an unexpected tree means "unknown", never an error
        return None


def cue_filter(pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """A pattern that finds one of ``pattern``'s required literals (None: no filter known)."""
    literals = required_literals(pattern)
    if not literals:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(literals, key=lambda s: (-len(s), s))))


def _required(items) -> frozenset[str] | None:
    """The most selective set of strings one of which every match of the parsed sequence contains.

    Consecutive literal characters form one string; a group, or an item repeated at least once,
    offers its own set; an alternation offers the union of its branches' sets when every branch has
    one; a character class of plain characters offers them as one-character strings. Everything else
    (optional items, classes with ranges, anchors, look-arounds) offers nothing and ends a string.
    Of the sets offered, the one whose shortest string is longest wins, then the smallest.
    """
    offered: list[frozenset[str]] = []
    run = ""
    for op, arg in items:
        if op is _ops.LITERAL:
            run += chr(arg)
            continue
        if run:
            offered.append(frozenset([run]))
            run = ""
        found = None
        if op is _ops.SUBPATTERN:
            _group, add_flags, _del_flags, inner = arg
            if not add_flags & re.IGNORECASE:
                found = _required(inner)
        elif op is _ops.BRANCH:
            branches = [_required(branch) for branch in arg[1]]
            if all(branches):
                found = frozenset().union(*branches)
        elif op is _ops.IN:
            if all(member_op is _ops.LITERAL for member_op, _ in arg):
                found = frozenset(chr(code) for _, code in arg)
        elif op in (_ops.MAX_REPEAT, _ops.MIN_REPEAT, _ops.POSSESSIVE_REPEAT):
            low, _high, inner = arg
            if low >= 1:
                found = _required(inner)
        if found:
            offered.append(found)
    if run:
        offered.append(frozenset([run]))
    return max(offered, key=lambda s: (min(map(len, s)), -len(s)), default=None)
