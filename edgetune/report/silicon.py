"""HTML sections for ``edgetune inspect`` and ``edgetune fit``: fusions, layout, memory, fit.

Registered per top-level report key in :data:`edgetune.report.html.SECTIONS`; importing this
module registers them. The memory section draws the plan itself: one rectangle per buffer,
its lifetime across and its offset up, under the arena line and the live-bytes curve.
"""

from __future__ import annotations

from html import escape
from typing import Any

from edgetune.report.html import SECTIONS, table
from edgetune.report.svg import PALETTE, bar_chart

__all__ = ["memory_map"]


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _notes(lines: list[str], css: str = "warn") -> str:
    return "".join(f"<p class='{css}'>{escape(line)}</p>" for line in lines)


@SECTIONS.register("fusions")
def _fusions(fusions: dict[str, Any], report: dict[str, Any]) -> str:
    counts = ", ".join(f"{v} {escape(k)}" for k, v in fusions["counts"].items() if v) or "none"
    html = (f"<h2>Fusions</h2><p>{fusions['candidates']} candidate patterns against "
            f"{escape(fusions['runtime'])} {escape(fusions['version'])} "
            f"({escape(fusions['level'])}): {counts}.</p>")
    rows = [[f["status"], f["pattern"], ", ".join(f["nodes"][:4]),
             ", ".join(f["fused_into"]), f["reason"]] for f in fusions["findings"]]
    html += table(["status", "pattern", "nodes", "fused into", "why not"], rows)
    added = {k: v for k, v in fusions["op_types_after"].items()
             if k not in fusions["op_types_before"]}
    if added:
        html += "<p>Operators only in the runtime's graph: " + escape(
            ", ".join(f"{k} x{v}" for k, v in added.items())) + "</p>"
    return html + _notes(fusions.get("notes", []), "ok")


@SECTIONS.register("layout")
def _layout(layout: dict[str, Any], report: dict[str, Any]) -> str:
    html = "<h2>Layout conversions</h2>"
    conversions = layout["conversions"]
    if not conversions:
        runtime = escape(layout["runtime"])
        return html + f"<p>No Transpose or reorder nodes in the {runtime} graph.</p>"
    if layout["conversion_share"] is not None:
        html += (f"<p>{layout['inserted']} of {len(conversions)} inserted by the runtime; "
                 f"{layout['conversion_us_per_inference']:.1f} us of "
                 f"{layout['kernel_total_us_per_inference']:.1f} us kernel time per inference "
                 f"({layout['conversion_share']:.1%}).</p>")
    rows = [[c["name"], c["op_type"], "yes" if c["inserted"] else "no", c["producer"],
             ", ".join(c["consumers"]), c["output_bytes"] or "", c["median_us"] or "",
             c["flag"] or ""] for c in conversions]
    return html + table(["node", "op", "inserted", "after", "before", "bytes", "us", "flag"], rows)


@SECTIONS.register("memory")
def _memory(memory: dict[str, Any], report: dict[str, Any]) -> str:
    scope = "with" if memory["include_io"] else "without"
    html = (f"<h2>Activation memory</h2><p>Arena {scope} graph inputs and outputs, "
            f"{memory['alignment']}-byte aligned, {memory['buffers']} buffers; weights "
            f"({_kib(memory['weights_bytes'])}) and folded constants are not in it.</p>")
    rows = [["naive (no reuse)", memory["naive_bytes"], ""],
            ["greedy by size", memory["greedy_by_size_bytes"], ""],
            [f"arena ({memory['method']})", memory["arena_bytes"],
             "optimal" if memory["optimal"] else ""],
            ["lower bound", memory["lower_bound_bytes"], f"peak at {memory['peak_node']}"]]
    html += table(["", "bytes", "note"], rows)
    html += (f"<p>arena / lower bound = <b>{memory['ratio_to_lower_bound']:.3f}</b>; "
             f"naive / arena = {memory['naive_bytes'] / max(memory['arena_bytes'], 1):.1f}x</p>")
    labels = ["naive", "greedy by size", "arena", "lower bound"]
    values = [memory["naive_bytes"], memory["greedy_by_size_bytes"], memory["arena_bytes"],
              memory["lower_bound_bytes"]]
    html += bar_chart(labels, {"KiB": [v / 1024 for v in values]}, title="Activation bytes",
                      unit=" KiB")
    if memory.get("plan"):
        html += memory_map(memory["plan"], memory.get("live_bytes", []), memory["arena_bytes"])
    return html + _notes(memory.get("notes", []))


def memory_map(plan: list[dict[str, Any]], live: list[int], arena: int, *, width: int = 900,
               height: int = 320, limit: int = 3000) -> str:
    """The plan drawn: x is the step, y the offset; the line is bytes live at each step."""
    steps = max([b["end"] for b in plan] + [len(live) - 1, 0]) + 1
    top = max(arena, max(live, default=0), 1)
    sx, sy = (width - 60) / steps, (height - 40) / top
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
    parts = [svg,
             '<text x="4" y="14" font-size="13" font-weight="bold">Arena plan: buffers by step '
             '(x) and offset (y); line = bytes live</text>']
    for i, b in enumerate(plan[:limit]):
        x, w = 50 + b["start"] * sx, max((b["end"] - b["start"] + 1) * sx, 1)
        y, h = height - 20 - (b["offset"] + b["size"]) * sy, max(b["size"] * sy, 0.5)
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.7">'
                     f"<title>{escape(', '.join(b['tensors'][:3]))}: {b['size']} B at "
                     f"{b['offset']}, steps {b['start']}-{b['end']}</title></rect>")
    if live:
        points = " ".join(f"{50 + (s + 0.5) * sx:.1f},{height - 20 - v * sy:.1f}"
                          for s, v in enumerate(live))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#222" stroke-width="1"/>')
    y_arena = height - 20 - arena * sy
    parts.append(f'<line x1="50" x2="{width - 10}" y1="{y_arena:.1f}" y2="{y_arena:.1f}" '
                 f'stroke="#a33" stroke-dasharray="4"/><text x="4" y="{y_arena + 4:.1f}" '
                 f'font-size="10">{_kib(arena)}</text></svg>')
    return "".join(parts)


@SECTIONS.register("fit")
def _fit(results: list[dict[str, Any]], report: dict[str, Any]) -> str:
    html = "<h2>Device fit</h2>"
    rows = [[r["device"], "fits" if r["fits"] else "does not fit",
             r["storage"]["need_bytes"], r["storage"]["have_bytes"], r["ram"]["need_bytes"],
             r["ram"]["have_bytes"], "" if r["latency_ms"] is None else r["latency_ms"],
             "" if r["energy_mj"] is None else r["energy_mj"], r["bound"]] for r in results]
    html += table(["device", "verdict", "storage need", "storage", "RAM need", "RAM", "ms (est.)",
                   "mJ (est.)", "bound"], rows)
    for r in results:
        html += _fit_detail(r)
    return html


def _fit_detail(r: dict[str, Any]) -> str:
    css = "ok" if r["fits"] else "warn"
    html = (f"<h3>{escape(r['device'])}: {escape(r['device_title'])}</h3>"
            f"<p class='{css}'>{'fits' if r['fits'] else 'does not fit'}</p>")
    html += _notes(r["problems"])
    if r["top_layers"]:
        html += table(["layer", "op", "precision", "ops", "bytes", "seconds", "bound"],
                      [[c["name"], c["op_type"], c["precision"], c["ops"], c["bytes"],
                        c["seconds"] or "", c["bound"]] for c in r["top_layers"]])
    if r["suggestions"]:
        html += "<p>What would make it fit:</p>" + table(
            ["change", "storage need", "RAM need", "fits", "how"],
            [[s["change"], s["storage_need_bytes"], s["ram_need_bytes"],
              "yes" if s["fits"] else "no", "re-planned" if s["exact"] else "estimate"]
             for s in r["suggestions"]])
        html += f"<p>{escape(r['memory_peak']['split_hint'])}</p>"
    return html + "<ul>" + "".join(f"<li>{escape(a)}</li>" for a in r["assumptions"]) + "</ul>"
