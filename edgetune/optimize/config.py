"""Configurations of ``analyze`` and ``optimize``: frozen, keyword-only, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edgetune.benchmark.latency import LatencyConfig
from edgetune.core.isa import Isa
from edgetune.errors import ConfigError
from edgetune.transforms.plan import Precision

__all__ = ["DEFAULT_PRECISIONS", "AnalyzeConfig", "Objective", "OptimizeConfig", "parse_precisions"]

DEFAULT_PRECISIONS = (Precision.INT8, Precision.INT8_DYNAMIC, Precision.INT4, Precision.FP16)
"""Candidate precisions when none are given (float32 is always a candidate)."""


class Objective(str, Enum):
    SIZE = "size"
    LATENCY = "latency"


def parse_precisions(text: str) -> tuple[Precision, ...]:
    """``"int8,int4,fp16"`` -> precisions; an unknown name lists the known ones."""
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(Precision(part))
        except ValueError:
            known = ", ".join(p.value for p in Precision)
            raise ConfigError(f"unknown precision {part!r}; choose from: {known}") from None
    if not out:
        raise ConfigError(f"the precision list {text!r} is empty; give e.g. int8,int4,fp16")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True, kw_only=True)
class AnalyzeConfig:
    """What sensitivity analysis measures, and how much of the data it spends on it."""

    metric: str | Any = "top1"
    precisions: tuple[Precision, ...] = DEFAULT_PRECISIONS
    target_isa: Isa | None = None
    """Instruction set of the CPU the model will run on; ``None``: this machine's."""
    calib_limit: int | None = 256
    """Calibration samples used for activation ranges."""
    probe_samples: int = 32
    """Calibration samples whose activations drive the per-layer error probes."""
    measure_layers: int | None = 6
    """Layers (the most sensitive by the proxies) whose metric change is measured with a real
    model quantized at that layer only; ``None`` measures every layer."""
    measure_limit: int | None = 1000
    """Evaluation samples used for those per-layer measurements."""
    probe_budget_s: float = 20.0
    """Probe every candidate end to end when that fits in this many seconds; otherwise probe a
    few reference candidates per layer and predict the rest from the layer's gain."""
    profile_runs: int = 20
    threads: int | None = None
    """Intra-op threads for profiling and latency (``None``: the runtime's default)."""
    preprocess: bool = True
    percentile: float = 99.999

    def __post_init__(self) -> None:
        for name in ("probe_samples", "profile_runs"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"The {name!r} parameter of AnalyzeConfig must be >= 1; got {getattr(self, name)}."
                )
        if self.measure_layers is not None and self.measure_layers < 0:
            raise ConfigError(
                f"The 'measure_layers' parameter of AnalyzeConfig must be >= 0 or None; got "
                f"{self.measure_layers}."
            )
        if not 50.0 < self.percentile < 100.0:
            raise ConfigError(
                f"The 'percentile' parameter of AnalyzeConfig must be in (50, 100); got {self.percentile}."
            )


_VERIFY_LATENCY = LatencyConfig(warmup=5, min_iters=40, max_iters=400, min_seconds=0.4, max_seconds=3.0, block=4)


@dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    """The accuracy budget, the objective, and how long the search may take."""

    max_drop: float
    """Largest allowed drop of the metric, in its own units (0.005 = half a point of top-1)."""
    objective: Objective = Objective.SIZE
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    time_budget_s: float | None = None
    """Stop searching after this many seconds (analysis included) and return the best verified
    model; ``None``: stop when the search has converged or ``max_verifications`` is reached."""
    max_verifications: int = 10
    eval_limit: int | None = None
    """Evaluation samples used to verify each candidate (``None``: all)."""
    latency: LatencyConfig = _VERIFY_LATENCY
    cache_dir: Path | None = None
    """Keep verified evaluations here, keyed by model, plan and data, across runs."""

    def __post_init__(self) -> None:
        if not self.max_drop >= 0:
            raise ConfigError(
                f"The 'max_drop' parameter of OptimizeConfig must be >= 0 (in the metric's units, "
                f"0.005 = half a point of top-1); got {self.max_drop}."
            )
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(
                f"The 'time_budget_s' parameter of OptimizeConfig must be > 0; got {self.time_budget_s}."
            )
        if self.max_verifications < 1:
            raise ConfigError(
                f"The 'max_verifications' parameter of OptimizeConfig must be >= 1; got "
                f"{self.max_verifications}."
            )
