"""What every runtime provides: a session that runs one feed and returns the outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edgetune.core.model import Model

__all__ = ["Runtime", "Session", "SessionOptions"]


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """Settings shared by every runtime; a runtime ignores what it cannot honour."""

    threads: int | None = None
    """Intra-op threads; ``None`` lets the runtime decide (usually one per core)."""
    optimize: bool = True
    """Let the runtime apply its graph optimizations (fusions, constant folding)."""


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
