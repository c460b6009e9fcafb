"""GPTQ rounding for 4-bit MatMul weights (Frantar et al., 2022).

Round-to-nearest rounds every weight on its own. GPTQ rounds one input row of the weight at a
time and moves each rounding error onto the rows not rounded yet, weighted by the inverse of
the layer's input Hessian ``H = X^T X`` (X: the layer's float inputs on calibration data), so
that the layer's *output* error on that data is what gets minimized, not the weight error.

Why our own: ONNX Runtime ships a GPTQ (a vendored Intel Neural Compressor), but it rewrites a
whole model in one pass with its own grid. The search needs one layer's 4-bit weights at a
time, predicted exactly as the built model will compute with them. So the rounding is done
here, on the grid of ``MatMulNBits`` (symmetric: scale = extreme / -8, levels -8..7), and every
block keeps its extreme at -8; ``MatMulNBitsQuantizer``, given these values, then finds exactly
these scales and levels and only packs them (see ``ort_plan._preround_int4``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import QuantizationError

__all__ = ["gptq_int4", "input_hessians"]

log = logging.getLogger(__name__)

_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
_LAZY_ROWS = 128
"""Rows rounded one by one before the pending error is pushed onto the rest in one product."""


def gptq_int4(w: np.ndarray, hessian: np.ndarray, block: int, *, damp: float = 0.01) -> np.ndarray:
    """``w`` ([K, N], ``y = x @ w``) rounded by GPTQ to symmetric 4-bit blocks of ``block``
    rows (per output column), dequantized. ``hessian`` is ``X^T X`` of the layer's inputs."""
    k, n = w.shape
    if hessian.shape != (k, k):
        raise QuantizationError(f"GPTQ needs a {k}x{k} input Hessian for a [{k}, {n}] weight; got {hessian.shape}")
    if block <= 0 or k % block:
        raise QuantizationError(f"GPTQ blocks of {block} rows must divide the {k} input rows")
    work = np.array(w, dtype=np.float64)
    hinv = _inverse_cholesky(hessian, work, damp)
    out = np.zeros_like(work)
    scale = np.zeros(n)
    extreme = np.zeros(n, dtype=np.int64)
    for start in range(0, k, _LAZY_ROWS):
        stop = min(start + _LAZY_ROWS, k)
        errors = np.zeros((stop - start, n))
        for row in range(start, stop):
            if row % block == 0:
                scale, extreme = _block_scale(work[row:row + block])
                extreme += row
            q = np.clip(np.round(work[row] / scale), -8, 7)
            q[extreme == row] = -8  # the block's extreme stays at -8: ORT re-derives this scale
            out[row] = q * scale
            err = (work[row] - out[row]) / hinv[row, row]
            work[row + 1:stop] -= np.outer(hinv[row, row + 1:stop], err)
            errors[row - start] = err
        work[stop:] -= hinv[start:stop, stop:].T @ errors
    return out.astype(np.float32)


def _inverse_cholesky(hessian: np.ndarray, work: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian; inputs that never vary are zeroed."""
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    work[dead] = 0.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    try:
        lower = np.linalg.cholesky(np.linalg.inv(h))
    except np.linalg.LinAlgError:
        raise QuantizationError("GPTQ: the input Hessian is not positive definite even damped; "
                                "give more calibration samples") from None
    return lower.T


def _block_scale(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``rows`` ([block, N]): the MLAS scale (extreme / -8) of the clipping ratio
    with the least squared error, and the row (within the block) of that extreme."""
    index = np.argmax(np.abs(rows), axis=0)
    extreme = rows[index, np.arange(rows.shape[1])]
    best_scale = np.ones(rows.shape[1])
    best_err = np.full(rows.shape[1], np.inf)
    for ratio in _CLIP_RATIOS:
        s = np.where(extreme != 0, extreme * ratio / -8.0, 1.0)
        q = np.clip(np.round(rows / s), -8, 7)
        q[index, np.arange(rows.shape[1])] = -8
        err = np.sum((q * s - rows) ** 2, axis=0)
        take = err < best_err
        best_scale, best_err = np.where(take, s, best_scale), np.minimum(err, best_err)
    # float32 scales, as MatMulNBits stores them: the levels must be exact on that scale
    return best_scale.astype(np.float32).astype(np.float64), index


def input_hessians(model: Model, activations: Mapping[str, str], feeds: Sequence[Mapping[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """``X^T X`` of each layer's float input (``activations``: layer name -> input tensor) over
    ``feeds``, one runtime pass per feed; every axis but the last is a row of X."""
    from edgetune.transforms.calibrate import intermediate_session

    if not feeds:
        raise QuantizationError("GPTQ needs calibration data for the layers' input statistics; pass --calib")
    wanted = list(dict.fromkeys(activations.values()))
    session, index = intermediate_session(model, wanted)
    sums: dict[str, np.ndarray] = {}
    for feed in feeds:
        outputs = session.run(dict(feed))
        for name in wanted:
            x = np.asarray(outputs[index[name]], dtype=np.float64)
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0.0) + x.T @ x
    return {layer: sums[act] for layer, act in activations.items()}
