"""The ONNX Runtime part of applying a plan: the passes that build a mixed-precision graph.

Building a mixed-precision model is a sequence of passes over the prepared graph, each touching
only the layers the plan gives to it, so their order does not change the result:

1. static QDQ (``int8``, ``a16``): ONNX Runtime's ``quantize_static`` with ``nodes_to_quantize``
   and per-tensor ``TensorQuantOverrides`` (weight type, per-channel axis, 7-bit range;
   activation type); each layer's calibration method reaches it as the range of its input in
   the calibration cache;
2. ``int8-dynamic``: ``quantize_dynamic`` per group of equal settings;
3. ``int4`` MatMul and Gather: ``MatMulNBitsQuantizer`` (MatMulNBits, GatherBlockQuantized);
4. ``int4`` Conv and Gemm: a 4-bit ``DequantizeLinear`` in front of the float operator;
5. ``fp16``: float16 weights and a Cast;

then internal tensor names are shortened (``compact.compact_names``; layer names are kept).

The rounding of each precision lives in :mod:`.rounding`, shared with sensitivity analysis.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import QuantizationError
from edgetune.transforms.calibrate import CalibMethod, compute_ranges
from edgetune.transforms.compact import compact_names
from edgetune.transforms.plan import LayerChoice, Precision, QuantLayer
from edgetune.transforms.rounding import (
    channel_axis,
    expand_blocks,
    int4_quantize,
    is_blocked,
    reduction_axis,
    weight_qdq,
)
from edgetune.transforms.settings import ActType, WeightType

if TYPE_CHECKING:
    from edgetune.transforms.plan import Prepared

__all__ = ["GLUE_OPS", "Built", "build", "detect_precisions"]

log = logging.getLogger(__name__)

GLUE_OPS = frozenset({"Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape",
                      "Flatten", "Transpose", "Squeeze", "Unsqueeze"})
"""Data-movement operators kept in INT8 when every layer around them is static INT8 (ONNX
Runtime then fuses or removes them instead of leaving DequantizeLinear -> QuantizeLinear hops)."""

_MS = "com.microsoft"


# --------------------------------------------------------------------------- build


@dataclass(kw_only=True)
class Built:
    model: Model
    applied: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def build(prepared: Prepared, layers: Mapping[str, QuantLayer], choices: Mapping[str, LayerChoice],
          percentile: float) -> Built:
    """Run the passes of the module doc; report what each layer became."""
    model = prepared.model
    with tempfile.TemporaryDirectory(prefix="edgetune-mixed-") as tmp:
        workdir = Path(tmp)
        model = _static_pass(model, prepared, layers, choices, percentile, workdir)
        model = _dynamic_pass(model, choices, workdir)
    model = _nbits_pass(model, prepared, layers, choices)
    model = _int4_dq_pass(model, layers, choices)
    model = _fp16_pass(model, layers, choices)
    applied = detect_precisions(model, layers)
    model = model.with_proto(compact_names(model.proto))  # short internal names, as quantize does
    warnings = [
        f"layer {name!r} was asked to be {choices[name].precision.value} but ONNX Runtime left it "
        f"{applied[name]}" for name in layers if applied[name] != choices[name].precision.value
    ]
    for w in warnings:
        log.warning("%s", w)
    return Built(model=model, applied=applied, warnings=warnings)


def _select(choices: Mapping[str, LayerChoice], *precisions: Precision) -> dict[str, LayerChoice]:
    return {n: c for n, c in choices.items() if c.precision in precisions}


# ----- static QDQ


def _static_pass(model: Model, prepared: Prepared, layers: Mapping[str, QuantLayer],
                 choices: Mapping[str, LayerChoice], percentile: float, workdir: Path) -> Model:
    static = _select(choices, Precision.INT8, Precision.A16)
    if not static:
        return model
    if prepared.stats is None:
        raise QuantizationError(
            "int8 and a16 layers need activation statistics; prepare the model with calibration data"
        )
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    tensor_choice = _tensor_owners(model, layers, static)
    ranges = _ranges(prepared, tensor_choice, percentile)
    overrides = _overrides(layers, static, tensor_choice, QuantType)
    cache = _write_cache(ranges, workdir / "ranges.json")
    src, dst = workdir / "static-in.onnx", workdir / "static-out.onnx"
    src.write_bytes(model.to_bytes())
    nodes = [*static, *_glue_nodes(model, static)]
    _run_ort(quantize_static, model_input=str(src), model_output=str(dst),
             calibration_data_reader=None, quant_format=QuantFormat.QDQ,
             nodes_to_quantize=nodes, per_channel=True, reduce_range=False,
             activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
             calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
             extra_options={"TensorQuantOverrides": overrides, "MatMulConstBOnly": True,
                            "UseQDQContribOps": any(c.precision is Precision.A16 for c in static.values())})
    return model.with_proto(_load(dst))


def _tensor_owners(model: Model, layers: Mapping[str, QuantLayer],
                   static: Mapping[str, LayerChoice]) -> dict[str, LayerChoice]:
    """Which static layer decides each activation tensor's type and range: the consumer of its
    input, then the producer of its output (a tensor has one type in a QDQ graph)."""
    owners: dict[str, LayerChoice] = {}
    for name, choice in static.items():
        owners.setdefault(layers[name].activation, choice)
    for name, choice in static.items():
        owners.setdefault(layers[name].output, choice)
    return owners


def _ranges(prepared: Prepared, owners: Mapping[str, LayerChoice], percentile: float
            ) -> dict[str, tuple[float, float]]:
    stats = prepared.stats or {}
    ranges = compute_ranges(stats, CalibMethod.MINMAX, percentile=percentile)
    for tensor, choice in owners.items():
        if choice.method is not CalibMethod.MINMAX and tensor in stats:
            one = compute_ranges({tensor: stats[tensor]}, choice.method, percentile=percentile)
            ranges[tensor] = one[tensor]
    return ranges


def _overrides(layers: Mapping[str, QuantLayer], static: Mapping[str, LayerChoice],
               owners: Mapping[str, LayerChoice], qt: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for tensor, choice in owners.items():
        out[tensor] = [{"quant_type": _act_type(choice, qt)}]
    for name, choice in static.items():
        layer = layers[name]
        entry: dict[str, Any] = {
            "quant_type": qt.QUInt8 if choice.weights is WeightType.U8 else qt.QInt8,
            "reduce_range": choice.reduce_range and choice.precision is Precision.INT8,
        }
        if choice.per_channel:
            entry["axis"] = channel_axis(layer)
        out[layer.weight] = [entry]
    return out


def _act_type(choice: LayerChoice, qt: Any) -> Any:
    if choice.precision is Precision.A16:
        return qt.QUInt16
    return qt.QUInt8 if choice.activations is ActType.U8 else qt.QInt8


def _glue_nodes(model: Model, static: Mapping[str, LayerChoice]) -> list[str]:
    """Glue operators whose every upstream and downstream layer is static (see GLUE_OPS)."""
    graph = model.proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.op_type in GLUE_OPS
            and _ends(n, producer, consumers, outputs, static)]


def _ends(node: Any, producer: Mapping[str, Any], consumers: Mapping[str, list[Any]],
          outputs: set[str], static: Mapping[str, LayerChoice]) -> bool:
    up = producer.get(node.input[0]) if node.input else None
    while up is not None and up.op_type in GLUE_OPS:
        up = producer.get(up.input[0])
    if up is None or up.name not in static:
        return False
    stack, seen = [node], set()
    while stack:
        cur = stack.pop()
        for out in cur.output:
            if out in outputs:
                return False
            for nxt in consumers.get(out, []):
                if nxt.name in seen:
                    continue
                seen.add(nxt.name)
                if nxt.op_type in GLUE_OPS:
                    stack.append(nxt)
                elif nxt.name not in static:
                    return False
    return True


def _write_cache(ranges: Mapping[str, tuple[float, float]], path: Path) -> Path:
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    data = TensorsData(CalibrationMethod.MinMax,
                       {k: (np.float32(lo), np.float32(hi)) for k, (lo, hi) in ranges.items()})
    save_tensors_data(data, path)
    return path


# ----- dynamic


def _dynamic_pass(model: Model, choices: Mapping[str, LayerChoice], workdir: Path) -> Model:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, c in _select(choices, Precision.INT8_DYNAMIC).items():
        groups.setdefault((c.weights, c.per_channel, c.reduce_range), []).append(name)
    for i, ((weights, per_channel, reduce_range), names) in enumerate(sorted(groups.items(), key=str)):
        src, dst = workdir / f"dyn{i}-in.onnx", workdir / f"dyn{i}-out.onnx"
        src.write_bytes(model.to_bytes())
        _run_ort(quantize_dynamic, model_input=str(src), model_output=str(dst),
                 nodes_to_quantize=names, op_types_to_quantize=["MatMul", "Gather"],
                 per_channel=per_channel, reduce_range=reduce_range,
                 weight_type=QuantType.QUInt8 if weights is WeightType.U8 else QuantType.QInt8,
                 extra_options={"MatMulConstBOnly": True})
        model = model.with_proto(_load(dst))
    return model


# ----- int4 MatMul / Gather


def _nbits_pass(model: Model, prepared: Prepared, layers: Mapping[str, QuantLayer],
                choices: Mapping[str, LayerChoice]) -> Model:
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, c in _select(choices, Precision.INT4).items():
        op = layers[name].op_type
        if op in ("MatMul", "Gather"):
            groups.setdefault((op, c.block_size or 128, c.symmetric, c.accuracy_level), []).append(name)
    for (op, block, symmetric, level), names in sorted(groups.items(), key=str):
        chosen = {n: (layers[n], choices[n]) for n in names}
        model = _nbits(model, prepared, op, chosen, block, symmetric, level)
    return model


def _nbits(model: Model, prepared: Prepared, op: str, chosen: Mapping[str, tuple[QuantLayer, LayerChoice]],
           block: int, symmetric: bool, level: int) -> Model:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    exclude = [n.name for n in model.proto.graph.node if n.op_type == op and n.name not in chosen]
    proto = model.copy_proto()
    if symmetric:
        _preround_int4(proto, prepared, chosen.values())
    if op == "Gather" and _opset(proto) < 21:
        proto = _to_opset21(proto)  # int4 tables need opset 21; convert rather than relabel
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=symmetric, accuracy_level=level or None,
        op_types_to_quantize=(op,), quant_axes=(("MatMul", 0), ("Gather", 1)),
    )

    def run() -> Any:
        quantizer = MatMulNBitsQuantizer(proto, nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
        return quantizer.model.model

    return model.with_proto(_run_ort_value(run))


def _preround_int4(proto: Any, prepared: Prepared, chosen: Iterable[tuple[QuantLayer, LayerChoice]]) -> None:
    """Replace each layer's weights by edgetune's 4-bit values (clipped, or GPTQ-rounded on the
    calibration inputs), dequantized.

    ORT's quantizer rounds to nearest with each block's extreme as its scale (MLAS: scale =
    extreme / -8), which wastes levels on outliers and ignores the inputs. Every block we write
    still holds a -8 at its extreme, so the quantizer, re-rounding these values, finds exactly
    our scales and integers: the choice of levels is ours, the packing ORT's (tests/test_plan.py
    and tests/test_gptq.py check the built weights against :func:`weight_qdq`). GPTQ weights
    are computed once per layer and block size and kept on ``prepared``."""
    from onnx import numpy_helper

    chosen = list(chosen)
    gptq = [layer for layer, choice in chosen if choice.gptq]
    hessians = prepared.input_hessians(gptq) if gptq else {}
    for layer, choice in chosen:
        w = _pop_initializer(proto, layer.weight)
        key = ("gptq", layer.name, choice.block_size)
        if choice.gptq and key not in prepared.cache:
            prepared.cache[key] = weight_qdq(w, layer, choice, hessians[layer.name])
        deq = prepared.cache[key] if choice.gptq else weight_qdq(w, layer, choice)
        proto.graph.initializer.append(numpy_helper.from_array(deq.astype(np.float32), layer.weight))


# ----- int4 Conv / Gemm


def _int4_dq_pass(model: Model, layers: Mapping[str, QuantLayer],
                  choices: Mapping[str, LayerChoice]) -> Model:
    todo = {n: c for n, c in _select(choices, Precision.INT4).items()
            if layers[n].op_type in ("Conv", "Gemm")}
    if not todo:
        return model
    proto = model.copy_proto()
    if any(is_blocked(layers[n], c) for n, c in todo.items()) and _opset(proto) < 21:
        proto = _to_opset21(proto)
    for name, choice in todo.items():
        _insert_int4_dq(proto, layers[name], choice)
    return model.with_proto(proto)


def _insert_int4_dq(proto: Any, layer: QuantLayer, choice: LayerChoice) -> None:
    """Replace the weight initializer by 4-bit values and a DequantizeLinear producing it."""
    import ml_dtypes
    from onnx import helper, numpy_helper

    w = _pop_initializer(proto, layer.weight)
    q, scale, zero = int4_quantize(w, layer, choice)
    blocked = is_blocked(layer, choice)
    dtype = ml_dtypes.int4 if choice.symmetric else ml_dtypes.uint4
    q_full, s_full, z_full = _dq_layout(q, scale, zero, layer, choice, w.shape, blocked)
    inputs = [f"{layer.weight}_q4", f"{layer.weight}_scale"]
    inits = [numpy_helper.from_array(q_full.astype(dtype), inputs[0]),
             numpy_helper.from_array(s_full.astype(np.float32), inputs[1])]
    if not choice.symmetric:
        inputs.append(f"{layer.weight}_zero")
        inits.append(numpy_helper.from_array(z_full.astype(dtype), inputs[2]))
    attrs: dict[str, Any] = {"axis": reduction_axis(layer) if blocked else channel_axis(layer)}
    if blocked:
        attrs["block_size"] = choice.block_size
    node = helper.make_node("DequantizeLinear", inputs, [layer.weight], name=f"{layer.name}_w_dq4",
                            domain="" if blocked else _MS, **attrs)
    proto.graph.initializer.extend(inits)
    _insert_before(proto, layer.name, node)
    if not blocked:
        _ensure_opset(proto, _MS, 1)


def _dq_layout(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, layer: QuantLayer,
               choice: LayerChoice, shape: tuple[int, ...], blocked: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantized values in the weight's shape; scales as DequantizeLinear expects them."""
    per_channel = LayerChoice(precision=Precision.INT4, block_size=0, symmetric=choice.symmetric)
    if not blocked:
        if layer.op_type == "Conv":
            return q.reshape(shape), scale.reshape(-1), zero.reshape(-1)
        q_w = expand_blocks(q, np.ones_like(scale), layer, per_channel, shape)
        return q_w, scale.reshape(-1), zero.reshape(-1)
    q_w = expand_blocks(q, np.ones_like(scale), layer, choice, shape)
    axis = reduction_axis(layer)
    s = np.moveaxis(scale[..., 0], -1, axis)
    z = np.moveaxis(zero[..., 0], -1, axis)
    return q_w, s, z


# ----- fp16


def _fp16_pass(model: Model, layers: Mapping[str, QuantLayer],
               choices: Mapping[str, LayerChoice]) -> Model:
    todo = _select(choices, Precision.FP16)
    if not todo:
        return model
    from onnx import TensorProto, helper, numpy_helper

    proto = model.copy_proto()
    for name in todo:
        layer = layers[name]
        w = _pop_initializer(proto, layer.weight)
        proto.graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), f"{layer.weight}_fp16"))
        cast = helper.make_node("Cast", [f"{layer.weight}_fp16"], [layer.weight],
                                name=f"{layer.name}_w_fp16", to=TensorProto.FLOAT)
        _insert_before(proto, layer.name, cast)
    return model.with_proto(proto)


# ----- graph helpers


def _pop_initializer(proto: Any, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for i, init in enumerate(proto.graph.initializer):
        if init.name == name:
            array = numpy_helper.to_array(init)
            del proto.graph.initializer[i]
            _drop_graph_input(proto, name)
            return np.asarray(array)
    raise QuantizationError(f"weight {name!r} is not an initializer; the plan does not fit this graph")


def _drop_graph_input(proto: Any, name: str) -> None:
    for i, value in enumerate(proto.graph.input):
        if value.name == name:
            del proto.graph.input[i]
            return


def _insert_before(proto: Any, node_name: str, new: Any) -> None:
    for i, node in enumerate(proto.graph.node):
        if node.name == node_name:
            proto.graph.node.insert(i, new)
            return
    raise QuantizationError(f"node {node_name!r} disappeared while building the plan")


def _opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _ensure_opset(proto: Any, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in proto.opset_import):
        from onnx import helper

        proto.opset_import.append(helper.make_opsetid(domain, version))


def _to_opset21(proto: Any) -> Any:
    """Block-wise DequantizeLinear needs opset 21; convert the graph (ONNX's converter)."""
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, 21)
    except Exception as exc:  # the converter raises many types
        raise QuantizationError(
            f"cannot convert the model to opset 21 for block-wise int4 ({exc}); use "
            "block_size 0 (per-channel) for Conv and Gemm layers"
        ) from exc
    if converted.ir_version < 10:
        converted.ir_version = 10
    return converted


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _run_ort(func: Callable[..., Any], **kwargs: Any) -> None:
    _run_ort_value(lambda: func(**kwargs))


def _run_ort_value(func: Callable[[], Any]) -> Any:
    """Run an ORT quantizer with its advice (logged on the root and its own loggers) muted."""
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                       if n.startswith("onnxruntime")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        return func()
    except Exception as exc:  # ORT's quantizers raise ValueError, RuntimeError, AssertionError...
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"ONNX Runtime could not build the plan: {first}") from exc
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------- detection


def detect_precisions(model: Model, layers: Iterable[QuantLayer] | Mapping[str, QuantLayer]
                      ) -> dict[str, str]:
    """What each layer became in a built graph, read from the graph itself."""
    from onnx import TensorProto

    items = layers.values() if isinstance(layers, Mapping) else layers
    graph = model.proto.graph
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    init_types = {i.name: i.data_type for i in graph.initializer}
    out = {}
    for layer in items:
        out[layer.name] = _detect(layer, nodes, producer, init_types, TensorProto)
    return out


def _detect(layer: QuantLayer, nodes: Mapping[str, Any], producer: Mapping[str, Any],
            init_types: Mapping[str, int], tp: Any) -> str:
    if f"{layer.name}_Q4" in nodes:
        return Precision.INT4.value
    if f"{layer.name}_quant" in nodes:
        return Precision.INT8_DYNAMIC.value
    node = nodes.get(layer.name)
    if node is None:
        return "missing"
    w_in = node.input[0] if layer.op_type == "Gather" else node.input[1]
    src = producer.get(w_in)
    if src is None:
        quantized_table = init_types.get(w_in) in (tp.INT8, tp.UINT8)
        return Precision.INT8_DYNAMIC.value if quantized_table else Precision.FP32.value
    raw = init_types.get(src.input[0]) if src.input else None
    if src.op_type == "Cast" and raw == tp.FLOAT16:
        return Precision.FP16.value
    if src.op_type == "DequantizeLinear" and raw in (tp.INT4, tp.UINT4):
        return Precision.INT4.value
    if src.op_type == "DequantizeLinear" and raw in (tp.INT8, tp.UINT8):
        act = producer.get(node.input[0] if layer.op_type != "Gather" else node.input[1])
        if act is not None and act.op_type == "DequantizeLinear":
            act_raw = _dq_input_type(act, producer, init_types)
            return Precision.A16.value if act_raw in (tp.UINT16, tp.INT16) else Precision.INT8.value
        return Precision.INT8.value
    return Precision.FP32.value


def _dq_input_type(dq: Any, producer: Mapping[str, Any], init_types: Mapping[str, int]) -> int | None:
    """Element type of a DequantizeLinear's input, read from its zero point."""
    if len(dq.input) >= 3:
        return init_types.get(dq.input[2])
    return None
