"""quantize: INT8 post-training quantization that measures before it chooses.

1. Pre-process with ONNX Runtime (shape inference, constant folding, BatchNorm folding).
2. Collect activation statistics once on the calibration data (:mod:`.calibrate`).
3. Build each candidate setting that is safe on the target ISA (:mod:`.settings`) with ONNX
   Runtime's own ``quantize_static`` / ``quantize_dynamic``.
4. Compare candidates on held-out calibration samples: fidelity to float32 and latency measured
   interleaved with float32; keep the fastest among the most faithful, then refine it (other
   calibration methods, per-tensor weights).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.latency import LatencyConfig, measure_interleaved
from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.isa import Isa, detect_isa
from edgetune.core.metrics import RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import DataError, QuantizationError
from edgetune.load import load
from edgetune.runtimes import Runtime, Session, get_runtime
from edgetune.transforms.calibrate import TensorStats, collect_stats, compute_ranges
from edgetune.transforms.ort_backend import build_dynamic, build_static, preprocess
from edgetune.transforms.settings import (
    QuantizeConfig,
    QuantMode,
    QuantSettings,
    candidate_settings,
    refinements,
)
from edgetune.validate.evaluate import run_outputs

__all__ = ["CandidateResult", "QuantizeResult", "quantize"]

log = logging.getLogger(__name__)

_CANDIDATE_LATENCY = LatencyConfig(
    warmup=3, min_iters=30, max_iters=400, min_seconds=0.5, max_seconds=4.0
)


@dataclass(frozen=True, kw_only=True)
class CandidateResult:
    """How one candidate setting did on the held-out calibration samples."""

    settings: QuantSettings
    fidelity: dict[str, float] = field(default_factory=dict)
    latency_ratio: float | None = None
    """Candidate p50 / float32 p50, measured interleaved (below 1 is faster)."""
    size_bytes: int | None = None
    error: str | None = None

    @property
    def score(self) -> float:
        return self.fidelity.get("cosine_mean", -1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "fidelity": dict(self.fidelity),
            "latency_ratio_vs_fp32": self.latency_ratio,
            "size_bytes": self.size_bytes,
            "error": self.error,
        }


@dataclass(frozen=True, kw_only=True)
class QuantizeResult:
    """The quantized model and why it was made this way."""

    model: Model
    settings: QuantSettings
    target_isa: Isa
    detected_isa: Isa
    candidates: list[CandidateResult]
    reasons: list[str]
    warnings: list[str]
    preprocessed: bool
    seconds: float

    @property
    def chosen(self) -> CandidateResult:
        return next(c for c in self.candidates if c.settings == self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "target_isa": self.target_isa.value,
            "detected_isa": self.detected_isa.value,
            "saturation_free_on_target": self.settings.saturation_free_on(self.target_isa),
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "preprocessed": self.preprocessed,
            "candidates": [c.to_dict() for c in self.candidates],
            "seconds": self.seconds,
        }


@dataclass(kw_only=True)
class _Search:
    """State shared by the candidate evaluations of one quantize() call."""

    fp32: Model
    prepped: Model
    workdir: Path
    calib_feeds: list[dict[str, np.ndarray]]
    select: BoundData
    reference: RunOutputs
    fp32_session: Session
    runtime: Runtime
    config: QuantizeConfig
    stats: dict[str, TensorStats] | None = None
    built: dict[QuantSettings, Model] = field(default_factory=dict)


def quantize(
    model: Model | str | Path,
    config: QuantizeConfig | None = None,
    *,
    data: BoundData | Dataset | str | Path,
    runtime: Runtime | str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> QuantizeResult:
    """Quantize ``model`` to INT8 with settings chosen for the target CPU; see the module doc."""
    started = time.perf_counter()
    config = config or QuantizeConfig()
    fp32 = load(model)
    detected = detect_isa()
    isa = config.target_isa or detected
    with tempfile.TemporaryDirectory(prefix="edgetune-quant-") as tmp:
        search = _start_search(fp32, config, data, runtime, Path(tmp), progress)
        results = _run_search(search, isa, progress)
    chosen = _choose(results, config.tolerance)
    model_out = search.built[chosen.settings]
    return QuantizeResult(
        model=model_out,
        settings=chosen.settings,
        target_isa=isa,
        detected_isa=detected,
        candidates=results,
        reasons=_reasons(chosen, results, isa, detected, config),
        warnings=_warnings(chosen, isa),
        preprocessed=search.prepped is not fp32,
        seconds=time.perf_counter() - started,
    )


def _start_search(
    fp32: Model,
    config: QuantizeConfig,
    data: BoundData | Dataset | str | Path,
    runtime: Runtime | str | None,
    workdir: Path,
    progress: Progress,
) -> _Search:
    bound = data if isinstance(data, BoundData) else bind(data, fp32)
    calib, select = _split_calibration(bound, config)
    prepped = preprocess(fp32, workdir) if config.preprocess else fp32
    rt = get_runtime(runtime)
    session = rt.session(fp32)
    reference = run_outputs(session, select, progress=progress, label="float32 reference")
    return _Search(
        fp32=fp32,
        prepped=prepped,
        workdir=workdir,
        calib_feeds=list(calib.feeds()),
        select=select,
        reference=reference,
        fp32_session=session,
        runtime=rt,
        config=config,
    )


def _split_calibration(bound: BoundData, config: QuantizeConfig) -> tuple[BoundData, BoundData]:
    """Calibration samples and held-out selection samples (all of them when there are few)."""
    arrays = bound.materialize(config.calib_limit)
    n = len(next(iter(v for k, v in arrays.items() if k != "labels")))
    if n == 0:
        raise DataError("the calibration dataset is empty; give at least one sample")
    n_select = min(config.selection_samples, n // 4) if n >= 16 else 0
    full, _ = bound.split(n)
    if n_select == 0:
        log.warning("only %d calibration samples: candidates are compared on the same samples", n)
        return full, full
    return full.split(n - n_select)


def _run_search(search: _Search, isa: Isa, progress: Progress) -> list[CandidateResult]:
    first = candidate_settings(search.config, isa, search.prepped.op_types())
    results = _evaluate_all(search, first, progress)
    if not any(r.error is None for r in results):
        details = "; ".join(f"{r.settings.label()}: {r.error}" for r in results)
        raise QuantizationError(f"every quantization setting failed: {details}")
    best = _choose(results, search.config.tolerance)
    second = [s for s in refinements(best.settings, search.config) if s not in search.built]
    return results + _evaluate_all(search, second, progress)


def _evaluate_all(
    search: _Search, settings: list[QuantSettings], progress: Progress
) -> list[CandidateResult]:
    progress.start("trying settings", len(settings))
    results = []
    for s in settings:
        results.append(_evaluate(search, s, progress))
        progress.advance()
    progress.finish()
    return results


def _evaluate(search: _Search, settings: QuantSettings, progress: Progress) -> CandidateResult:
    try:
        model = _build(search, settings, progress)
    except QuantizationError as exc:
        log.info("candidate %s failed: %s", settings.label(), exc)
        return CandidateResult(settings=settings, error=str(exc))
    session = search.runtime.session(model)
    outputs = run_outputs(session, search.select)
    fidelity = get_metric("fidelity")(outputs, search.reference)
    feeds = list(search.select.feeds(limit=8))
    lat = measure_interleaved(
        {"fp32": search.fp32_session, "q": session}, feeds, _CANDIDATE_LATENCY
    )
    ratio = lat["q"].p50 / max(lat["fp32"].p50, 1e-9)
    log.info("%s: cosine %.5f, latency x%.2f", settings.label(), fidelity.value, ratio)
    return CandidateResult(
        settings=settings,
        fidelity=fidelity.details,
        latency_ratio=ratio,
        size_bytes=model.size_bytes,
    )


def _build(search: _Search, settings: QuantSettings, progress: Progress) -> Model:
    if settings.mode is QuantMode.DYNAMIC:
        model = build_dynamic(search.prepped, settings, search.workdir)
    else:
        if search.stats is None:
            search.stats = collect_stats(search.prepped, search.calib_feeds, progress=progress)
        ranges = compute_ranges(search.stats, settings.method, percentile=search.config.percentile)
        model = build_static(search.prepped, settings, ranges, search.workdir)
    model = search.fp32.with_proto(model.proto, name=f"{search.fp32.name}_int8")
    search.built[settings] = model
    return model


def _choose(results: list[CandidateResult], tolerance: float) -> CandidateResult:
    """The fastest candidate whose fidelity is within ``tolerance`` of the best."""
    ok = [r for r in results if r.error is None]
    best = max(r.score for r in ok)
    acceptable = [r for r in ok if r.score >= best - tolerance]
    return min(acceptable, key=lambda r: (r.latency_ratio or np.inf, -r.score))


def _reasons(
    chosen: CandidateResult,
    results: list[CandidateResult],
    isa: Isa,
    detected: Isa,
    config: QuantizeConfig,
) -> list[str]:
    s = chosen.settings
    reasons = [f"target ISA {isa.value} (this machine: {detected.value})"]
    if isa.u8s8_saturates:
        reasons.append(
            f"{isa.value} has no VNNI: u8 x s8 products can saturate a 16-bit intermediate "
            "(VPMADDUBSW), so only 7-bit weights (reduce_range) or u8 x u8 were tried"
        )
    ok = [r for r in results if r.error is None]
    best = max(r.score for r in ok)
    reasons.append(
        f"chose '{s.label()}' out of {len(results)} candidates: cosine to float32 "
        f"{chosen.score:.5f} (best {best:.5f}, tolerance {config.tolerance}), "
        f"latency x{chosen.latency_ratio:.2f} of float32 on held-out calibration samples"
    )
    if not isa.u8s8_saturates and not s.saturation_free_on(Isa.AVX2):
        reasons.append(
            f"these settings rely on {isa.value}: on an x86 CPU without VNNI they can saturate; "
            "quantize with --target-isa avx2 for a model that is safe on any x86 CPU"
        )
    if chosen.latency_ratio is not None and chosen.latency_ratio > 1.0:
        reasons.append(
            "every accurate INT8 setting ran slower than float32 here: the model is too small "
            "for INT8 kernels to pay for the quantize/dequantize steps around them"
        )
    return reasons


def _warnings(chosen: CandidateResult, isa: Isa) -> list[str]:
    if chosen.settings.saturation_free_on(isa):
        return []
    return [
        f"the pinned settings ({', '.join(chosen.settings.forced)}) use full-range s8 weights "
        f"with u8 activations, which can saturate on {isa.value}; drop the pin or use "
        "--reduce-range to be safe"
    ]
