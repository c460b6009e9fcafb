"""HTML sections of benchmark reports: ``bench``, ``devices`` and ``divergence``.

Registered on import (``edgetune.report`` imports this module). Charts are inline SVG like the
rest of the report: the latency distribution per runtime, the percentiles side by side, the
sustained trace over time, and tables for cold start and operators that left the target engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from edgetune.report.html import SECTIONS, table
from edgetune.report.svg import PALETTE, bar_chart

__all__ = ["line_chart"]

_MIB = 1024 * 1024


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    width: int = 640,
    height: int = 260,
) -> str:
    """Lines through (x, y) points, one per series, with a legend; inline SVG."""
    import math

    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=False)]
    if not points:
        return ""
    fx = (lambda v: math.log10(max(v, 1e-12))) if log_x else (lambda v: v)
    x0, x1 = min(fx(p[0]) for p in points), max(fx(p[0]) for p in points)
    y1 = max(p[1] for p in points) or 1.0
    left, top, plot_w, plot_h = 60, 30, width - 80, height - 80

    def xy(x: float, y: float) -> str:
        px = left + (fx(x) - x0) / ((x1 - x0) or 1.0) * plot_w
        return f"{px:.1f},{top + plot_h - y / y1 * plot_h:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="4" y="18" font-weight="bold" font-size="14">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#ccc"/>',
        f'<text x="{left}" y="{top + plot_h + 16}" font-size="11">{escape(x_label)}</text>',
        f'<text x="4" y="{top + 10}" font-size="11">{escape(y_label)} (max {y1:.4g})</text>',
    ]
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = " ".join(xy(x, y) for x, y in zip(xs, ys, strict=False))
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        parts.append(
            f'<rect x="{left + i * 150}" y="{height - 22}" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + i * 150 + 14}" y="{height - 13}" font-size="11">'
            f"{escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


@SECTIONS.register("bench")
def _bench(section: dict[str, Any], report: dict[str, Any]) -> str:
    html = "<h2>Benchmark</h2>" + _device(section.get("device") or {})
    return html + "".join(_model(m) for m in section.get("models", []))


@SECTIONS.register("devices")
def _devices(devices: list[dict[str, Any]], report: dict[str, Any]) -> str:
    html = "<h2>Devices</h2>"
    tiers: dict[str, list[dict[str, Any]]] = {}
    for device in devices:
        tiers.setdefault(device["tier"], []).append(device)
    for tier, members in tiers.items():
        html += f"<h3>Tier {escape(tier)}</h3>" + _tier_table(members)
        for device in members:
            html += f"<h4>{escape(device['url'])}</h4>" + _device(
                device["bench"].get("device") or {}
            )
            html += "".join(_model(m) for m in device["bench"].get("models", []))
    return html


def _tier_table(members: list[dict[str, Any]]) -> str:
    """One table for the tier: every device, model and runtime side by side."""
    rows = []
    for device in members:
        for m in device["bench"].get("models", []):
            for e in m["runtimes"]:
                lat = e.get("latency_ms") or {}
                rows.append(
                    [
                        device["url"],
                        m["model"],
                        e["runtime"],
                        lat.get("p50", e.get("status")),
                        lat.get("p90", ""),
                        e.get("speedup_vs_baseline") or "",
                        e.get("throughput_per_s", ""),
                        "fastest" if m.get("fastest") == e["runtime"] else "",
                    ]
                )
    return table(
        ["device", "model", "runtime", "p50 ms", "p90 ms", "speedup vs CPU", "items/s", ""], rows
    )


def _device(facts: dict[str, Any]) -> str:
    if not facts:
        return ""
    runtimes = ", ".join(f"{k} {v}" for k, v in (facts.get("runtimes") or {}).items())
    return (
        f"<p>{escape(str(facts.get('cpu_model')))}, {facts.get('cores_available')} of "
        f"{facts.get('cores_online')} cores, ISA {escape(str(facts.get('isa')))} "
        f"({escape(' '.join(facts.get('isa_flags') or []))}), memory "
        f"{(facts.get('memory_bytes') or 0) / 1024**3:.1f} GiB; runtimes: {escape(runtimes)}</p>"
    )


def _model(m: dict[str, Any]) -> str:
    ok = [e for e in m["runtimes"] if e.get("status") == "ok" and "latency_ms" in e]
    html = (
        f"<h3>{escape(m['model'])} ({escape(m['precision'])}, {m['size_bytes']} bytes, batch "
        f"{m['batch']})</h3><p>fastest: <b>{escape(str(m.get('fastest')))}</b> (baseline "
        f"{escape(m['baseline'])})</p>"
    )
    html += "".join(f"<p class='warn'>{escape(n)}</p>" for n in m.get("notes", []))
    html += _summary_table(m["runtimes"]) + _charts(ok) + _cold_table(ok) + _fallback_table(ok)
    return html


def _summary_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        if e.get("status") != "ok" or "latency_ms" not in e:
            rows.append(
                [
                    e["runtime"],
                    e.get("status", ""),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    str(e.get("reason", ""))[:160],
                ]
            )
            continue
        lat = e["latency_ms"]
        low, high = lat["ci"]["p90"]
        rows.append(
            [
                e["runtime"],
                lat["p50"],
                lat["p90"],
                f"[{_g(low)}, {_g(high)}]",
                lat["p99"],
                e.get("speedup_vs_baseline") or "",
                e["throughput_per_s"],
                (e.get("peak_rss_bytes") or 0) / _MIB or "",
                _stop(lat),
            ]
        )
    return table(
        [
            "runtime",
            "p50 ms",
            "p90 ms",
            f"p90 CI ({_conf(entries)})",
            "p99 ms",
            "speedup vs CPU",
            "items/s",
            "peak RSS MiB",
            "runs / stop",
        ],
        rows,
    )


def _conf(entries: list[dict[str, Any]]) -> str:
    conf = next((e["latency_ms"].get("confidence") for e in entries if "latency_ms" in e), None)
    return f"{conf:.0%}" if conf else "-"


def _stop(lat: dict[str, Any]) -> str:
    return f"{lat['n']} / {lat.get('stop_reason', '')}"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _charts(ok: list[dict[str, Any]]) -> str:
    if not ok:
        return ""
    keys = ["p50", "p90", "p95", "p99"]
    html = bar_chart(
        keys,
        {e["runtime"]: [e["latency_ms"][k] for k in keys] for e in ok},
        title="Warm latency percentiles (ms)",
        unit=" ms",
    )
    hist = {
        e["runtime"]: (
            _centers(e["latency_histogram"]["edges_ms"]),
            e["latency_histogram"]["counts"],
        )
        for e in ok
        if e.get("latency_histogram")
    }
    html += line_chart(
        hist,
        title="Latency distribution (runs per bin)",
        x_label="ms (log scale)",
        y_label="runs",
        log_x=True,
    )
    traces = {
        e["runtime"]: (
            [w["t_s"] for w in e["sustained"]["windows"]],
            [w["p50_ms"] for w in e["sustained"]["windows"]],
        )
        for e in ok
        if e.get("sustained")
    }
    if traces:
        html += line_chart(
            traces,
            title="Sustained run: median latency per window",
            x_label="seconds",
            y_label="p50 ms",
        )
        html += _sustained_table([e for e in ok if e.get("sustained")])
    return html


def _centers(edges: list[float]) -> list[float]:
    from itertools import pairwise

    return [(a * b) ** 0.5 for a, b in pairwise(edges)]


def _sustained_table(entries: list[dict[str, Any]]) -> str:
    rows = [
        [
            e["runtime"],
            s["seconds"],
            s.get("burst_p50_ms", ""),
            s["p50_ms"],
            s.get("sustained_over_burst", ""),
            s["max_ratio"],
            "yes" if s["throttled"] else "no",
            s.get("throttled_at_s") or "",
            ", ".join(k for k, v in s["sensors_read"].items() if v) or "none readable",
        ]
        for e in entries
        for s in [e["sustained"]]
    ]
    return table(
        [
            "runtime",
            "seconds",
            "burst p50",
            "sustained p50",
            "sustained / burst",
            "max window ratio",
            "throttled (>1.10x)",
            "at s",
            "sensors",
        ],
        rows,
    )


def _cold_table(ok: list[dict[str, Any]]) -> str:
    rows = []
    for e in ok:
        c, f = e["cold_start"], e["cold_start"].get("fresh_process") or {}
        phases = ", ".join(f"{k} {v:.1f}" for k, v in c.get("phases_ms", {}).items())
        offline = ", ".join(f"{k} {v:.0f}" for k, v in c.get("offline_ms", {}).items())
        rows.append(
            [
                e["runtime"],
                c["session_ms"],
                phases,
                c["first_run_ms"],
                f.get("import_runtime_ms", ""),
                f.get("session_ms", ""),
                f.get("first_run_ms", ""),
                f.get("total_ms", ""),
                f.get("process_wall_ms", ""),
                offline,
            ]
        )
    return "<h4>Cold start (ms)</h4>" + table(
        [
            "runtime",
            "session",
            "phases",
            "first run",
            "fresh: import",
            "fresh: session",
            "fresh: first run",
            "fresh: total",
            "fresh: process wall",
            "ahead of time",
        ],
        rows,
    )


def _fallback_table(ok: list[dict[str, Any]]) -> str:
    rows, counts = [], []
    for e in ok:
        p = e.get("placement")
        if not p or "counts" not in p:
            continue
        c = p["counts"]
        counts.append(
            [
                e["runtime"],
                c.get("target", 0),
                c.get("cpu_by_design", 0),
                c.get("fallback", 0),
                ", ".join(f"{k}: {v}" for k, v in p.get("precisions", {}).items()),
            ]
        )
        rows += [
            [e["runtime"], op["node"], op["op_type"], op["device"], op["status"]]
            for op in p["off_target"]
        ]
    if not counts:
        return ""
    html = "<h4>Operator placement</h4>" + table(
        ["runtime", "on target", "CPU by design", "fell back", "precisions"], counts
    )
    if rows:
        html += table(["runtime", "node", "op", "ran on", "why"], rows)
    return html


@SECTIONS.register("divergence")
def _divergence(d: dict[str, Any], report: dict[str, Any]) -> str:
    ref = d["reference"]
    html = (
        f"<h2>Divergence</h2><p>reference: {escape(ref['model'])} on {escape(ref['runtime'])}, "
        f"{escape(ref['metric'])} = {ref['metric_value']:.4f} on {ref['n_samples']} samples; "
        "a pair "
        f"passes when the metric drops by at most {ref['max_drop']}</p>"
    )
    rows = [
        [
            r["model"],
            r["runtime"],
            r.get("max_abs_diff", ""),
            r.get("mean_abs_diff", ""),
            r.get("cosine_mean", ""),
            r.get("top1_agreement") if r.get("top1_agreement") is not None else "",
            r.get("metric_value", ""),
            r.get("metric_drop", ""),
            "pass" if r.get("passed") else "FAIL",
            r.get("error", ""),
        ]
        for r in d["rows"]
    ]
    html += table(
        [
            "model",
            "runtime",
            "max |diff|",
            "mean |diff|",
            "cosine",
            "top-1 agreement",
            ref["metric"],
            "drop",
            "verdict",
            "error",
        ],
        rows,
    )
    html += "".join(
        f"<p class='warn'>{escape(n)}</p>" for r in d["rows"] for n in r.get("notes", [])
    )
    return html + "".join(
        _layer_table(r) for r in d["rows"] if (r.get("layers") or {}).get("tensors")
    )


def _layer_table(r: dict[str, Any]) -> str:
    rows = [
        [t["tensor"], t.get("max_abs_diff", ""), t.get("cosine_mean", ""), t.get("cosine_min", "")]
        for t in r["layers"]["tensors"]
    ]
    return f"<h4>Per layer: {escape(r['model'])} on {escape(r['runtime'])}</h4>" + table(
        ["tensor", "max |diff|", "cosine mean", "cosine min"], rows
    )
