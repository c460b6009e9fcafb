"""HTML sections of a cascade report: the gate and its guarantee, calibration, trade-off curve.

The charts are inline SVG (see :mod:`edgetune.report.svg` for why no plotting library).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from edgetune.report.html import SECTIONS, table
from edgetune.report.svg import PALETTE

__all__ = ["line_chart", "reliability_diagram", "tradeoff_chart"]

_W, _H, _L, _B, _T, _R = 560, 340, 60, 44, 30, 20


@dataclass(frozen=True, kw_only=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str
    dashed: bool = False
    dots: bool = False


_MARK = "#d62728"


def _text(
    x: float, y: float, text: str, *, anchor: str = "start", size: int = 11, color: str = "#222"
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'fill="{color}">{escape(text)}</text>'
    )


def _scale(value: float, lo: float, hi: float, start: float, length: float) -> float:
    return start + (value - lo) / ((hi - lo) or 1.0) * length


def _axes(
    x_range: tuple[float, float], y_range: tuple[float, float], labels: tuple[str, str], title: str
) -> list[str]:
    pw, ph = _W - _L - _R, _H - _T - _B
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">',
        f'<text x="4" y="18" font-weight="bold" font-size="14">{escape(title)}</text>',
        f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for i in range(6):
        fx, fy = (
            x_range[0] + i * (x_range[1] - x_range[0]) / 5,
            y_range[0] + i * (y_range[1] - y_range[0]) / 5,
        )
        x, y = _L + i * pw / 5, _T + ph - i * ph / 5
        parts.append(_text(x, _T + ph + 14, f"{fx:.3g}", anchor="middle", size=10))
        parts.append(_text(_L - 4, y + 3, f"{fy:.3g}", anchor="end", size=10))
    parts.append(_text(_L + pw / 2, _H - 6, labels[0], anchor="middle"))
    parts.append(
        f'<text x="12" y="{_T + ph / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {_T + ph / 2})">{escape(labels[1])}</text>'
    )
    return parts


def line_chart(
    series: Sequence[Series],
    *,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    labels: tuple[str, str],
    title: str,
    marks: Sequence[tuple[float, float, str]] = (),
    legend_bottom: bool = False,
) -> str:
    """Lines (or dots) on linear axes, plus labeled marked points."""
    pw, ph = _W - _L - _R, _H - _T - _B
    parts = _axes(x_range, y_range, labels, title)

    def xy(p: tuple[float, float]) -> tuple[float, float]:
        return (_scale(p[0], *x_range, _L, pw), _scale(p[1], *y_range, _T + ph, -ph))

    for s in series:
        pts = [xy(p) for p in s.points]
        if s.dots:
            parts.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"/>' for x, y in pts
            )
        else:
            dash = ' stroke-dasharray="4 3"' if s.dashed else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{s.color}" '
                f'stroke-width="1.6"{dash}/>'
            )
    for mx, my, text in marks:
        x, y = xy((mx, my))
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="none" stroke="{_MARK}" '
            'stroke-width="2"/>'
        )
        left, upper = x > _L + pw / 2, y < _T + ph / 2
        parts.append(_text(x - 8 if left else x + 8, y + 18 if upper else y - 8, text,
                           color=_MARK, anchor="end" if left else "start"))  # fmt: skip
    parts.extend(_legend([s for s in series if s.name], legend_bottom))
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Sequence[Series], bottom: bool) -> list[str]:
    out = []
    pw, ph = _W - _L - _R, _H - _T - _B
    for i, s in enumerate(series):
        x = _L + pw - 180 if bottom else _L + 8
        y = _T + ph - 8 - 14 * (len(series) - 1 - i) if bottom else _T + 14 + 14 * i
        out.append(
            f'<rect x="{x}" y="{y - 8}" width="10" height="3" fill="{s.color}"/>'
            f'<text x="{x + 14}" y="{y}" font-size="11">{escape(s.name)}</text>'
        )
    return out


def reliability_diagram(
    before: list[dict[str, Any]], after: list[dict[str, Any]], temperature: float
) -> str:
    """Accuracy against mean confidence per bin, before and after temperature scaling."""

    def pts(bins: list[dict[str, Any]]) -> list[tuple[float, float]]:
        return [(b["confidence"], b["accuracy"]) for b in bins]

    series = [
        Series(name="perfect calibration", points=[(0, 0), (1, 1)], color="#999", dashed=True),
        Series(name="raw softmax", points=pts(before), color=PALETTE[1]),
        Series(name=f"temperature {temperature:.3g}", points=pts(after), color=PALETTE[0]),
        Series(name="", points=pts(after), color=PALETTE[0], dots=True),
    ]
    return line_chart(
        series,
        x_range=(0, 1),
        y_range=(0, 1),
        title="Reliability diagram (certify split)",
        labels=("mean confidence in bin", "accuracy in bin"),
    )


def tradeoff_chart(
    points: list[dict[str, Any]], chosen: int, expected: dict[str, Any], metric: str
) -> str:
    """Cascade metric against escalation rate, with both models' metrics and the chosen point."""
    curve = sorted((p["escalation"], p["metric"]) for p in points)
    small, large = expected["small_metric"], expected["large_metric"]
    values = [m for _, m in curve] + [small, large]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 1e-3)
    c = points[chosen]
    series = [
        Series(name="cascade", points=curve, color=PALETTE[0]),
        Series(
            name=f"large model {large:.4g}",
            points=[(0, large), (1, large)],
            color=PALETTE[2],
            dashed=True,
        ),
        Series(
            name=f"small model {small:.4g}",
            points=[(0, small), (1, small)],
            color=PALETTE[1],
            dashed=True,
        ),
    ]
    mark = (
        c["escalation"],
        c["metric"],
        f"chosen: {c['escalation']:.1%} escalated, {c['metric']:.4g}",
    )
    return line_chart(
        series,
        legend_bottom=True,
        x_range=(0, 1),
        y_range=(lo - pad, hi + pad),
        marks=[mark],
        labels=("escalation rate", metric),
        title="Trade-off (certify split)",
    )


@SECTIONS.register("cascade")
def _cascade(spec: dict[str, Any], report: dict[str, Any]) -> str:
    gate, exp, costs = spec["gate"], spec["expected"], spec["costs"]
    rows = [
        [
            "small model",
            spec["models"].get("small", ""),
            exp["small_metric"],
            0.0,
            costs["small_ms"],
        ],
        [
            "large model",
            spec["models"].get("large", ""),
            exp["large_metric"],
            1.0,
            costs["large_ms"] + costs["network_ms"],
        ],
        [
            "cascade",
            f"{gate['score']} < {gate['threshold']:.4g}",
            exp["metric"],
            exp["escalation"],
            exp["expected_latency_ms"],
        ],
    ]
    html = "<h2>Cascade</h2>" + table(
        ["", "model / gate", spec["metric"], "escalated", "expected ms"], rows
    )
    html += f"<p class='ok'>{escape(spec['guarantee']['statement'])}</p>"
    bounds = ", ".join(f"{k} &le; {v:.4g}" for k, v in spec["guarantee"]["bounds"].items())
    html += f"<p>Certified upper bounds at the chosen threshold: {bounds}.</p>"
    data = spec["data"]
    html += (
        f"<p>Data: {escape(str(data.get('method')))}, {data.get('n_fit')} samples to fit the "
        f"gate, {data.get('n_certify')} to certify it. Costs per request (ms): small "
        f"{costs['small_ms']:.4g}, large {costs['large_ms']:.4g}, network "
        f"{costs['network_ms']:.4g}{' (measured here)' if costs.get('measured') else ''}.</p>"
    )
    return html


@SECTIONS.register("calibration")
def _calibration(cal: dict[str, Any], report: dict[str, Any]) -> str:
    html = (
        f"<h2>Gate calibration</h2><p>Temperature {cal['temperature']:.4g} fitted on the fit "
        f"split; expected calibration error on the certify split: {cal['ece_before']:.4f} "
        f"before, {cal['ece_after']:.4f} after ({cal['bins']} bins). Gate score: "
        f"<code>{escape(cal['score'])}</code>.</p>"
    )
    html += reliability_diagram(
        cal["reliability_before"], cal["reliability_after"], cal["temperature"]
    )
    rows = [
        [
            name,
            s.get("auroc"),
            s.get("certify_auroc"),
            s.get("fit_feasible"),
            s.get("fit_escalation"),
        ]
        for name, s in cal["scores"].items()
    ]
    return html + table(
        ["score", "AUROC (fit)", "AUROC (certify)", "meets target on fit", "escalation on fit"],
        rows,
    )


@SECTIONS.register("tradeoff")
def _tradeoff(trade: dict[str, Any], report: dict[str, Any]) -> str:
    spec = report.get("cascade", {})
    points, chosen = trade["points"], trade["chosen_index"]
    html = "<h2>Trade-off</h2>" + tradeoff_chart(
        points, chosen, spec.get("expected", {}), spec.get("metric", "metric")
    )
    step = max(1, len(points) // 20)
    keep = sorted(set(range(0, len(points), step)) | {chosen, len(points) - 1})
    rows = [
        [
            ("\u25b6 chosen " if i == chosen else "") + f"{points[i]['threshold']:.4g}",
            points[i]["escalation"],
            points[i]["metric"],
            points[i]["harm"],
            points[i]["expected_latency_ms"],
            points[i].get("cost_vs_large_only") or "",
        ]
        for i in keep
    ]
    headers = ["threshold", "escalated", spec.get("metric", "metric"), "harm", "expected ms"]
    return html + table([*headers, "cost vs always-large"], rows)
