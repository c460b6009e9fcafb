"""evaluate: run a model over a dataset on a runtime and score it with a metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.metrics import Metric, MetricValue, RunOutputs, get_metric
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.load import load
from edgetune.runtimes import Runtime, Session, SessionOptions, get_runtime

__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate", "run_outputs"]


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """How to evaluate: which metric, on how many samples, with which session settings."""

    metric: str | Any = "top1"
    """``top1``, ``fidelity``, ``package.module:function``, or a callable."""
    limit: int | None = None
    """Evaluate only the first ``limit`` samples."""
    session: SessionOptions = field(default_factory=SessionOptions)


@dataclass(frozen=True, kw_only=True)
class EvaluateResult:
    model_name: str
    metric: MetricValue
    n_samples: int
    outputs: RunOutputs = field(repr=False)

    @property
    def value(self) -> float:
        return self.metric.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "metric_name": self.metric.name,
            "metric": self.metric.value,
            "details": dict(self.metric.details),
            "n_samples": self.n_samples,
        }


def run_outputs(
    session: Session,
    data: BoundData,
    *,
    limit: int | None = None,
    progress: Progress = NULL_PROGRESS,
    label: str = "running",
) -> RunOutputs:
    """Run every sample (one run each) and collect outputs and labels."""
    total = min(len(data), limit or len(data)) if data.in_memory else limit
    progress.start(label, total)
    per_sample: list[list[np.ndarray]] = []
    labels: list[Any] = []
    for sample in data.samples(limit):
        per_sample.append(session.run(sample.feed))
        labels.append(sample.label)
        progress.advance()
    progress.finish()
    has_labels = bool(labels) and labels[0] is not None
    return RunOutputs(
        names=list(session.output_names),
        per_sample=per_sample,
        labels=np.asarray(labels) if has_labels else None,
    )


def evaluate(
    model: Model | str | Path,
    config: EvaluateConfig | None = None,
    *,
    data: BoundData | Dataset | str | Path,
    runtime: Runtime | str | None = None,
    reference: Model | str | Path | RunOutputs | None = None,
    progress: Progress = NULL_PROGRESS,
) -> EvaluateResult:
    """Score ``model`` on ``data``; ``reference`` (a model or its outputs) feeds ``fidelity``."""
    config = config or EvaluateConfig()
    model = load(model)
    metric: Metric = get_metric(config.metric)
    bound = data if isinstance(data, BoundData) else bind(data, model)
    rt = get_runtime(runtime)
    outputs = run_outputs(
        rt.session(model, config.session),
        bound,
        limit=config.limit,
        progress=progress,
        label=f"evaluating {model.name}",
    )
    ref_outputs = _reference_outputs(reference, metric, bound, rt, config, progress)
    value = metric(outputs, ref_outputs)
    return EvaluateResult(
        model_name=model.name, metric=value, n_samples=len(outputs), outputs=outputs
    )


def _reference_outputs(
    reference: Model | str | Path | RunOutputs | None,
    metric: Metric,
    data: BoundData,
    runtime: Runtime,
    config: EvaluateConfig,
    progress: Progress,
) -> RunOutputs | None:
    if reference is None or isinstance(reference, RunOutputs) or not metric.needs_reference:
        return reference if isinstance(reference, RunOutputs) else None
    ref_model = load(reference)
    session = runtime.session(ref_model, config.session)
    return run_outputs(session, data, limit=config.limit, progress=progress, label="reference")
