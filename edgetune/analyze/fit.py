"""Does the model fit a device? Weights against flash, arena against RAM, and a roofline.

:func:`fit` answers three questions for one device profile:

* storage: the weights (as stored) plus the runtime's code against flash or storage;
* RAM: the planned activation arena (see :mod:`edgetune.analyze.memory`) plus the runtime's
  own RAM, plus the weights where the device loads them into RAM (Linux boards, phones),
  against the RAM left after the OS and application;
* time and energy: a roofline per layer, ``max(ops / (peak x compute efficiency),
  bytes / (bandwidth x bandwidth efficiency))``, summed over layers; energy is the device's
  nominal active power times that time.

The roofline is an estimate and says so: peaks are nominal datasheet figures, the efficiency
factors are assumptions (stated in the result), every layer reads its inputs and weights and
writes its output to main memory once (no cache reuse across layers), and framework overhead
is left out. When the model does not fit, the result says by how much and what would make it
fit (INT8 or INT4 weights, INT8 activations, a smaller input, or splitting the layer at the
memory peak), each re-computed rather than guessed where it can be.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgetune.analyze._graphinfo import (
    GraphInfo,
    NodeInfo,
    TensorInfo,
    TensorKind,
    fused_qdq,
    graph_info,
    integer_kernel,
)
from edgetune.analyze.devices import Device, get_device
from edgetune.analyze.memory import MemoryConfig, MemoryPlan, plan_memory
from edgetune.core.model import Model
from edgetune.errors import ConfigError, EdgetuneError

__all__ = ["Budget", "FitConfig", "FitError", "FitResult", "LayerCost", "Suggestion", "fit",
           "fit_many"]

log = logging.getLogger(__name__)

_INT8_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
             "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearConcat",
             "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_INT4_OPS = {"MatMulNBits"}
_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size", "Constant"}
_PER_ELEMENT = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8,
                "SkipLayerNormalization": 9, "BatchNormalization": 2, "Erf": 8, "Gelu": 10,
                "Tanh": 6, "Sigmoid": 4, "Exp": 4, "Sqrt": 2, "Pow": 4, "HardSwish": 3}
_GATHERS = {"Gather", "GatherElements", "GatherND"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
"""(De)quantizing at the model's edges is int8 plumbing, counted at the int8 rate."""


class FitError(EdgetuneError):
    """The model does not fit the device (raised only when a caller asks for a hard check)."""


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    device: str
    devices_file: Path | None = None
    """A file of extra or overriding device profiles (same shape as the built-in catalogue)."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    compute_efficiency: float | None = None
    """Override the device profile's compute efficiency (fraction of peak reached)."""
    bandwidth_efficiency: float | None = None
    top_layers: int = 5

    def __post_init__(self) -> None:
        for name in ("compute_efficiency", "bandwidth_efficiency"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"The {name!r} parameter of FitConfig must be in (0, 1]; "
                                  f"got {value!r}")
        if self.top_layers < 1:
            raise ConfigError(f"The 'top_layers' parameter of FitConfig must be >= 1; got "
                              f"{self.top_layers!r}")


@dataclass(frozen=True, kw_only=True)
class Budget:
    what: str
    need_bytes: int
    have_bytes: int
    parts: dict[str, int]
    hard: bool = True
    """False for a weight cache: overflowing it costs time, not the ability to run."""

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.have_bytes or not self.hard

    @property
    def over_bytes(self) -> int:
        return max(0, self.need_bytes - self.have_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "need_bytes": self.need_bytes, "have_bytes": self.have_bytes,
                "fits": self.fits, "over_bytes": self.over_bytes, "hard_limit": self.hard,
                "parts": dict(self.parts)}


@dataclass(frozen=True, kw_only=True)
class LayerCost:
    name: str
    op_type: str
    precision: str
    ops: int
    bytes: int
    seconds: float | None
    bound: str
    """``compute``, ``bandwidth`` or ``unsupported``."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "precision": self.precision,
                "ops": self.ops, "bytes": self.bytes, "seconds": self.seconds, "bound": self.bound}


@dataclass(frozen=True, kw_only=True)
class Suggestion:
    change: str
    storage_bytes: int
    ram_bytes: int
    fits: bool
    exact: bool
    """Re-computed (True) or scaled from the current figures (False, an estimate)."""

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change, "storage_need_bytes": self.storage_bytes,
                "ram_need_bytes": self.ram_bytes, "fits": self.fits, "exact": self.exact}


@dataclass(frozen=True, kw_only=True)
class FitResult:
    model_name: str
    device: Device
    fits: bool
    storage: Budget
    ram: Budget
    precisions_ok: bool
    latency_s: float | None
    energy_j: float | None
    compute_bound_share: float
    """Fraction of the estimated time spent in compute-bound layers."""
    layers: tuple[LayerCost, ...]
    """The layers that dominate the estimated time, slowest first."""
    total_ops: int
    suggestions: tuple[Suggestion, ...]
    problems: tuple[str, ...]
    """Why it does not fit, one line each (empty when it fits)."""
    peak: dict[str, Any]
    assumptions: tuple[str, ...]
    memory: MemoryPlan

    @property
    def bound(self) -> str:
        return "compute" if self.compute_bound_share >= 0.5 else "bandwidth"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "device": self.device.name,
            "device_title": self.device.title, "fits": self.fits,
            "storage": self.storage.to_dict(), "ram": self.ram.to_dict(),
            "precisions_supported": self.precisions_ok,
            "latency_ms": None if self.latency_s is None else self.latency_s * 1e3,
            "energy_mj": None if self.energy_j is None else self.energy_j * 1e3,
            "bound": self.bound, "compute_bound_share": self.compute_bound_share,
            "total_ops": self.total_ops, "top_layers": [c.to_dict() for c in self.layers],
            "problems": list(self.problems),
            "suggestions": [s.to_dict() for s in self.suggestions], "memory_peak": self.peak,
            "assumptions": list(self.assumptions), "arena": self.memory.summary(),
        }


def fit(model: Model | str | Path, config: FitConfig, *, plan: MemoryPlan | None = None,
        info: GraphInfo | None = None) -> FitResult:
    """Whether ``model`` fits ``config.device``, how fast it would run, and what would help."""
    from edgetune.load import load

    model = load(model)
    device = get_device(config.device, config.devices_file)
    info = info or graph_info(model, config.memory.dims)
    plan = plan or plan_memory(model, config.memory, info=info)
    costs = _layer_costs(info, device, config)
    storage, ram = _budgets(info, plan, device)
    ok = all(c.bound != "unsupported" for c in costs)
    latency = _latency(costs, info, device) if ok else None
    timed = [c for c in costs if c.seconds]
    compute = sum(c.seconds or 0 for c in timed if c.bound == "compute")
    total = sum(c.seconds or 0 for c in timed)
    fits = storage.fits and ram.fits and ok
    return FitResult(
        model_name=model.name, device=device, fits=fits, storage=storage, ram=ram,
        precisions_ok=ok, latency_s=latency,
        energy_j=None if latency is None else latency * device.power_w,
        compute_bound_share=compute / total if total else 0.0,
        layers=tuple(sorted(timed, key=lambda c: -(c.seconds or 0))[: config.top_layers]),
        total_ops=sum(c.ops for c in costs),
        suggestions=() if fits else tuple(_suggestions(model, info, plan, device, config, ok)),
        problems=tuple(_problems(storage, ram, costs, device)),
        peak=_peak(plan, info),
        assumptions=tuple(_assumptions(device, config, info, plan, costs)),
        memory=plan)


def fit_many(model: Model | str | Path, config: FitConfig) -> list[FitResult]:
    """:func:`fit` on ``config.device``, or on every known device when it is ``"all"`` (the
    graph is analysed and the arena planned once)."""
    from edgetune.analyze.devices import device_names
    from edgetune.load import load

    model = load(model)
    if config.device != "all":
        return [fit(model, config)]
    info = graph_info(model, config.memory.dims)
    plan = plan_memory(model, config.memory, info=info)
    return [fit(model, replace(config, device=name), plan=plan, info=info)
            for name in device_names(config.devices_file)]


# -- budgets -----------------------------------------------------------------------------------

def _weights_bytes(info: GraphInfo) -> int:
    return info.bytes_of({TensorKind.WEIGHT})


def _budgets(info: GraphInfo, plan: MemoryPlan, device: Device, *, weights: int | None = None,
             arena: int | None = None) -> tuple[Budget, Budget]:
    weights = _weights_bytes(info) if weights is None else weights
    arena = plan.arena_bytes if arena is None else arena
    storage_parts = {"weights": weights, "runtime": device.runtime_storage_bytes}
    if device.storage_kind == "weight-cache":
        storage_parts = {"weights": weights}
    storage = Budget(what=device.storage_kind, need_bytes=sum(storage_parts.values()),
                     have_bytes=device.storage_bytes, parts=storage_parts,
                     hard=device.storage_kind != "weight-cache")
    ram_parts = {"arena": arena, "runtime": device.runtime_ram_bytes}
    if device.weights_in_ram:
        ram_parts["weights"] = weights
    ram = Budget(what="RAM", need_bytes=sum(ram_parts.values()),
                 have_bytes=device.usable_ram_bytes, parts=ram_parts)
    return storage, ram


# -- roofline ----------------------------------------------------------------------------------

def _layer_costs(info: GraphInfo, device: Device, config: FitConfig) -> list[LayerCost]:
    eff_c = config.compute_efficiency or device.compute_efficiency
    eff_b = config.bandwidth_efficiency or device.bandwidth_efficiency
    costs = []
    for node in info.nodes:
        if node.op_type in _FREE or _folded(node, info) or fused_qdq(info, node):
            continue
        precision = _precision(node, info)
        ops, moved = _ops(node, info), _bytes(node, info)
        rate, _ = device.rate(precision)
        if rate is None:
            costs.append(LayerCost(name=node.name, op_type=node.op_type, precision=precision,
                                   ops=ops, bytes=moved, seconds=None, bound="unsupported"))
            continue
        compute_s = ops / (rate * eff_c)
        bandwidth = device.memory_bandwidth_bytes_per_s
        memory_s = moved / (bandwidth * eff_b) if bandwidth else 0.0
        costs.append(LayerCost(name=node.name, op_type=node.op_type, precision=precision, ops=ops,
                               bytes=moved, seconds=max(compute_s, memory_s),
                               bound="compute" if compute_s >= memory_s else "bandwidth"))
    return costs


def _latency(costs: list[LayerCost], info: GraphInfo, device: Device) -> float:
    seconds = sum(c.seconds or 0.0 for c in costs)
    overflow = _weights_bytes(info) - device.storage_bytes
    if device.storage_kind == "weight-cache" and overflow > 0 and device.weight_stream_bytes_per_s:
        seconds += overflow / device.weight_stream_bytes_per_s
    return seconds


def _folded(node: NodeInfo, info: GraphInfo) -> bool:
    outputs = [info.tensors.get(o) for o in node.outputs if o]
    folded = (TensorKind.CONSTANT, TensorKind.WEIGHT)
    return bool(outputs) and all(t is not None and t.kind in folded for t in outputs)


def _precision(node: NodeInfo, info: GraphInfo) -> str:
    if node.op_type in _INT4_OPS:
        return "int4"
    if node.op_type in _INT8_OPS or node.op_type in _QDQ or integer_kernel(info, node):
        return "int8"
    out = info.tensors.get(node.outputs[0]) if node.outputs else None
    if out is not None and out.dtype in ("float16", "bfloat16"):
        return "fp16"
    if out is not None and out.dtype in ("int8", "uint8"):
        return "int8"
    return "fp32"


def _numel(info: GraphInfo, name: str) -> int:
    tensor = info.tensors.get(name)
    return (tensor.numel or 0) if tensor is not None else 0


def _shape(info: GraphInfo, name: str) -> tuple[int, ...]:
    tensor = info.tensors.get(name)
    return tensor.shape or () if tensor is not None else ()


def _ops(node: NodeInfo, info: GraphInfo) -> int:
    """Arithmetic operations (a multiply-accumulate counts 2) of one node."""
    out = _numel(info, node.outputs[0]) if node.outputs else 0
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        weight = _shape(info, node.inputs[3 if op == "QLinearConv" else 1])
        return 2 * out * math.prod(weight[1:])
    if op == "ConvTranspose":
        return 2 * _numel(info, node.inputs[0]) * math.prod(_shape(info, node.inputs[1])[1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits", "Gemm",
              "QGemm", "FusedGemm"):
        return 2 * out * _inner(node, info)
    if op in ("MaxPool", "AveragePool"):
        return out * math.prod(_int_list(node, "kernel_shape") or [1])
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        return _numel(info, node.inputs[0])
    return out * _PER_ELEMENT.get(op, 1)


def _inner(node: NodeInfo, info: GraphInfo) -> int:
    """The reduced dimension K of a matrix product."""
    a = _shape(info, node.inputs[0])
    if not a:
        return 0
    if node.op_type in ("Gemm", "QGemm", "FusedGemm") and _int_attr(node, "transA"):
        return a[0]
    return a[-1]


def _int_list(node: NodeInfo, name: str) -> list[int]:
    from onnx import helper

    for attr in node.proto.attribute:
        if attr.name == name:
            return [int(v) for v in helper.get_attribute_value(attr)]
    return []


def _int_attr(node: NodeInfo, name: str) -> int:
    from onnx import helper

    for attr in node.proto.attribute:
        if attr.name == name:
            return int(helper.get_attribute_value(attr))
    return 0


def _bytes(node: NodeInfo, info: GraphInfo) -> int:
    """Bytes a node reads and writes: activations in and out, and its weights as stored
    (a Gather reads only the rows it returns, not its whole table; an integer kernel reads and
    writes the 8-bit tensors around its DequantizeLinear and QuantizeLinear)."""
    if node.op_type in _GATHERS and node.outputs:
        out = info.tensors.get(node.outputs[0])
        indices = info.tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
        return 2 * ((out.nbytes or 0) if out else 0) + ((indices.nbytes or 0) if indices else 0)
    names = [*node.inputs, *node.outputs]
    if integer_kernel(info, node):
        names = [*(_dequantized_source(info, x) for x in node.inputs),
                 info.nodes[info.tensors[node.outputs[0]].consumers[0]].outputs[0]]
    total = 0
    for name in names:
        tensor = info.tensors.get(name)
        if tensor is not None:
            total += _stored_bytes(tensor, info)
    return total


def _dequantized_source(info: GraphInfo, name: str) -> str:
    tensor = info.tensors.get(name)
    maker = info.nodes[tensor.producer] if tensor and tensor.producer is not None else None
    return maker.inputs[0] if maker is not None and maker.op_type == "DequantizeLinear" else name


def _stored_bytes(tensor: TensorInfo, info: GraphInfo) -> int:
    """A dequantized weight is read as its quantized source."""
    if tensor.kind is TensorKind.CONSTANT and tensor.producer is not None:
        maker = info.nodes[tensor.producer]
        if maker.op_type == "DequantizeLinear" and maker.inputs:
            source = info.tensors.get(maker.inputs[0])
            return (source.nbytes or 0) if source is not None else 0
    return tensor.nbytes or 0


# -- what would make it fit --------------------------------------------------------------------

def _suggestions(model: Model, info: GraphInfo, plan: MemoryPlan, device: Device,
                 config: FitConfig, precisions_ok: bool) -> list[Suggestion]:
    """Changes re-checked against the device. Weight-only quantization keeps float compute,
    so it helps only where the device runs float layers; full INT8 needs an INT8 engine."""
    found: list[Suggestion] = []
    float_w, other_w = _weight_split(info)
    for label, factor in (("INT8 weights (weight-only or dynamic quantization)", 1 / 4),
                          ("INT4 weights (weight-only, e.g. MatMulNBits)", 1 / 8)):
        if float_w:
            found.append(_what_if(label, info, plan, device, runs=precisions_ok,
                                  weights=other_w + int(float_w * factor)))
    act_scale = _float_activation_scale(info)
    if act_scale < 1 or not precisions_ok:
        found.append(_what_if("INT8 weights and activations (static quantization: edgetune "
                              "quantize --static)", info, plan, device,
                              runs=device.rate("int8")[0] is not None,
                              weights=other_w + float_w // 4,
                              arena=int(plan.arena_bytes * act_scale)))
    smaller = _smaller_input(model, info, plan, device, config, precisions_ok)
    if smaller is not None:
        found.append(smaller)
    return found


def _problems(storage: Budget, ram: Budget, costs: list[LayerCost], device: Device) -> list[str]:
    found = []
    for budget in (storage, ram):
        if not budget.fits:
            parts = ", ".join(f"{k} {v}" for k, v in budget.parts.items())
            found.append(f"{budget.what}: needs {budget.need_bytes} bytes ({parts}), has "
                         f"{budget.have_bytes}: over by {budget.over_bytes} bytes "
                         f"({budget.need_bytes / max(budget.have_bytes, 1):.2f}x)")
    unsupported = sorted({c.precision for c in costs if c.bound == "unsupported"})
    if unsupported:
        count = sum(c.bound == "unsupported" for c in costs)
        found.append(f"precision: {count} layers are {', '.join(unsupported)}, which {device.name} "
                     f"cannot run (it runs {', '.join(sorted(device.compute_ops_per_s))})")
    return found


def _weight_split(info: GraphInfo) -> tuple[int, int]:
    """Bytes of float32 weights (what quantization shrinks) and of all other weights."""
    weights = [t for t in info.tensors.values() if t.kind is TensorKind.WEIGHT]
    float_bytes = sum(t.nbytes or 0 for t in weights if t.dtype == "float")
    return float_bytes, sum(t.nbytes or 0 for t in weights) - float_bytes


def _float_activation_scale(info: GraphInfo) -> float:
    """How much the activations shrink when float32 ones become 8-bit (1.0 when none are)."""
    acts = [t for t in info.tensors.values() if t.kind is not TensorKind.WEIGHT
            and t.kind is not TensorKind.CONSTANT and t.nbytes]
    total = sum(t.nbytes or 0 for t in acts)
    floats = sum(t.nbytes or 0 for t in acts if t.dtype == "float")
    return (total - floats * 3 / 4) / total if total else 1.0


def _what_if(label: str, info: GraphInfo, plan: MemoryPlan, device: Device, *, runs: bool,
             weights: int | None = None, arena: int | None = None,
             exact: bool = False) -> Suggestion:
    storage, ram = _budgets(info, plan, device, weights=weights, arena=arena)
    return Suggestion(change=label, storage_bytes=storage.need_bytes, ram_bytes=ram.need_bytes,
                      fits=storage.fits and ram.fits and runs, exact=exact)


def _smaller_input(model: Model, info: GraphInfo, plan: MemoryPlan, device: Device,
                   config: FitConfig, runs: bool) -> Suggestion | None:
    """Re-plan the arena with the input's spatial (or sequence) size halved, when the graph
    allows it; else scale the current arena by the activation area."""
    halved = _halved_dims(model, info)
    if not halved:
        return None
    label = "half the input size (" + ", ".join(f"{k}={v}" for k, v in halved.items()) + ")"
    memory = replace(config.memory, dims={**config.memory.dims, **halved}, search_iterations=200)
    try:
        smaller = plan_memory(model, memory)
    except (EdgetuneError, RuntimeError) as exc:
        log.info("re-planning at half input size failed (%s); estimating", exc)
        return _what_if(label + ", estimated", info, plan, device, runs=runs,
                        arena=plan.arena_bytes // 2 ** len(halved))
    return _what_if(label, info, plan, device, runs=runs, arena=smaller.arena_bytes, exact=True)


def _halved_dims(model: Model, info: GraphInfo) -> dict[str, int]:
    """Symbolic sequence or spatial dimensions of the first input, halved (batch left alone)."""
    first = model.inputs[0]
    if first.shape is None:
        return {}
    axes = range(2, len(first.shape)) if len(first.shape) == 4 else range(1, len(first.shape))
    halved: dict[str, int] = {}
    for axis in axes:
        dim = first.shape[axis]
        key = dim if isinstance(dim, str) else f"{first.name}[{axis}]"
        value = info.dims.get(key, dim if isinstance(dim, int) else None)
        if isinstance(value, int) and value >= 2:
            halved[key] = value // 2
    return halved


def _peak(plan: MemoryPlan, info: GraphInfo) -> dict[str, Any]:
    """What is live at the memory peak, and the node whose split would lower it most."""
    live = sorted(plan.live_at(plan.peak_step), key=lambda b: -b.size)
    node = info.nodes[plan.peak_step] if info.nodes else None
    touched = set(node.inputs) | set(node.outputs) if node else set()
    own = sum(b.size for b in live if touched & set(b.tensors))
    return {
        "step": plan.peak_step, "node": plan.peak_node,
        "op_type": node.op_type if node else "", "live_bytes": plan.lower_bound_bytes,
        "largest": [{"tensors": list(b.tensors[:3]), "bytes": b.size} for b in live[:5]],
        "node_io_bytes": own,
        "split_hint": (f"the peak is at {node.op_type} {node.name!r}: its inputs and outputs hold "
                       f"{own} of {plan.lower_bound_bytes} live bytes; computing it in tiles "
                       "(patch-based inference) or splitting its channels would lower the peak"
                       if node else ""),
    }


def _assumptions(device: Device, config: FitConfig, info: GraphInfo, plan: MemoryPlan,
                 costs: list[LayerCost]) -> list[str]:
    eff_c = config.compute_efficiency or device.compute_efficiency
    eff_b = config.bandwidth_efficiency or device.bandwidth_efficiency
    notes = [
        f"roofline with nominal peaks of {device.name} ({device.origin}) at compute efficiency "
        f"{eff_c:g} and bandwidth efficiency {eff_b:g}",
        "each layer reads its inputs and weights and writes its output to main memory once (no "
        "cache reuse across layers); framework and dispatch overhead are not counted",
        f"energy = nominal active power {device.power_w:g} W x estimated time",
        f"arena: {plan.method} plan, {'with' if plan.include_io else 'without'} graph inputs and "
        f"outputs, {plan.alignment}-byte alignment",
        f"runtime ({device.runtime_name}) needs {device.runtime_ram_bytes} bytes RAM and "
        f"{device.runtime_storage_bytes} bytes storage (profile figure)",
        *info.notes,
    ]
    if device.weights_in_ram:
        notes.append(f"{device.name} loads the weights into RAM, so they count against RAM too")
    for precision in sorted({c.precision for c in costs}):
        rate, why = device.rate(precision)
        if rate is not None and why:
            notes.append(why)
    return notes
