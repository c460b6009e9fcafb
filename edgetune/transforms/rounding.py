"""The arithmetic of every precision, exactly as ONNX Runtime rounds (written once).

Building a plan (:mod:`.ort_plan`) and predicting a layer's error without building it
(:mod:`edgetune.analyze.sensitivity`) both call these functions, so the predicted weights are
the ones the built model dequantizes (a test checks it). The ``*_qdq`` functions return
weights, inputs or outputs *as the built model sees them*:

* INT8 weights: ``compute_scale_zp`` of ONNX Runtime: symmetric s8 in [-127, 127] ([-64, 64]
  with 7-bit weights), asymmetric u8 in [0, 255] ([0, 127]);
* activations: asymmetric u8 [0, 255] or s8 [-128, 127], u16 for ``a16``, per run (whole
  tensor) for dynamic quantization;
* 4-bit weights: MLAS block quantization, the largest-magnitude value of a block mapping to -8.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgetune.errors import QuantizationError
from edgetune.transforms.gptq import gptq_int4
from edgetune.transforms.plan import LayerChoice, Precision, QuantLayer
from edgetune.transforms.settings import ActType, WeightType

__all__ = [
    "act_qdq",
    "channel_axis",
    "effective_int4",
    "expand_blocks",
    "int4_quantize",
    "is_blocked",
    "output_qdq",
    "reduction_axis",
    "symmetric_per_channel",
    "weight_qdq",
]


def reduction_axis(layer: QuantLayer) -> int:
    """The weight axis summed over by the layer (blocks run along it)."""
    if layer.op_type == "Gemm":
        return 1 if layer.attrs.get("transB", 0) else 0
    if layer.op_type == "Gather":
        return 1
    return 0 if layer.op_type == "MatMul" else 1


def channel_axis(layer: QuantLayer) -> int:
    """The weight axis of output channels (one scale each when per-channel)."""
    if layer.op_type == "Gemm":
        return 0 if layer.attrs.get("transB", 0) else 1
    return 1 if layer.op_type == "MatMul" else 0


def _int8_range(weights: WeightType, reduce_range: bool) -> tuple[int, int, bool]:
    """(qmin, qmax, symmetric) of ONNX Runtime's INT8 weights."""
    if weights is WeightType.S8:
        return (-64, 64, True) if reduce_range else (-127, 127, True)
    return (0, 127, False) if reduce_range else (0, 255, False)


def _fake_quant(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, qmin: int, qmax: int,
                symmetric: bool) -> np.ndarray:
    """Quantize and dequantize with ONNX Runtime's scale and zero point (``compute_scale_zp``)."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if symmetric:
        amax = np.maximum(-lo, hi)
        lo, hi = -amax, amax
    scale = (hi - lo) / float(qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)
    zero = np.round((qmin + qmax) / 2.0) if symmetric else np.round(qmin - lo / scale)
    q = np.clip(np.round(x / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).astype(np.float32)


def _per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    return moved.min(axis=1).reshape(shape), moved.max(axis=1).reshape(shape)


def symmetric_per_channel(w: np.ndarray, axis: int, bits: int) -> np.ndarray:
    """``w`` rounded to ``bits``-bit symmetric integers, one scale per channel along ``axis``
    (levels -(2^(bits-1) - 1) to 2^(bits-1) - 1, zero point 0), dequantized."""
    q = 2 ** (bits - 1) - 1
    return _fake_quant(w, *_per_channel(w, axis), -q, q, True)


def int8_weight_qdq(w: np.ndarray, layer: QuantLayer, choice: LayerChoice) -> np.ndarray:
    qmin, qmax, sym = _int8_range(choice.weights, choice.reduce_range)
    if choice.per_channel:
        lo, hi = _per_channel(w, channel_axis(layer))
    else:
        lo, hi = np.asarray(w.min()), np.asarray(w.max())
    return _fake_quant(w, lo, hi, qmin, qmax, sym)


def int4_weight_qdq(w: np.ndarray, layer: QuantLayer, choice: LayerChoice) -> np.ndarray:
    """MLAS block quantization: symmetric blocks map the largest-magnitude value to -8."""
    q, scale, zero = int4_quantize(w, layer, choice)
    return expand_blocks(q - zero, scale, layer, effective_int4(layer, choice), w.shape)


def effective_int4(layer: QuantLayer, choice: LayerChoice) -> LayerChoice:
    """Conv and Gemm blocks no shorter than the reduction axis are per-channel scales."""
    if layer.op_type in ("Conv", "Gemm") and choice.block_size and not is_blocked(layer, choice):
        return replace(choice, block_size=0)
    return choice


_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)
"""Clipping ratios tried per 4-bit block (the one with the least squared error is kept)."""


def int4_quantize(w: np.ndarray, layer: QuantLayer, choice: LayerChoice
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q [-8, 7] or [0, 15], scale per block, zero point per block) of weights ``w``.

    Blocks run along the reduction axis; ``block_size`` 0 makes one block per output channel.
    Scales and zero points have the weight's shape with the block axis shortened. Each block's
    range is clipped to the ratio of :data:`_CLIP_RATIOS` that minimizes its squared error,
    except asymmetric MatMul and Gather blocks, which keep MLAS's round-to-nearest over the
    full range: ``MatMulNBitsQuantizer`` re-rounds the weights it is given, and only symmetric
    clipped blocks survive that unchanged (see ``ort_plan._preround_int4``).
    """
    choice = effective_int4(layer, choice)
    blocks = _blocked(w, layer, choice)  # [..., n_blocks, block]
    clip = choice.symmetric or layer.op_type in ("Conv", "Gemm")
    ratios = _CLIP_RATIOS if clip else (1.0,)
    best: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    for ratio in ratios:
        q, scale, zero = _round_blocks(blocks, choice.symmetric, ratio)
        err = np.sum(((q - zero) * scale - blocks) ** 2, axis=-1, keepdims=True)
        if best is None:
            best = (q, scale, zero, err)
            continue
        take = err < best[3]
        best = (np.where(take, q, best[0]), np.where(take, scale, best[1]),
                np.where(take, zero, best[2]), np.minimum(err, best[3]))
    assert best is not None  # _CLIP_RATIOS is not empty
    return best[0], best[1].astype(np.float32), best[2]


def _round_blocks(blocks: np.ndarray, symmetric: bool, ratio: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if symmetric:
        idx = np.argmax(np.abs(blocks), axis=-1)[..., None]
        extreme = np.take_along_axis(blocks, idx, axis=-1) * ratio
        scale = np.where(extreme != 0, extreme / -8.0, 1.0).astype(np.float32)
        zero = np.zeros_like(scale)
        return np.clip(np.round(blocks / scale), -8, 7), scale, zero
    lo = np.minimum(blocks.min(axis=-1, keepdims=True), 0.0) * ratio
    hi = np.maximum(blocks.max(axis=-1, keepdims=True), 0.0) * ratio
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 15)
    return np.clip(np.round(blocks / scale) + zero, 0, 15), scale, zero


def _block_len(layer: QuantLayer, choice: LayerChoice, k: int) -> int:
    return k if choice.block_size == 0 or choice.block_size >= k else choice.block_size


def _blocked(w: np.ndarray, layer: QuantLayer, choice: LayerChoice) -> np.ndarray:
    """``w`` with the reduction axis last, split as [..., n_blocks, block] (zero padded);
    per-channel (block 0) on Conv blocks over everything but the output channel."""
    if choice.block_size == 0 and layer.op_type == "Conv":
        flat = w.reshape(w.shape[0], 1, -1)
        return flat
    moved = np.moveaxis(w, reduction_axis(layer), -1)
    k = moved.shape[-1]
    bl = _block_len(layer, choice, k)
    n = -(-k // bl)
    padded = np.concatenate([moved, np.zeros((*moved.shape[:-1], n * bl - k), moved.dtype)], -1)
    return padded.reshape(*moved.shape[:-1], n, bl)


def expand_blocks(qz: np.ndarray, scale: np.ndarray, layer: QuantLayer, choice: LayerChoice,
                   shape: tuple[int, ...]) -> np.ndarray:
    deq = (qz * scale).astype(np.float32)
    if choice.block_size == 0 and layer.op_type == "Conv":
        return deq.reshape(shape)
    axis = reduction_axis(layer)
    moved_shape = list(np.moveaxis(np.empty(shape, dtype=np.int8), axis, -1).shape)
    flat = deq.reshape(*moved_shape[:-1], -1)[..., : moved_shape[-1]]
    return np.moveaxis(flat, -1, axis)


def weight_qdq(w: np.ndarray, layer: QuantLayer, choice: LayerChoice,
               hessian: np.ndarray | None = None) -> np.ndarray:
    """The layer's weights as the model built for ``choice`` computes with them; GPTQ choices
    need ``hessian``, the layer's input ``X^T X`` on the calibration data."""
    p = choice.precision
    if p is Precision.FP32:
        return w
    if p is Precision.FP16:
        return w.astype(np.float16).astype(np.float32)
    if p is Precision.INT4 and choice.gptq:
        if hessian is None or layer.op_type != "MatMul":
            raise QuantizationError(f"GPTQ rounding of {layer.name!r} needs a MatMul and its input Hessian")
        return gptq_int4(w, hessian, choice.block_size)
    if p is Precision.INT4:
        return int4_weight_qdq(w, layer, choice)
    if p is Precision.INT8_DYNAMIC and layer.op_type == "Gather":
        # quantize_dynamic treats the table as an activation: u8, one asymmetric range
        return _fake_quant(w, np.asarray(w.min()), np.asarray(w.max()), 0, 255, False)
    return int8_weight_qdq(w, layer, choice)


def act_qdq(x: np.ndarray, choice: LayerChoice, act_range: tuple[float, float] | None) -> np.ndarray:
    """The layer's input activations as the built model sees them (static range, or per run)."""
    p = choice.precision
    if p is Precision.INT8 and act_range is not None:
        qmin, qmax = (0, 255) if choice.activations is ActType.U8 else (-128, 127)
        return _fake_quant(x, np.asarray(act_range[0]), np.asarray(act_range[1]), qmin, qmax, False)
    if p is Precision.A16 and act_range is not None:
        return _fake_quant(x, np.asarray(act_range[0]), np.asarray(act_range[1]), 0, 65535, False)
    if p is Precision.INT8_DYNAMIC:
        return np.stack([_fake_quant(s, np.asarray(s.min()), np.asarray(s.max()), 0, 255, False)
                         for s in x])
    if p is Precision.INT4 and choice.accuracy_level == 4:
        return _block_int8(x, choice.block_size or x.shape[-1])
    return x


def output_qdq(y: np.ndarray, choice: LayerChoice, out_range: tuple[float, float] | None) -> np.ndarray:
    """The layer's output after the re-quantization a static QDQ layer applies to it (ONNX
    Runtime quantizes the outputs of Conv, Gemm and MatMul too); identity otherwise."""
    if out_range is None or choice.precision not in (Precision.INT8, Precision.A16):
        return y
    lo, hi = np.asarray(out_range[0]), np.asarray(out_range[1])
    if choice.precision is Precision.A16:
        return _fake_quant(y, lo, hi, 0, 65535, False)
    qmin, qmax = (0, 255) if choice.activations is ActType.U8 else (-128, 127)
    return _fake_quant(y, lo, hi, qmin, qmax, False)


def _block_int8(x: np.ndarray, block: int) -> np.ndarray:
    """MatMulNBits' int8 compute: activations quantized symmetrically per block along K."""
    k = x.shape[-1]
    n = -(-k // block)
    padded = np.concatenate([x, np.zeros((*x.shape[:-1], n * block - k), x.dtype)], -1)
    b = padded.reshape(*x.shape[:-1], n, block)
    scale = np.abs(b).max(axis=-1, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.round(b / scale) * scale).reshape(*x.shape[:-1], -1)[..., :k].astype(np.float32)


def is_blocked(layer: QuantLayer, choice: LayerChoice) -> bool:
    k = layer.weight_shape[reduction_axis(layer)]
    return choice.block_size != 0 and choice.block_size < k
