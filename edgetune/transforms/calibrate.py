"""Activation statistics and calibration ranges.

Why our own collection instead of ONNX Runtime's calibrators: ORT runs a fresh calibration pass
for every ``quantize_static`` call and offers no MSE method. edgetune tries several settings per
model (and, later, per layer), so it collects statistics once (min/max, then a histogram per
tensor) and derives the range of every method from them. The ranges then go to ORT's own
``quantize_static`` through its calibration cache, so ORT still writes the QDQ graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.runtimes import Session, SessionOptions, get_runtime

__all__ = ["CalibMethod", "TensorStats", "collect_stats", "compute_ranges", "intermediate_session"]

N_BINS = 2048


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


@dataclass(kw_only=True)
class TensorStats:
    """Range and a histogram over the symmetric interval ``[-absmax, absmax]``."""

    name: str
    lo: float = math.inf
    hi: float = -math.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, dtype=np.int64))
    count: int = 0

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi), 1e-12)

    def bin_centers(self) -> np.ndarray:
        edges = np.linspace(-self.absmax, self.absmax, N_BINS + 1)
        return (edges[:-1] + edges[1:]) / 2

    def update_range(self, x: np.ndarray) -> None:
        if x.size:
            self.lo = min(self.lo, float(x.min()))
            self.hi = max(self.hi, float(x.max()))

    def update_hist(self, x: np.ndarray) -> None:
        a = self.absmax
        idx = ((x.reshape(-1).astype(np.float64) + a) * (N_BINS / (2 * a))).astype(np.int64)
        self.hist += np.bincount(np.clip(idx, 0, N_BINS - 1), minlength=N_BINS)
        self.count += x.size


def float_tensors(model: Model) -> list[str]:
    """Every float32 tensor a node reads or writes, initializers excepted."""
    import onnx

    graph = model.proto.graph
    initializers = {i.name for i in graph.initializer}
    typed = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    names: list[str] = []
    for node in graph.node:
        for name in [*node.input, *node.output]:
            info = typed.get(name)
            if not name or name in initializers or name in names or info is None:
                continue
            if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                names.append(name)
    return names


def intermediate_session(model: Model, names: Sequence[str]) -> tuple[Session, dict[str, int]]:
    """An unoptimized ONNX Runtime session of ``model`` that also outputs the tensors
    ``names``, and each output's index (graph optimizations off, so every tensor exists)."""
    from onnx import helper

    proto = model.copy_proto()
    present = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = get_runtime("onnxruntime").session(model.with_proto(proto), SessionOptions(optimize=False))
    return session, {n: i for i, n in enumerate(session.output_names)}


def _augmented(model: Model, names: list[str]) -> Model:
    proto = model.copy_proto()
    existing = {o.name for o in proto.graph.output}
    typed = {v.name: v for v in [*proto.graph.input, *proto.graph.value_info]}
    for name in names:
        if name not in existing:
            proto.graph.output.append(typed[name])
    return model.with_proto(proto, name=f"{model.name}-calib")


def collect_stats(
    model: Model,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, TensorStats]:
    """Run the calibration feeds twice: min/max first, then fixed-range histograms."""
    feeds = list(feeds)
    names = float_tensors(model)
    session = get_runtime("onnxruntime").session(
        _augmented(model, names), SessionOptions(optimize=False)
    )
    index = {name: i for i, name in enumerate(session.output_names)}
    stats = {name: TensorStats(name=name) for name in names}
    for update in (TensorStats.update_range, TensorStats.update_hist):
        progress.start("calibrating", len(feeds))
        for feed in feeds:
            outputs = session.run(feed)
            for name, st in stats.items():
                update(st, np.asarray(outputs[index[name]]))
            progress.advance()
        progress.finish()
    return stats


def compute_ranges(
    stats: dict[str, TensorStats], method: CalibMethod, *, percentile: float = 99.999
) -> dict[str, tuple[float, float]]:
    """The clipping range of every tensor under ``method``; always contains zero."""
    pick = _METHODS[CalibMethod(method)]
    ranges = {}
    for name, st in stats.items():
        if st.count == 0:
            continue
        lo, hi = pick(st, percentile)
        ranges[name] = (min(lo, 0.0), max(hi, 0.0))
    return ranges


def _minmax(st: TensorStats, percentile: float) -> tuple[float, float]:
    return st.lo, st.hi


def _percentile(st: TensorStats, percentile: float) -> tuple[float, float]:
    cdf = np.cumsum(st.hist) / max(st.hist.sum(), 1)
    centers = st.bin_centers()
    tail = (100.0 - percentile) / 100.0
    lo = centers[min(int(np.searchsorted(cdf, tail)), N_BINS - 1)]
    hi = centers[min(int(np.searchsorted(cdf, 1.0 - tail)), N_BINS - 1)]
    return max(st.lo, float(lo)), min(st.hi, float(hi))


def _entropy(st: TensorStats, percentile: float) -> tuple[float, float]:
    """KL-divergence threshold on the |x| histogram (the TensorRT method)."""
    half = N_BINS // 2
    folded = st.hist[half:] + st.hist[:half][::-1]
    threshold_bin = _kl_threshold(folded.astype(np.float64), levels=128)
    t = st.absmax * threshold_bin / half
    return max(st.lo, -t), min(st.hi, t)


def _kl_threshold(hist: np.ndarray, *, levels: int) -> int:
    best_bin, best_kl = len(hist), math.inf
    for i in range(levels, len(hist) + 1, 16):
        if hist[:i].sum() == 0:
            continue  # all mass beyond the threshold: nothing to compare
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = _expand(_merge(hist[:i], levels), hist[:i] > 0, i)
        kl = _kl(p, q)
        if kl < best_kl:
            best_bin, best_kl = i, kl
    return best_bin


def _merge(p: np.ndarray, levels: int) -> np.ndarray:
    chunks = np.array_split(p, levels)
    return np.array([c.sum() for c in chunks])


def _expand(merged: np.ndarray, nonzero: np.ndarray, length: int) -> np.ndarray:
    q = np.zeros(length)
    bounds = np.array_split(np.arange(length), len(merged))
    for value, idx in zip(merged, bounds, strict=True):
        live = idx[nonzero[idx]]
        if len(live):
            q[live] = value / len(live)
    return q


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q); q's empty bins where p has mass (outliers folded into the last bin) get a
    small probability instead of making the divergence infinite, as TensorRT and ORT do."""
    p = p / max(p.sum(), 1e-12)
    q = q / max(q.sum(), 1e-12)
    mask = p > 0
    q = np.where(mask & (q == 0), eps, q)
    q = q / q.sum()
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _mse(st: TensorStats, percentile: float) -> tuple[float, float]:
    """The clipping range minimizing expected 8-bit quantization error, each end searched in
    turn (a shared shrink factor cannot clip an outlier on one side only)."""
    centers, weights = st.bin_centers(), st.hist.astype(np.float64)
    lo, hi = min(st.lo, 0.0), max(st.hi, 0.0)
    shrink = np.geomspace(0.01, 1.0, 60)
    for _ in range(2):
        hi = min(
            (max(st.hi, 0.0) * a for a in shrink),
            key=lambda h: _quant_error(centers, weights, lo, h),
        )
        lo = min(
            (min(st.lo, 0.0) * a for a in shrink),
            key=lambda low: _quant_error(centers, weights, low, hi),
        )
    return float(lo), float(hi)


def _quant_error(x: np.ndarray, w: np.ndarray, lo: float, hi: float) -> float:
    scale = max(hi - lo, 1e-12) / 255.0
    zero = round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return float(np.sum(w * (x - (q - zero) * scale) ** 2))


_METHODS = {
    CalibMethod.MINMAX: _minmax,
    CalibMethod.PERCENTILE: _percentile,
    CalibMethod.ENTROPY: _entropy,
    CalibMethod.MSE: _mse,
}
