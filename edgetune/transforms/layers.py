"""Per-layer view of a (possibly quantized) graph: op type, precision, weight bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.core.model import Model

__all__ = ["LayerInfo", "layer_table"]

LAYER_OPS = {
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "MatMulInteger",
    "ConvInteger",
    "Gather",
    "LSTM",
    "GRU",
    "Attention",
    "MatMulNBits",
    "BatchNormalization",
    "LayerNormalization",
}
_PLUMBING = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_INT_TYPES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "int8", np.dtype(np.int32): "int32"}


@dataclass(frozen=True, kw_only=True)
class LayerInfo:
    name: str
    op_type: str
    precision: str
    """``int8`` when weights or activations are 8-bit, else the float type."""
    weight_bytes: int
    activations_int8: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "precision": self.precision,
            "weight_bytes": self.weight_bytes,
            "activations_int8": self.activations_int8,
        }


def layer_table(model: Model) -> list[LayerInfo]:
    """Every layer with weights (or of a compute op type), in graph order."""
    from onnx import numpy_helper

    graph = model.proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    table = []
    for node in graph.node:
        if node.op_type in _PLUMBING:
            continue
        weights, acts_int8 = _weights(node, inits, producers)
        nbytes = sum(int(w.nbytes) for w in weights)
        if node.op_type in LAYER_OPS or nbytes >= 1024:
            table.append(_info(node, weights, nbytes, acts_int8))
    return table


def _weights(
    node: Any, inits: dict[str, np.ndarray], producers: dict[str, Any]
) -> tuple[list[np.ndarray], bool]:
    weights: list[np.ndarray] = []
    acts_int8 = False
    for name in node.input:
        if name in inits:
            weights.append(inits[name])
            continue
        producer = producers.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            source = producer.input[0]
            if source in inits:
                weights.append(inits[source])
            else:
                acts_int8 = True
        elif producer is not None and producer.op_type == "DynamicQuantizeLinear":
            acts_int8 = True
    return weights, acts_int8


def _info(node: Any, weights: list[np.ndarray], nbytes: int, acts_int8: bool) -> LayerInfo:
    main = max(weights, key=lambda w: w.size) if weights else None
    if main is not None and main.dtype in _INT_TYPES:
        precision = _INT_TYPES[main.dtype]
    elif acts_int8:
        precision = "int8"
    else:
        precision = str(main.dtype) if main is not None else "float32"
    name = node.name[: -len("_quant")] if node.name.endswith("_quant") else node.name
    return LayerInfo(
        name=name or node.output[0],
        op_type=node.op_type,
        precision=precision,
        weight_bytes=nbytes,
        activations_int8=acts_int8,
    )
