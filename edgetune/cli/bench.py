"""edgetune bench / diverge / agent: every runtime against the CPU baseline, here or on a device."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from edgetune.cli._common import echo_json, json_option, progress_bar
from edgetune.core.fileio import check_writable

__all__ = ["agent", "bench", "diverge"]

_MIB = 1024 * 1024


def _shapes(values: Iterable[str]) -> dict[str, tuple[int, ...]] | None:
    shapes = {}
    for text in values:
        name, _, dims = text.rpartition(":")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} must look like NAME:1,128", param_hint="--shape"
            ) from None
        if not name:
            raise click.BadParameter(f"{text!r} must look like NAME:1,128", param_hint="--shape")
    return shapes or None


def _settings(
    calib: str | None, torch_module: str | None, ov_precision: str | None
) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {}
    if ov_precision:
        settings["openvino"] = {"precision": ov_precision}
    if calib:
        settings["litert-int8"] = {"calibration": calib}
    if torch_module:
        settings["torch"] = {"module": torch_module}
    return settings


def _outputs(report_path: Path | None, html_path: Path | None) -> None:
    for path, what in ((report_path, "report"), (html_path, "HTML report")):
        if path is not None:
            check_writable(path, what)


def _write(report: dict[str, Any], report_path: Path | None, html_path: Path | None) -> None:
    import edgetune.report.bench  # noqa: F401  (registers the bench sections)
    from edgetune.report import write_html, write_json

    if report_path:
        write_json(report, report_path)
    if html_path:
        write_html(report, html_path)


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--runtime",
    "runtimes",
    multiple=True,
    help="Runtime to measure (repeatable; default: every one installed here).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), help="Intra-op threads (default: runtime's)."
)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--data", help="Real inputs: .npz or package.module:function (default: synthetic).")
@click.option("--shape", "shapes", multiple=True, help="Input shape NAME:d0,d1,... (repeatable).")
@click.option(
    "--sustained",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Also run each runtime continuously for SECONDS and detect throttling.",
)
@click.option(
    "--percentile",
    type=click.FloatRange(1, 99.9),
    default=90.0,
    show_default=True,
    help="Percentile whose confidence bound decides when to stop measuring.",
)
@click.option("--min-seconds", type=click.FloatRange(min=0), default=3.0, show_default=True)
@click.option("--max-seconds", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option(
    "--cold-repeats",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Fresh-process cold starts per runtime (0 skips them and peak memory).",
)
@click.option("--no-placement", is_flag=True, help="Skip the per-operator placement report.")
@click.option("--calib", help="Calibration data for litert-int8 (.npz or package.module:function).")
@click.option(
    "--torch-module", help="package.module:factory returning the torch.nn.Module (torch)."
)
@click.option(
    "--openvino-precision",
    "ov_precision",
    type=click.Choice(["f32", "bf16", "f16"]),
    help="OpenVINO CPU inference precision (default: OpenVINO's; bf16 on BF16/AMX CPUs).",
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    help="Run on an edgetune agent at this URL instead (repeatable).",
)
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def bench(
    models: tuple[Path, ...],
    runtimes: tuple[str, ...],
    threads: int | None,
    batch: int,
    data: str | None,
    shapes: tuple[str, ...],
    sustained: float,
    percentile: float,
    min_seconds: float,
    max_seconds: float,
    cold_repeats: int,
    no_placement: bool,
    calib: str | None,
    torch_module: str | None,
    ov_precision: str | None,
    devices: tuple[str, ...],
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """Benchmark MODELS on every runtime against ONNX Runtime on CPU."""
    from edgetune.benchmark.bench import BenchConfig
    from edgetune.benchmark.bench import bench as run_bench
    from edgetune.benchmark.latency import LatencyConfig
    from edgetune.benchmark.sustained import SustainedConfig

    _outputs(report_path, html_path)
    latency = LatencyConfig(
        warmup=20,
        min_iters=200,
        max_iters=100000,
        min_seconds=min_seconds,
        max_seconds=max(max_seconds, min_seconds),
        stop_percentile=percentile,
        block=10,
        switch_runs=1,
    )
    config = BenchConfig(
        runtimes=runtimes,
        threads=threads,
        batch=batch,
        input_shapes=_shapes(shapes),
        latency=latency,
        cold_repeats=cold_repeats,
        placement=not no_placement,
        sustained=SustainedConfig(seconds=sustained) if sustained else None,
    )
    if devices:
        from edgetune.benchmark.remote import bench_devices

        report = bench_devices(devices, list(models), config, data=data)
    else:
        with progress_bar(not as_json) as progress:
            result = run_bench(
                list(models),
                config,
                data=data,
                runtime_settings=_settings(calib, torch_module, ov_precision),
                progress=progress,
            )
        report = result.report()
    _emit(report, report_path, html_path, as_json, lambda: _print_bench(report))


def _emit(
    report: dict[str, Any],
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
    show: Callable[[], None],
) -> None:
    """Write the report files, then print JSON or the human tables."""
    _write(report, report_path, html_path)
    if as_json:
        echo_json(report)
    else:
        show()


def _console() -> Any:
    """A rich console; when the output is not a terminal, wide enough for the tables."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _print_bench(report: dict[str, Any]) -> None:
    console = _console()
    if "bench" in report:
        _print_section(console, report["bench"], "")
    tiers: dict[str, list[dict[str, Any]]] = {}
    for device in report.get("devices", []):
        tiers.setdefault(device["tier"], []).append(device)
    for tier, members in tiers.items():
        _print_tier(console, tier, members)


def _print_tier(console: Any, tier: str, members: list[dict[str, Any]]) -> None:
    """One table per device tier (and model): a row per device and runtime."""
    from rich.table import Table

    for device in members:
        facts = device["bench"]["device"]
        console.print(
            f"[{tier}] {device['url']}: {facts.get('cpu_model')}, "
            f"{facts.get('cores_available')} cores, ISA {facts.get('isa')}",
            highlight=False,
        )
    names = dict.fromkeys(m["model"] for d in members for m in d["bench"]["models"])
    for name in names:
        table = Table(title=f"device tier {tier}: {name}")
        for col in ("device", *_COLUMNS):
            table.add_column(col, justify="left" if col in ("device", "runtime") else "right")
        for device in members:
            for model in (m for m in device["bench"]["models"] if m["model"] == name):
                for entry in model["runtimes"]:
                    table.add_row(device["url"], *_row(entry))
        console.print(table)
        for device in members:
            for model in (m for m in device["bench"]["models"] if m["model"] == name):
                for note in model.get("notes", []):
                    console.print(
                        f"! {device['url']}: {note}", style="yellow", highlight=False, markup=False
                    )


_COLUMNS = (
    "runtime",
    "p50 ms",
    "p90 ms (CI)",
    "p99 ms",
    "vs CPU",
    "items/s",
    "cold ms",
    "fresh ms",
    "peak MiB",
    "ops t/cpu/fb",
    "sustained",
)


def _print_section(console: Any, section: dict[str, Any], title: str) -> None:
    from rich.table import Table

    for model in section["models"]:
        head = f"{model['model']} ({model['precision']}, {model['size_bytes'] / 1024:.1f} KiB, "
        table = Table(title=f"{title + ': ' if title else ''}{head}batch {model['batch']})")
        for col in _COLUMNS:
            table.add_column(col, justify="left" if col == "runtime" else "right")
        for entry in model["runtimes"]:
            table.add_row(*_row(entry))
        console.print(table)
        console.print(f"fastest: {model['fastest']}", highlight=False)
        for note in model.get("notes", []):
            console.print(f"! {note}", style="yellow", highlight=False, markup=False)


def _row(e: dict[str, Any]) -> list[str]:
    if e.get("status") != "ok":
        return [e["runtime"], f"{e.get('status')}: {str(e.get('reason', ''))[:90]}", *[""] * 9]
    lat, cold = e["latency_ms"], e["cold_start"]
    low, high = lat["ci"]["p90"]
    fresh = cold.get("fresh_process") or {}
    counts = (e.get("placement") or {}).get("counts") or {}
    speed = e.get("speedup_vs_baseline")
    rss = e.get("peak_rss_bytes")
    return [
        e["runtime"],
        _g(lat["p50"]),
        f"{_g(lat['p90'])} ({_g(low)}-{_g(high)})",
        _g(lat["p99"]),
        f"x{speed:.2f}" if speed else "-",
        f"{e['throughput_per_s']:.0f}",
        f"{cold['total_ms']:.1f}",
        _f(fresh.get("total_ms"), 1),
        _f(rss / _MIB if rss else None, 0),
        "/".join(str(counts.get(k, "-")) for k in ("target", "cpu_by_design", "fallback"))
        if counts
        else "-",
        _sustained(e.get("sustained")),
    ]


def _sustained(sus: dict[str, Any] | None) -> str:
    if not sus:
        return "-"
    return ("THROTTLED " if sus["throttled"] else "") + f"x{sus['sustained_over_burst']:.2f}"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--runtime", "runtimes", multiple=True, help="Runtime (repeatable; default: all here)."
)
@click.option(
    "--eval",
    "eval_data",
    required=True,
    help="Inputs (and labels): .npz or package.module:function.",
)
@click.option("--metric", help="Task metric (default: top1 with labels, else fidelity).")
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0),
    default=0.01,
    show_default=True,
    help="Largest allowed drop of the task metric against the float32 reference.",
)
@click.option("--limit", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--no-layers", is_flag=True, help="Skip the per-layer comparison.")
@click.option("--threads", type=click.IntRange(min=1))
@click.option("--calib", help="Calibration data for litert-int8.")
@click.option(
    "--openvino-precision",
    "ov_precision",
    type=click.Choice(["f32", "bf16", "f16"]),
    help="OpenVINO CPU inference precision (default: OpenVINO's; bf16 on BF16/AMX CPUs).",
)
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def diverge(
    ctx: click.Context,
    models: tuple[Path, ...],
    runtimes: tuple[str, ...],
    eval_data: str,
    metric: str | None,
    max_drop: float,
    limit: int,
    no_layers: bool,
    threads: int | None,
    calib: str | None,
    ov_precision: str | None,
    report_path: Path | None,
    html_path: Path | None,
    as_json: bool,
) -> None:
    """Compare MODELS on every runtime with the first model on ONNX Runtime CPU (exit 1: fail)."""
    from edgetune.benchmark.diverge import DivergeConfig
    from edgetune.benchmark.diverge import diverge as run_diverge

    _outputs(report_path, html_path)
    config = DivergeConfig(
        runtimes=runtimes,
        metric=metric,
        max_drop=max_drop,
        limit=limit,
        per_layer=not no_layers,
        threads=threads,
    )
    with progress_bar(not as_json) as progress:
        result = run_diverge(
            list(models),
            config,
            data=eval_data,
            runtime_settings=_settings(calib, None, ov_precision),
            progress=progress,
        )
    _emit(
        result.report(), report_path, html_path, as_json, lambda: _print_diverge(result.to_dict())
    )
    if not result.passed:
        ctx.exit(1)


def _print_diverge(d: dict[str, Any]) -> None:
    from rich.table import Table

    ref = d["reference"]
    table = Table(
        title=f"against {ref['model']} on {ref['runtime']} ({ref['metric']} = "
        f"{ref['metric_value']:.4f}, max drop {ref['max_drop']})"
    )
    for col in (
        "model",
        "runtime",
        "max |diff|",
        "mean |diff|",
        "cosine",
        "top-1 agree",
        ref["metric"],
        "drop",
        "worst layer",
        "verdict",
    ):
        table.add_column(
            col, justify="left" if col in ("model", "runtime", "worst layer") else "right"
        )
    for r in d["rows"]:
        table.add_row(*_diverge_row(r))
    console = _console()
    console.print(table)
    for r in d["rows"]:
        for note in r.get("notes", []):
            console.print(f"! {note}", style="yellow", highlight=False, markup=False)
    for name, reason in d["skipped"].items():
        console.print(f"skipped {name}: {reason}", highlight=False, markup=False)


def _diverge_row(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["model"], r["runtime"], *[""] * 7, f"FAIL: {r['error'][:60]}"]
    worst = (r.get("layers") or {}).get("worst") or {}
    return [
        r["model"],
        r["runtime"],
        f"{r['max_abs_diff']:.3g}",
        f"{r['mean_abs_diff']:.3g}",
        f"{r['cosine_mean']:.5f}",
        _f(r.get("top1_agreement"), 4),
        f"{r['metric_value']:.4f}",
        f"{r['metric_drop']:+.4f}",
        f"{worst.get('tensor', '-')} ({_f(worst.get('cosine_min'), 4)})",
        "pass" if r["passed"] else "FAIL",
    ]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), required=True)
@click.option("--cores", type=click.IntRange(min=1), help="Pin the agent to its first N cores.")
@click.option("--tier", help="Device tier label shown in multi-device tables.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where uploaded models are kept (default: a temporary folder).",
)
@click.option("--allow-remote", is_flag=True, help="Allow binding to a non-loopback address.")
def agent(
    host: str,
    port: int,
    cores: int | None,
    tier: str | None,
    workdir: Path | None,
    allow_remote: bool,
) -> None:
    """Run a device agent that benchmarks models sent by 'edgetune bench --device URL'."""
    from edgetune.benchmark.agent import pin_cores, serve

    pinned = pin_cores(cores) if cores else None
    click.echo(
        f"edgetune agent on http://{host}:{port}" + (f", cores {pinned}" if pinned else ""),
        err=True,
    )
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        serve(host, port, workdir=workdir, tier=tier, allow_remote=allow_remote)
        return
    with tempfile.TemporaryDirectory(prefix="edgetune-agent-") as tmp:
        serve(host, port, workdir=Path(tmp), tier=tier, allow_remote=allow_remote)
