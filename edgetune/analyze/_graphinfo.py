"""A static view of an ONNX graph for analysis: concrete shapes, byte sizes, who produces and
who consumes each tensor, and whether a tensor is an input, output, activation, weight or a
constant a runtime would fold.

Why a view of our own: the memory planner, the fusion matcher and the roofline all need the same
facts, with every symbolic dimension fixed to a number. Dimensions come from the caller
(``dims={"seq": 128}``); a dynamic batch axis defaults to 1 and the view says so in ``notes``.
Shapes come from ONNX shape inference with data propagation; tensors it cannot size are measured
by running the model once in ONNX Runtime on dummy inputs (also said in ``notes``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import ConfigError, MissingExtraError, ModelError

__all__ = [
    "GraphInfo",
    "NodeInfo",
    "TensorInfo",
    "TensorKind",
    "fused_qdq",
    "graph_info",
    "integer_kernel",
]

log = logging.getLogger(__name__)

_HALF_BYTE_TYPES = {"INT4", "UINT4", "FLOAT4E2M1"}
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}
_SHAPE_OPS = {"Shape", "Size"}


class TensorKind(str, Enum):
    INPUT = "input"
    OUTPUT = "output"
    ACTIVATION = "activation"
    WEIGHT = "weight"
    """Stored in the model file: an initializer or the value of a Constant node."""
    CONSTANT = "constant"
    """Computed only from weights and static shapes; a runtime folds it at load time."""


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...] | None
    nbytes: int | None
    kind: TensorKind
    producer: int | None
    consumers: tuple[int, ...]

    @property
    def numel(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    """Data inputs (empty optional inputs dropped), then names a subgraph reads from outside."""
    outputs: tuple[str, ...]
    proto: Any = field(repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class GraphInfo:
    model_name: str
    nodes: tuple[NodeInfo, ...]
    tensors: dict[str, TensorInfo]
    dims: dict[str, int]
    notes: tuple[str, ...]
    declared_static: frozenset[str] = frozenset()
    """Tensors whose shape is fully static in the model as given (before dims were fixed):
    what a runtime loading the file can rely on."""

    def tensor(self, name: str) -> TensorInfo | None:
        return self.tensors.get(name)

    def bytes_of(self, kinds: set[TensorKind]) -> int:
        return sum(t.nbytes or 0 for t in self.tensors.values() if t.kind in kinds)

    def count_of(self, kind: TensorKind) -> int:
        return sum(t.kind is kind for t in self.tensors.values())


def graph_info(model: Model, dims: Mapping[str, int] | None = None) -> GraphInfo:
    """Shapes, sizes, lifetimes' endpoints and kinds of every tensor of ``model``."""
    notes: list[str] = []
    proto, used = _fixed_inputs(model, dict(dims or {}), notes)
    proto = _infer(proto, model.name, notes)
    types = _value_types(proto)
    nodes = _nodes(proto)
    kinds = _kinds(proto, nodes, types)
    _probe_missing(proto, types, kinds, notes)
    tensors = _tensors(nodes, types, kinds)
    declared = frozenset(n for n, (_, shape) in _value_types(model.proto).items()
                         if shape is not None)
    return GraphInfo(model_name=model.name, nodes=tuple(nodes), tensors=tensors, dims=used,
                     notes=tuple(notes), declared_static=declared)


# -- fixing the inputs' dimensions -------------------------------------------------------------

def _fixed_inputs(model: Model, dims: dict[str, int], notes: list[str]) -> tuple[Any, dict[str,
                  int]]:
    """A copy of the proto whose graph inputs have only fixed dimensions.

    ``dims`` names symbolic dimensions (``"seq"``), or any axis as ``"input[axis]"``, which
    also overrides a fixed size (to try a smaller input)."""
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"dimension {name!r} must be a positive integer; got {value!r}")
    proto = model.copy_proto()
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    known = sorted({name for v in inputs for name in _dim_names(v)})
    unknown = sorted(set(dims) - set(known))
    if unknown:
        raise ConfigError(f"dimension {unknown[0]!r} matches no input dimension; choose among "
                          f"{known}")
    used: dict[str, int] = {}
    for value_info in inputs:
        _fix_dims(value_info, dims, used, notes)
    return proto, used


def _dim_names(value_info: Any) -> list[str]:
    """Names an input's axes answer to: ``input[axis]``, and the symbolic name when there is one."""
    names = []
    for axis, dim in enumerate(value_info.type.tensor_type.shape.dim):
        names.append(f"{value_info.name}[{axis}]")
        if dim.dim_param:
            names.append(dim.dim_param)
    return names


def _fix_dims(value_info: Any, dims: dict[str, int], used: dict[str, int],
              notes: list[str]) -> None:
    """Give every axis of one input a fixed size, in place."""
    shape = value_info.type.tensor_type.shape
    for axis, dim in enumerate(shape.dim):
        slot = f"{value_info.name}[{axis}]"
        label = dim.dim_param or slot
        value = dims.get(slot, dims.get(label))
        if value is None and dim.HasField("dim_value"):
            continue
        if value is None and axis == 0:
            value = 1
            if label not in used:
                notes.append(f"dynamic batch axis {label!r} of input {value_info.name!r} "
                             "assumed 1 (set it with --dim NAME=VALUE)")
        if value is None:
            raise ConfigError(
                f"input {value_info.name!r} has dynamic dimension {label!r} (axis {axis}) with no "
                f"value; give one, e.g. --dim {label}=128 (dims={{{label!r}: 128}})")
        dim.Clear()
        dim.dim_value = value
        used[slot if slot in dims else label] = value


def _infer(proto: Any, name: str, notes: list[str]) -> Any:
    """Shape inference with data propagation, on a copy cleared of stale symbolic shapes."""
    import onnx

    del proto.graph.value_info[:]
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference raises varied C++ errors
        notes.append(f"ONNX shape inference failed ({type(exc).__name__}); shapes measured instead")
        log.info("shape inference failed on %s: %s", name, exc)
        return proto


# -- types and shapes --------------------------------------------------------------------------

_TypeShape = tuple[int, tuple[int, ...] | None]


def _value_types(proto: Any) -> dict[str, _TypeShape]:
    """Element type and (fully static, else None) shape of every tensor the graph declares."""
    found: dict[str, _TypeShape] = {}
    graph = proto.graph
    for value_info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value_info.type.tensor_type
        if value_info.type.HasField("tensor_type") and tensor_type.elem_type:
            found[value_info.name] = (tensor_type.elem_type, _static_shape(tensor_type))
    for init in graph.initializer:
        found[init.name] = (init.data_type, tuple(int(d) for d in init.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            found[node.output[0]] = _constant_type(node)
    return found


def _static_shape(tensor_type: Any) -> tuple[int, ...] | None:
    if not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _constant_type(node: Any) -> _TypeShape:
    from onnx import helper

    attr = node.attribute[0]
    if attr.name == "value":
        return attr.t.data_type, tuple(int(d) for d in attr.t.dims)
    if attr.name == "sparse_value":
        return attr.sparse_tensor.values.data_type, tuple(int(d) for d in attr.sparse_tensor.dims)
    value = np.asarray(helper.get_attribute_value(attr))
    if value.dtype.kind == "f":
        value = value.astype(np.float32)
    elem = 8 if value.dtype.kind in "SUO" else int(helper.np_dtype_to_tensor_dtype(value.dtype))
    return elem, tuple(int(d) for d in value.shape)


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    return str(TensorProto.DataType.Name(elem_type))


def _nbytes(elem_type: int, shape: tuple[int, ...] | None) -> int | None:
    from onnx import helper

    if shape is None:
        return None
    name = _type_name(elem_type)
    numel = math.prod(shape)
    if name in _HALF_BYTE_TYPES:
        return (numel + 1) // 2
    if name == "STRING":
        return None
    return numel * int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


# -- nodes and kinds ---------------------------------------------------------------------------

def _nodes(proto: Any) -> list[NodeInfo]:
    return [
        NodeInfo(index=i, name=node.name or f"{node.op_type}_{i}", op_type=node.op_type,
                 domain=node.domain, inputs=(*[x for x in node.input if x], *_outer_names(node)),
                 outputs=tuple(node.output), proto=node)
        for i, node in enumerate(proto.graph.node)
    ]


def _outer_names(node: Any) -> tuple[str, ...]:
    """Names a node's subgraphs (If, Loop, Scan) read from the enclosing graph."""
    from onnx import AttributeProto

    found: list[str] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            found.extend(_free_names(graph))
    return tuple(dict.fromkeys(found))


def _free_names(graph: Any) -> list[str]:
    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    free: list[str] = []
    for node in graph.node:
        used = [*node.input, *_outer_names(node)]
        free.extend(x for x in used if x and x not in defined)
        defined.update(node.output)
    return free


def _kinds(proto: Any, nodes: list[NodeInfo], types: dict[str, _TypeShape]) -> dict[str,
           TensorKind]:
    graph = proto.graph
    kinds = {i.name: TensorKind.WEIGHT for i in graph.initializer}
    kinds.update({v.name: TensorKind.INPUT for v in graph.input if v.name not in kinds})
    for node in nodes:
        kind = _node_kind(node, kinds, types)
        kinds.update({out: kind for out in node.outputs if out})
    outputs = {o.name for o in graph.output}
    for name in outputs:
        if kinds.get(name) is TensorKind.ACTIVATION:
            kinds[name] = TensorKind.OUTPUT
    return kinds


_FOLDED = {TensorKind.WEIGHT, TensorKind.CONSTANT}


def _node_kind(node: NodeInfo, kinds: dict[str, TensorKind], types: dict[str,
               _TypeShape]) -> TensorKind:
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        return TensorKind.WEIGHT
    if node.op_type in _NONDETERMINISTIC or _has_subgraph(node):
        return TensorKind.ACTIVATION
    static_input = bool(node.inputs) and types.get(node.inputs[0], (0, None))[1] is not None
    if node.op_type in _SHAPE_OPS and static_input:
        return TensorKind.CONSTANT
    if node.inputs and all(kinds.get(x) in _FOLDED for x in node.inputs):
        return TensorKind.CONSTANT
    return TensorKind.ACTIVATION


def _has_subgraph(node: NodeInfo) -> bool:
    from onnx import AttributeProto

    kinds = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    return any(a.type in kinds for a in node.proto.attribute)


def _tensors(nodes: list[NodeInfo], types: dict[str, _TypeShape],
             kinds: dict[str, TensorKind]) -> dict[str, TensorInfo]:
    producers = {out: n.index for n in nodes for out in n.outputs if out}
    consumers: dict[str, list[int]] = {}
    for node in nodes:
        for name in dict.fromkeys(node.inputs):
            consumers.setdefault(name, []).append(node.index)
    tensors: dict[str, TensorInfo] = {}
    for name, kind in kinds.items():
        elem, shape = types.get(name, (0, None))
        tensors[name] = TensorInfo(
            name=name, dtype=_type_name(elem).lower() if elem else "unknown", shape=shape,
            nbytes=_nbytes(elem, shape) if elem else None, kind=kind,
            producer=producers.get(name), consumers=tuple(consumers.get(name, ())))
    return tensors


def integer_kernel(info: GraphInfo, node: NodeInfo) -> bool:
    """Fed by a DequantizeLinear and read only by one QuantizeLinear: an integer kernel."""
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") or len(node.outputs) != 1:
        return False
    out = info.tensors.get(node.outputs[0])
    if out is None or out.kind is not TensorKind.ACTIVATION or len(out.consumers) != 1:
        return False
    if info.nodes[out.consumers[0]].op_type != "QuantizeLinear":
        return False
    makers = [info.tensors[x].producer for x in node.inputs if x in info.tensors]
    return any(m is not None and info.nodes[m].op_type == "DequantizeLinear" for m in makers)


def fused_qdq(info: GraphInfo, node: NodeInfo) -> bool:
    """A QuantizeLinear or DequantizeLinear that an integer kernel next to it absorbs."""
    if node.op_type == "DequantizeLinear" and node.outputs:
        users = info.tensors[node.outputs[0]].consumers if node.outputs[0] in info.tensors else ()
        return bool(users) and all(integer_kernel(info, info.nodes[i]) for i in users)
    if node.op_type == "QuantizeLinear" and node.inputs and node.inputs[0] in info.tensors:
        maker = info.tensors[node.inputs[0]].producer
        return maker is not None and integer_kernel(info, info.nodes[maker])
    return False


# -- measuring what inference could not size ---------------------------------------------------

def _probe_missing(proto: Any, types: dict[str, _TypeShape], kinds: dict[str, TensorKind],
                   notes: list[str]) -> None:
    """Run the model once in ONNX Runtime to size tensors shape inference left unknown."""
    missing = [n for n, k in kinds.items()
               if k not in _FOLDED and types.get(n, (0, None))[1] is None]
    if not missing:
        return
    measured = _run_probe(proto, missing)
    for name, array in measured.items():
        elem = types[name][0] if name in types else _elem_of(array)
        types[name] = (elem, tuple(int(d) for d in array.shape))
    unsized = len(missing) - len(measured)
    notes.append(f"{len(measured)} tensor shapes measured by one ONNX Runtime run on dummy inputs "
                 "(all ones)" + (f"; {unsized} tensors could not be sized" if unsized else ""))


def _elem_of(array: np.ndarray) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(array.dtype))


def _run_probe(proto: Any, names: list[str]) -> dict[str, np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnxruntime", "sizing tensors shape inference "
                                "cannot size") from None
    probe = _with_outputs(proto, names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        values = session.run(names, dummy_feed(session.get_inputs()))
    except Exception as exc:  # ORT raises its own error types
        raise ModelError(
            f"cannot size {len(names)} tensors (e.g. {names[0]!r}): shape inference left them "
            f"unknown and running the model failed ({str(exc).splitlines()[0][:200]}); fix the "
            "dynamic dimensions with --dim NAME=VALUE") from None
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


def _with_outputs(proto: Any, names: list[str]) -> Any:
    import copy

    from onnx import helper

    probe = copy.deepcopy(proto)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(helper.ValueInfoProto(name=name))
    return probe


_ORT_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def dummy_feed(inputs: list[Any], dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """All-ones arrays for ONNX Runtime inputs (ones are valid token ids, masks and images);
    a dynamic dimension takes its value from ``dims`` (by name or ``input[axis]``), else 1."""
    dims = dims or {}
    feed: dict[str, np.ndarray] = {}
    for spec in inputs:
        dtype = _ORT_NUMPY.get(spec.type)
        if dtype is None:
            raise ModelError(f"input {spec.name!r} has type {spec.type}, which edgetune cannot "
                             "make dummy data for; use a model with numeric tensor inputs")
        shape = [_dim_value(spec.name, axis, d, dims) for axis, d in enumerate(spec.shape)]
        feed[spec.name] = np.ones(shape, dtype=dtype)
    return feed


def _dim_value(name: str, axis: int, dim: Any, dims: Mapping[str, int]) -> int:
    slot = dims.get(f"{name}[{axis}]")
    if slot is not None:
        return slot
    if isinstance(dim, int) and dim > 0:
        return dim
    return dims.get(dim, 1) if isinstance(dim, str) else 1
