"""Minimal inline SVG charts.

Why not matplotlib: reports must open offline on any machine as one self-contained HTML file,
and a plotting stack of tens of megabytes is too heavy a core dependency for two bar charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart"]

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")


def bar_chart(
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    unit: str = "",
    width: int = 640,
    bar_height: int = 16,
) -> str:
    """Horizontal grouped bars: one group per category, one bar per series."""
    label_w, pad = 180, 6
    group_h = bar_height * len(series) + pad
    height = 40 + group_h * len(categories) + 24
    peak = max([v for vals in series.values() for v in vals] + [1e-12])
    scale = (width - label_w - 90) / peak
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="4" y="18" font-weight="bold" font-size="14">{escape(title)}</text>',
    ]
    for gi, category in enumerate(categories):
        y0 = 30 + gi * group_h
        parts.append(
            f'<text x="4" y="{y0 + group_h / 2 + 4:.0f}" font-size="12">{escape(category[:28])}</text>'
        )
        for si, (name, values) in enumerate(series.items()):
            y = y0 + si * bar_height
            w = max(values[gi] * scale, 1)
            color = PALETTE[si % len(PALETTE)]
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_height - 2}" fill="{color}">'
                f"<title>{escape(name)}: {values[gi]:.4g}{escape(unit)}</title></rect>"
            )
            parts.append(
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar_height - 5}" font-size="11">'
                f"{values[gi]:.4g}{escape(unit)}</text>"
            )
    parts.append(_legend(list(series), height - 8))
    parts.append("</svg>")
    return "".join(parts)


def _legend(names: list[str], y: int) -> str:
    items = []
    for i, name in enumerate(names):
        x = 4 + i * 150
        color = PALETTE[i % len(PALETTE)]
        items.append(
            f'<rect x="{x}" y="{y - 10}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="11">{escape(name)}</text>'
        )
    return "".join(items)
