"""Small SVG charts for the dashboard, drawn on the server: no JavaScript, nothing fetched from elsewhere,
and a page that prints. Each function takes plain numbers and returns one <svg> element as a string.

Every bar carries a <title> (its exact value on hover) and every chart an aria-label, so the numbers are
there for whoever cannot see the picture; the page shows the same numbers in tables beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

# Colour-blind-safe (Okabe–Ito), in the order series are given.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
GOOD, WARN, BAD, MUTED = "#1e7a3c", "#b8860b", "#b3261e", "#8a94a6"
FONT = 'font-family="system-ui, -apple-system, \'Noto Sans CJK SC\', sans-serif"'


def stacked_bars(labels: Sequence[str], series: dict[str, Sequence[int]], *, line: Sequence[int] | None = None,
                 line_name: str = "", title: str, width: int = 720, height: int = 240) -> str:
    """One bar per label, stacked by series (e.g. contacts per day by channel); `line` is drawn over
    the bars on the same scale (e.g. resolutions per day)."""
    left, right, top, bottom = 40, 10, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    peak = _nice_ceiling(max([*totals, *(line or []), 1]))
    slot = plot_w / max(len(labels), 1)
    bar_w = max(2.0, slot * 0.7)
    y = lambda v: top + plot_h - plot_h * v / peak  # noqa: E731 — one-line scale
    parts = [_axis(left, top, plot_w, plot_h, peak, y)]
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        base = 0
        for (name, values), colour in zip(series.items(), PALETTE, strict=False):
            value = values[i]
            if value:
                parts.append(f'<rect x="{x:.1f}" y="{y(base + value):.1f}" width="{bar_w:.1f}" '
                             f'height="{y(base) - y(base + value):.1f}" fill="{colour}">'
                             f'<title>{escape(label)} · {escape(name)}: {value}</title></rect>')
            base += value
        if _show_tick(i, len(labels)):
            parts.append(f'<text x="{left + slot * i + slot / 2:.1f}" y="{height - bottom + 14}" '
                         f'text-anchor="middle" font-size="10" fill="{MUTED}">{escape(label[5:] or label)}</text>')
    if line is not None and labels:
        points = " ".join(f"{left + slot * i + slot / 2:.1f},{y(v):.1f}" for i, v in enumerate(line))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{BAD}" stroke-width="2">'
                     f'<title>{escape(line_name)}</title></polyline>')
        for i, v in enumerate(line):
            parts.append(f'<circle cx="{left + slot * i + slot / 2:.1f}" cy="{y(v):.1f}" r="2.5" fill="{BAD}">'
                         f'<title>{escape(labels[i])} · {escape(line_name)}: {v}</title></circle>')
    legend = [(name, colour) for name, colour in zip(series, PALETTE, strict=False)]
    if line is not None:
        legend.append((line_name, BAD))
    parts.append(_legend(legend, x=left, y=height - 8))
    return _svg(title, width, height, parts)


def share_bars(rows: Sequence[tuple[str, float | None, str]], *, title: str, goal: float | None = None,
               width: int = 480) -> str:
    """Horizontal bars of shares in [0, 1] (e.g. SLA met by priority), coloured against `goal`.
    Each row is (label, share or None for no data, the text shown at the bar's end)."""
    row_h, left, right, top = 26, 150, 120, 8
    height = top + row_h * len(rows) + 8
    plot_w = width - left - right
    parts = []
    for i, (label, share, text) in enumerate(rows):
        y = top + i * row_h
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" font-size="12">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 4}" width="{plot_w}" height="16" fill="#eef0f4"/>')
        if share is not None:
            colour = GOOD if goal is None or share >= goal else WARN if share >= goal - 0.1 else BAD
            parts.append(f'<rect x="{left}" y="{y + 4}" width="{plot_w * max(0.0, min(share, 1.0)):.1f}" height="16" '
                         f'fill="{colour}"><title>{escape(label)}: {escape(text)}</title></rect>')
        parts.append(f'<text x="{left + plot_w + 6}" y="{y + 16}" font-size="12">{escape(text)}</text>')
    if goal is not None:
        x = left + plot_w * goal
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 8}" stroke="#1d2430" '
                     f'stroke-dasharray="3 3"><title>goal {goal:.0%}</title></line>')
    return _svg(title, width, height, parts)


def count_bars(rows: Sequence[tuple[str, int]], *, title: str, width: int = 360,
               colours: Sequence[str] | None = None) -> str:
    """Horizontal bars of counts (e.g. open tickets by state, answers by rating)."""
    row_h, left, right, top = 24, 150, 50, 6
    height = top + row_h * len(rows) + 6
    plot_w = width - left - right
    peak = max([n for _, n in rows] + [1])
    parts = []
    for i, (label, n) in enumerate(rows):
        y = top + i * row_h
        colour = colours[i % len(colours)] if colours else PALETTE[0]
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="12">{escape(label)}</text>')
        if n:
            parts.append(f'<rect x="{left}" y="{y + 3}" width="{max(1.0, plot_w * n / peak):.1f}" height="16" '
                         f'fill="{colour}"><title>{escape(label)}: {n}</title></rect>')
        parts.append(f'<text x="{left + plot_w * n / peak + 6:.1f}" y="{y + 15}" font-size="12">{n:,}</text>')
    return _svg(title, width, height, parts)


def _svg(title: str, width: int, height: int, parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{escape(title)}" {FONT} class="chart">'
            f'<title>{escape(title)}</title>{"".join(parts)}</svg>')


def _axis(left: int, top: int, plot_w: float, plot_h: float, peak: int, y) -> str:
    lines = []
    for step in range(5):
        value = peak * step // 4
        lines.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{left + plot_w:.1f}" y2="{y(value):.1f}" '
                     f'stroke="#e3e6eb"/>'
                     f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="10" '
                     f'fill="{MUTED}">{value:,}</text>')
    return "".join(lines)


def _legend(items: list[tuple[str, str]], *, x: int, y: int) -> str:
    parts, offset = [], 0
    for name, colour in items:
        parts.append(f'<rect x="{x + offset}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + offset + 14}" y="{y}" font-size="11">{escape(name)}</text>')
        offset += 24 + _text_width(name)
    return "".join(parts)


def _text_width(text: str, size: int = 11) -> int:
    """About how wide `text` is drawn: CJK characters take a full em, Latin ones a little over half."""
    return sum(size if ord(ch) > 0x2E80 else round(size * 0.6) for ch in text)


def _show_tick(i: int, n: int) -> bool:
    """Every label up to 14 bars; beyond that about 10, evenly spaced back from the last (today)."""
    return (n - 1 - i) % max(1, -(-n // 10)) == 0


def _nice_ceiling(value: float) -> int:
    """The top of the axis: four grid steps of 1, 2 or 5 × 10^k, the smallest that reaches `value`."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if 4 * step * magnitude >= value:
                return 4 * step * magnitude
        magnitude *= 10
