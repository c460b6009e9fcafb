"""One self-contained HTML page per report, built from section renderers.

Later capabilities add a section by registering a renderer for a top-level report key; the
page shows every registered section present in the report, in registration order.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from edgetune.core.fileio import atomic_write_text
from edgetune.core.registry import Registry
from edgetune.report.svg import bar_chart

__all__ = ["SECTIONS", "render_html", "write_html"]

Renderer = Callable[[Any, dict[str, Any]], str]
SECTIONS: Registry[Renderer] = Registry("report section")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.warn{color:#a33}.ok{color:#273}code{background:#f4f4f4;padding:0 3px}
"""


def table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def render_html(report: dict[str, Any]) -> str:
    title = f"edgetune {report.get('kind', 'report')}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>")
    parts.append(
        f"<p>created {escape(str(report.get('created', '')))}, edgetune "
        f"{escape(str(report.get('edgetune_version', '')))}</p>"
    )
    for key in SECTIONS.names_in_order():
        if key in report:
            parts.append(SECTIONS.get(key)(report[key], report))
    parts.append("</body></html>")
    return "".join(parts)


def write_html(report: dict[str, Any], path: Path | str) -> Path:
    return atomic_write_text(Path(path), render_html(report), "HTML report")


@SECTIONS.register("result")
def _summary(result: dict[str, Any], report: dict[str, Any]) -> str:
    base = report.get("baseline", {})
    rows = []
    for label, entry in (("float32", base), ("quantized", result)):
        lat = entry.get("latency_ms") or {}
        rows.append(
            [
                label,
                entry.get("size_bytes", ""),
                lat.get("p50", ""),
                lat.get("p90", ""),
                entry.get("metric", ""),
            ]
        )
    metric = report.get("metric", {}).get("name", "metric")
    html = "<h2>Summary</h2>" + table(["model", "size (bytes)", "p50 ms", "p90 ms", metric], rows)
    for note in report.get("notes", []):
        html += f"<p class='warn'>{escape(note)}</p>"
    return html + _latency_plot(base, result)


def _latency_plot(base: dict[str, Any], result: dict[str, Any]) -> str:
    lb, lr = base.get("latency_ms"), result.get("latency_ms")
    if not lb or not lr:
        return ""
    keys = ["p50", "p90", "p99"]
    return bar_chart(
        keys,
        {"float32": [lb[k] for k in keys], "quantized": [lr[k] for k in keys]},
        title="Latency per run (ms), measured interleaved",
        unit=" ms",
    )


@SECTIONS.register("quantization")
def _quantization(q: dict[str, Any], report: dict[str, Any]) -> str:
    html = "<h2>Settings chosen</h2><ul>" + "".join(f"<li>{escape(r)}</li>" for r in q["reasons"])
    html += "".join(f"<li class='warn'>{escape(w)}</li>" for w in q.get("warnings", [])) + "</ul>"
    rows = [
        [
            c["settings"]["label"],
            c["fidelity"].get("cosine_mean", ""),
            c["fidelity"].get("top1_agreement", ""),
            c.get("latency_ratio_vs_fp32") or "",
            c.get("error") or "",
        ]
        for c in q["candidates"]
    ]
    return (
        html
        + "<h3>Candidates</h3>"
        + table(["settings", "cosine", "top-1 agreement", "latency / fp32", "error"], rows)
    )


@SECTIONS.register("layers")
def _layers(layers: list[dict[str, Any]], report: dict[str, Any]) -> str:
    rows = [[ly["name"], ly["op_type"], ly["precision"], ly["weight_bytes"]] for ly in layers]
    top = sorted(layers, key=lambda ly: -ly["weight_bytes"])[:15]
    chart = bar_chart(
        [ly["name"] for ly in top],
        {"weight bytes": [ly["weight_bytes"] for ly in top]},
        title="Largest layers by weight bytes (quantized model)",
    )
    return "<h2>Layers</h2>" + chart + table(["layer", "op", "precision", "weight bytes"], rows)
