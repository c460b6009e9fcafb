"""``inspect``: how the model meets the silicon, in one call.

It puts three views side by side: the fusion candidates of the graph against what the runtime
fused (:mod:`edgetune.analyze.fusion`), the layout conversions the runtime inserted and their
cost per inference (:mod:`edgetune.analyze.layout`), and the activation arena planned with
buffer reuse against the naive sum and the lower bound (:mod:`edgetune.analyze.memory`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune.analyze._graphinfo import GraphInfo, graph_info
from edgetune.analyze.fusion import FusionReport, compare
from edgetune.analyze.layout import LayoutReport, capture_view, layout_report
from edgetune.analyze.memory import MemoryConfig, MemoryPlan, plan_memory
from edgetune.core.model import Model
from edgetune.errors import ConfigError

__all__ = ["InspectConfig", "InspectResult", "inspect"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class InspectConfig:
    runtime: str = "onnxruntime"
    """Runtime whose optimized graph and timings are read (``onnxruntime`` or ``null``)."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    profile_runs: int = 20
    """Runs timed by the runtime's profiler for the per-node cost (0: no timing)."""
    threads: int = 1

    def __post_init__(self) -> None:
        if self.profile_runs < 0:
            raise ConfigError("The 'profile_runs' parameter of InspectConfig must be >= 0; got "
                              f"{self.profile_runs!r}")
        if self.threads < 1:
            raise ConfigError(f"The 'threads' parameter of InspectConfig must be >= 1; got "
                              f"{self.threads!r}")


@dataclass(frozen=True, kw_only=True)
class InspectResult:
    model_name: str
    info: GraphInfo
    fusions: FusionReport
    layout: LayoutReport
    memory: MemoryPlan

    def report(self) -> dict[str, Any]:
        """A versioned report with the ``fusions``, ``layout`` and ``memory`` sections."""
        from edgetune.report.schema import new_report

        report = new_report("inspect")
        report["model"] = {"name": self.model_name, "nodes": len(self.info.nodes),
                           "dims": dict(self.info.dims), "notes": list(self.info.notes)}
        report["fusions"] = self.fusions.to_dict()
        report["layout"] = self.layout.to_dict()
        report["memory"] = {**self.memory.summary(), "live_bytes": list(self.memory.live_bytes),
                            "plan": [b.to_dict() for b in self.memory.buffers]}
        return report


def inspect(model: Model | str | Path, config: InspectConfig | None = None, *,
            runtime: str | None = None) -> InspectResult:
    """Fusions, layout conversions and the activation arena of ``model`` on ``runtime``."""
    from edgetune.load import load

    config = config or InspectConfig()
    model = load(model)
    info = graph_info(model, config.memory.dims)
    view = capture_view(model, runtime or config.runtime, runs=config.profile_runs,
                        threads=config.threads, dims=info.dims)
    log.info("captured the %s view of %s", view.runtime, model.name)
    return InspectResult(model_name=model.name, info=info, fusions=compare(info, view),
                         layout=layout_report(model, view),
                         memory=plan_memory(model, config.memory, info=info))
