"""analyze: one ranked table of every quantizable layer: sensitivity, cost, risk, and advice.

For each layer and each candidate choice (:mod:`.candidates`) it joins

* sensitivity: weight error, layer-output SQNR, model-output noise (probed end to end, or
  predicted from the layer's Gauss-Newton gain) and, for the layers that matter, the measured
  drop of the task metric with only that layer quantized (:mod:`edgetune.analyze.sensitivity`);
* cost: exact weight bytes, MACs, and the layer's time on ONNX Runtime for the choice's kernel,
  from per-node profiles of one model per kernel class (:mod:`edgetune.analyze.profile`);
* activation ranges and outliers, and VPMADDUBSW saturation risk on the *target* ISA
  (:mod:`edgetune.analyze.saturation`);

then recommends an action per layer with its reason. ``optimize`` reuses the whole result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.analyze.profile import LayerProfile, profile_layers
from edgetune.analyze.saturation import SaturationRisk, saturation_risk
from edgetune.analyze.sensitivity import (
    ChoiceSensitivity,
    LayerRecord,
    NoiseProbe,
    batch_feeds,
    probe_layer,
    record_layers,
    spearman,
)
from edgetune.benchmark.latency import LatencyConfig, measure_interleaved
from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.isa import Isa, detect_isa
from edgetune.core.metrics import Metric, RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import QuantizationError
from edgetune.load import load
from edgetune.optimize.candidates import (
    candidate_choices,
    class_representative,
    gptq_applies,
    kernel_class,
    weight_bytes,
)
from edgetune.optimize.config import AnalyzeConfig
from edgetune.runtimes import SessionOptions, get_runtime
from edgetune.transforms.calibrate import CalibMethod, TensorStats, compute_ranges
from edgetune.transforms.plan import (
    LayerChoice,
    Plan,
    Precision,
    Prepared,
    QuantLayer,
    apply_plan,
    prepare,
    uniform_plan,
)
from edgetune.validate.evaluate import run_outputs

__all__ = ["AnalyzeResult", "ChoiceCost", "LayerAnalysis", "analyze"]

log = logging.getLogger(__name__)

DataSpec = BoundData | Dataset | str | Path | Mapping[str, np.ndarray]

INT4_OK_DB = 30.0
INT8_OK_DB = 25.0
"""Model-output SQNR above which a layer alone is recommended at int4 / int8 (analysis only;
``optimize`` decides against the real budget)."""


@dataclass(frozen=True, kw_only=True)
class ChoiceCost:
    """One candidate of one layer: its sensitivity and its costs."""

    sensitivity: ChoiceSensitivity
    size_bytes: int
    latency_ms: float | None
    """The layer's time in this choice's kernel class, scaled to the class model's p50."""
    kernel: str
    profiled_ms: float | None = None
    """The raw per-node kernel time from ONNX Runtime's profiler."""

    @property
    def choice(self) -> LayerChoice:
        return self.sensitivity.choice

    def to_dict(self) -> dict[str, Any]:
        return {**self.sensitivity.to_dict(), "weight_bytes": self.size_bytes,
                "latency_ms": self.latency_ms, "profiled_ms": self.profiled_ms, "kernel": self.kernel}


@dataclass(frozen=True, kw_only=True)
class LayerAnalysis:
    layer: QuantLayer
    macs: int
    choices: list[ChoiceCost]
    saturation: SaturationRisk
    activation: dict[str, float] = field(default_factory=dict)
    gain: float | None = None
    output_elements: int = 0
    recommendation: LayerChoice = field(default_factory=LayerChoice)
    reason: str = ""

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def fp32(self) -> ChoiceCost:
        return self.choices[0]

    def best(self, precision: Precision) -> ChoiceCost | None:
        """The candidate of ``precision`` with the least model-output noise."""
        pool = [c for c in self.choices if c.choice.precision is precision]
        return min(pool, key=lambda c: c.sensitivity.output_noise) if pool else None

    @property
    def sensitivity(self) -> float:
        """Model-output noise of the best 8-bit choice (or 4-bit where no 8-bit fits): the rank key."""
        for p in (Precision.INT8, Precision.INT8_DYNAMIC, Precision.INT4, Precision.FP16):
            best = self.best(p)
            if best is not None:
                return best.sensitivity.output_noise
        return 0.0

    def to_dict(self, totals: Mapping[str, float]) -> dict[str, Any]:
        fp32 = self.fp32
        best = {p.value: _summary(b) for p in Precision if p is not Precision.FP32
                and (b := self.best(p)) is not None}
        return {
            "name": self.name, "op_type": self.layer.op_type, "macs": self.macs,
            "weight_params": self.layer.weight_params, "fp32_bytes": fp32.size_bytes,
            "bytes_share": fp32.size_bytes / max(totals["bytes"], 1),
            "fp32_latency_ms": fp32.latency_ms,
            "latency_share": (fp32.latency_ms or 0.0) / max(totals["latency"], 1e-12),
            "sensitivity": self.sensitivity, "gain": self.gain, "activation": self.activation,
            "saturation": self.saturation.to_dict(), "best": best,
            "recommendation": {**self.recommendation.to_dict(), "label": self.recommendation.label(),
                               "reason": self.reason},
            "candidates": [c.to_dict() for c in self.choices],
        }


def _summary(c: ChoiceCost) -> dict[str, Any]:
    s = c.sensitivity
    return {"label": c.choice.label(), "weight_error": s.weight_error, "layer_sqnr_db": s.layer_sqnr_db,
            "output_sqnr_db": s.output_sqnr_db, "measured": s.measured, "metric_drop": s.metric_drop,
            "weight_bytes": c.size_bytes, "latency_ms": c.latency_ms}


@dataclass(frozen=True, kw_only=True)
class Context:
    """What ``optimize`` reuses from the analysis (not part of the report)."""

    source: Model
    prepared: Prepared
    metric: Metric
    eval_data: BoundData
    reference: RunOutputs
    baseline: float


@dataclass(frozen=True, kw_only=True)
class AnalyzeResult:
    layers: list[LayerAnalysis]
    """Most sensitive first."""
    target_isa: Isa
    detected_isa: Isa
    metric_name: str
    baseline_metric: float
    profiles: KernelProfiles
    rank_correlation: dict[str, Any]
    timings: dict[str, float]
    context: Context = field(repr=False, compare=False)

    def layer(self, name: str) -> LayerAnalysis:
        return next(a for a in self.layers if a.name == name)

    def totals(self) -> dict[str, float]:
        return {"bytes": float(sum(a.fp32.size_bytes for a in self.layers)),
                "latency": float(sum(a.fp32.latency_ms or 0.0 for a in self.layers))}

    def to_dict(self) -> dict[str, Any]:
        totals = self.totals()
        return {
            "model": self.context.source.name, "target_isa": self.target_isa.value,
            "detected_isa": self.detected_isa.value, "metric": self.metric_name,
            "baseline_metric": self.baseline_metric,
            "layers": [a.to_dict(totals) for a in self.layers],
            "rank_correlation": self.rank_correlation,
            "profiles": self.profiles.to_dict(),
            "timings_s": dict(self.timings),
        }


def analyze(
    model: Model | str | Path,
    config: AnalyzeConfig | None = None,
    *,
    data: DataSpec,
    eval_data: DataSpec,
    progress: Progress = NULL_PROGRESS,
) -> AnalyzeResult:
    """Rank every quantizable layer of ``model`` by sensitivity, with costs and advice."""
    config = config or AnalyzeConfig()
    clock = _Clock()
    source = load(model)
    metric = get_metric(config.metric)  # a bad metric fails before any work
    detected = detect_isa()
    isa = config.target_isa or detected
    prepared = prepare(source, data=data, preprocess=config.preprocess,
                       calib_limit=config.calib_limit, progress=progress)
    layers = prepared.layers()
    if not layers:
        raise QuantizationError(
            f"{source.name} has no layer a plan can quantize (Conv, Gemm, MatMul with constant "
            "weights, or an embedding Gather); nothing to analyze"
        )
    context = _context(source, prepared, metric, eval_data, config)
    clock.lap("prepare")
    analyses, profiles = _analyze_layers(prepared, layers, config, isa, clock, progress)
    correlation = _measure(analyses, context, config, clock, progress)
    ranked = sorted(analyses, key=lambda a: -a.sensitivity)
    return AnalyzeResult(layers=[_recommend(a, analyses, isa) for a in ranked], target_isa=isa,
                         detected_isa=detected, metric_name=metric.name,
                         baseline_metric=context.baseline, profiles=profiles,
                         rank_correlation=correlation, timings=clock.laps, context=context)


class _Clock:
    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def _context(source: Model, prepared: Prepared, metric: Metric, eval_data: DataSpec,
             config: AnalyzeConfig) -> Context:
    bound = eval_data if isinstance(eval_data, BoundData) else bind(eval_data, source)
    session = get_runtime("onnxruntime").session(prepared.model, SessionOptions(threads=config.threads))
    reference = run_outputs(session, bound)
    baseline = metric(reference, reference).value
    return Context(source=source, prepared=prepared, metric=metric, eval_data=bound,
                   reference=reference, baseline=baseline)


def _analyze_layers(prepared: Prepared, layers: list[QuantLayer], config: AnalyzeConfig, isa: Isa,
                    clock: _Clock, progress: Progress) -> tuple[list[LayerAnalysis], KernelProfiles]:
    feeds = batch_feeds(prepared.calib_feeds[: config.probe_samples], prepared.model)
    records = _with_hessians(record_layers(prepared.model, layers, feeds), prepared, config)
    stats = prepared.stats or {}
    wanted = {t: stats[t] for lay in layers for t in (lay.activation, lay.output) if t in stats}
    ranges = {m: compute_ranges(wanted, m, percentile=config.percentile) for m in CalibMethod}
    risks = {lay.name: saturation_risk(records[lay.name], ranges[CalibMethod.MINMAX].get(lay.activation), isa)
             for lay in layers}
    candidates = {lay.name: candidate_choices(lay, config.precisions, isa, risks[lay.name]) for lay in layers}
    clock.lap("record+saturation")
    probe = NoiseProbe(prepared.model, records, feeds)
    total = sum(len(c) for c in candidates.values())
    probe_all = probe.seconds_per_run * total <= config.probe_budget_s
    progress.start("probing layers", len(layers))
    probed = {}
    for layer in layers:
        probed[layer.name] = probe_layer(records[layer.name], candidates[layer.name], ranges, probe,
                                         probe_all=probe_all)
        progress.advance()
    progress.finish()
    clock.lap("probe")
    profiles = _profiles(prepared, layers, candidates, config, progress)
    clock.lap("profile")
    out = [_layer_analysis(lay, records[lay.name], probed[lay.name], risks[lay.name], profiles, stats)
           for lay in layers]
    return out, profiles


def _with_hessians(records: dict[str, LayerRecord], prepared: Prepared, config: AnalyzeConfig
                   ) -> dict[str, LayerRecord]:
    """Attach the calibration-input Hessian to the layers whose candidates include GPTQ."""
    if Precision.INT4 not in config.precisions:
        return records
    wanted = [r.layer for r in records.values() if gptq_applies(r.layer)]
    if not wanted:
        return records
    hessians = prepared.input_hessians(wanted)
    return {name: replace(r, hessian=_held_out(hessians[name], r)) if name in hessians else r
            for name, r in records.items()}


def _held_out(hessian: np.ndarray, record: LayerRecord) -> np.ndarray:
    """The Hessian without the probe samples' rows, so that a GPTQ layer's noise is measured
    on inputs its rounding did not see. The probe samples are the first calibration samples,
    so this is exact; the built model uses every sample (a slightly better, unmeasured fit).
    In-sample, GPTQ's noise on MiniLM looked about 3x smaller than the drops it caused."""
    x = record.x.reshape(-1, record.x.shape[-1]).astype(np.float64)
    rest = hessian - x.T @ x
    if np.trace(rest) < 0.25 * np.trace(hessian):  # too few other samples: keep them all
        return hessian
    return rest


_CLASS_LATENCY = LatencyConfig(warmup=3, min_iters=20, max_iters=400, min_seconds=1.0,
                               max_seconds=12.0, block=2)


@dataclass(frozen=True, kw_only=True)
class KernelProfiles:
    """One profiled model per kernel class, and the class models' p50 measured interleaved.

    Per-node kernel times miss what happens between kernels and whole-graph effects (layout
    changes, fusions that span layers), so each class's per-layer times are scaled such that a
    plan with every layer in that class predicts exactly the class model's measured p50 (the
    float32 model's time outside the layers is the shared remainder).
    """

    profiles: dict[str, LayerProfile]
    p50_ms: dict[str, float]

    def scale(self, cls: str) -> float:
        prof, wall = self.profiles.get(cls), self.p50_ms.get(cls)
        base = self.profiles.get("float")
        if prof is None or wall is None or base is None or "float" not in self.p50_ms:
            return 1.0
        other = base.other_ms * self.p50_ms["float"] / max(base.kernel_ms, 1e-9)
        layers = sum(prof.per_layer_ms.values())
        return max(wall - other, 0.05 * wall) / layers if layers > 0 else 1.0

    def latency(self, cls: str, layer: str) -> tuple[float | None, float | None]:
        """(wall-consistent ms, raw profiled kernel ms) of ``layer`` in class ``cls``."""
        prof = self.profiles.get(cls)
        raw = prof.per_layer_ms.get(layer) if prof is not None else None
        return (None, None) if raw is None else (raw * self.scale(cls), raw)

    def to_dict(self) -> dict[str, Any]:
        return {cls: {**p.to_dict(), "model_p50_ms": self.p50_ms.get(cls), "scale": self.scale(cls)}
                for cls, p in self.profiles.items()}


def _profiles(prepared: Prepared, layers: list[QuantLayer], candidates: Mapping[str, list[LayerChoice]],
              config: AnalyzeConfig, progress: Progress) -> KernelProfiles:
    """One profiled model per kernel class present among the candidates."""
    classes = sorted({kernel_class(lay, c) for lay in layers for c in candidates[lay.name]})
    feed = prepared.calib_feeds[0]
    profiles, sessions = {}, {}
    runtime = get_runtime("onnxruntime")
    progress.start("profiling kernels", len(classes))
    for cls in classes:
        try:
            built = prepared.model if cls == "float" else apply_plan(
                prepared.model, uniform_plan(prepared.model.name, layers, class_representative(cls)),
                prepared=prepared).model
            profiles[cls] = profile_layers(built, layers, feed, runs=config.profile_runs, threads=config.threads)
            sessions[cls] = runtime.session(built, SessionOptions(threads=config.threads))
        except Exception as exc:  # a kernel class ORT cannot build here is left out, not fatal
            log.warning("cannot profile kernel class %s: %s", cls, exc)
        progress.advance()
    progress.finish()
    feeds = prepared.calib_feeds[:4]
    walls = measure_interleaved(sessions, feeds, _CLASS_LATENCY) if sessions else {}
    return KernelProfiles(profiles=profiles, p50_ms={k: v.p50 for k, v in walls.items()})


def _layer_analysis(layer: QuantLayer, record: LayerRecord, probed: Any, risk: SaturationRisk,
                    profiles: KernelProfiles, stats: Mapping[str, TensorStats]) -> LayerAnalysis:
    costs = []
    for s in probed.choices:
        cls = kernel_class(layer, s.choice)
        latency, raw = profiles.latency(cls, layer.name)
        costs.append(ChoiceCost(sensitivity=s, size_bytes=weight_bytes(layer, s.choice),
                                latency_ms=latency, profiled_ms=raw, kernel=cls))
    return LayerAnalysis(layer=layer, macs=record.macs_per_sample, choices=costs, saturation=risk,
                         activation=_activation_stats(stats.get(layer.activation)), gain=probed.gain,
                         output_elements=record.output_elements_per_sample)


def _activation_stats(st: TensorStats | None) -> dict[str, float]:
    """Range, the 99.99th percentile range, and how far the extremes lie beyond it."""
    if st is None or st.count == 0:
        return {}
    p_lo, p_hi = compute_ranges({st.name: st}, CalibMethod.PERCENTILE, percentile=99.99)[st.name]
    bulk = max(abs(p_lo), abs(p_hi), 1e-12)
    return {"min": st.lo, "max": st.hi, "p99.99_min": p_lo, "p99.99_max": p_hi,
            "outlier_ratio": st.absmax / bulk}


# --------------------------------------------------------------------------- measured


def _measure(analyses: list[LayerAnalysis], context: Context, config: AnalyzeConfig,
             clock: _Clock, progress: Progress) -> dict[str, Any]:
    """Measure the metric drop of the most sensitive layers (best int8 and best int4 choice),
    write it into their entries, and correlate the proxies with it."""
    ranked = sorted(analyses, key=lambda a: -a.sensitivity)
    chosen = ranked if config.measure_layers is None else ranked[: config.measure_layers]
    subset, reference = _subset(context, config.measure_limit)
    progress.start("measuring layers", len(chosen))
    for a in chosen:
        for best in _measured_choices(a):
            drop = _single_layer_drop(a.layer, best.choice, context, subset, reference)
            _set_drop(a, best, drop)
        progress.advance()
    progress.finish()
    clock.lap("measure")
    return _correlations(analyses)


def _measured_choices(a: LayerAnalysis) -> list[ChoiceCost]:
    """The least noisy 8-bit choice (static or dynamic) and the least noisy 4-bit one."""
    eight = [b for p in (Precision.INT8, Precision.INT8_DYNAMIC) if (b := a.best(p)) is not None]
    out = [min(eight, key=lambda c: c.sensitivity.output_noise)] if eight else []
    four = a.best(Precision.INT4)
    return out + ([four] if four is not None else [])


def _subset(context: Context, limit: int | None) -> tuple[BoundData, RunOutputs]:
    n = len(context.reference)
    if limit is None or limit >= n:
        return context.eval_data, context.reference
    head, _ = context.eval_data.split(limit)
    ref = context.reference
    labels = ref.labels[:limit] if ref.labels is not None else None
    return head, RunOutputs(names=ref.names, per_sample=ref.per_sample[:limit], labels=labels)


def _single_layer_drop(layer: QuantLayer, choice: LayerChoice, context: Context,
                       data: BoundData, reference: RunOutputs) -> tuple[float, float | None] | None:
    """(metric drop, fraction of top-1 predictions that changed) with only ``layer`` quantized;
    the second is None unless the metric needs labels (a classifier)."""
    try:
        built = apply_plan(context.source, Plan(layers={layer.name: choice}), prepared=context.prepared)
    except QuantizationError as exc:
        log.info("cannot build %s alone at %s: %s", layer.name, choice.label(), exc)
        return None
    session = get_runtime("onnxruntime").session(built.model)
    outputs = run_outputs(session, data)
    base = context.metric(reference, reference).value
    flips = _flip_rate(outputs, reference) if context.metric.needs_labels else None
    return base - context.metric(outputs, reference).value, flips


def _flip_rate(outputs: RunOutputs, reference: RunOutputs) -> float | None:
    got, want = outputs.stacked(0), reference.stacked(0)
    if got.ndim != 2 or got.shape[1] < 2:
        return None
    return float(np.mean(got.argmax(axis=1) != want.argmax(axis=1)))


def _set_drop(analysis: LayerAnalysis, cost: ChoiceCost, measured: tuple[float, float | None] | None) -> None:
    index = analysis.choices.index(cost)
    s = cost.sensitivity
    drop, flips = measured if measured is not None else (None, None)
    updated = type(s)(**{**s.__dict__, "metric_drop": drop, "flip_rate": flips})
    analysis.choices[index] = ChoiceCost(sensitivity=updated, size_bytes=cost.size_bytes,
                                         latency_ms=cost.latency_ms, kernel=cost.kernel,
                                         profiled_ms=cost.profiled_ms)


_PROXIES = {"output_noise": lambda s: s.output_noise, "layer_noise": lambda s: s.layer_noise,
            "weight_error": lambda s: s.weight_error, "kl": lambda s: s.kl}


def _correlations(analyses: Sequence[LayerAnalysis]) -> dict[str, Any]:
    """Spearman correlation of each proxy with the measured metric drops (and, for classifiers,
    with the measured fraction of changed predictions, a less granular count), per precision
    and overall; plus how many of the measured top-k layers the model-output noise also ranks
    in its top k."""
    rows = [(c.choice.precision, c.sensitivity) for a in analyses for c in a.choices
            if c.sensitivity.metric_drop is not None]
    out: dict[str, Any] = {"pairs": len(rows)}
    groups = {"all": rows, **{p.value: [r for r in rows if r[0] is p] for p in
                              (Precision.INT8, Precision.INT8_DYNAMIC, Precision.INT4)}}
    for group, items in groups.items():
        if items:
            out[group] = _group_correlation([s for _, s in items])
    return out


def _group_correlation(items: Sequence[ChoiceSensitivity]) -> dict[str, Any]:
    drops = [float(s.metric_drop or 0.0) for s in items]
    out: dict[str, Any] = {"n": len(items)}
    for name, proxy in _PROXIES.items():
        values = [proxy(s) for s in items]
        if all(v is not None for v in values):
            out[name] = spearman(values, drops)
    flips = [s.flip_rate for s in items]
    if all(f is not None for f in flips):
        out["vs_flip_rate"] = {name: spearman([proxy(s) for s in items], flips)  # type: ignore[arg-type]
                               for name, proxy in _PROXIES.items()
                               if all(proxy(s) is not None for s in items)}
    k = min(5, len(items) // 2)
    if k:
        by_drop = set(np.argsort(drops)[-k:])
        by_noise = set(np.argsort([s.output_noise for s in items])[-k:])
        out[f"top{k}_overlap"] = len(by_drop & by_noise)
    return out


# --------------------------------------------------------------------------- advice


def _recommend(a: LayerAnalysis, everyone: Sequence[LayerAnalysis], isa: Isa) -> LayerAnalysis:
    choice, reason = _advice(a, everyone, isa)
    return LayerAnalysis(layer=a.layer, macs=a.macs, choices=a.choices, saturation=a.saturation,
                         activation=a.activation, gain=a.gain, output_elements=a.output_elements,
                         recommendation=choice, reason=reason)


def _advice(a: LayerAnalysis, everyone: Sequence[LayerAnalysis], isa: Isa) -> tuple[LayerChoice, str]:
    total_bytes = sum(x.fp32.size_bytes for x in everyone)
    total_ms = sum(x.fp32.latency_ms or 0.0 for x in everyone) or 1e-12
    share_b = a.fp32.size_bytes / max(total_bytes, 1)
    share_t = (a.fp32.latency_ms or 0.0) / total_ms
    int4, int8 = a.best(Precision.INT4), _fastest_ok_int8(a)
    notes = _notes(a, isa)
    if int4 is not None and int4.sensitivity.output_sqnr_db >= INT4_OK_DB:
        return int4.choice, (f"{int4.choice.label()}: model-output SQNR {_db(int4)}, holds "
                             f"{share_b:.0%} of weight bytes{notes}")
    if int8 is not None:
        return int8.choice, (f"{int8.choice.label()}: model-output SQNR {_db(int8)}, "
                             f"{share_t:.0%} of latency{notes}")
    worst = a.best(Precision.INT8) or a.best(Precision.INT8_DYNAMIC) or int4
    fp16 = a.best(Precision.FP16)
    keep = fp16.choice if fp16 is not None else LayerChoice()
    what = "FP16" if fp16 is not None else "float32"
    detail = f"model-output SQNR at {worst.choice.precision.value} only {_db(worst)}" if worst else "no integer choice"
    return keep, f"keep in {what}: {detail}, {share_t:.0%} of latency{notes}"


def _fastest_ok_int8(a: LayerAnalysis) -> ChoiceCost | None:
    pool = [c for c in a.choices if c.choice.precision in (Precision.INT8, Precision.INT8_DYNAMIC)
            and c.sensitivity.output_sqnr_db >= INT8_OK_DB]
    if not pool:
        return None
    return min(pool, key=lambda c: (c.latency_ms if c.latency_ms is not None else math.inf,
                                    c.sensitivity.output_noise))


def _notes(a: LayerAnalysis, isa: Isa) -> str:
    notes = []
    if a.saturation.at_risk:
        notes.append(f"full-range u8 x s8 weights would saturate {a.saturation.fraction:.2%} of "
                     f"pairs on {isa.value}, so only 7-bit or u8 weights are offered")
    fast = _fastest_ok_int8(a)
    if fast is not None and fast.latency_ms is not None and a.fp32.latency_ms is not None \
            and fast.latency_ms > a.fp32.latency_ms:
        notes.append(f"its int8 kernel is slower here than float ({fast.latency_ms:.3g} vs "
                     f"{a.fp32.latency_ms:.3g} ms)")
    return "; " + "; ".join(notes) if notes else ""


def _db(c: ChoiceCost) -> str:
    value = c.sensitivity.output_sqnr_db
    return "inf dB" if math.isinf(value) else f"{value:.0f} dB"
