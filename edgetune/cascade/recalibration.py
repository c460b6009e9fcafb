"""recalibrate: refit a cascade's gate on new labeled data, keeping its models and target.

When ``GET /drift`` says live traffic no longer looks like the certification data, the
threshold's guarantee no longer covers it. Recalibration reruns the whole build (temperature,
score, certified threshold, drift reference) on data that looks like today's traffic, with the
same two models and, unless told otherwise, the same target and confidence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.cascade.artifact import CascadeSpec, LoadedCascade, load_cascade
from edgetune.cascade.build import CascadeBuildResult, DataSpec, build_cascade
from edgetune.cascade.calibration import ScoreKind
from edgetune.cascade.config import CascadeConfig, Target
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.runtimes import Runtime

__all__ = ["RecalibrateConfig", "RecalibrateResult", "recalibrate"]


@dataclass(frozen=True, kw_only=True)
class RecalibrateConfig:
    """Overrides; every ``None`` keeps what the cascade was built with."""

    target: Target | None = None
    confidence: float | None = None
    score: ScoreKind | None = None
    fit_fraction: float = 0.4
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class RecalibrateResult:
    """The rebuilt cascade and the gate it replaces."""

    build: CascadeBuildResult
    previous: CascadeSpec

    def changes(self) -> dict[str, Any]:
        old, new = self.previous, self.build.spec
        return {
            key: {"before": before, "after": after}
            for key, before, after in (
                ("score", old.gate.score.value, new.gate.score.value),
                ("temperature", old.gate.temperature, new.gate.temperature),
                ("threshold", old.gate.threshold, new.gate.threshold),
                ("escalation", old.expected["escalation"], new.expected["escalation"]),
                ("metric", old.expected["metric"], new.expected["metric"]),
            )
        }

    def save(self, out_dir: Path | str, *, overwrite: bool = True) -> Path:
        return self.build.save(out_dir, overwrite=overwrite)


def _build_config(spec: CascadeSpec, config: RecalibrateConfig) -> CascadeConfig:
    costs = spec.costs
    return CascadeConfig(
        target=config.target or spec.target,
        metric=spec.metric,
        confidence=spec.confidence if config.confidence is None else config.confidence,
        score=config.score,
        fit_fraction=config.fit_fraction,
        seed=config.seed,
        cost_small_ms=None if costs.measured else costs.small_ms,
        cost_large_ms=None if costs.measured else costs.large_ms,
        cost_network_ms=costs.network_ms,
    )


def recalibrate(
    cascade: LoadedCascade | str | Path,
    config: RecalibrateConfig | None = None,
    *,
    data: DataSpec,
    fit_data: DataSpec | None = None,
    runtime: Runtime | str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> RecalibrateResult:
    """Rebuild the gate of ``cascade`` on ``data``; :meth:`RecalibrateResult.save` writes it."""
    loaded = cascade if isinstance(cascade, LoadedCascade) else load_cascade(cascade)
    build_config = _build_config(loaded.spec, config or RecalibrateConfig())
    result = build_cascade(
        loaded.small,
        loaded.large,
        build_config,
        data=data,
        fit_data=fit_data,
        runtime=runtime,
        progress=progress,
    )
    spec = dataclasses.replace(result.spec, models=loaded.spec.models)
    result = dataclasses.replace(result, spec=spec)
    result.report["cascade"] = spec.to_dict()
    result.report["recalibrated_from"] = loaded.spec.to_dict()
    return RecalibrateResult(build=result, previous=loaded.spec)
