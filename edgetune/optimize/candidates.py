"""The choices worth considering for each layer, their exact weight bytes, and their kernels.

Settings that only change accuracy (calibration method, 7-bit weights, block size, symmetry)
are all enumerated: their error is predicted without building a model. Settings that change
the kernel ONNX Runtime runs (activation and weight types, per-channel, dynamic, int4 compute
type) form *kernel classes*; each class is profiled once on the runtime.

Safety on the target ISA is decided per layer: full-range u8 x s8 weights are offered only
for layers whose simulated VPMADDUBSW pair sums never saturated (see
:mod:`edgetune.analyze.saturation`); elsewhere only 7-bit or u8 weights are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgetune.analyze.saturation import SaturationRisk
from edgetune.core.isa import Isa
from edgetune.transforms.calibrate import CalibMethod
from edgetune.transforms.plan import LayerChoice, Precision, QuantLayer
from edgetune.transforms.rounding import channel_axis, effective_int4, reduction_axis
from edgetune.transforms.settings import ActType, WeightType

__all__ = ["candidate_choices", "gptq_applies", "kernel_class", "transition_kind", "weight_bytes"]

_INT4_BLOCKS = (0, 32, 128)
_NBITS_BLOCKS = (32, 128)


def candidate_choices(layer: QuantLayer, precisions: Iterable[Precision], isa: Isa,
                      risk: SaturationRisk | None) -> list[LayerChoice]:
    """Every choice for ``layer`` among ``precisions`` that is safe on ``isa`` (float32 first)."""
    wanted = set(precisions)
    out = [LayerChoice()]
    if Precision.FP16 in wanted and layer.supports(Precision.FP16):
        out.append(LayerChoice(precision=Precision.FP16))
    if Precision.INT8 in wanted and layer.supports(Precision.INT8):
        out += _static(isa, risk is not None and risk.simulated and not risk.at_risk)
    if Precision.INT8_DYNAMIC in wanted and layer.supports(Precision.INT8_DYNAMIC):
        out += _dynamic(isa, risk is not None and risk.simulated and not risk.dynamic_at_risk, layer)
    if Precision.INT4 in wanted and layer.supports(Precision.INT4):
        out += _int4(layer)
    if Precision.A16 in wanted and layer.supports(Precision.A16):
        out.append(LayerChoice(precision=Precision.A16))
    return _unique(out)


def _weight_formats(isa: Isa, full_range_safe: bool) -> list[tuple[WeightType, bool]]:
    """(weight type, 7-bit) pairs that cannot saturate on ``isa`` for this layer."""
    if not isa.u8s8_saturates:
        return [(WeightType.S8, False)]
    formats = [(WeightType.S8, True), (WeightType.U8, False)]
    return [(WeightType.S8, False), *formats] if full_range_safe else formats


def _act_types(isa: Isa) -> list[ActType]:
    # x86: ORT rewrites s8 activations to u8 before the same u8 x s8 kernel, so both give
    # bit-identical outputs (tests/test_plan.py); only ARM has distinct s8 kernels
    return [ActType.S8, ActType.U8] if isa is Isa.ARM64 else [ActType.U8]


def _static(isa: Isa, full_range_safe: bool) -> list[LayerChoice]:
    return [
        LayerChoice(precision=Precision.INT8, activations=act, weights=w, reduce_range=rr,
                    per_channel=pc, method=method)
        for act in _act_types(isa)
        for w, rr in _weight_formats(isa, full_range_safe)
        for pc in (True, False)
        for method in CalibMethod
    ]


def _dynamic(isa: Isa, full_range_safe: bool, layer: QuantLayer) -> list[LayerChoice]:
    if layer.op_type == "Gather":  # an int8 table: the weight settings do not apply
        return [LayerChoice(precision=Precision.INT8_DYNAMIC)]
    return [
        LayerChoice(precision=Precision.INT8_DYNAMIC, weights=w, reduce_range=rr, per_channel=pc)
        for w, rr in _weight_formats(isa, full_range_safe)
        for pc in (True, False)
    ]


def _int4(layer: QuantLayer) -> list[LayerChoice]:
    """Symmetric 4-bit blocks only: asymmetric ones (available in plan files) shift each
    layer's output mean, and such shifts add up coherently across layers, which the additive
    noise model of the search would underestimate (measured on the demo CNN: lower noise per
    layer, 1.8 points more top-1 lost with every layer asymmetric)."""
    k = layer.weight_shape[reduction_axis(layer)]
    if layer.op_type in ("Conv", "Gemm"):
        return [LayerChoice(precision=Precision.INT4, block_size=b)
                for b in _INT4_BLOCKS if b == 0 or b < k]
    blocks = [b for b in _NBITS_BLOCKS if b <= max(k, 32)]
    levels = (0, 4) if layer.op_type == "MatMul" else (0,)
    out = [LayerChoice(precision=Precision.INT4, block_size=b, accuracy_level=lv)
           for b in blocks for lv in levels]
    if gptq_applies(layer):  # same kernel and bytes; rounded for the layer's output error
        out += [LayerChoice(precision=Precision.INT4, block_size=b, accuracy_level=lv, gptq=True)
                for b in blocks if k % b == 0 for lv in levels]
    return out


def gptq_applies(layer: QuantLayer) -> bool:
    """GPTQ rounding is offered for 4-bit MatMul layers with 2-D weights."""
    return layer.op_type == "MatMul" and layer.supports(Precision.INT4)


def _unique(items: Sequence[LayerChoice]) -> list[LayerChoice]:
    return list(dict.fromkeys(items))


def kernel_class(layer: QuantLayer, choice: LayerChoice) -> str:
    """The runtime kernel a choice leads to; choices of one class share a latency profile.

    Per-channel and per-tensor weights share a class: ONNX Runtime's CPU INT8 kernels take
    either kind of scale, so the difference is in accuracy, which is predicted per choice.
    """
    p = choice.precision
    if p in (Precision.FP32, Precision.FP16):
        return "float"
    if p is Precision.INT8:
        return f"int8-{choice.activations.value}{choice.weights.value}"
    if p is Precision.INT8_DYNAMIC:
        return f"dynamic-{choice.weights.value}"
    if p is Precision.INT4:
        blocked = effective_int4(layer, choice).block_size != 0 or layer.op_type in ("MatMul", "Gather")
        return f"int4-{'blk' if blocked else 'pc'}-acc{choice.accuracy_level}"
    return "a16"


def class_representative(cls: str) -> LayerChoice:
    """A choice of kernel class ``cls``, for building the class's profiling model."""
    if cls == "float":
        return LayerChoice()
    if cls == "a16":
        return LayerChoice(precision=Precision.A16)
    kind, *rest = cls.split("-")
    if kind == "int8":
        act, w = rest[0][:2], rest[0][2:]
        return LayerChoice(precision=Precision.INT8, activations=ActType(act), weights=WeightType(w),
                           reduce_range=w == "s8")
    if kind == "dynamic":
        return LayerChoice(precision=Precision.INT8_DYNAMIC, weights=WeightType(rest[0]),
                           reduce_range=rest[0] == "s8")
    return LayerChoice(precision=Precision.INT4, block_size=32 if rest[0] == "blk" else 0,
                       accuracy_level=int(rest[1].removeprefix("acc")))


def transition_kind(choice: LayerChoice) -> str:
    """What the layer's input tensor is in the built graph: a change of kind between two
    connected layers costs a Quantize/Dequantize pair."""
    if choice.precision is Precision.INT8:
        return choice.activations.value
    if choice.precision is Precision.A16:
        return "u16"
    return "float"


def weight_bytes(layer: QuantLayer, choice: LayerChoice) -> int:
    """Bytes the layer's weights take in the built model, scales and zero points included."""
    n = layer.weight_params
    p = choice.precision
    if p is Precision.FP32:
        return 4 * n
    if p is Precision.FP16:
        return 2 * n
    if p is Precision.INT4:
        blocks = _int4_blocks(layer, choice)
        return (n + 1) // 2 + 4 * blocks + (0 if choice.symmetric else (blocks + 1) // 2)
    per_channel = choice.per_channel and layer.op_type != "Gather"
    channels = layer.weight_shape[channel_axis(layer)] if per_channel else 1
    return n + 5 * channels


def _int4_blocks(layer: QuantLayer, choice: LayerChoice) -> int:
    eff = effective_int4(layer, choice)
    k = layer.weight_shape[reduction_axis(layer)]
    if eff.block_size == 0 and layer.op_type in ("Conv", "Gemm"):
        return layer.weight_params // max(_per_channel_len(layer), 1)
    block = eff.block_size or 128
    return (layer.weight_params // k) * (-(-k // block))


def _per_channel_len(layer: QuantLayer) -> int:
    if layer.op_type == "Conv":
        return layer.weight_params // layer.weight_shape[0]
    return layer.weight_shape[reduction_axis(layer)]
