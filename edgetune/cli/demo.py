"""edgetune demo: the main job on the bundled MNIST CNN, no downloads."""

from __future__ import annotations

from pathlib import Path

import click

from edgetune.cli._common import echo_json, json_option, progress_bar, summary_table

__all__ = ["demo"]


@click.command()
@click.option(
    "--out",
    "out_dir",
    default="edgetune-demo",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for everything made.",
)
@json_option
def demo(out_dir: Path, as_json: bool) -> None:
    """Quantize the bundled CNN to INT8, evaluate and benchmark both, write reports to --out."""
    from edgetune.demo import run_demo

    with progress_bar(not as_json) as progress:
        result = run_demo(out_dir, progress=progress)
    if as_json:
        echo_json(result.job.report)
        return
    summary_table(result.job.report)
    click.echo(
        f"\nEverything is in {out_dir}/: "
        + ", ".join(sorted(p.name for p in result.files.values()))
    )
    click.echo("Repeat any step by hand:")
    for command in result.job.report["reproduce"]:
        click.echo(f"  {command}")
