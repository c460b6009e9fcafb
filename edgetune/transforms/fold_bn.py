"""BatchNormalization folding and Conv+BatchNorm+activation fusion, as graph passes of our own.

For a runtime that does not fuse (a minimal or ahead-of-time runtime, an interpreter on a
microcontroller), fusing before shipping saves a full read and write of every activation per
folded or fused node, and the BatchNorm parameters.

* :class:`FoldBatchNorm` folds an inference BatchNormalization into the Conv or Gemm before it:
  ``W' = W * s`` per output channel and ``b' = (b - mean) * s + beta``, with
  ``s = gamma / sqrt(var + eps)``. Exact up to float rounding.
* :class:`FuseConvActivation` merges a Conv and the activation after it into ONNX Runtime's
  ``com.microsoft.FusedConv`` (Relu, Clip, LeakyRelu, Sigmoid, Tanh, HardSigmoid), the form
  ONNX Runtime's own optimizer produces; run it for ONNX Runtime builds that load models with
  their optimizers off (e.g. minimal builds).
* :func:`fuse_conv_bn_act` runs both.

Each folds only where it is safe: constant weights and parameters, and an intermediate tensor
that nothing else reads and that is not a graph output.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgetune.core.model import Model
from edgetune.transforms.passes import GraphPass, PassError, PassResult, run_passes

__all__ = ["FoldBatchNorm", "FuseConvActivation", "fold_batchnorm", "fuse_conv_bn_act"]

_MS_DOMAIN = "com.microsoft"
_FUSABLE_ACTS = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"}


class _Graph:
    """Index of a graph being rewritten: initializers, producers and consumers."""

    def __init__(self, proto: Any) -> None:
        from onnx import numpy_helper

        self.proto = proto
        self.graph = proto.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.arrays = {n: numpy_helper.to_array(i) for n, i in self.inits.items()}
        self.outputs = {o.name for o in self.graph.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def only_user(self, tensor: str, op_types: set[str]) -> Any | None:
        """The one node reading ``tensor``, when it is one of ``op_types`` and nothing else reads
        it (and it is not a graph output)."""
        users = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(users) != 1 or users[0].op_type not in op_types:
            return None
        return users[0] if users[0].domain in ("", "ai.onnx") else None

    def const(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)

    def put(self, name: str, array: np.ndarray) -> str:
        """Add an initializer under a fresh name; return the name."""
        from onnx import numpy_helper

        taken = self.inits.keys() | {x for n in self.graph.node for x in (*n.input, *n.output)}
        unique, k = name, 1
        while unique in taken:
            unique, k = f"{name}_{k}", k + 1
        tensor = numpy_helper.from_array(array, unique)
        self.graph.initializer.append(tensor)
        self.inits[unique], self.arrays[unique] = tensor, array
        return unique

    def remove(self, node: Any) -> None:
        self.graph.node.remove(node)

    def drop_unused_initializers(self) -> None:
        used = {x for n in self.graph.node for x in n.input} | self.outputs
        for init in [i for i in self.graph.initializer if i.name not in used]:
            self.graph.initializer.remove(init)


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# -- BatchNormalization folding ----------------------------------------------------------------

class FoldBatchNorm(GraphPass):
    """Fold inference-mode BatchNormalization into the Conv or Gemm that feeds it."""

    name: ClassVar[str] = "fold-batchnorm"

    def change(self, proto: Any) -> list[str]:
        g = _Graph(proto)
        changes = [line for node in list(g.graph.node) if (line := _fold_one(g, node))]
        if changes:
            g.drop_unused_initializers()
        return changes

    def ensures(self, before: Model, after: Model) -> None:
        super().ensures(before, after)
        g = _Graph(after.proto)
        left = [n.name for n in after.proto.graph.node if _foldable(g, n) is not None]
        if left:
            raise PassError(f"{self.name} left foldable BatchNormalization after {left[0]!r}; "
                            "report this with the model")


def _foldable(g: _Graph, node: Any) -> tuple[Any, dict[str, np.ndarray]] | None:
    """The BatchNormalization node and its parameters, when ``node`` can absorb it."""
    if node.op_type not in ("Conv", "Gemm") or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.input) < 2 or g.const(node.input[1]) is None:
        return None
    if len(node.input) > 2 and node.input[2] and g.const(node.input[2]) is None:
        return None
    bn = g.only_user(node.output[0], {"BatchNormalization"})
    if bn is None or _attr(bn, "training_mode", 0) or any(o for o in bn.output[1:]):
        return None
    params = [g.const(x) for x in bn.input[1:5]]
    if any(p is None for p in params) or (node.op_type == "Gemm" and not _plain_gemm(g, node)):
        return None
    names = ("scale", "bias", "mean", "var")
    return bn, {k: np.asarray(p, dtype=np.float64) for k, p in zip(names, params, strict=True)}


def _plain_gemm(g: _Graph, node: Any) -> bool:
    """A Gemm whose output channels are the BatchNorm's channels (2-D, no transposed A)."""
    weight = g.const(node.input[1])
    return not _attr(node, "transA", 0) and weight is not None and weight.ndim == 2


def _fold_one(g: _Graph, node: Any) -> str | None:
    found = _foldable(g, node)
    if found is None:
        return None
    bn, p = found
    scale = p["scale"] / np.sqrt(p["var"] + float(_attr(bn, "epsilon", 1e-5)))
    weight = np.asarray(g.const(node.input[1]))
    if node.op_type == "Conv":
        new_w, bias = _fold_conv(g, node, weight, scale)
    else:
        new_w, bias = _fold_gemm(g, node, weight, scale)
    new_b = (bias - p["mean"]) * scale + p["bias"]
    dtype = weight.dtype
    inputs = [node.input[0], g.put(f"{node.name or node.op_type}_folded_w", new_w.astype(dtype)),
              g.put(f"{node.name or node.op_type}_folded_b", new_b.astype(dtype))]
    del node.input[:]
    node.input.extend(inputs)
    node.output[0] = bn.output[0]
    g.remove(bn)
    return f"folded BatchNormalization {bn.name!r} into {node.op_type} {node.name!r}"


def _channels(scale: np.ndarray, count: int, what: str) -> np.ndarray:
    if scale.shape != (count,):
        raise PassError(f"BatchNormalization has {scale.shape} channels but the {what} has "
                        f"{count} outputs; the model is inconsistent")
    return scale


def _fold_conv(g: _Graph, node: Any, weight: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray,
               np.ndarray]:
    scale = _channels(scale, weight.shape[0], "Conv")
    bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    base = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    shaped = scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    return weight.astype(np.float64) * shaped, base


def _fold_gemm(g: _Graph, node: Any, weight: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray,
               np.ndarray]:
    """Y = alpha * A @ B' + beta * C becomes A @ (alpha * B' * s) + (beta * C * s + ...)."""
    trans_b = bool(_attr(node, "transB", 0))
    outputs = weight.shape[0] if trans_b else weight.shape[1]
    scale = _channels(scale, outputs, "Gemm")
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    shaped = scale[:, None] if trans_b else scale[None, :]
    new_w = alpha * weight.astype(np.float64) * shaped
    bias = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    base = np.zeros(outputs) if bias is None else beta * np.broadcast_to(
        np.asarray(bias, dtype=np.float64), (outputs,))
    for attr in [a for a in node.attribute if a.name in ("alpha", "beta")]:
        node.attribute.remove(attr)
    return new_w, base


# -- Conv + activation fusion ------------------------------------------------------------------

class FuseConvActivation(GraphPass):
    """Merge Conv and its activation into ``com.microsoft.FusedConv``."""

    name: ClassVar[str] = "fuse-conv-activation"

    def change(self, proto: Any) -> list[str]:
        g = _Graph(proto)
        changes = [line for node in list(g.graph.node) if (line := _fuse_one(g, node))]
        if changes and not any(o.domain == _MS_DOMAIN for o in proto.opset_import):
            from onnx import helper

            proto.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
        return changes

    def ensures(self, before: Model, after: Model) -> None:
        super().ensures(before, after)
        g = _Graph(after.proto)
        left = [n.name for n in after.proto.graph.node if _fusable(g, n) is not None]
        if left:
            raise PassError(f"{self.name} left Conv {left[0]!r} unfused; report this with the "
                            "model")


def _fusable(g: _Graph, node: Any) -> Any | None:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    act = g.only_user(node.output[0], _FUSABLE_ACTS)
    if act is None or (act.op_type == "Clip" and _clip_bounds(g, act) is None):
        return None
    return act


def _clip_bounds(g: _Graph, clip: Any) -> list[float] | None:
    """Clip's min and max (attributes before opset 11, constant inputs after)."""
    low, high = float(np.finfo(np.float32).min), float(np.finfo(np.float32).max)
    if len(clip.input) == 1:
        return [float(_attr(clip, "min", low)), float(_attr(clip, "max", high))]
    bounds = []
    for index, default in ((1, low), (2, high)):
        name = clip.input[index] if len(clip.input) > index else ""
        value = g.const(name) if name else None
        if name and value is None:
            return None
        bounds.append(default if value is None else float(value))
    return bounds


def _activation_params(g: _Graph, act: Any) -> list[float]:
    if act.op_type == "Clip":
        return _clip_bounds(g, act) or []
    if act.op_type == "LeakyRelu":
        return [float(_attr(act, "alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(_attr(act, "alpha", 0.2)), float(_attr(act, "beta", 0.5))]
    return []


def _fuse_one(g: _Graph, node: Any) -> str | None:
    from onnx import helper

    act = _fusable(g, node)
    if act is None:
        return None
    params = _activation_params(g, act)
    attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs["activation"] = act.op_type
    if params:
        attrs["activation_params"] = params
    fused = helper.make_node("FusedConv", list(node.input), [act.output[0]], name=node.name,
                             domain=_MS_DOMAIN, **attrs)
    index = list(g.graph.node).index(node)
    g.remove(node)
    g.graph.node.insert(index, fused)
    g.remove(act)
    return f"fused Conv {node.name!r} and {act.op_type} {act.name!r} into FusedConv"


# -- verbs -------------------------------------------------------------------------------------

def fold_batchnorm(model: Model) -> PassResult:
    """Fold every foldable BatchNormalization into its Conv or Gemm."""
    return FoldBatchNorm()(model)


def fuse_conv_bn_act(model: Model) -> PassResult:
    """Fold BatchNorm into Conv, then fuse Conv with its activation (ONNX Runtime's FusedConv)."""
    return run_passes([FoldBatchNorm(), FuseConvActivation()], model)
