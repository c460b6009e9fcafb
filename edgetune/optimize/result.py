"""What ``optimize`` returns: the chosen model, every verified candidate, the Pareto front, and
the log of the search; and the report built from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgetune.core.model import Model
from edgetune.optimize.analysis import AnalyzeResult
from edgetune.optimize.config import Objective, OptimizeConfig
from edgetune.transforms.plan import Plan

__all__ = ["OptimizeResult", "SearchStep", "Verified", "pareto_front"]


@dataclass(frozen=True, kw_only=True)
class Verified:
    """A candidate built and evaluated for real on the held-out data."""

    label: str
    plan: Plan
    metric: float
    drop: float
    size_bytes: int
    latency_ratio: float
    """p50 / float32 p50, measured interleaved with float32."""
    p50_ms: float
    predicted_noise: float = 0.0
    predicted_drop: float | None = None
    applied: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    model: Model | None = field(default=None, repr=False, compare=False)

    def meets(self, max_drop: float) -> bool:
        return self.drop <= max_drop + 1e-12

    def precisions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.applied.values():
            counts[p] = counts.get(p, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "plan_fingerprint": self.plan.fingerprint(), "metric": self.metric,
            "drop": self.drop, "size_bytes": self.size_bytes, "latency_ratio": self.latency_ratio,
            "p50_ms": self.p50_ms, "predicted_noise": self.predicted_noise,
            "predicted_drop": self.predicted_drop, "precisions": self.precisions(),
            "warnings": list(self.warnings), "seconds": self.seconds, "cached": self.cached,
        }


@dataclass(frozen=True, kw_only=True)
class SearchStep:
    """One step of the search: the noise budget tried, and what its plan scored."""

    step: int
    budget: float
    candidate: int
    """Index into :attr:`OptimizeResult.candidates`."""
    feasible: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "noise_budget": self.budget, "candidate": self.candidate,
                "feasible": self.feasible, "note": self.note}


def pareto_front(items: Sequence[Verified]) -> list[int]:
    """Indices of candidates no other beats on size, latency and metric at once."""
    def dominates(a: Verified, b: Verified) -> bool:
        no_worse = a.size_bytes <= b.size_bytes and a.latency_ratio <= b.latency_ratio and a.metric >= b.metric
        better = a.size_bytes < b.size_bytes or a.latency_ratio < b.latency_ratio or a.metric > b.metric
        return no_worse and better

    return [i for i, c in enumerate(items) if not any(dominates(o, c) for o in items if o is not c)]


@dataclass(frozen=True, kw_only=True)
class OptimizeResult:
    model: Model
    plan: Plan
    chosen: int
    """Index of the returned candidate in :attr:`candidates` (0 is float32)."""
    candidates: list[Verified]
    steps: list[SearchStep]
    meets_budget: bool
    baseline_metric: float
    max_drop: float
    objective: Objective
    reasons: list[str]
    stopped: str
    seconds: float
    analysis: AnalyzeResult = field(repr=False)

    @property
    def result(self) -> Verified:
        return self.candidates[self.chosen]

    @property
    def pareto(self) -> list[int]:
        return pareto_front(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        fp32 = self.candidates[0]
        return {
            "objective": self.objective.value, "max_drop": self.max_drop,
            "metric": self.analysis.metric_name, "baseline_metric": self.baseline_metric,
            "chosen": self.chosen, "meets_budget": self.meets_budget,
            "result": {**r.to_dict(), "size_ratio": r.size_bytes / max(fp32.size_bytes, 1)},
            "reasons": list(self.reasons), "stopped": self.stopped, "seconds": self.seconds,
            "candidates": [c.to_dict() for c in self.candidates], "pareto": self.pareto,
            "steps": [s.to_dict() for s in self.steps],
            "plan": self.plan.to_dict(),
        }


def optimize_report(result: OptimizeResult, config: OptimizeConfig) -> dict[str, Any]:
    """The JSON report: the ``optimize`` section and the ``sensitivity`` table."""
    from edgetune.report.schema import new_report

    report = new_report("optimize")
    report["machine"]["isa"] = result.analysis.detected_isa.value
    report["optimize"] = result.to_dict()
    report["sensitivity"] = result.analysis.to_dict()
    report["config"] = {"max_drop": config.max_drop, "objective": config.objective.value,
                        "time_budget_s": config.time_budget_s,
                        "precisions": [p.value for p in config.analyze.precisions]}
    return report


def analyze_report(analysis: AnalyzeResult) -> dict[str, Any]:
    from edgetune.report.schema import new_report

    report = new_report("analyze")
    report["machine"]["isa"] = analysis.detected_isa.value
    report["sensitivity"] = analysis.to_dict()
    return report


def plan_report(check: Any, plan: Plan) -> dict[str, Any]:
    """Report of ``edgetune quantize --plan`` with an evaluation: did the plan keep its budget?"""
    from edgetune.report.schema import new_report

    report = new_report("plan")
    report["plan_check"] = {**check.to_dict(), "plan": plan.to_dict()}
    return report
