"""diverge: do the outputs still agree? Every runtime and precision against the float32 reference.

The reference is the first model run by ONNX Runtime on CPU. Each other (model, runtime) pair
runs the same inputs; the report gives max and mean absolute difference, cosine similarity and
top-1 agreement of every output, and the task metric with its drop against the reference. The
verdict is tied to the task metric: a pair passes when the metric drops by at most
``max_drop`` (``top1`` when the data has labels, else ``fidelity``, the mean cosine with the
reference).

Per layer, where the runtime runs ONNX graphs (ONNX Runtime, OpenVINO): every float tensor the
candidate shares by name with the reference becomes an extra graph output, and both are compared
tensor by tensor on a few samples. Exposing a tensor can stop a runtime fusing around it, so
per-layer numbers describe a slightly less fused graph than the deployed one (ONNX Runtime's own
QDQ debugging tools have the same limit); the model-level numbers come from the unmodified graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.bench import ModelSpec
from edgetune.benchmark.inputs import DataSpec
from edgetune.core.data import BoundData, bind
from edgetune.core.metrics import Metric, RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import ConfigError, EdgetuneError, RuntimeBackendError
from edgetune.load import load
from edgetune.report.schema import new_report
from edgetune.runtimes import BASELINE, Runtime, SessionOptions, get_runtime, runtime_names
from edgetune.runtimes.base import Checkable
from edgetune.validate.evaluate import run_outputs

__all__ = ["DivergeConfig", "DivergeResult", "diverge", "output_divergence"]

_LAYER_RUNTIMES = {"onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "openvino"}
_FLOAT = {1, 10, 11, 16}  # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16
_WARN_COSINE = 0.99
_WARN_AGREEMENT = 0.99


@dataclass(frozen=True, kw_only=True)
class DivergeConfig:
    runtimes: tuple[str, ...] = ()
    """Runtimes to compare; empty: every one that can run here."""
    metric: str | Any | None = None
    """Task metric; None: ``top1`` when the data has labels, else ``fidelity``."""
    max_drop: float = 0.01
    """Largest allowed drop of the task metric against the reference (same units)."""
    limit: int | None = 256
    per_layer: bool = True
    layer_samples: int = 8
    threads: int | None = None

    def __post_init__(self) -> None:
        if (
            self.max_drop < 0
            or (self.limit is not None and self.limit < 1)
            or self.layer_samples < 1
        ):
            raise ConfigError(
                f"diverge needs max_drop >= 0, limit >= 1 and layer_samples >= 1; got max_drop="
                f"{self.max_drop}, limit={self.limit}, layer_samples={self.layer_samples}"
            )


@dataclass(frozen=True, kw_only=True)
class DivergeResult:
    reference: dict[str, Any]
    rows: list[dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.get("passed") for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "rows": self.rows,
            "skipped": self.skipped,
            "passed": self.passed,
        }

    def report(self) -> dict[str, Any]:
        report = new_report("diverge")
        report["divergence"] = self.to_dict()
        return report


def diverge(
    models: ModelSpec | Sequence[ModelSpec],
    config: DivergeConfig | None = None,
    *,
    data: DataSpec,
    runtime: Runtime | Sequence[Runtime] | None = None,
    runtime_settings: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Progress = NULL_PROGRESS,
) -> DivergeResult:
    """Compare every (model, runtime) pair with the first model on ONNX Runtime CPU
    (``runtime_settings`` as for :func:`edgetune.benchmark.bench.bench`)."""
    config = config or DivergeConfig()
    loaded = [load(m) for m in ([models] if isinstance(models, (Model, str, Path)) else models)]
    reference_model = loaded[0]
    bound = data if isinstance(data, BoundData) else bind(data, reference_model)
    options = SessionOptions(threads=config.threads)
    ref = run_outputs(
        get_runtime(BASELINE).session(reference_model, options),
        bound,
        limit=config.limit,
        progress=progress,
        label="reference",
    )
    metric = _metric(config, ref)
    ref_value = metric(ref, ref).value
    runtimes, skipped = _runtimes(config, runtime, runtime_settings or {})
    pairs = [
        (m, rt)
        for m in loaded
        for rt in runtimes
        if not (m is reference_model and rt.name == BASELINE)
    ]
    rows = [_row(m, rt, bound, ref, metric, ref_value, config, progress) for m, rt in pairs]
    for row, (m, rt) in zip(rows, pairs, strict=True):
        if config.per_layer and "error" not in row and rt.name in _LAYER_RUNTIMES:
            row["layers"] = _layers(reference_model, m, rt, bound, config)
    reference = {
        "model": reference_model.name,
        "runtime": BASELINE,
        "metric": metric.name,
        "metric_value": ref_value,
        "n_samples": len(ref),
        "max_drop": config.max_drop,
    }
    return DivergeResult(reference=reference, rows=rows, skipped=skipped)


def _metric(config: DivergeConfig, ref: RunOutputs) -> Metric:
    if config.metric is not None:
        return get_metric(config.metric)
    return get_metric("top1" if ref.labels is not None else "fidelity")


def _runtimes(
    config: DivergeConfig,
    given: Runtime | Sequence[Runtime] | None,
    settings: Mapping[str, Mapping[str, Any]],
) -> tuple[list[Runtime], dict[str, str]]:
    if given is not None:
        return ([given] if isinstance(given, Runtime) else list(given)), {}
    names = list(config.runtimes) or [n for n in runtime_names() if n != "null"]
    chosen, skipped = [], {}
    for name in names:
        rt = get_runtime(name, **settings.get(name, {}))
        try:
            if isinstance(rt, Checkable):
                rt.check()
        except EdgetuneError as exc:
            if config.runtimes:
                raise
            skipped[name] = str(exc)
            continue
        chosen.append(rt)
    if BASELINE not in {r.name for r in chosen}:
        chosen.insert(0, get_runtime(BASELINE))
    return chosen, skipped


def _row(
    model: Model,
    rt: Runtime,
    bound: BoundData,
    ref: RunOutputs,
    metric: Metric,
    ref_value: float,
    config: DivergeConfig,
    progress: Progress,
) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model.name, "runtime": rt.name}
    try:
        session = rt.session(
            model, SessionOptions(threads=config.threads, input_shapes=_shapes(bound))
        )
        outs = run_outputs(
            session,
            bound,
            limit=config.limit,
            progress=progress,
            label=f"{model.name} on {rt.name}",
        )
    except RuntimeBackendError as exc:
        return {**row, "error": str(exc), "passed": False}
    value = metric(outs, ref).value
    row.update(output_divergence(outs, ref))
    row.update(metric=metric.name, metric_value=value, metric_drop=ref_value - value)
    row["passed"] = row["metric_drop"] <= config.max_drop
    row["notes"] = list(getattr(session, "notes", []) or []) + _warnings(row)
    return row


def _warnings(row: dict[str, Any]) -> list[str]:
    """Outputs that disagree although the task metric holds deserve a sentence of their own."""
    cosine, agree = row.get("cosine_mean"), row.get("top1_agreement")
    if (cosine is not None and cosine < _WARN_COSINE) or (
        agree is not None and agree < _WARN_AGREEMENT
    ):
        held = " although the task metric holds" if row.get("passed") else ""
        shown = "-" if agree is None else f"{agree:.4f}"
        return [
            f"{row['model']} on {row['runtime']}: outputs diverge from the reference (cosine "
            f"{cosine:.4f}, top-1 agreement {shown}){held}; check this runtime's conversion"
        ]
    return []


def _shapes(bound: BoundData) -> dict[str, tuple[int, ...]]:
    first = next(iter(bound.samples(1)))
    return {k: tuple(np.shape(v)) for k, v in first.feed.items()}


def output_divergence(outs: RunOutputs, ref: RunOutputs) -> dict[str, Any]:
    """Per output: max/mean |difference|, cosine (mean and min over samples), top-1 agreement."""
    per_output = {}
    for i, name in enumerate(ref.names):
        if i < len(outs.names):
            per_output[name] = compare(outs.stacked(i), ref.stacked(i))
    first = next(iter(per_output.values()), {})
    return {
        "outputs": per_output,
        **{
            k: first.get(k)
            for k in (
                "max_abs_diff",
                "mean_abs_diff",
                "cosine_mean",
                "cosine_min",
                "top1_agreement",
            )
        },
    }


def compare(got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    if got.shape != want.shape:
        return {"error": f"shape {got.shape} differs from the reference's {want.shape}"}
    a = np.asarray(got, dtype=np.float64).reshape(len(got), -1) if got.ndim else got.reshape(1, -1)
    b = (
        np.asarray(want, dtype=np.float64).reshape(len(want), -1)
        if want.ndim
        else want.reshape(1, -1)
    )
    diff = np.abs(a - b)
    cos = _cosine(a, b)
    data: dict[str, Any] = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }
    data["top1_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1))) if a.shape[1] > 1 else None
    return data


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    cos = np.divide(dots, na * nb, out=np.zeros_like(dots), where=(na * nb) > 0)
    return np.where((na == 0) & (nb == 0), 1.0, cos)


def _layers(
    reference: Model, model: Model, rt: Runtime, bound: BoundData, config: DivergeConfig
) -> dict[str, Any]:
    """Tensor-by-tensor comparison on the first ``layer_samples`` samples."""
    names = _shared_float_tensors(reference, model)
    if not names:
        return {"error": "no float tensor shares a name with the reference"}
    try:
        ref_outs = _run_exposed(get_runtime(BASELINE), reference, names, bound, config)
        got_outs = _run_exposed(rt, model, names, bound, config)
    except RuntimeBackendError as exc:
        return {"error": str(exc)}
    layers = [
        {"tensor": n, **compare(got_outs[n], ref_outs[n])}
        for n in names
        if n in got_outs and n in ref_outs
    ]
    return {"n_samples": config.layer_samples, "tensors": layers, "worst": _worst(layers)}


def _worst(layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [entry for entry in layers if "cosine_min" in entry]
    return min(scored, key=lambda entry: entry["cosine_min"]) if scored else None


def _shared_float_tensors(reference: Model, model: Model) -> list[str]:
    """Float intermediate tensors of the reference (in graph order) that ``model`` also produces."""
    produced = {o for node in model.proto.graph.node for o in node.output}
    types = {v.name: v.type.tensor_type.elem_type for v in reference.proto.graph.value_info}
    outputs = {o.name for o in reference.proto.graph.output}
    return [
        o
        for node in reference.proto.graph.node
        for o in node.output
        if o in produced and types.get(o) in _FLOAT and o not in outputs
    ]


def _after_qdq(model: Model, names: list[str]) -> dict[str, str]:
    """For each tensor, the one the next layer really consumes: in a QDQ graph a float tensor
    feeding only QuantizeLinear -> DequantizeLinear is read through that pair (which also
    applies a Relu the quantizer folded into the quantization range)."""
    consumers: dict[str, list[Any]] = {}
    for node in model.proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    effective = {}
    for name in names:
        effective[name] = name
        q = consumers.get(name, [])
        if len(q) == 1 and q[0].op_type == "QuantizeLinear":
            dq = consumers.get(q[0].output[0], [])
            if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
                effective[name] = dq[0].output[0]
    return effective


def _run_exposed(
    rt: Runtime, model: Model, names: list[str], bound: BoundData, config: DivergeConfig
) -> dict[str, np.ndarray]:
    """Outputs of ``names`` (read after any QDQ pair) keyed by the reference's names."""
    from onnx import TensorProto, helper

    effective = _after_qdq(model, names)
    names = [effective[n] for n in names]
    proto = model.copy_proto()
    have = {o.name for o in proto.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.value_info}
    extra = [n for n in names if n not in have]
    proto.graph.output.extend(
        helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), None) for n in extra
    )
    exposed = model.with_proto(proto, name=f"{model.name}_exposed")
    session = rt.session(exposed, SessionOptions(threads=config.threads))
    outs = run_outputs(session, bound, limit=config.layer_samples)
    back = {v: k for k, v in effective.items()}
    return {back[name]: outs.stacked(i) for i, name in enumerate(outs.names) if name in back}
