"""The main job: quantize, evaluate float32 and INT8 on held-out data, benchmark both, report.

``edgetune quantize --eval`` and ``edgetune demo`` both run this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.benchmark.latency import LatencyConfig, LatencyStats, measure_interleaved
from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.metrics import RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.load import load
from edgetune.report.schema import new_report
from edgetune.runtimes import get_runtime
from edgetune.transforms.layers import layer_table
from edgetune.transforms.quantize import QuantizeResult, quantize
from edgetune.transforms.settings import QuantizeConfig
from edgetune.validate.evaluate import EvaluateResult, run_outputs

__all__ = ["JobConfig", "JobResult", "quantize_and_report"]

DataSpec = BoundData | Dataset | str | Path


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    metric: str | Any = "top1"
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    bench_samples: int = 16
    """Distinct samples cycled through during the latency measurement."""


@dataclass(frozen=True, kw_only=True)
class JobResult:
    fp32: Model
    quantized: QuantizeResult
    baseline: EvaluateResult | None
    result: EvaluateResult | None
    latency: dict[str, LatencyStats]
    report: dict[str, Any]


def quantize_and_report(
    model: Model | str | Path,
    config: JobConfig | None = None,
    *,
    calib: DataSpec,
    eval_data: DataSpec | None = None,
    progress: Progress = NULL_PROGRESS,
) -> JobResult:
    config = config or JobConfig()
    fp32 = load(model)
    metric = get_metric(config.metric)  # fail on a bad metric before any work
    quantized = quantize(fp32, config.quantize, data=calib, progress=progress)
    bench_data = bind(eval_data if eval_data is not None else calib, fp32)
    rt = get_runtime("onnxruntime")
    sessions = {"float32": rt.session(fp32), "int8": rt.session(quantized.model)}
    baseline = result = None
    if eval_data is not None:
        outs = {
            k: run_outputs(s, bench_data, progress=progress, label=f"evaluating {k}")
            for k, s in sessions.items()
        }
        baseline = _scored(fp32.name, metric, outs["float32"], outs["float32"])
        result = _scored(quantized.model.name, metric, outs["int8"], outs["float32"])
    feeds = list(bench_data.feeds(limit=config.bench_samples))
    latency = measure_interleaved(sessions, feeds, config.latency, progress=progress)
    report = build_report(fp32, quantized, baseline, result, latency, metric.name, rt.version())
    return JobResult(
        fp32=fp32,
        quantized=quantized,
        baseline=baseline,
        result=result,
        latency=latency,
        report=report,
    )


def _scored(name: str, metric: Any, outputs: RunOutputs, reference: RunOutputs) -> EvaluateResult:
    return EvaluateResult(
        model_name=name, metric=metric(outputs, reference), n_samples=len(outputs), outputs=outputs
    )


def build_report(
    fp32: Model,
    quantized: QuantizeResult,
    baseline: EvaluateResult | None,
    result: EvaluateResult | None,
    latency: dict[str, LatencyStats],
    metric_name: str,
    runtime_version: str,
) -> dict[str, Any]:
    report = new_report("quantize")
    report["runtime"] = {"name": "onnxruntime", "version": runtime_version, "provider": "CPU"}
    report["machine"]["isa"] = quantized.detected_isa.value
    report["baseline"] = _entry(fp32, baseline, latency["float32"])
    report["result"] = _entry(quantized.model, result, latency["int8"])
    report["change"] = _change(report["baseline"], report["result"])
    report["metric"] = {
        "name": metric_name,
        "eval_samples": result.n_samples if result else 0,
        "baseline_details": baseline.metric.details if baseline else {},
        "result_details": result.metric.details if result else {},
    }
    report["notes"] = _notes(report, quantized)
    report["quantization"] = quantized.to_dict()
    report["layers"] = [layer.to_dict() for layer in layer_table(quantized.model)]
    return report


def _entry(
    model: Model, evaluation: EvaluateResult | None, latency: LatencyStats
) -> dict[str, Any]:
    return {
        "model": model.name,
        "metric": evaluation.value if evaluation else None,
        "size_bytes": model.size_bytes,
        "latency_ms": latency.to_dict(),
    }


def _change(base: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    metric = None
    if base["metric"] is not None and res["metric"] is not None:
        metric = res["metric"] - base["metric"]
    return {
        "metric": metric,
        "size_ratio": res["size_bytes"] / base["size_bytes"],
        "latency_p50_ratio": res["latency_ms"]["p50"] / base["latency_ms"]["p50"],
    }


def _notes(report: dict[str, Any], quantized: QuantizeResult) -> list[str]:
    notes = []
    ratio = report["change"]["latency_p50_ratio"]
    if ratio > 1.0:
        ops = quantized.model.op_types()
        qdq = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
        notes.append(
            f"INT8 is slower than float32 on this CPU (p50 x{ratio:.2f}). The quantized graph "
            f"has {qdq} Quantize/DequantizeLinear nodes; on a model this small their per-run "
            "overhead outweighs the faster INT8 kernels."
        )
    return notes
