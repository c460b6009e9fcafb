"""edgetune evaluate: the task metric of one model on a dataset."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli._common import echo_json, json_option, metric_option, progress_bar

__all__ = ["evaluate"]


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--eval", "eval_data", required=True, help="Data: .npz or package.module:function.")
@metric_option
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Float32 model to compare with (needed by --metric fidelity).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N samples.")
@json_option
def evaluate(
    model: Path,
    eval_data: str,
    metric: str,
    reference: Path | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Evaluate MODEL on --eval data with --metric."""
    from edgetune.validate import EvaluateConfig
    from edgetune.validate import evaluate as run_evaluate

    with progress_bar(not as_json) as progress:
        result = run_evaluate(
            model,
            EvaluateConfig(metric=metric, limit=limit),
            data=eval_data,
            reference=reference,
            progress=progress,
        )
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"{result.metric.name} = {result.value:.6f} on {result.n_samples} samples ({model})")
    for key, value in result.metric.details.items():
        click.echo(f"  {key} = {value:.6g}")
