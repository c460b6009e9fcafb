"""ONNX Runtime on CPU: the baseline runtime; the GPU providers subclass it (ort_gpu.py).

Operator placement comes from ONNX Runtime's own profiler: a separate session with profiling on
runs one feed, and every kernel event names the node, its operator and its execution provider.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.model import Model
from edgetune.errors import MissingExtraError, RuntimeBackendError
from edgetune.runtimes.base import OpPlacement, PlacementStatus, SessionOptions

__all__ = ["OnnxRuntimeCPU", "OrtSession", "profile_placement"]

CPU_PROVIDER = "CPUExecutionProvider"
_SHAPE_TYPES = {"int64", "int32", "bool"}
_SHAPE_MAX_ELEMENTS = 1024
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero"}
_COPY_OPS = {"MemcpyToHost", "MemcpyFromHost"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnxruntime", "the ONNX Runtime backend") from None
    return onnxruntime


class OrtSession:
    """An ``InferenceSession`` behind the :class:`~edgetune.runtimes.base.Session` protocol."""

    def __init__(
        self, session: Any, model_name: str, load_phases_ms: dict[str, float] | None = None
    ) -> None:
        self._session = session
        self._model_name = model_name
        self.output_names = [o.name for o in session.get_outputs()]
        self.load_phases_ms = dict(load_phases_ms or {})

    @property
    def raw(self) -> Any:
        return self._session

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self._session.run(None, dict(feed)))
        except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
            message = str(exc).strip().splitlines()[0][:300]
            raise RuntimeBackendError(
                f"ONNX Runtime failed to run {self._model_name!r}: {message}; check the inputs "
                "match the model"
            ) from None


class OnnxRuntimeCPU:
    """ONNX Runtime with the CPU execution provider."""

    name = "onnxruntime"
    library = "onnxruntime"
    """The Python module a fresh process imports to use this runtime."""
    provider = CPU_PROVIDER

    def version(self) -> str:
        return str(_ort().__version__)

    def settings(self) -> dict[str, Any]:
        return {}

    def check(self) -> None:
        ort = _ort()
        if self.provider not in ort.get_available_providers():
            raise self._no_provider(ort)

    def _no_provider(self, ort: Any) -> RuntimeBackendError:
        return RuntimeBackendError(
            f"{self.provider} is not available in onnxruntime {ort.__version__} (available: "
            f"{', '.join(ort.get_available_providers())})"
        )

    def providers(self) -> list[str]:
        return [self.provider] if self.provider == CPU_PROVIDER else [self.provider, CPU_PROVIDER]

    def session_options(self, options: SessionOptions) -> Any:
        ort = _ort()
        so = ort.SessionOptions()
        if options.threads is not None:
            so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        level = ort.GraphOptimizationLevel
        so.graph_optimization_level = (
            level.ORT_ENABLE_ALL if options.optimize else level.ORT_DISABLE_ALL
        )
        return so

    def session(self, model: Model, options: SessionOptions | None = None) -> OrtSession:
        so = self.session_options(options or SessionOptions())
        start = time.perf_counter()
        raw = self._create(model, so)
        phases = {"create_session": (time.perf_counter() - start) * 1e3}
        return OrtSession(raw, model.name, phases)

    def _create(self, model: Model, so: Any) -> Any:
        ort = _ort()
        try:
            raw = ort.InferenceSession(model.to_bytes(), so, providers=self.providers())
        except Exception as exc:  # ORT raises Fail, InvalidGraph, NotImplemented...
            message = str(exc).strip().splitlines()[0][:300]
            raise RuntimeBackendError(
                f"ONNX Runtime cannot load {model.name!r} with {self.provider}: {message}; check "
                f"the model's opset and operators are supported by onnxruntime {ort.__version__}"
            ) from None
        if self.provider not in raw.get_providers():
            raise RuntimeBackendError(
                f"ONNX Runtime silently dropped {self.provider} for {model.name!r} (session "
                f"providers: {raw.get_providers()}); check the GPU driver and CUDA libraries"
            )
        return raw

    def placement(
        self, model: Model, options: SessionOptions, feed: Mapping[str, np.ndarray]
    ) -> list[OpPlacement]:
        """Node -> provider from a profiled run of a separate session."""
        return profile_placement(self, model, options, feed)


def profile_placement(
    runtime: OnnxRuntimeCPU, model: Model, options: SessionOptions, feed: Mapping[str, np.ndarray]
) -> list[OpPlacement]:
    with tempfile.TemporaryDirectory(prefix="edgetune-ortprof-") as tmp:
        so = runtime.session_options(options)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        raw = runtime._create(model, so)
        raw.run(None, dict(feed))
        events = json.loads(Path(raw.end_profiling()).read_text(encoding="utf-8"))
    return _placements(events, runtime.provider)


def _placements(events: list[dict[str, Any]], target: str) -> list[OpPlacement]:
    seen: dict[str, OpPlacement] = {}
    for event in events:
        name, args = str(event.get("name", "")), event.get("args") or {}
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op_type = str(args.get("op_name", "?"))
        node = name.removesuffix("_kernel_time")
        if op_type in _COPY_OPS or node in seen:
            continue
        provider = str(args.get("provider", "?"))
        seen[node] = OpPlacement(
            node=node,
            op_type=op_type,
            device=provider,
            status=_status(provider, target, op_type, args),
            precision=_first_type(args.get("input_type_shape")),
        )
    return list(seen.values())


def _status(provider: str, target: str, op_type: str, args: Mapping[str, Any]) -> PlacementStatus:
    """A CPU node under a GPU provider is 'by design' when it only does shape arithmetic:
    ONNX Runtime keeps such nodes (integer outputs feeding shapes) on the host on purpose."""
    if provider == target:
        return PlacementStatus.TARGET
    outputs = [t for t in args.get("output_type_shape") or [] if isinstance(t, dict) and t]
    if op_type in _SHAPE_OPS or (outputs and all(_is_shape_tensor(t) for t in outputs)):
        return PlacementStatus.CPU_BY_DESIGN
    return PlacementStatus.FALLBACK


def _is_shape_tensor(type_shape: dict[str, Any]) -> bool:
    """A small int64/int32/bool tensor: shape arithmetic, not a quantized activation."""
    dtype, dims = next(iter(type_shape.items()))
    size = int(np.prod(dims)) if isinstance(dims, list) else _SHAPE_MAX_ELEMENTS + 1
    return dtype in _SHAPE_TYPES and size <= _SHAPE_MAX_ELEMENTS


def _first_type(type_shapes: Any) -> str | None:
    if isinstance(type_shapes, list) and type_shapes and isinstance(type_shapes[0], dict):
        return next(iter(type_shapes[0]), None)
    return None
