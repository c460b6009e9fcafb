"""Saturation risk of INT8 layers on the *target* CPU, simulated on real activations.

On x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels multiply with VPMADDUBSW: two adjacent
products along the reduction axis, ``a[k]*w[k] + a[k+1]*w[k+1]``, are summed into a signed
16-bit lane *with saturation* before being widened (see :mod:`edgetune.core.isa`). Whether that
clips depends on the actual activation codes and weights, not on the machine the analysis runs
on, so this module reproduces the pair sums in numpy: activations quantized to u8 exactly as
the built model would (static range, or per run for dynamic quantization), weights to full-range
s8 per channel, both laid out in the kernel's reduction order (NHWC im2col for convolutions:
kernel row, kernel column, input channel). The fraction of saturating pairs per layer decides
where the fix (7-bit weights or u8 weights) is needed and where full-range weights are safe.

Depthwise convolutions run in a separate kernel with 32-bit accumulation, and u8 x u8 or 7-bit
weights cannot overflow (2 * 255 * 64 = 32,640), so they carry no risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.analyze.sensitivity import LayerRecord, im2col
from edgetune.core.isa import Isa
from edgetune.transforms.rounding import channel_axis

__all__ = ["SaturationRisk", "saturation_risk"]

INT16_MAX = 32767
INT16_MIN = -32768
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True, kw_only=True)
class SaturationRisk:
    """Simulated u8 x s8 pair sums of one layer with full-range s8 weights."""

    layer: str
    kernel: str
    isa: Isa
    pairs: int = 0
    saturated_pairs: int = 0
    outputs: int = 0
    affected_outputs: int = 0
    max_abs_pair: int = 0
    dynamic_saturated_pairs: int = 0
    """The same count with activations quantized per run (dynamic quantization)."""

    @property
    def fraction(self) -> float:
        return self.saturated_pairs / self.pairs if self.pairs else 0.0

    @property
    def dynamic_fraction(self) -> float:
        return self.dynamic_saturated_pairs / self.pairs if self.pairs else 0.0

    @property
    def affected_fraction(self) -> float:
        return self.affected_outputs / self.outputs if self.outputs else 0.0

    @property
    def simulated(self) -> bool:
        return self.pairs > 0

    @property
    def at_risk(self) -> bool:
        """Full-range u8 x s8 would clip on the target (static activations)."""
        return self.isa.u8s8_saturates and self.saturated_pairs > 0

    @property
    def dynamic_at_risk(self) -> bool:
        return self.isa.u8s8_saturates and self.dynamic_saturated_pairs > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel, "target_isa": self.isa.value, "pairs_simulated": self.pairs,
            "saturated_pairs": self.saturated_pairs, "saturated_fraction": self.fraction,
            "affected_outputs_fraction": self.affected_fraction, "max_abs_pair_sum": self.max_abs_pair,
            "dynamic_saturated_fraction": self.dynamic_fraction, "at_risk": self.at_risk,
            "dynamic_at_risk": self.dynamic_at_risk,
        }


def saturation_risk(record: LayerRecord, act_range: tuple[float, float] | None, isa: Isa,
                    *, max_rows: int = 256, max_pairs: int = 20_000_000) -> SaturationRisk:
    """Simulate the layer's pair sums on the recorded activations: at most ``max_rows`` rows,
    fewer for wide layers so that at most about ``max_pairs`` pairs are summed."""
    layer = record.layer
    if layer.op_type == "Gather":
        return SaturationRisk(layer=layer.name, kernel="lookup (no products)", isa=isa)
    if _is_depthwise(record):
        return SaturationRisk(layer=layer.name, kernel="depthwise (32-bit accumulation)", isa=isa)
    if act_range is None or not record.forward_ok:
        return SaturationRisk(layer=layer.name, kernel="not simulated", isa=isa)
    kernel = "u8s8 pairs (VPMADDUBSW)" if isa.u8s8_saturates else "u8s8 (32-bit dot products)"
    w_q = _s8_weights(record)
    max_rows = max(16, min(max_rows, max_pairs // max(w_q.size // 2, 1)))
    static = _pair_counts(_rows(record, *_u8_static(record.x, act_range), max_rows), w_q, record)
    dynamic = _pair_counts(_rows(record, *_u8_dynamic(record.x), max_rows), w_q, record)
    return SaturationRisk(layer=layer.name, kernel=kernel, isa=isa, pairs=static[0],
                          saturated_pairs=static[1], outputs=static[2], affected_outputs=static[3],
                          max_abs_pair=static[4], dynamic_saturated_pairs=dynamic[1])


def _is_depthwise(record: LayerRecord) -> bool:
    layer = record.layer
    return layer.op_type == "Conv" and int(layer.attrs.get("group", 1)) > 1 and layer.weight_shape[1] == 1


def _u8_static(x: np.ndarray, act_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """u8 codes of ``x`` and the zero point (the code of 0.0, which padding uses)."""
    lo, hi = min(act_range[0], 0.0), max(act_range[1], 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = round(-lo / scale)
    return np.clip(np.round(x / scale) + zero, 0, 255).astype(np.int32), np.asarray(zero)


def _u8_dynamic(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-run (per-sample) ranges, as DynamicQuantizeLinear computes them."""
    parts = [_u8_static(s, (float(s.min()), float(s.max()))) for s in x]
    zeros = np.array([z for _, z in parts]).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.stack([c for c, _ in parts]), zeros


def _s8_weights(record: LayerRecord) -> np.ndarray:
    """Full-range symmetric s8 per output channel, as [K, N] in the kernel's K order."""
    w, layer = record.w, record.layer
    axis = channel_axis(layer)
    moved = np.moveaxis(w, axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
    q = np.clip(np.round(moved / scale), -127, 127).astype(np.int32)
    if layer.op_type == "Conv":  # [Cout, C, kh, kw] -> K order (kh, kw, C)
        return q.transpose(0, 2, 3, 1).reshape(q.shape[0], -1).T
    return q.reshape(q.shape[0], -1).T  # [N, K] -> [K, N]


def _rows(record: LayerRecord, a_q: np.ndarray, zero: np.ndarray, max_rows: int) -> np.ndarray:
    """Activation codes as [M, K] rows in the kernel's K order, evenly subsampled; convolution
    padding holds the zero point's code, as in the kernel."""
    layer = record.layer
    if layer.op_type == "Conv":
        kh, kw = layer.weight_shape[2:]
        cols = im2col((a_q - zero).astype(np.float32), (kh, kw), layer.attrs)
        cols = cols + zero.reshape((-1,) + (1,) * 5) if zero.ndim else cols + zero
        rows = cols.transpose(0, 1, 2, 4, 5, 3).reshape(-1, cols.shape[3] * kh * kw)
    elif layer.op_type == "Gemm" and layer.attrs.get("transA", 0):
        rows = a_q.T
    else:
        rows = a_q.reshape(-1, a_q.shape[-1])
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).astype(int)]
    return np.asarray(rows, dtype=np.int32)


def _pair_counts(a: np.ndarray, w: np.ndarray, record: LayerRecord) -> tuple[int, int, int, int, int]:
    """(pairs, saturated pairs, outputs, outputs with a saturated pair, max |pair sum|)."""
    if int(record.layer.attrs.get("group", 1)) > 1:
        return _grouped_counts(a, w, record)
    m, k = a.shape
    if k % 2:
        a = np.concatenate([a, np.zeros((m, 1), np.int32)], axis=1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int32)], axis=0)
    a2 = a.reshape(m, -1, 2)
    w2 = w.reshape(-1, 2, w.shape[1])
    n = w.shape[1]
    step = max(1, _CHUNK_ELEMENTS // max(a2.shape[1] * n, 1))
    sat = affected = peak = 0
    for start in range(0, m, step):
        chunk = a2[start:start + step]
        sums = chunk[:, :, 0, None] * w2[None, :, 0, :] + chunk[:, :, 1, None] * w2[None, :, 1, :]
        over = (sums > INT16_MAX) | (sums < INT16_MIN)
        sat += int(over.sum())
        affected += int(over.any(axis=1).sum())
        peak = max(peak, int(np.abs(sums).max()) if sums.size else 0)
    return m * a2.shape[1] * n, sat, m * n, affected, peak


def _grouped_counts(a: np.ndarray, w: np.ndarray, record: LayerRecord) -> tuple[int, int, int, int, int]:
    """Grouped convolution: each group is its own GEMM over its channel slice."""
    group = int(record.layer.attrs.get("group", 1))
    cout, cg, kh, kw = record.layer.weight_shape
    a4 = a.reshape(len(a), kh * kw, group, cg)
    w4 = w.reshape(kh * kw, group, cg, cout)
    totals = np.zeros(5, dtype=np.int64)
    per_out = cout // group
    for g in range(group):
        a_g = a4[:, :, g, :].reshape(len(a), -1)
        w_g = w4[:, g, :, g * per_out:(g + 1) * per_out].reshape(-1, per_out)
        single = LayerRecord(layer=record.layer, x=record.x[:0], y=record.y[:0], w=record.w[:0])
        counts = _pair_counts_plain(a_g, w_g, single)
        totals[:4] += counts[:4]
        totals[4] = max(totals[4], counts[4])
    return int(totals[0]), int(totals[1]), int(totals[2]), int(totals[3]), int(totals[4])


def _pair_counts_plain(a: np.ndarray, w: np.ndarray, record: LayerRecord) -> tuple[int, int, int, int, int]:
    attrs = {k: v for k, v in record.layer.attrs.items() if k != "group"}
    plain = LayerRecord(layer=_with_attrs(record.layer, attrs), x=record.x, y=record.y, w=record.w)
    return _pair_counts(a, w, plain)


def _with_attrs(layer: Any, attrs: dict[str, Any]) -> Any:
    from dataclasses import replace

    return replace(layer, attrs=attrs)
