"""Per-layer latency on ONNX Runtime, from its own per-node profiler.

A session with profiling on runs the model a number of times; every kernel event names the
node that ran. After ONNX Runtime's graph optimizations those are often not the graph's own
nodes (a Conv and its Clip become one NCHWc Conv named after its output; a QDQ Conv becomes a
``QLinearConv`` named ``<conv>_token_<n>``), so each event is traced back to a layer through
the optimized graph the session writes: by name prefix, then through the tensors it produces
(back through Clip, Relu, Q/DQ and layout operators). Quantize/Dequantize nodes count for the
layer they feed or come from, so a layer's time includes the cost of entering and leaving its
precision. What cannot be traced is reported as ``other``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.runtimes import SessionOptions
from edgetune.runtimes.onnxruntime import OnnxRuntimeCPU
from edgetune.transforms.plan import QuantLayer

__all__ = ["LayerProfile", "profile_layers"]

_PASS_THROUGH = {"Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                 "BatchNormalization", "QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape",
                 "Cast", "ReorderInput", "ReorderOutput", "DynamicQuantizeLinear", "Mul", "Add"}
"""Operators ONNX Runtime fuses into the layer before them, or that move its data."""
_SUFFIXES = ("_nchwc", "_output_0", "_QuantizeLinear_Output", "_DequantizeLinear_Output",
             "_QuantizeLinear", "_DequantizeLinear", "_quantized", "_Q4")


@dataclass(frozen=True, kw_only=True)
class LayerProfile:
    """Median milliseconds per run, per layer, from one profiled session."""

    per_layer_ms: dict[str, float]
    other_ms: float
    kernel_ms: float
    """Sum of every kernel's time per run."""
    wall_ms: float
    """Median wall time of one run (profiler on)."""
    qdq_cost: tuple[float, float] | None = None
    """A Quantize or Dequantize kernel's time as (fixed ms, ms per element), least squares."""
    nodes: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    """Executed node -> (op type, ms per run)."""

    def to_dict(self) -> dict[str, Any]:
        return {"per_layer_ms": dict(self.per_layer_ms), "other_ms": self.other_ms,
                "kernel_ms": self.kernel_ms, "wall_ms": self.wall_ms,
                "qdq_cost_ms": list(self.qdq_cost) if self.qdq_cost else None}


def profile_layers(model: Model, layers: Sequence[QuantLayer], feed: Mapping[str, np.ndarray],
                   *, runs: int = 20, warmup: int = 3, threads: int | None = None) -> LayerProfile:
    """Profile ``runs`` runs of ``feed`` and attribute every kernel's time to a layer."""
    runtime = OnnxRuntimeCPU()
    with tempfile.TemporaryDirectory(prefix="edgetune-profile-") as tmp:
        so = runtime.session_options(SessionOptions(threads=threads))
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        raw = runtime._create(model, so)
        walls = _timed_runs(raw, feed, runs, warmup)
        events = json.loads(Path(raw.end_profiling()).read_text(encoding="utf-8"))
        optimized = _load(Path(tmp) / "optimized.onnx")
    nodes, rate = _node_times(events, runs + warmup, warmup)
    mapper = _Mapper(model, optimized, {layer.name for layer in layers})
    per_layer: dict[str, float] = {layer.name: 0.0 for layer in layers}
    other = 0.0
    for name, (op_type, ms) in nodes.items():
        owner = mapper.owner(name, op_type)
        if owner is None:
            other += ms
        else:
            per_layer[owner] += ms
    return LayerProfile(per_layer_ms=per_layer, other_ms=other, kernel_ms=sum(ms for _, ms in nodes.values()),
                        wall_ms=statistics.median(walls), qdq_cost=rate, nodes=nodes)


def _timed_runs(raw: Any, feed: Mapping[str, np.ndarray], runs: int, warmup: int) -> list[float]:
    walls = []
    for i in range(runs + warmup):
        start = time.perf_counter()
        raw.run(None, dict(feed))
        if i >= warmup:
            walls.append((time.perf_counter() - start) * 1e3)
    return walls


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path)) if path.exists() else None


def _node_times(events: list[dict[str, Any]], total_runs: int, warmup: int
                ) -> tuple[dict[str, tuple[str, float]], tuple[float, float] | None]:
    """Median ms per measured run for each node (warm-up runs dropped), and the cost of a
    Quantize/Dequantize kernel as fixed + per-element time."""
    per_node: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    qdq: list[tuple[int, float]] = []
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name.removesuffix("_kernel_time")
        args = event.get("args") or {}
        ops[node] = str(args.get("op_name", "?"))
        per_node.setdefault(node, []).append(float(event.get("dur", 0)) / 1e3)
        elements = _elements(args.get("output_type_shape"))
        if ops[node] in ("QuantizeLinear", "DequantizeLinear") and elements:
            qdq.append((elements, float(event.get("dur", 0)) / 1e3))
    out = {}
    for node, times in per_node.items():
        kept = times[warmup:] if len(times) == total_runs else times
        out[node] = (ops[node], float(np.median(kept)) if kept else 0.0)
    return out, _fit_cost(qdq)


def _fit_cost(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares ``ms = a + b * elements`` (both clamped at zero)."""
    if not points:
        return None
    n = np.array([p[0] for p in points], dtype=float)
    t = np.array([p[1] for p in points], dtype=float)
    if len(set(n)) < 2:
        return float(np.median(t)), 0.0
    b, a = np.polyfit(n, t, 1)
    return max(float(a), 0.0), max(float(b), 0.0)


def _elements(type_shapes: Any) -> int:
    if not isinstance(type_shapes, list) or not type_shapes or not isinstance(type_shapes[0], dict):
        return 0
    dims: Any = next(iter(type_shapes[0].values()), [])
    return int(np.prod(dims)) if isinstance(dims, list) and dims else 0


class _Mapper:
    """Traces an executed (optimized) node back to a layer of the model that was loaded."""

    def __init__(self, model: Model, optimized: Any, layers: set[str]) -> None:
        self._layers = sorted(layers, key=len, reverse=True)
        graph = model.proto.graph
        self._producer = {o: n for n in graph.node for o in n.output}
        self._opt_nodes = {n.name: n for n in optimized.graph.node} if optimized is not None else {}
        self._opt_producer = {o: n for n in self._opt_nodes.values() for o in n.output}
        self._opt_consumers: dict[str, list[Any]] = {}
        for n in self._opt_nodes.values():
            for i in n.input:
                self._opt_consumers.setdefault(i, []).append(n)

    def by_name(self, name: str) -> str | None:
        for layer in self._layers:
            if name == layer or name.startswith(layer + "_"):
                return layer
        return None

    def owner(self, name: str, op_type: str) -> str | None:
        direct = self.by_name(name)
        if direct is not None:
            return direct
        node = self._opt_nodes.get(name)
        if node is not None and op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
            return self._forward(node) or self._backward_tensors(node, node.input)
        # fused nodes are often named after the tensor they produce ("<tensor>_nchwc")
        named = self._walk_back(_strip(name), 4)
        if named is not None or node is None:
            return named
        if op_type in ("DequantizeLinear", "ReorderOutput", "Transpose"):
            return self._backward_opt(node) or self._backward_tensors(node, node.output)
        return self._backward_tensors(node, node.output)

    def _forward(self, node: Any) -> str | None:
        for out in node.output:
            for nxt in self._opt_consumers.get(out, []):
                hit = self.by_name(nxt.name)
                if hit is not None:
                    return hit
        return None

    def _backward_opt(self, node: Any) -> str | None:
        for inp in node.input:
            prev = self._opt_producer.get(inp)
            if prev is not None and (hit := self.by_name(prev.name)) is not None:
                return hit
        return None

    def _backward_tensors(self, node: Any, tensors: Sequence[str]) -> str | None:
        """Through the loaded graph: which layer produced one of ``tensors``."""
        for tensor in tensors:
            hit = self._walk_back(_strip(tensor), 4)
            if hit is not None:
                return hit
        return None

    def _walk_back(self, tensor: str, hops: int) -> str | None:
        producer = self._producer.get(tensor)
        while producer is not None and hops > 0:
            hit = self.by_name(producer.name)
            if hit is not None:
                return hit
            if producer.op_type not in _PASS_THROUGH or not producer.input:
                return None
            producer = self._producer.get(producer.input[0])
            hops -= 1
        return None


def _strip(tensor: str) -> str:
    for suffix in _SUFFIXES:
        if tensor.endswith(suffix):
            return tensor[: -len(suffix)]
    return tensor
