"""What the runtime really did to the graph, and what its layout conversions cost per inference.

:func:`capture_view` asks a runtime for the graph it runs after its own optimizations (ONNX
Runtime saves it through ``SessionOptions.optimized_model_filepath``) and times every node of
it with the runtime's profiler (``enable_profiling``), median over runs. The runtime-specific
part is one function per runtime, found through ``VIEWS``; a runtime that exposes neither
(``null``) gives an empty view, and the reports say the runtime could not tell.

:func:`layout_report` lists the Transpose and layout-reorder nodes in that graph (ONNX Runtime
inserts NCHWc ``ReorderInput``/``ReorderOutput`` on x86 and NHWC Transposes around
quantized convolutions), which of them the runtime inserted, where they sit, the bytes each
moves and its time per inference, and flags conversions that undo each other around a single
operator: a conversion in the wrong place.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.core.model import Model
from edgetune.core.registry import Registry
from edgetune.errors import MissingExtraError, RuntimeBackendError

__all__ = ["VIEWS", "Conversion", "LayoutReport", "RuntimeView", "capture_view", "layout_report"]

log = logging.getLogger(__name__)

_CONVERSIONS = {"Transpose", "ReorderInput", "ReorderOutput"}


@dataclass(frozen=True, kw_only=True)
class NodeTiming:
    op_type: str
    median_us: float
    output_bytes: int | None


@dataclass(frozen=True, kw_only=True)
class RuntimeView:
    """The runtime's optimized graph and per-node times (``optimized`` is None when the runtime
    cannot say)."""

    runtime: str
    version: str
    level: str
    optimized: Any = field(default=None, repr=False)
    timings: dict[str, NodeTiming] = field(default_factory=dict)
    runs: int = 0
    run_median_us: float | None = None
    threads: int = 1
    notes: tuple[str, ...] = ()

    @property
    def kernel_total_us(self) -> float:
        return sum(t.median_us for t in self.timings.values())


ViewFn = Callable[[Model, int, int, Mapping[str, int]], RuntimeView]
VIEWS: Registry[str] = Registry("runtime view")
VIEWS.add("onnxruntime", "edgetune.analyze.layout:_ort_view")
VIEWS.add("null", "edgetune.analyze.layout:_null_view")


def capture_view(model: Model, runtime: str = "onnxruntime", *, runs: int = 20, threads: int = 1,
                 dims: Mapping[str, int] | None = None) -> RuntimeView:
    """The optimized graph of ``runtime`` and its per-node median times over ``runs`` runs on
    all-ones inputs sized by ``dims`` (dynamic dimensions not named there are 1).

    One intra-op thread by default, so per-node times add up to the run time."""
    import importlib

    module_name, _, fn_name = VIEWS.get(runtime).partition(":")
    fn: ViewFn = getattr(importlib.import_module(module_name), fn_name)
    return fn(model, runs, threads, dict(dims or {}))


def _null_view(model: Model, runs: int, threads: int, dims: Mapping[str, int]) -> RuntimeView:
    return RuntimeView(runtime="null", version="", level="none",
                       notes=("runtime 'null' exposes no optimized graph or timings",))


def _ort_view(model: Model, runs: int, threads: int, dims: Mapping[str, int]) -> RuntimeView:
    from edgetune.runtimes.base import SessionOptions
    from edgetune.runtimes.onnxruntime import OnnxRuntimeCPU

    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnxruntime", "inspecting ONNX Runtime") from None
    with tempfile.TemporaryDirectory(prefix="edgetune-view-") as tmp:
        options = OnnxRuntimeCPU().session_options(SessionOptions(threads=threads, optimize=True))
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.enable_profiling = runs > 0
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = _ort_session(ort, model, options)
        optimized = _load_optimized(options.optimized_model_filepath)
        events = _profile(session, runs, dims) if runs > 0 else []
    timings, run_us = _timings(events, _WARMUP)
    return RuntimeView(
        runtime="onnxruntime", version=str(ort.__version__), level="ORT_ENABLE_ALL",
        optimized=optimized, timings=timings, runs=runs, run_median_us=run_us, threads=threads,
        notes=(f"ONNX Runtime {ort.__version__} CPU, ORT_ENABLE_ALL, {threads} thread(s); "
               f"per-node median over {runs} runs on all-ones inputs after {_WARMUP} warm-up",))


_WARMUP = 2


def _profile(session: Any, runs: int, dims: Mapping[str, int]) -> list[dict[str, Any]]:
    """Run ``runs`` times after warm-up with profiling on; the profiler's events."""
    from edgetune.analyze._graphinfo import dummy_feed

    feed = dummy_feed(session.get_inputs(), dims)
    for _ in range(runs + _WARMUP):
        session.run(None, feed)
    events: list[dict[str, Any]] = json.loads(
        Path(session.end_profiling()).read_text(encoding="utf-8"))
    return events


def _ort_session(ort: Any, model: Model, options: Any) -> Any:
    try:
        return ort.InferenceSession(model.to_bytes(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises Fail, InvalidGraph, NotImplemented...
        message = str(exc).strip().splitlines()[0][:300]
        raise RuntimeBackendError(f"ONNX Runtime cannot load {model.name!r}: {message}; check "
                                  "the model runs with edgetune evaluate first") from None


def _load_optimized(path: str) -> Any:
    import onnx

    return onnx.load(path, load_external_data=False)


def _timings(events: list[dict[str, Any]], warmup: int) -> tuple[dict[str, NodeTiming],
             float | None]:
    """Median kernel time per node over the runs after warm-up, from ORT's profile events."""
    per_node: dict[str, list[float]] = {}
    info: dict[str, tuple[str, int | None]] = {}
    runs: list[float] = []
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") == "Session" and name == "model_run":
            runs.append(float(event["dur"]))
        elif event.get("cat") == "Node" and name.endswith("_kernel_time"):
            node = name[: -len("_kernel_time")]
            per_node.setdefault(node, []).append(float(event["dur"]))
            args = event.get("args", {})
            size = args.get("output_size")
            info[node] = (str(args.get("op_name", "")), int(size) if size is not None else None)
    timings = {node: NodeTiming(op_type=info[node][0], output_bytes=info[node][1],
                                median_us=statistics.median(times[warmup:] or times))
               for node, times in per_node.items()}
    return timings, statistics.median(runs[warmup:] or runs) if runs else None


# -- layout conversions ------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Conversion:
    name: str
    op_type: str
    inserted: bool
    """Inserted by the runtime (True) or already in the model (False)."""
    producer: str
    consumers: tuple[str, ...]
    output_bytes: int | None
    median_us: float | None
    flag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "inserted": self.inserted,
                "producer": self.producer, "consumers": list(self.consumers),
                "output_bytes": self.output_bytes, "median_us": self.median_us, "flag": self.flag}


@dataclass(frozen=True, kw_only=True)
class LayoutReport:
    runtime: str
    conversions: tuple[Conversion, ...]
    conversion_us: float | None
    kernel_total_us: float | None
    notes: tuple[str, ...] = ()

    @property
    def share(self) -> float | None:
        if not self.conversion_us or not self.kernel_total_us:
            return None
        return self.conversion_us / self.kernel_total_us

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "conversions": [c.to_dict() for c in self.conversions],
                "inserted": sum(c.inserted for c in self.conversions),
                "conversion_us_per_inference": self.conversion_us,
                "kernel_total_us_per_inference": self.kernel_total_us,
                "conversion_share": self.share, "notes": list(self.notes)}


def layout_report(model: Model, view: RuntimeView) -> LayoutReport:
    """Layout conversions in the runtime's graph, their place and their cost per inference."""
    if view.optimized is None:
        return LayoutReport(runtime=view.runtime, conversions=(), conversion_us=None,
                            kernel_total_us=None, notes=view.notes)
    own = {n.name for n in model.proto.graph.node if n.op_type == "Transpose"}
    graph = view.optimized.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = [_conversion(node, own, producers, consumers, view)
             for node in graph.node if node.op_type in _CONVERSIONS]
    timed = [c.median_us for c in found if c.median_us is not None]
    return LayoutReport(runtime=view.runtime, conversions=tuple(found),
                        conversion_us=sum(timed) if view.timings else None,
                        kernel_total_us=view.kernel_total_us if view.timings else None,
                        notes=view.notes)


def _conversion(node: Any, own: set[str], producers: dict[str, Any],
                consumers: dict[str, list[Any]], view: RuntimeView) -> Conversion:
    source = producers.get(node.input[0]) if node.input else None
    users = consumers.get(node.output[0], []) if node.output else []
    timing = view.timings.get(node.name)
    return Conversion(
        name=node.name, op_type=node.op_type, inserted=node.name not in own,
        producer=_label(source) if source is not None else f"input {node.input[0]}",
        consumers=tuple(_label(u) for u in users) or ("graph output",),
        output_bytes=timing.output_bytes if timing else None,
        median_us=timing.median_us if timing else None,
        flag=_round_trip(node, users, consumers))


def _label(node: Any) -> str:
    return f"{node.op_type} {node.name}"


def _round_trip(node: Any, users: list[Any], consumers: dict[str, list[Any]]) -> str | None:
    """A conversion whose only user feeds straight into the inverse conversion: the layout
    flips for one operator and flips back, which a kernel for the first layout (or moving the
    operator) would avoid."""
    if len(users) != 1 or users[0].op_type in _CONVERSIONS or not users[0].output:
        return None
    after = consumers.get(users[0].output[0], [])
    if after and all(_inverse(node, a) for a in after):
        return (f"layout flips for {users[0].op_type} {users[0].name!r} alone and flips back "
                f"right after it ({node.op_type} then {after[0].op_type})")
    return None


def _inverse(first: Any, second: Any) -> bool:
    kinds = {first.op_type, second.op_type}
    if kinds == {"ReorderInput", "ReorderOutput"}:
        return True
    if kinds != {"Transpose"}:
        return False
    a, b = _perm(first), _perm(second)
    return a is not None and b is not None and len(a) == len(b) and [a[i] for i in b] == sorted(a)


def _perm(node: Any) -> list[int] | None:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == "perm":
            return [int(v) for v in helper.get_attribute_value(attr)]
    return None
