"""Does the sensitivity ranking agree with the metric? A check with measurable ground truth.

``analyze`` measures the task metric with one layer quantized at a time, but at the precisions
a plan uses that change is often below what the evaluation set can resolve: on the demo CNN, a
single INT8 or INT4 layer moves top-1 by at most 4 of 1,500 images, as often up as down. That
measured change is dominated by its first-order term (the metric's gradient times one
particular rounding error), whose sign is chance, while the proxies estimate the expected
harm (the second-order term). Correlating the two then measures noise, not the proxies.

This check therefore measures each layer at weight widths where the change is large enough to
resolve, and says which changes are resolved:

* for each layer and each width in ``bits``, the weights are rounded symmetric per output
  channel to that many bits, in float, exactly the numbers ``DequantizeLinear`` would give,
  activations stay float; the task metric is measured on the evaluation data with only that
  layer changed;
* the same rounding error goes through the same proxies ``analyze`` uses (weight error, the
  layer's output noise, the end-to-end output noise and KL divergence of the noise probe);
* for classifiers with labels, a paired exact test (McNemar's: images that turned wrong against
  images that turned right) says whether a change exceeds sampling noise;
* Spearman rank correlations per width, over all pairs, and over the resolved pairs only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.analyze.sensitivity import (
    NoiseProbe,
    batch_feeds,
    layer_forward,
    record_layers,
    relative_error,
    spearman,
)
from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.metrics import Metric, RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.errors import ConfigError, QuantizationError
from edgetune.runtimes import get_runtime
from edgetune.transforms.plan import QuantLayer, prepare
from edgetune.transforms.rounding import channel_axis, symmetric_per_channel
from edgetune.validate.evaluate import run_outputs

__all__ = ["RankingCheck", "RankingConfig", "RankingPair", "mcnemar_p", "ranking_check"]

log = logging.getLogger(__name__)

DataSpec = BoundData | Dataset | str | Path

PROXIES = ("output_noise", "kl", "layer_noise", "weight_error")


@dataclass(frozen=True, kw_only=True)
class RankingConfig:
    """Which widths the ground truth is measured at, and on how much data."""

    metric: str | Any = "top1"
    bits: tuple[int, ...] = (2, 3, 4)
    probe_samples: int = 32
    """Calibration samples whose activations drive the proxies (as in ``AnalyzeConfig``)."""
    eval_limit: int | None = None
    """Evaluation samples for the measured metric (``None``: all)."""
    alpha: float = 0.05
    """A measured change is resolved when McNemar's two-sided p-value is below this."""
    preprocess: bool = True

    def __post_init__(self) -> None:
        if not self.bits or any(not 2 <= b <= 8 for b in self.bits):
            raise ConfigError(
                f"The 'bits' parameter of RankingConfig must list widths from 2 to 8; got {self.bits}."
            )
        if self.probe_samples < 1:
            raise ConfigError(f"The 'probe_samples' parameter of RankingConfig must be >= 1; got {self.probe_samples}.")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"The 'alpha' parameter of RankingConfig must be in (0, 1); got {self.alpha}.")


@dataclass(frozen=True, kw_only=True)
class RankingPair:
    """One layer rounded to one width: its proxies and the measured metric change."""

    layer: str
    bits: int
    weight_error: float
    layer_noise: float
    output_noise: float
    kl: float | None
    metric_drop: float
    turned_wrong: int | None = None
    turned_right: int | None = None
    p_value: float | None = None

    def proxy(self, name: str) -> float | None:
        return getattr(self, name)

    def resolved(self, alpha: float) -> bool:
        return self.p_value is not None and self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class RankingCheck:
    metric_name: str
    baseline: float
    samples: int
    alpha: float
    pairs: list[RankingPair]
    correlations: dict[str, dict[str, Any]]
    """Per group (``"2-bit"``, …, ``"all"``, ``"resolved"``): pair count, Spearman of each
    proxy with the measured drop, and how many of the top-k layers by drop the output noise
    also puts in its top k."""

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric_name, "baseline": self.baseline, "samples": self.samples,
                "alpha": self.alpha, "pairs": [p.to_dict() for p in self.pairs],
                "correlations": self.correlations}


def ranking_check(model: Model | str | Path, config: RankingConfig | None = None, *,
                  data: DataSpec, eval_data: DataSpec) -> RankingCheck:
    """Measure every layer's metric change at each width of ``config.bits`` and correlate the
    sensitivity proxies with it (see the module docstring)."""
    config = config or RankingConfig()
    metric = get_metric(config.metric)
    prepared = prepare(model, data=data, preprocess=config.preprocess,
                       calib_limit=config.probe_samples, with_stats=False)
    layers = [lay for lay in prepared.layers() if lay.op_type != "Gather"]
    if not layers:
        raise QuantizationError(f"{prepared.model.name} has no Conv, Gemm or MatMul layer with constant weights")
    feeds = batch_feeds(prepared.calib_feeds[: config.probe_samples], prepared.model)
    records = record_layers(prepared.model, layers, feeds)
    probe = NoiseProbe(prepared.model, records, feeds)
    bound = _bound(eval_data, prepared.model, config.eval_limit)
    reference = run_outputs(get_runtime("onnxruntime").session(prepared.model), bound)
    baseline = metric(reference, reference).value
    pairs = []
    for bits in config.bits:
        for layer in layers:
            record = records[layer.name]
            wq = symmetric_per_channel(record.w, channel_axis(layer), bits)
            delta = layer_forward(layer, record.x, wq - record.w, None)
            noise, kl = probe.output_noise(layer.name, delta)
            outputs = _run_with_weight(prepared.model, layer, wq, bound)
            wrong, right = _turned(outputs, reference, metric)
            pairs.append(RankingPair(
                layer=layer.name, bits=bits, weight_error=relative_error(wq - record.w, record.w),
                layer_noise=relative_error(delta, record.y), output_noise=noise, kl=kl,
                metric_drop=baseline - metric(outputs, reference).value, turned_wrong=wrong,
                turned_right=right, p_value=None if wrong is None else mcnemar_p(wrong, right or 0)))
            log.debug("%s at %d bits: drop %+.4f", layer.name, bits, pairs[-1].metric_drop)
    return RankingCheck(metric_name=metric.name, baseline=baseline, samples=len(reference),
                        alpha=config.alpha, pairs=pairs, correlations=_correlations(pairs, config))


def _bound(spec: DataSpec, model: Model, limit: int | None) -> BoundData:
    bound = spec if isinstance(spec, BoundData) else bind(spec, model)
    return bound if limit is None or limit >= len(bound) else bound.split(limit)[0]


def _run_with_weight(model: Model, layer: QuantLayer, weight: np.ndarray, data: BoundData) -> RunOutputs:
    from onnx import numpy_helper

    proto = model.copy_proto()
    init = next(i for i in proto.graph.initializer if i.name == layer.weight)
    init.CopyFrom(numpy_helper.from_array(weight.astype(np.float32), layer.weight))
    session = get_runtime("onnxruntime").session(model.with_proto(proto, name=f"{model.name}-{layer.name}"))
    return run_outputs(session, data)


def _turned(outputs: RunOutputs, reference: RunOutputs, metric: Metric) -> tuple[int | None, int | None]:
    """(images the change turned wrong, images it turned right): classifiers with labels only."""
    if not metric.needs_labels or reference.labels is None:
        return None, None
    got, want = outputs.stacked(0), reference.stacked(0)
    if got.ndim != 2 or got.shape[1] < 2:
        return None, None
    truth = np.asarray(reference.labels).reshape(-1)
    was, now = want.argmax(axis=1) == truth, got.argmax(axis=1) == truth
    return int(np.sum(was & ~now)), int(np.sum(~was & now))


def mcnemar_p(turned_wrong: int, turned_right: int) -> float:
    """Two-sided exact McNemar p-value: under no effect, each changed image is equally likely
    to have turned wrong or right."""
    from scipy.stats import binomtest

    n = turned_wrong + turned_right
    return 1.0 if n == 0 else float(binomtest(turned_wrong, n, 0.5).pvalue)


def _correlations(pairs: Sequence[RankingPair], config: RankingConfig) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[RankingPair]] = {f"{b}-bit": [p for p in pairs if p.bits == b] for b in config.bits}
    groups["all"] = list(pairs)
    if any(p.p_value is not None for p in pairs):
        groups["resolved"] = [p for p in pairs if p.resolved(config.alpha)]
    return {name: _group(items, config.alpha) for name, items in groups.items()}


def _group(items: Sequence[RankingPair], alpha: float) -> dict[str, Any]:
    drops = [p.metric_drop for p in items]
    out: dict[str, Any] = {"n": len(items), "resolved": sum(p.resolved(alpha) for p in items)}
    for name in PROXIES:
        values = [p.proxy(name) for p in items]
        if items and all(v is not None for v in values):
            out[name] = spearman(values, drops)  # type: ignore[arg-type]
    k = min(3, len(items) // 2)
    if k:
        by_drop = {p.layer + str(p.bits) for p in sorted(items, key=lambda p: -p.metric_drop)[:k]}
        by_noise = {p.layer + str(p.bits) for p in sorted(items, key=lambda p: -p.output_noise)[:k]}
        out["top_k"] = k
        out["top_k_overlap"] = len(by_drop & by_noise)
    return out
