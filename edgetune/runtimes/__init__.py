"""Runtimes, found through one table and imported only when asked for.

Add a runtime by adding a row to ``_TABLE``: ``name -> "module:Class"``, plus the pip extra that
provides its package in ``EXTRAS``. A runtime class takes only keyword settings (none for most)
and does no work in its constructor; ``check()`` says whether it can run on this machine.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetune.core.registry import Registry
from edgetune.errors import ConfigError, EdgetuneError
from edgetune.runtimes.base import (
    Checkable,
    OpPlacement,
    PlacementReporter,
    PlacementStatus,
    Runtime,
    Session,
    SessionOptions,
)

__all__ = [
    "BASELINE",
    "EXTRAS",
    "OpPlacement",
    "PlacementStatus",
    "Runtime",
    "Session",
    "SessionOptions",
    "check_runtime",
    "get_runtime",
    "runtime_names",
]

_TABLE: Registry[str] = Registry("runtime")
_TABLE.add("onnxruntime", "edgetune.runtimes.onnxruntime:OnnxRuntimeCPU")
_TABLE.add("openvino", "edgetune.runtimes.openvino:OpenVinoCPU")
_TABLE.add("litert", "edgetune.runtimes.litert:LiteRT")
_TABLE.add("litert-int8", "edgetune.runtimes.litert:LiteRTInt8")
_TABLE.add("torch", "edgetune.runtimes.torch_runtime:TorchRuntime")
_TABLE.add("onnxruntime-cuda", "edgetune.runtimes.ort_gpu:OrtCuda")
_TABLE.add("onnxruntime-tensorrt", "edgetune.runtimes.ort_gpu:OrtTensorRT")
_TABLE.add("null", "edgetune.runtimes.null:NullRuntime")

EXTRAS: dict[str, str] = {
    "onnxruntime": "core (always installed)",
    "openvino": "openvino",
    "litert": "litert",
    "litert-int8": "litert",
    "torch": "torch",
    "onnxruntime-cuda": "gpu",
    "onnxruntime-tensorrt": "gpu",
    "null": "core (a fake for tests)",
}
"""The pip extra that provides each runtime (``pip install 'edgetune[EXTRA]'``)."""

DEFAULT_RUNTIME = "onnxruntime"
BASELINE = "onnxruntime"
"""The runtime every benchmark compares against: ONNX Runtime on CPU."""


def get_runtime(name: str | Runtime | None = None, **settings: Any) -> Runtime:
    """A runtime instance by name (default: ONNX Runtime CPU), or the instance given.

    ``settings`` go to the runtime's constructor (e.g. ``module=`` for ``torch``,
    ``calibration=`` for ``litert-int8``).
    """
    if name is not None and not isinstance(name, str):
        return name
    target = _TABLE.get(name or DEFAULT_RUNTIME)
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        runtime: Runtime = cls(**settings)
    except TypeError:
        raise ConfigError(
            f"runtime {name!r} takes no settings {sorted(settings)}; drop them or pick a runtime "
            "that uses them (torch: module, litert-int8: calibration)"
        ) from None
    return runtime


def runtime_names() -> list[str]:
    return _TABLE.names()


def check_runtime(runtime: Runtime) -> str | None:
    """None when ``runtime`` can run here, else the one-line reason (missing extra, no GPU)."""
    if not isinstance(runtime, Checkable):
        return None
    try:
        runtime.check()
    except EdgetuneError as exc:
        return str(exc)
    return None


def supports_placement(runtime: Runtime) -> bool:
    return isinstance(runtime, PlacementReporter)
