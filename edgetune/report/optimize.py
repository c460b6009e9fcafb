"""HTML sections of analyze and optimize reports: the ranked layer table, the verified
candidates with their Pareto front (inline SVG), and the search log.

Importing this module registers the sections for the report keys ``optimize`` and
``sensitivity``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from edgetune.report.html import SECTIONS, table
from edgetune.report.svg import PALETTE

__all__ = ["scatter"]

_W, _H, _L, _B, _T, _R = 520, 320, 64, 44, 30, 16


def scatter(points: Sequence[tuple[float, float, str]], *, front: Sequence[int], chosen: int,
            labels: tuple[str, str], title: str, log_x: bool = False) -> str:
    """Candidates as dots; the Pareto front joined by a line; the chosen one circled."""
    if not points:
        return ""
    fx = (lambda v: math.log10(max(v, 1e-12))) if log_x else (lambda v: v)
    xs, ys = [fx(p[0]) for p in points], [p[1] for p in points]
    x0, x1 = _padded(min(xs), max(xs))
    y0, y1 = _padded(min(ys), max(ys))
    pw, ph = _W - _L - _R, _H - _T - _B

    def xy(i: int) -> tuple[float, float]:
        return _L + (xs[i] - x0) / (x1 - x0) * pw, _T + ph - (ys[i] - y0) / (y1 - y0) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">',
             f'<text x="4" y="18" font-weight="bold" font-size="14">{escape(title)}</text>',
             f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    parts += _ticks((x0, x1), (y0, y1), log_x, labels)
    line = sorted(front, key=lambda i: xs[i])
    if len(line) > 1:
        path = " ".join(f"{xy(i)[0]:.1f},{xy(i)[1]:.1f}" for i in line)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{PALETTE[2]}" stroke-width="1.5"/>')
    for i, (_, _, name) in enumerate(points):
        x, y = xy(i)
        color = PALETTE[2] if i in front else PALETTE[0]
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"><title>{escape(name)}</title></circle>')
    cx, cy = xy(chosen)
    parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="#d62728" stroke-width="2"/>')
    parts.append(f'<text x="{cx + 10:.1f}" y="{cy - 8:.1f}" font-size="11" fill="#d62728">chosen</text>')
    parts.append("</svg>")
    return "".join(parts)


def _padded(lo: float, hi: float) -> tuple[float, float]:
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 1e-6)
    return lo - pad, hi + pad


def _ticks(xr: tuple[float, float], yr: tuple[float, float], log_x: bool, labels: tuple[str, str]) -> list[str]:
    pw, ph = _W - _L - _R, _H - _T - _B
    out = []
    for i in range(5):
        fx = xr[0] + i * (xr[1] - xr[0]) / 4
        fy = yr[0] + i * (yr[1] - yr[0]) / 4
        tx = f"{10 ** fx:.3g}" if log_x else f"{fx:.3g}"
        out.append(f'<text x="{_L + i * pw / 4:.1f}" y="{_T + ph + 14}" font-size="10" text-anchor="middle">{tx}</text>')
        out.append(f'<text x="{_L - 4}" y="{_T + ph - i * ph / 4 + 3:.1f}" font-size="10" text-anchor="end">{fy:.4g}</text>')
    out.append(f'<text x="{_L + pw / 2}" y="{_H - 6}" font-size="11" text-anchor="middle">{escape(labels[0])}</text>')
    out.append(f'<text x="12" y="{_T + ph / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {_T + ph / 2})">{escape(labels[1])}</text>')
    return out


@SECTIONS.register("optimize")
def _optimize(opt: dict[str, Any], report: dict[str, Any]) -> str:
    cands, chosen, front = opt["candidates"], opt["chosen"], opt["pareto"]
    metric = opt["metric"]
    status = "ok" if opt["meets_budget"] else "warn"
    html = (f"<h2>Mixed precision</h2><p class='{status}'>Objective <b>{escape(opt['objective'])}</b> "
            f"under a {escape(metric)} drop of at most {opt['max_drop']:g}: "
            f"{'meets' if opt['meets_budget'] else 'MISSES'} the budget.</p><ul>")
    html += "".join(f"<li>{escape(r)}</li>" for r in opt["reasons"]) + "</ul>"
    size_pts = [(c["size_bytes"] / 1024, c["metric"], c["label"]) for c in cands]
    lat_pts = [(c["latency_ratio"], c["metric"], c["label"]) for c in cands]
    html += scatter(size_pts, front=front, chosen=chosen, log_x=True, title="Verified candidates: size",
                    labels=("size (KiB, log scale)", metric))
    html += scatter(lat_pts, front=front, chosen=chosen, title="Verified candidates: latency",
                    labels=("p50 / float32 p50", metric))
    rows = [[("\u25b6 " if i == chosen else "") + ("\u2605 " if i in front else "") + str(i), c["label"],
             c["metric"], c["drop"], c["size_bytes"], c["latency_ratio"],
             ", ".join(f"{k} x{v}" for k, v in c["precisions"].items()),
             "" if c.get("predicted_drop") is None else c["predicted_drop"]] for i, c in enumerate(cands)]
    html += "<h3>Candidates (\u25b6 chosen, \u2605 Pareto front)</h3>" + table(
        ["#", "candidate", metric, "drop", "bytes", "p50 / fp32", "precisions", "predicted drop"], rows)
    steps = [[s["step"], s["noise_budget"], s["candidate"], "yes" if s["feasible"] else "no"]
             for s in opt["steps"]]
    html += f"<h3>Search log</h3><p>Stopped: {escape(str(opt['stopped']))}.</p>"
    return html + table(["step", "noise budget", "candidate", "within drop"], steps)


@SECTIONS.register("sensitivity")
def _sensitivity(sens: dict[str, Any], report: dict[str, Any]) -> str:
    html = (f"<h2>Layer sensitivity</h2><p>Target ISA {escape(sens['target_isa'])} (this machine: "
            f"{escape(sens['detected_isa'])}); metric {escape(str(sens['metric']))}, float32 "
            f"{sens['baseline_metric']:.5g}. Most sensitive first; dB is the model-output SQNR with "
            "only that layer quantized (its best setting of that precision).</p>")
    html += _correlation(sens.get("rank_correlation", {}))
    rows = [_layer_row(i, layer) for i, layer in enumerate(sens["layers"], 1)]
    html += table(["#", "layer", "op", "MACs", "bytes", "time", "int8", "int4", "fp16",
                   "measured drop", "saturation", "outliers", "advice"], rows)
    reasons = "".join(f"<li><code>{escape(entry['name'])}</code>: {escape(entry['recommendation']['reason'])}</li>"
                      for entry in sens["layers"])
    return html + f"<h3>Advice</h3><ul>{reasons}</ul>"


def _layer_row(rank: int, layer: dict[str, Any]) -> list[Any]:
    best = layer["best"]
    sat = layer["saturation"]
    sat_text = "-" if not sat.get("pairs_simulated") else f"{sat['saturated_fraction']:.2%}" + (" (fixed)" if sat["at_risk"] else "")
    act = layer.get("activation") or {}
    outliers = f"{act['outlier_ratio']:.1f}x" if act.get("outlier_ratio") else "-"
    drops = ", ".join(f"{k} {v['metric_drop']:+.4f}" for k, v in best.items() if v.get("metric_drop") is not None)
    return [rank, layer["name"], layer["op_type"], layer["macs"], f"{layer['bytes_share']:.1%}",
            f"{layer['latency_share']:.1%}", _db(best.get("int8") or best.get("int8-dynamic")),
            _db(best.get("int4")), _db(best.get("fp16")), drops or "-", sat_text, outliers,
            layer["recommendation"]["label"]]


def _db(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    value = entry.get("output_sqnr_db")
    return "inf dB" if value is None else f"{value:.1f} dB"


def _correlation(corr: dict[str, Any]) -> str:
    groups = [(k, v) for k, v in corr.items() if isinstance(v, dict)]
    if not groups:
        return ""
    rows = [[k, v.get("n"), _fmt(v.get("output_noise")), _fmt(v.get("layer_noise")), _fmt(v.get("weight_error"))]
            for k, v in groups]
    return ("<h3>Do the cheap proxies rank layers like the measured metric drop?</h3>"
            "<p>Spearman rank correlation between each proxy and the measured drop with one layer "
            "quantized.</p>" + table(["precision", "pairs", "model-output noise", "layer-output noise",
                                       "weight error"], rows))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@SECTIONS.register("plan_check")
def _plan_check(check: dict[str, Any], report: dict[str, Any]) -> str:
    meets = check.get("meets_budget")
    verdict = {True: ("ok", "meets its budget"), False: ("warn", "MISSES its budget"),
               None: ("", "has no budget recorded")}[meets]
    budget = "" if check.get("max_drop") is None else f" (max drop {check['max_drop']:g})"
    html = (f"<h2>Plan applied</h2><p class='{verdict[0]}'>The plan {verdict[1]}{budget}: metric "
            f"{check['metric']:.5f} vs float32 {check['baseline_metric']:.5f}, drop "
            f"{check['drop']:+.5f}; {check['size_bytes']} bytes.</p>")
    html += "".join(f"<p class='warn'>{escape(w)}</p>" for w in check.get("warnings", []))
    rows = [[name, precision] for name, precision in sorted(check["applied"].items())]
    return html + table(["layer", "built as"], rows)
