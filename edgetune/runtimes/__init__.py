"""Runtimes, found through one table and imported only when asked for.

Add a runtime by adding a row to ``_TABLE``: ``name -> "module:Class"``, plus the pip extra that
provides its package.
"""

from __future__ import annotations

import importlib

from edgetune.core.registry import Registry
from edgetune.runtimes.base import Runtime, Session, SessionOptions

__all__ = ["Runtime", "Session", "SessionOptions", "get_runtime", "runtime_names"]

_TABLE: Registry[str] = Registry("runtime")
_TABLE.add("onnxruntime", "edgetune.runtimes.onnxruntime:OnnxRuntimeCPU")
_TABLE.add("null", "edgetune.runtimes.null:NullRuntime")

DEFAULT_RUNTIME = "onnxruntime"


def get_runtime(name: str | Runtime | None = None) -> Runtime:
    """A runtime instance by name (default: ONNX Runtime CPU), or the instance given."""
    if name is not None and not isinstance(name, str):
        return name
    target = _TABLE.get(name or DEFAULT_RUNTIME)
    module_name, _, cls_name = target.partition(":")
    runtime: Runtime = getattr(importlib.import_module(module_name), cls_name)()
    return runtime


def runtime_names() -> list[str]:
    return _TABLE.names()
