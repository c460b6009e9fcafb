"""edgetune quantize: INT8 post-training quantization, with an optional evaluation and report."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli._common import echo_json, json_option, metric_option, progress_bar, summary_table
from edgetune.core.fileio import check_writable
from edgetune.core.isa import Isa, parse_isa
from edgetune.transforms.calibrate import CalibMethod
from edgetune.transforms.settings import ActType, QuantizeConfig, QuantMode, WeightType

__all__ = ["quantize"]


def _mode(dynamic: bool | None) -> QuantMode:
    if dynamic is None:
        return QuantMode.AUTO
    return QuantMode.DYNAMIC if dynamic else QuantMode.STATIC


def _op_types(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib", required=True, help="Calibration data: .npz or package.module:function.")
@click.option("--eval", "eval_data", help="Held-out data to evaluate float32 and INT8 on.")
@metric_option
@click.option(
    "--method",
    type=click.Choice([m.value for m in CalibMethod]),
    help="Calibration method (default: try all, keep the best).",
)
@click.option(
    "--per-channel/--per-tensor", default=None, help="Weight granularity (default: measured)."
)
@click.option(
    "--dynamic/--static", default=None, help="Activation quantization (default: measured)."
)
@click.option(
    "--target-isa",
    type=click.Choice([i.value for i in Isa]),
    help="Instruction set of the CPU the model will run on (default: this machine's).",
)
@click.option("--reduce-range/--full-range", default=None, help="7-bit weights (default: by ISA).")
@click.option(
    "--activations", type=click.Choice([a.value for a in ActType]), help="Pin activation type."
)
@click.option(
    "--weights", type=click.Choice([w.value for w in WeightType]), help="Pin weight type."
)
@click.option("--op-types", help="Comma-separated operator types to quantize (default: measured).")
@click.option("--exclude", multiple=True, help="Node name to keep in float (repeatable).")
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Apply a per-layer plan (from edgetune optimize --plan, or edited by hand).",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def quantize(
    model: Path,
    calib: str,
    eval_data: str | None,
    metric: str,
    method: str | None,
    per_channel: bool | None,
    dynamic: bool | None,
    target_isa: str | None,
    reduce_range: bool | None,
    activations: str | None,
    weights: str | None,
    op_types: str | None,
    exclude: tuple[str, ...],
    plan_path: Path | None,
    output: Path,
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """Quantize MODEL to INT8 with settings chosen (and measured) for the target CPU."""
    if plan_path is not None:
        _apply_plan(
            model, plan_path, calib, eval_data, metric, output, report_path, html_path, as_json
        )
        return
    from edgetune.pipeline import JobConfig, quantize_and_report
    from edgetune.report import write_html, write_json

    for path, what in (
        (output, "model output"),
        (report_path, "report"),
        (html_path, "HTML report"),
    ):
        if path is not None:
            check_writable(path, what)
    qconfig = QuantizeConfig(
        mode=_mode(dynamic),
        method=CalibMethod(method) if method else None,
        per_channel=per_channel,
        target_isa=parse_isa(target_isa) if target_isa else None,
        activations=ActType(activations) if activations else None,
        weights=WeightType(weights) if weights else None,
        reduce_range=reduce_range,
        op_types=_op_types(op_types),
        exclude_nodes=exclude,
    )
    with progress_bar(not as_json) as progress:
        job = quantize_and_report(
            model,
            JobConfig(quantize=qconfig, metric=metric),
            calib=calib,
            eval_data=eval_data,
            progress=progress,
        )
    job.quantized.model.save(output)
    if report_path:
        write_json(job.report, report_path)
    if html_path:
        write_html(job.report, html_path)
    if as_json:
        echo_json(job.report)
    else:
        summary_table(job.report)
        click.echo(f"wrote {output}")


def _apply_plan(
    model: Path,
    plan_path: Path,
    calib: str,
    eval_data: str | None,
    metric: str,
    output: Path,
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """``--plan``: build the per-layer plan; exit 1 when it misses the budget it records."""
    from edgetune.cli.optimize import quantize_with_plan

    code = quantize_with_plan(
        model,
        plan_path,
        calib=calib,
        eval_data=eval_data,
        metric=metric,
        output=output,
        report_path=report_path,
        html_path=html_path,
        as_json=as_json,
    )
    if code:
        raise click.exceptions.Exit(code)
