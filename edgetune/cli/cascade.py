"""edgetune cascade build|serve|recalibrate and edgetune serve: thin shells over the library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgetune.cli._common import echo_json, json_option, progress_bar

__all__ = ["cascade", "serve"]

_SCORES = ["auto", "max_prob", "margin", "entropy"]


def _target_options(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    how = "" if required else " (default: keep the cascade's)"
    options = [
        click.option("--target-metric", type=float, help=f"Certify metric >= X{how}."),
        click.option(
            "--max-drop",
            type=float,
            help=f"Certify a drop of at most D below the large model{how}.",
        ),
        click.option(
            "--max-escalation", type=float, help=f"Certify at most R of requests escalated{how}."
        ),
        click.option(
            "--score",
            type=click.Choice(_SCORES),
            default="auto",
            show_default=True,
            help="Gate confidence score; auto picks the best on the fit split.",
        ),
        click.option(
            "--fit",
            "fit_data",
            help="Separate labeled data to fit the gate on "
            "(default: a random --fit-fraction of --eval).",
        ),
        click.option("--fit-fraction", type=float, default=0.4, show_default=True),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Seed of the fit/certify split."
        ),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _target(
    target_metric: float | None, max_drop: float | None, max_escalation: float | None
) -> Any:
    from edgetune.cascade import Target

    if target_metric is None and max_drop is None and max_escalation is None:
        return None
    return Target(min_metric=target_metric, max_drop=max_drop, max_escalation=max_escalation)


def _score(name: str) -> Any:
    from edgetune.cascade import ScoreKind

    return None if name == "auto" else ScoreKind(name)


@click.group()
def cascade() -> None:
    """A small model answers on device; a calibrated gate escalates hard inputs to a large one."""


@cascade.command("build")
@click.argument("small", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("large", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--eval",
    "eval_data",
    required=True,
    help="Held-out labeled data (.npz or package.module:function).",
)
@click.option(
    "--metric",
    type=click.Choice(["top1", "agreement"]),
    default="top1",
    show_default=True,
    help="top1 needs labels; agreement compares with the large model.",
)
@_target_options(required=True)
@click.option(
    "--confidence",
    type=float,
    default=0.95,
    show_default=True,
    help="Probability that the certified bound holds.",
)
@click.option("--cost-small", type=float, help="Small model ms per request (default: measured).")
@click.option("--cost-large", type=float, help="Large model ms per request (default: measured).")
@click.option(
    "--cost-network",
    type=float,
    default=0.0,
    show_default=True,
    help="Round trip ms added by escalating to a remote large model.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Cascade directory to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing cascade directory.")
@json_option
def build(
    small: Path,
    large: Path,
    eval_data: str,
    metric: str,
    target_metric: float | None,
    max_drop: float | None,
    max_escalation: float | None,
    score: str,
    fit_data: str | None,
    fit_fraction: float,
    seed: int,
    confidence: float,
    cost_small: float | None,
    cost_large: float | None,
    cost_network: float,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Calibrate SMALL's confidence and certify when to escalate to LARGE; write a directory."""
    from edgetune.cascade import CascadeConfig, GateMetric, Target, build_cascade

    target = _target(target_metric, max_drop, max_escalation) or Target()
    config = CascadeConfig(
        target=target,
        metric=GateMetric(metric),
        confidence=confidence,
        score=_score(score),
        fit_fraction=fit_fraction,
        seed=seed,
        cost_small_ms=cost_small,
        cost_large_ms=cost_large,
        cost_network_ms=cost_network,
    )
    with progress_bar(not as_json) as progress:
        result = build_cascade(
            small, large, config.validated(), data=eval_data, fit_data=fit_data, progress=progress
        )
    result.save(out, overwrite=overwrite)
    _print_build(result.report, out, as_json)


def _print_build(report: dict[str, Any], out: Path, as_json: bool) -> None:
    if as_json:
        echo_json(
            {
                "cascade_dir": str(out),
                **{k: report[k] for k in ("cascade", "calibration")},
                "tradeoff": report["tradeoff"],
            }
        )
        return
    spec, cal = report["cascade"], report["calibration"]
    gate, exp = spec["gate"], spec["expected"]
    click.echo(f"cascade written to {out}/ (report: {out}/report.html)")
    click.echo(
        f"gate: {gate['score']} at temperature {gate['temperature']:.4g}; escalate when "
        f"below {gate['threshold']:.6g}"
    )
    click.echo(
        f"calibration error (ECE, certify split): {cal['ece_before']:.4f} raw -> "
        f"{cal['ece_after']:.4f} scaled"
    )
    _print_table(spec, exp)
    click.echo(spec["guarantee"]["statement"])
    _print_curve(report["tradeoff"], spec["metric"])


def _print_table(spec: dict[str, Any], exp: dict[str, Any]) -> None:
    costs, metric = spec["costs"], spec["metric"]
    click.echo(f"{'':14}{metric:>10}{'escalated':>12}{'expected ms':>14}   (certify split)")
    rows = [
        ("small model", exp["small_metric"], 0.0, costs["small_ms"]),
        ("large model", exp["large_metric"], 1.0, costs["large_ms"] + costs["network_ms"]),
        ("cascade", exp["metric"], exp["escalation"], exp["expected_latency_ms"]),
    ]
    for name, value, esc, ms in rows:
        click.echo(f"{name:14}{value:>10.4f}{esc:>11.1%}{ms:>14.4f}")


def _print_curve(trade: dict[str, Any], metric: str) -> None:
    points, chosen = trade["points"], trade["chosen_index"]
    step = max(1, len(points) // 10)
    keep = sorted(set(range(0, len(points), step)) | {chosen, len(points) - 1})
    click.echo(
        f"trade-off:{'threshold':>12}{'escalated':>11}{metric:>9}{'harm':>8}{'exp. ms':>10}"
        f"{'cost':>7}   (cost: expected ms / always-large ms)"
    )
    for i in keep:
        p = points[i]
        mark = "chosen >" if i == chosen else ""
        cost = p.get("cost_vs_large_only")
        click.echo(
            f"{mark:>10}{p['threshold']:>12.6g}{p['escalation']:>10.1%}{p['metric']:>9.4f}"
            f"{p['harm']:>8.4f}{p['expected_latency_ms']:>10.4f}"
            + (f"{cost:>7.3f}" if cost is not None else f"{'-':>7}")
        )


@cascade.command("recalibrate")
@click.argument("cascade_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--eval", "eval_data", required=True, help="New labeled data like today's traffic.")
@_target_options(required=False)
@click.option("--confidence", type=float, help="Default: keep the cascade's.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the recalibrated cascade here instead of replacing CASCADE_DIR.",
)
@json_option
def recalibrate(
    cascade_dir: Path,
    eval_data: str,
    target_metric: float | None,
    max_drop: float | None,
    max_escalation: float | None,
    score: str,
    fit_data: str | None,
    fit_fraction: float,
    seed: int,
    confidence: float | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Refit CASCADE_DIR's gate on new data (same models; atomic replace)."""
    from edgetune.cascade import RecalibrateConfig
    from edgetune.cascade import recalibrate as run_recalibrate

    config = RecalibrateConfig(
        target=_target(target_metric, max_drop, max_escalation),
        confidence=confidence,
        score=_score(score),
        fit_fraction=fit_fraction,
        seed=seed,
    )
    with progress_bar(not as_json) as progress:
        result = run_recalibrate(
            cascade_dir, config, data=eval_data, fit_data=fit_data, progress=progress
        )
    target = out or cascade_dir
    result.save(target, overwrite=True)
    if as_json:
        echo_json(
            {
                "cascade_dir": str(target),
                "changes": result.changes(),
                "guarantee": result.build.spec.guarantee,
            }
        )
        return
    click.echo(f"recalibrated cascade written to {target}/")
    for key, change in result.changes().items():
        click.echo(f"  {key:12} {change['before']!s:>12.10} -> {change['after']!s:.10}")
    click.echo(result.build.spec.guarantee["statement"])


def _serve_config(
    port: int, host: str, max_body_mb: float, max_batch: int, threads: int, **extra: Any
) -> Any:
    from edgetune.cascade import ServeConfig

    return ServeConfig(
        host=host,
        port=port,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_batch=max_batch,
        threads=threads,
        **extra,
    ).validated()


def _server_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--port", type=int, required=True, help="TCP port to listen on."),
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
        click.option(
            "--max-body-mb",
            type=float,
            default=4.0,
            show_default=True,
            help="Largest request body accepted (413 above).",
        ),
        click.option(
            "--max-batch",
            type=int,
            default=256,
            show_default=True,
            help="Most samples in one request.",
        ),
        click.option(
            "--threads",
            type=int,
            default=1,
            show_default=True,
            help="ONNX Runtime threads per session (requests run concurrently).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cascade.command("serve")
@click.argument("cascade_dir", type=click.Path(file_okay=False, path_type=Path))
@_server_options
@click.option(
    "--remote",
    help="URL of an `edgetune serve` running the large model (default: run it in process).",
)
@click.option(
    "--timeout-ms",
    type=float,
    default=500.0,
    show_default=True,
    help="Deadline of a remote escalation; past it the local answer is returned, flagged.",
)
@click.option(
    "--drift-window",
    type=int,
    default=1000,
    show_default=True,
    help="Gate scores kept to compare with the calibration reference.",
)
def cascade_serve(
    cascade_dir: Path,
    port: int,
    host: str,
    max_body_mb: float,
    max_batch: int,
    threads: int,
    remote: str | None,
    timeout_ms: float,
    drift_window: int,
) -> None:
    """Serve CASCADE_DIR over HTTP: POST /predict, GET /metrics, /drift, /info, /healthz."""
    from edgetune.cascade import create_cascade_app, run_server

    config = _serve_config(
        port,
        host,
        max_body_mb,
        max_batch,
        threads,
        remote=remote,
        remote_timeout_s=timeout_ms / 1000.0,
        drift_window=drift_window,
        drift_min_samples=min(200, drift_window),
    )
    app = create_cascade_app(cascade_dir, config)
    large = remote or "in process"
    click.echo(
        f"serving cascade {cascade_dir} on http://{host}:{port} (large model: {large})", err=True
    )
    run_server(app, config)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_server_options
def serve(
    model: Path, port: int, host: str, max_body_mb: float, max_batch: int, threads: int
) -> None:
    """Serve MODEL over HTTP: POST /predict (JSON, .npy or .npz), GET /metrics, /info, /healthz."""
    from edgetune.cascade import create_model_app, run_server

    config = _serve_config(port, host, max_body_mb, max_batch, threads)
    app = create_model_app(model, config)
    click.echo(f"serving {model} on http://{host}:{port}", err=True)
    run_server(app, config)
