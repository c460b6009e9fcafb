"""What every runtime provides: a session that runs one feed and returns the outputs.

Beyond the required :class:`Runtime` and :class:`Session`, a runtime may offer optional parts
the benchmark uses when present (checked with ``isinstance`` against the protocols below):

* :class:`Checkable` ``check()``: raise a clear error *before* any work when the runtime
  cannot run here (package missing: :class:`~edgetune.errors.MissingExtraError` naming the
  extra; GPU or provider missing: :class:`~edgetune.errors.RuntimeBackendError`).
* :class:`PlacementReporter` ``placement(model, options, feed)``: where each operator ran,
  telling an operator placed on CPU *on purpose* from one that fell back as unsupported.
* ``session.load_phases_ms``: the parts of session creation (read, convert, compile...).
* ``runtime.settings()``: JSON-able constructor settings, so a fresh process can re-create the
  same runtime (cold-start and memory measurements); absent or None means it cannot.
* ``runtime.library``: the Python module a fresh process imports to use it (timed apart).
* ``session.offline_phases_ms``: ahead-of-time work done while creating the session (LiteRT's
  conversion), reported apart and never counted as cold start; ``session.notes``: caveats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgetune.core.model import Model

__all__ = [
    "Checkable",
    "OpPlacement",
    "PlacementReporter",
    "PlacementStatus",
    "Runtime",
    "Session",
    "SessionOptions",
]


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """Settings shared by every runtime; a runtime ignores what it cannot honour."""

    threads: int | None = None
    """Intra-op threads; ``None`` lets the runtime decide (usually one per core)."""
    optimize: bool = True
    """Let the runtime apply its graph optimizations (fusions, constant folding)."""
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    """Concrete input shapes to build for. Runtimes that compile for static shapes (LiteRT
    through onnx2tf) need them when the model has symbolic dimensions; others ignore them."""


@runtime_checkable
class Session(Protocol):
    """A loaded model, ready to run."""

    @property
    def output_names(self) -> list[str]: ...

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one feed; return the outputs in graph order."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """A way to execute ONNX models (ONNX Runtime, OpenVINO, ...)."""

    name: str

    def session(self, model: Model, options: SessionOptions | None = None) -> Session: ...

    def version(self) -> str: ...


class PlacementStatus(str, Enum):
    """Why an operator ran where it ran."""

    TARGET = "target"
    """On the engine this runtime is about (the GPU provider, the XNNPACK delegate, the CPU
    for a CPU runtime)."""
    CPU_BY_DESIGN = "cpu_by_design"
    """On the CPU on purpose although the target supports it: shape arithmetic that the
    runtime keeps on the host (ONNX Runtime does this for GPU providers)."""
    FALLBACK = "fallback"
    """On a slower engine because the target does not support it."""


@dataclass(frozen=True, kw_only=True)
class OpPlacement:
    """One executed operator (as the runtime names it after its own fusions)."""

    node: str
    op_type: str
    device: str
    status: PlacementStatus
    precision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "device": self.device,
            "status": self.status.value,
            "precision": self.precision,
        }


@runtime_checkable
class Checkable(Protocol):
    def check(self) -> None:
        """Raise MissingExtraError or RuntimeBackendError when the runtime cannot run here."""
        ...


@runtime_checkable
class PlacementReporter(Protocol):
    def placement(
        self, model: Model, options: SessionOptions, feed: Mapping[str, np.ndarray]
    ) -> list[OpPlacement]:
        """Where each operator of ``model`` runs (may build a separate, instrumented session)."""
        ...
