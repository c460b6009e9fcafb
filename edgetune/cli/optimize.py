"""edgetune analyze / optimize: per-layer sensitivity, and mixed precision under a budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgetune.cli._common import echo_json, json_option, metric_option, progress_bar
from edgetune.core.fileio import check_writable
from edgetune.core.isa import Isa, parse_isa

__all__ = ["analyze", "optimize", "quantize_with_plan"]


def _analysis_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--calib", required=True, help="Calibration data: .npz or package.module:function."),
        click.option("--eval", "eval_data", required=True, help="Held-out data the metric is measured on."),
        metric_option,
        click.option("--precisions", default=None,
                     help="Candidate precisions, e.g. int8,int4,fp16 (default: int8,int8-dynamic,int4,fp16)."),
        click.option("--target-isa", type=click.Choice([i.value for i in Isa]),
                     help="Instruction set of the CPU the model will run on (default: this machine's)."),
        click.option("--measure-layers", type=int, default=6, show_default=True,
                     help="Measure the real metric change of this many most sensitive layers (-1: all)."),
        click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path)),
        json_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _analyze_config(metric: str, precisions: str | None, target_isa: str | None, measure_layers: int) -> Any:
    from edgetune.optimize.config import DEFAULT_PRECISIONS, AnalyzeConfig, parse_precisions

    return AnalyzeConfig(
        metric=metric, precisions=parse_precisions(precisions) if precisions else DEFAULT_PRECISIONS,
        target_isa=parse_isa(target_isa) if target_isa else None,
        measure_layers=None if measure_layers < 0 else measure_layers,
    )


def _check_outputs(*pairs: tuple[Path | None, str]) -> None:
    for path, what in pairs:
        if path is not None:
            check_writable(path, what)


@click.command()
@_analysis_options
def analyze(model: Path, calib: str, eval_data: str, metric: str, precisions: str | None,
            target_isa: str | None, measure_layers: int, report_path: Path | None,
            html_path: Path | None, as_json: bool) -> None:
    """Rank MODEL's layers by quantization sensitivity, with costs, risks and advice."""
    from edgetune.optimize.analysis import analyze as run
    from edgetune.optimize.result import analyze_report

    _check_outputs((report_path, "report"), (html_path, "HTML report"))
    config = _analyze_config(metric, precisions, target_isa, measure_layers)
    with progress_bar(not as_json) as progress:
        result = run(model, config, data=calib, eval_data=eval_data, progress=progress)
    report = analyze_report(result)
    _write_reports(report, report_path, html_path)
    if as_json:
        echo_json(report)
    else:
        _print_analysis(report["sensitivity"])


@click.command()
@_analysis_options
@click.option("--max-drop", type=float, required=True,
              help="Largest allowed metric drop, in the metric's units (0.005 = half a point of top-1).")
@click.option("--objective", type=click.Choice(["size", "latency"]), default="size", show_default=True)
@click.option("--time-budget", type=float, default=None, help="Stop searching after this many seconds.")
@click.option("--max-verifications", type=int, default=10, show_default=True)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep verified evaluations in this folder across runs.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the per-layer plan (apply it with: edgetune quantize --plan).")
def optimize(model: Path, calib: str, eval_data: str, metric: str, precisions: str | None,
             target_isa: str | None, measure_layers: int, report_path: Path | None,
             html_path: Path | None, as_json: bool, max_drop: float, objective: str,
             time_budget: float | None, max_verifications: int, cache_dir: Path | None,
             output: Path, plan_path: Path | None) -> None:
    """Choose a precision per layer of MODEL: smallest or fastest within --max-drop."""
    from edgetune.optimize.config import Objective, OptimizeConfig
    from edgetune.optimize.result import optimize_report
    from edgetune.optimize.search import optimize as run

    _check_outputs((output, "model output"), (plan_path, "plan"), (report_path, "report"),
                   (html_path, "HTML report"))
    config = OptimizeConfig(
        max_drop=max_drop, objective=Objective(objective), time_budget_s=time_budget,
        max_verifications=max_verifications, cache_dir=cache_dir,
        analyze=_analyze_config(metric, precisions, target_isa, measure_layers),
    )
    with progress_bar(not as_json) as progress:
        result = run(model, config, data=calib, eval_data=eval_data, progress=progress)
    result.model.save(output)
    if plan_path is not None:
        result.plan.save(plan_path)
    report = optimize_report(result, config)
    _write_reports(report, report_path, html_path)
    if as_json:
        echo_json(report)
    else:
        _print_optimize(report["optimize"], output, plan_path)


def _write_reports(report: dict[str, Any], report_path: Path | None, html_path: Path | None) -> None:
    import edgetune.report.optimize  # noqa: F401  (registers the HTML sections)
    from edgetune.report import write_html, write_json

    if report_path is not None:
        write_json(report, report_path)
    if html_path is not None:
        write_html(report, html_path)


def _print_analysis(sens: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Layers by sensitivity ({sens['metric']}, target {sens['target_isa']})")
    for col in ("#", "layer", "op", "bytes", "time", "int8 dB", "int4 dB", "drop", "saturation", "advice"):
        table.add_column(col, justify="left" if col in ("layer", "op", "advice") else "right")
    for i, layer in enumerate(sens["layers"], 1):
        best = layer["best"]
        table.add_row(str(i), layer["name"], layer["op_type"], f"{layer['bytes_share']:.0%}",
                      f"{layer['latency_share']:.0%}", _db(best.get("int8")), _db(best.get("int4")),
                      _drop(best), _sat(layer["saturation"]), layer["recommendation"]["label"])
    console = Console()
    console.print(table)
    corr = sens["rank_correlation"].get("all")
    if corr:
        console.print(f"proxy vs measured drop (Spearman, {corr['n']} pairs): output noise "
                      f"{_num(corr['output_noise'])}, layer noise {_num(corr['layer_noise'])}, "
                      f"weight error {_num(corr['weight_error'])}", highlight=False)
    for layer in sens["layers"]:
        console.print(f"- {layer['name']}: {layer['recommendation']['reason']}", highlight=False, markup=False)


def _print_optimize(opt: dict[str, Any], output: Path, plan_path: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Verified candidates ({opt['metric']}, max drop {opt['max_drop']:g})")
    for col in ("#", "candidate", opt["metric"], "drop", "size", "p50 x", "precisions"):
        table.add_column(col, justify="left" if col in ("candidate", "precisions") else "right")
    pareto = set(opt["pareto"])
    for i, c in enumerate(opt["candidates"]):
        mark = ("> " if i == opt["chosen"] else "") + ("*" if i in pareto else "")
        table.add_row(f"{mark}{i}", c["label"], f"{c['metric']:.5f}", f"{c['drop']:+.5f}",
                      f"{c['size_bytes'] / 1024:.1f} KiB", f"{c['latency_ratio']:.2f}",
                      ", ".join(f"{k} x{v}" for k, v in c["precisions"].items()))
    console = Console()
    console.print(table)
    console.print("> chosen, * Pareto front (size, latency, metric)", highlight=False)
    for reason in opt["reasons"]:
        console.print(f"- {reason}", highlight=False, markup=False)
    if not opt["meets_budget"]:
        console.print("! the returned model misses the budget", style="red")
    click.echo(f"wrote {output}" + (f" and {plan_path}" if plan_path else ""))


def _db(best: dict[str, Any] | None) -> str:
    if not best or best.get("output_sqnr_db") is None:
        return "-"
    return f"{best['output_sqnr_db']:.0f}"


def _drop(best: dict[str, Any]) -> str:
    drops = [f"{k}:{v['metric_drop']:+.4f}" for k, v in best.items() if v.get("metric_drop") is not None]
    return " ".join(drops) if drops else "-"


def _sat(sat: dict[str, Any]) -> str:
    if not sat.get("pairs_simulated"):
        return "-"
    return f"{sat['saturated_fraction']:.2%}" + (" !" if sat["at_risk"] else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def quantize_with_plan(model: Path, plan_path: Path, *, calib: str, eval_data: str | None,
                       metric: str, output: Path, report_path: Path | None, html_path: Path | None,
                       as_json: bool) -> int:
    """``edgetune quantize --plan``: build the plan; with ``--eval``, measure its drop against
    the budget recorded in the plan. Returns the exit code: 1 when the plan misses its budget
    (the model and the report are still written, and the output says so)."""
    from edgetune.optimize.result import plan_report
    from edgetune.optimize.search import verify_plan
    from edgetune.transforms.plan import apply_plan, load_plan

    _check_outputs((output, "model output"), (report_path, "report"), (html_path, "HTML report"))
    plan = load_plan(plan_path)
    if eval_data is None:
        built = apply_plan(model, plan, data=calib)
        built.model.save(output)
        for warning in built.warnings:
            click.echo(f"! {warning}", err=True)
        click.echo(f"wrote {output} ({built.model.size_bytes} bytes, plan {plan.fingerprint()})")
        return 0
    check = verify_plan(model, plan, data=calib, eval_data=eval_data, metric=metric)
    check.model.save(output)
    report = plan_report(check, plan)
    _write_reports(report, report_path, html_path)
    if as_json:
        echo_json(report)
    else:
        budget = "no budget recorded" if check.max_drop is None else f"budget {check.max_drop:g}"
        click.echo(f"{metric}: {check.metric:.5f} vs float32 {check.baseline_metric:.5f} (drop "
                   f"{check.drop:+.5f}, {budget}); {check.size_bytes} bytes; wrote {output}")
    if check.meets_budget is False:
        click.echo(f"! the plan MISSES its budget: drop {check.drop:.5f} > {check.max_drop:g}", err=True)
        return 1
    return 0
