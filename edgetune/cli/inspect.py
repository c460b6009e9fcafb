"""edgetune inspect / edgetune fit: what the runtime did with the model, and whether it fits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetune.cli._common import echo_json, json_option

__all__ = ["fit", "inspect"]

_STRATEGIES = ("best", "greedy-size", "greedy-breadth", "naive")


def _dims(values: tuple[str, ...]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise click.BadParameter(f"expected NAME=VALUE with a positive integer, e.g. "
                                     f"seq=128; got {text!r}", param_hint="--dim")
        dims[name.strip()] = int(value)
    return dims


_dim_option = click.option(
    "--dim", "dims", multiple=True, metavar="NAME=VALUE",
    help="Value of a dynamic input dimension, e.g. --dim seq=128 (a dynamic batch defaults to 1).")
_io_option = click.option(
    "--io/--no-io", "include_io", default=True, show_default=True,
    help="Count graph inputs and outputs in the arena (TFLite Micro does; ONNX Runtime does not).")


def _memory_config(dims: tuple[str, ...], include_io: bool, strategy: str = "best",
                   alignment: int = 64) -> Any:
    from edgetune.analyze.memory import MemoryConfig, Strategy

    return MemoryConfig(dims=_dims(dims), include_io=include_io, strategy=Strategy(strategy),
                        alignment=alignment)


def _check_outputs(*paths: tuple[Path | None, str]) -> None:
    from edgetune.core.fileio import check_writable

    for path, what in paths:
        if path is not None:
            check_writable(path, what)


def _write_reports(report: dict[str, Any], report_path: Path | None,
                   html_path: Path | None) -> None:
    import edgetune.report.silicon  # noqa: F401  (registers the HTML sections)
    from edgetune.report import write_html, write_json

    if report_path:
        write_json(report, report_path)
    if html_path:
        write_html(report, html_path)


# -- inspect -----------------------------------------------------------------------------------

@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--runtime", default="onnxruntime", show_default=True,
              help="Runtime whose optimized graph and timings to read (onnxruntime, null).")
@_dim_option
@_io_option
@click.option("--strategy", type=click.Choice(_STRATEGIES), default="best", show_default=True,
              help="Arena planner.")
@click.option("--alignment", type=click.IntRange(min=1), default=64, show_default=True,
              help="Byte alignment of every buffer (a power of two).")
@click.option("--runs", type=click.IntRange(min=0), default=20, show_default=True,
              help="Runs timed by the runtime's profiler (0: no timing).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the arena plan (offset of every tensor) as JSON here.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def inspect(model: Path, runtime: str, dims: tuple[str, ...], include_io: bool, strategy: str,
            alignment: int, runs: int, plan_path: Path | None, report_path: Path | None,
            html_path: Path | None, as_json: bool) -> None:
    """Fusions the runtime made, layout conversions it inserted, and the activation arena."""
    from edgetune.analyze.memory import write_plan
    from edgetune.analyze.silicon import InspectConfig
    from edgetune.analyze.silicon import inspect as run_inspect

    _check_outputs((plan_path, "memory plan"), (report_path, "report"), (html_path, "HTML report"))
    config = InspectConfig(runtime=runtime, profile_runs=runs,
                           memory=_memory_config(dims, include_io, strategy, alignment))
    result = run_inspect(model, config)
    report = result.report()
    if plan_path:
        write_plan(result.memory, plan_path)
    _write_reports(report, report_path, html_path)
    if as_json:
        echo_json(report)
        return
    _print_inspect(report)
    if plan_path:
        click.echo(f"wrote {plan_path}")


# -- fit ---------------------------------------------------------------------------------------

@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", required=True, help="Device profile name, or 'all'.")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON (or TOML) file of extra or overriding device profiles.")
@_dim_option
@_io_option
@click.option("--compute-efficiency", type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of peak compute reached (default: the profile's).")
@click.option("--bandwidth-efficiency", type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of peak memory bandwidth reached (default: the profile's).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when the model does not fit.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def fit(model: Path, device: str, devices_file: Path | None, dims: tuple[str, ...],
        include_io: bool, compute_efficiency: float | None, bandwidth_efficiency: float | None,
        strict: bool, report_path: Path | None, html_path: Path | None, as_json: bool) -> None:
    """Does MODEL fit --device? Weights vs flash, arena vs RAM, and a roofline estimate."""
    from edgetune.analyze.fit import FitConfig, fit_many
    from edgetune.report import new_report

    _check_outputs((report_path, "report"), (html_path, "HTML report"))
    config = FitConfig(device=device, devices_file=devices_file,
                       memory=_memory_config(dims, include_io),
                       compute_efficiency=compute_efficiency,
                       bandwidth_efficiency=bandwidth_efficiency)
    results = fit_many(model, config)
    report = new_report("fit")
    report["fit"] = [r.to_dict() for r in results]
    _write_reports(report, report_path, html_path)
    if as_json:
        echo_json(report)
    else:
        _print_fit(report["fit"])
    if strict and not all(r.fits for r in results):
        from edgetune.analyze.fit import FitError

        missing = [r.device.name for r in results if not r.fits]
        raise FitError(f"{model.name} does not fit {', '.join(missing)}; see the problems "
                       "listed above, or drop --strict")


# -- human text --------------------------------------------------------------------------------

def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 or column in _LEFT else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


_LEFT = {"pattern", "first nodes", "fused into / why", "where", "op", "bound", "change",
         "device", "verdict", "flipped", "inserted"}


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _print_inspect(report: dict[str, Any]) -> None:
    console = _console()
    model = report["model"]
    console.print(f"{model['name']}: {model['nodes']} nodes; dims "
                  + (", ".join(f"{k}={v}" for k, v in model["dims"].items()) or "static"),
                  markup=False)
    console.print(_fusion_table(report["fusions"]))
    _print_layout(console, report["layout"])
    _print_memory(console, report["memory"])
    for note in model["notes"]:
        console.print(f"! {note}", style="yellow", markup=False)


def _names(nodes: list[str]) -> str:
    return ", ".join(nodes[:3]) + ("..." if len(nodes) > 3 else "")


def _fusion_table(fusions: dict[str, Any]) -> Any:
    """One row per distinct (status, pattern, outcome), with how many times it occurs."""
    counts = ", ".join(f"{v} {k}" for k, v in fusions["counts"].items() if v)
    title = (f"Fusions: {fusions['candidates']} candidates on {fusions['runtime']} "
             f"{fusions['version']} ({fusions['level']}): {counts or 'none'}")
    groups: dict[tuple[str, str, str], list[list[str]]] = {}
    for f in fusions["findings"]:
        outcome = ", ".join(f["fused_into"]) if f["status"] == "fused" else _generic(f["reason"])
        groups.setdefault((f["status"], f["pattern"], outcome), []).append(f["nodes"])
    rows = [[status, pattern, str(len(nodes)), _names(nodes[0]), outcome]
            for (status, pattern, outcome), nodes in groups.items()]
    return _table(title, ["status", "pattern", "count", "first nodes", "fused into / why"], rows)


def _print_layout(console: Any, layout: dict[str, Any]) -> None:
    """One row per kind of conversion and place (op, inserted, between which ops, flagged)."""
    conversions = layout["conversions"]
    if not conversions:
        console.print(f"Layout: no Transpose or reorder nodes in the {layout['runtime']} graph",
                      markup=False)
        return
    share = layout["conversion_share"]
    title = (f"Layout conversions: {len(conversions)} ({layout['inserted']} inserted by the "
             f"runtime)" + (f", {layout['conversion_us_per_inference']:.1f} us of "
                            f"{layout['kernel_total_us_per_inference']:.1f} us kernel time per "
                            f"inference ({share:.1%})" if share is not None else ""))
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for c in conversions:
        where = f"{_op(c['producer'])} -> {', '.join(sorted({_op(x) for x in c['consumers']}))}"
        key = (c["op_type"], "yes" if c["inserted"] else "no", where, "yes" if c["flag"] else "")
        groups.setdefault(key, []).append(c)
    rows = [[*key[:3], str(len(group)), _size(sum(c["output_bytes"] or 0 for c in group)),
             f"{sum(c['median_us'] or 0 for c in group):.1f}", key[3]]
            for key, group in groups.items()]
    console.print(_table(title, ["op", "inserted", "where", "count", "bytes", "us", "flipped"],
                         rows))
    flags = list(dict.fromkeys(c["flag"] for c in conversions if c["flag"]))
    for flag in flags[:3]:
        console.print(f"! {flag}", style="yellow", markup=False)
    if len(flags) > 3:
        console.print(f"! ... and {len(flags) - 3} more such flips (see --json)", style="yellow",
                      markup=False)


def _generic(reason: str) -> str:
    """The reason with quoted names elided, so that equal reasons group (names are in --json)."""
    import re

    return re.sub(r"'[^']*'", "'...'", reason)


def _op(label: str) -> str:
    """``"Conv conv_1"`` -> ``"Conv"``; ``"graph output"`` stays."""
    return label if label in ("graph output",) or label.startswith("input ") else label.split()[0]


def _print_memory(console: Any, memory: dict[str, Any]) -> None:
    scope = "inputs/outputs included" if memory["include_io"] else "inputs/outputs excluded"
    rows = [
        ["naive (no reuse)", _size(memory["naive_bytes"]), ""],
        ["greedy by size", _size(memory["greedy_by_size_bytes"]), ""],
        ["arena (" + memory["method"] + ")", _size(memory["arena_bytes"]),
         "optimal" if memory["optimal"] else ""],
        ["lower bound", _size(memory["lower_bound_bytes"]),
         f"peak at step {memory['peak_step']} ({memory['peak_node']})"],
    ]
    title = (f"Activation arena ({scope}, {memory['alignment']}-byte aligned, "
             f"{memory['buffers']} buffers): arena / lower bound = "
             f"{memory['ratio_to_lower_bound']:.3f}")
    console.print(_table(title, ["", "bytes", "note"], rows))
    console.print(f"not in the arena: weights {_size(memory['weights_bytes'])}, folded constants "
                  f"{_size(memory['constants_bytes'])}", markup=False)


def _print_fit(results: list[dict[str, Any]]) -> None:
    console = _console()
    if len(results) > 1:
        console.print(_fit_overview(results))
        return
    r = results[0]
    verdict = "FITS" if r["fits"] else "DOES NOT FIT"
    console.print(f"{r['model']} on {r['device']} ({r['device_title']}): {verdict}",
                  style="green" if r["fits"] else "red", markup=False)
    for budget in (r["storage"], r["ram"]):
        parts = ", ".join(f"{k} {_size(v)}" for k, v in budget["parts"].items())
        state = "ok" if budget["need_bytes"] <= budget["have_bytes"] else (
            f"over by {_size(budget['over_bytes'])}" + ("" if budget["hard_limit"]
                                                       else " (streamed per inference)"))
        console.print(f"  {budget['what']}: need {_size(budget['need_bytes'])} ({parts}) of "
                      f"{_size(budget['have_bytes'])}: {state}", markup=False)
    _print_speed(console, r)
    for problem in r["problems"]:
        if problem.startswith("precision"):  # the budgets are printed above
            console.print(f"  ! {problem}", style="red", markup=False)
    if r["suggestions"]:
        console.print(_suggestion_table(r["suggestions"]))
        console.print(f"  {r['memory_peak']['split_hint']}", markup=False)
    console.print("assumptions:", markup=False)
    for line in r["assumptions"]:
        console.print(f"  - {line}", markup=False)


def _print_speed(console: Any, r: dict[str, Any]) -> None:
    if r["latency_ms"] is None:
        console.print("  latency: not estimated (the device cannot run every layer)", markup=False)
        return
    console.print(f"  latency ~ {r['latency_ms']:.3g} ms, energy ~ {r['energy_mj']:.3g} mJ per "
                  f"inference; {r['bound']}-bound ({r['compute_bound_share']:.0%} of the time in "
                  f"compute-bound layers), {r['total_ops'] / 1e6:.1f} M ops", markup=False)
    rows = [[c["name"], c["op_type"], c["precision"], f"{c['ops'] / 1e6:.2f}", _size(c["bytes"]),
             f"{(c['seconds'] or 0) * 1e3:.3g}", c["bound"]] for c in r["top_layers"]]
    console.print(_table("  layers that dominate", ["layer", "op", "precision", "M ops", "bytes",
                                                    "ms", "bound"], rows))


def _suggestion_table(suggestions: list[dict[str, Any]]) -> Any:
    rows = [[s["change"], _size(s["storage_need_bytes"]), _size(s["ram_need_bytes"]),
             ("fits" if s["fits"] else "still too big") + ("" if s["exact"] else " (estimate)")]
            for s in suggestions]
    return _table("  what would make it fit", ["change", "storage", "RAM", "verdict"], rows)


def _fit_overview(results: list[dict[str, Any]]) -> Any:
    rows = [[r["device"], "fits" if r["fits"] else "no",
             f"{_size(r['storage']['need_bytes'])} / {_size(r['storage']['have_bytes'])}",
             f"{_size(r['ram']['need_bytes'])} / {_size(r['ram']['have_bytes'])}",
             "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3g}",
             "-" if r["energy_mj"] is None else f"{r['energy_mj']:.3g}",
             r["bound"] if r["latency_ms"] is not None else "-"] for r in results]
    return _table(f"{results[0]['model']} on every device (roofline estimates; see --json for "
                  "assumptions)", ["device", "verdict", "storage need / have",
                                   "RAM need / have", "ms", "mJ", "bound"], rows)
