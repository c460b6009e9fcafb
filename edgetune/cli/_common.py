"""Helpers shared by the commands: progress bars, tables, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from edgetune.core.progress import NULL_PROGRESS, Progress

__all__ = ["echo_json", "json_option", "metric_option", "progress_bar", "summary_table"]

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
metric_option = click.option(
    "--metric",
    default="top1",
    show_default=True,
    help="top1, fidelity, or package.module:function(outputs, labels) -> float.",
)


class _RichProgress:
    """Draws the library's progress steps as rich bars on stderr."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, label: str, total: int | None = None) -> None:
        self.finish()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, units: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, units)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A progress sink drawing on stderr when it is a terminal, else a silent one."""
    if not enabled or not sys.stderr.isatty():
        yield NULL_PROGRESS
        return
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with RichProgress(*columns, console=Console(stderr=True), transient=True) as bar:
        yield _RichProgress(bar)


def echo_json(data: Any) -> None:
    from edgetune.report.schema import jsonable

    click.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def summary_table(report: dict[str, Any]) -> None:
    """The float32 vs quantized table a person reads after quantize or demo."""
    from rich.console import Console
    from rich.table import Table

    metric = report.get("metric", {}).get("name", "metric")
    table = Table(title="float32 vs INT8 (ONNX Runtime CPU, measured interleaved)")
    for col in ("model", "size", "p50 ms", "p90 ms", metric):
        table.add_column(col, justify="left" if col == "model" else "right")
    for label, key in (("float32", "baseline"), ("int8", "result")):
        e = report[key]
        table.add_row(
            label,
            _kb(e["size_bytes"]),
            f"{e['latency_ms']['p50']:.3f}",
            f"{e['latency_ms']['p90']:.3f}",
            _num(e["metric"]),
        )
    c = report["change"]
    table.add_row(
        "change",
        f"x{c['size_ratio']:.3f}",
        f"x{c['latency_p50_ratio']:.2f}",
        "",
        _signed(c["metric"]),
    )
    console = Console()
    console.print(table)
    for reason in report["quantization"]["reasons"]:
        console.print(f"- {reason}", highlight=False, markup=False)
    for note in [*report.get("notes", []), *report["quantization"].get("warnings", [])]:
        console.print(f"! {note}", style="yellow", highlight=False, markup=False)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"
