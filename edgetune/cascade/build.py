"""build_cascade: calibrate the small model's confidence and certify an escalation threshold.

1. Split the labeled data at random (seeded) into a *fit* split and a *certify* split, or take
   a separate fit dataset.
2. On the fit split: fit the temperature, choose the confidence score (maximum probability,
   margin or entropy) that meets the target with the fewest escalations, and fix the candidate
   thresholds (quantiles of its scores).
3. On the certify split, which nothing was fitted on: certify a threshold for the target
   (:mod:`edgetune.cascade.threshold`), measure the trade-off curve, the calibration error
   before and after scaling, and keep the score distribution as the drift reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.benchmark.latency import LatencyConfig, measure_interleaved
from edgetune.cascade.artifact import CascadeSpec, Gate, write_cascade_dir
from edgetune.cascade.calibration import (
    ScoreKind,
    as_logits,
    confidence_scores,
    error_detection_auroc,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from edgetune.cascade.config import CascadeConfig, Costs, GateMetric
from edgetune.cascade.drift import DriftReference
from edgetune.cascade.threshold import (
    Constraint,
    GateOutcomes,
    OperatingPoint,
    Risk,
    ThresholdChoice,
    choose_threshold,
    operating_points,
    threshold_grid,
)
from edgetune.core.data import BoundData, Dataset, bind
from edgetune.core.model import Model
from edgetune.core.progress import NULL_PROGRESS, Progress
from edgetune.errors import DataError, ModelError
from edgetune.load import load
from edgetune.runtimes import Runtime, Session, get_runtime
from edgetune.validate.evaluate import run_outputs

__all__ = [
    "CascadeBuildResult",
    "GateFit",
    "SplitOutputs",
    "build_cascade",
    "fit_gate",
    "split_outputs",
]

log = logging.getLogger(__name__)

DataSpec = BoundData | Dataset | str | Path | dict[str, np.ndarray]
_COST_LATENCY = LatencyConfig(
    warmup=5, min_iters=50, max_iters=2000, min_seconds=1.0, max_seconds=5.0
)


@dataclass(frozen=True, kw_only=True)
class CascadeBuildResult:
    """The calibrated cascade, its certified threshold, and the report explaining both."""

    spec: CascadeSpec
    small: Model
    large: Model
    reference: DriftReference
    choice: ThresholdChoice
    curve: list[OperatingPoint]
    report: dict[str, Any]

    @property
    def gate(self) -> Gate:
        return self.spec.gate

    def save(self, out_dir: Path | str, *, overwrite: bool = False) -> Path:
        """Write the cascade directory atomically (temporary sibling, then rename)."""
        return write_cascade_dir(
            out_dir,
            self.spec,
            small=self.small,
            large=self.large,
            reference=self.reference,
            report=self.report,
            overwrite=overwrite,
        )


@dataclass(frozen=True, kw_only=True)
class SplitOutputs:
    """Small-model logits and per-sample correctness of both models on one split."""

    logits: np.ndarray
    labels: np.ndarray
    small_correct: np.ndarray
    large_correct: np.ndarray
    probabilities: bool = False
    """The small model outputs probabilities (``logits`` holds their logarithms)."""

    def outcomes(self, scores: np.ndarray) -> GateOutcomes:
        return GateOutcomes(
            scores=scores, small_correct=self.small_correct, large_correct=self.large_correct
        )

    def subset(self, index: np.ndarray) -> SplitOutputs:
        return SplitOutputs(
            logits=self.logits[index],
            labels=self.labels[index],
            small_correct=self.small_correct[index],
            large_correct=self.large_correct[index],
            probabilities=self.probabilities,
        )


@dataclass(frozen=True, kw_only=True)
class GateFit:
    """A gate fitted on one split and certified on another, before any file is written."""

    gate: Gate
    choice: ThresholdChoice
    grid: np.ndarray
    cert_scores: np.ndarray
    score_table: dict[str, dict[str, Any]]


def fit_gate(fit: SplitOutputs, cert: SplitOutputs, config: CascadeConfig) -> GateFit:
    """The statistics of a build on model outputs already computed (no model runs)."""
    temperature = fit_temperature(fit.logits, fit.labels)
    kind, score_table = _choose_score(fit, temperature, config)
    grid = threshold_grid(confidence_scores(fit.logits, kind, temperature), config.grid_size)
    cert_scores = confidence_scores(cert.logits, kind, temperature)
    choice = choose_threshold(
        cert.outcomes(cert_scores), grid, config.target.constraints(), config.confidence
    )
    gate = Gate(
        score=kind,
        temperature=temperature,
        threshold=choice.threshold,
        probabilities=fit.probabilities,
    )
    return GateFit(
        gate=gate, choice=choice, grid=grid, cert_scores=cert_scores, score_table=score_table
    )


def build_cascade(
    small: Model | str | Path,
    large: Model | str | Path,
    config: CascadeConfig,
    *,
    data: DataSpec,
    fit_data: DataSpec | None = None,
    runtime: Runtime | str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> CascadeBuildResult:
    """Calibrate the gate between ``small`` and ``large`` and certify its threshold on ``data``."""
    config = config.validated()
    small_model, large_model = load(small), load(large)
    _check_pair(small_model, large_model)
    fit_bound, cert_bound, split_info = _splits(data, fit_data, small_model, config)
    rt = get_runtime(runtime)
    sessions = (rt.session(small_model, config.session), rt.session(large_model, config.session))
    fit = split_outputs(sessions, fit_bound, config.metric, progress, "fit")
    cert = split_outputs(sessions, cert_bound, config.metric, progress, "certify")
    split_info = {**split_info, "n_fit": len(fit.labels), "n_certify": len(cert.labels)}
    fitted = fit_gate(fit, cert, config)
    gate, choice, grid, cert_scores = fitted.gate, fitted.choice, fitted.grid, fitted.cert_scores
    kind, temperature, score_table = gate.score, gate.temperature, fitted.score_table
    costs = _costs(config, sessions, list(cert_bound.feeds(16)), progress)
    curve = operating_points(cert.outcomes(cert_scores), grid, config.confidence)
    reference = DriftReference.from_scores(cert_scores, gate.threshold)
    spec = _spec(
        config,
        gate,
        choice,
        cert,
        cert_scores,
        costs,
        split_info,
        (small_model.name, large_model.name),
    )
    calibration = _calibration(cert, temperature, kind, score_table, config.bins)
    report = _report(spec, calibration, curve, choice)
    log.info(
        "cascade: %s score, T=%.3f, threshold %.4g, escalation %.1f%% on certify split",
        kind.value,
        temperature,
        gate.threshold,
        100 * spec.expected["escalation"],
    )
    return CascadeBuildResult(
        spec=spec,
        small=small_model,
        large=large_model,
        reference=reference,
        choice=choice,
        curve=curve,
        report=report,
    )


def _check_pair(small: Model, large: Model) -> None:
    s_in = [(t.name, t.dtype) for t in small.inputs]
    l_in = [(t.name, t.dtype) for t in large.inputs]
    if s_in != l_in:
        raise ModelError(
            f"the small and large models take different inputs ({s_in} vs {l_in}); "
            "a cascade sends the same request to both; export them alike"
        )
    s_out, l_out = small.outputs[0], large.outputs[0]
    classes = (s_out.shape[-1] if s_out.shape else None, l_out.shape[-1] if l_out.shape else None)
    if all(isinstance(c, int) for c in classes) and classes[0] != classes[1]:
        raise ModelError(
            f"the small model's first output has {classes[0]} classes and the large "
            f"model's {classes[1]}; both must score the same classes"
        )


def _splits(
    data: DataSpec, fit_data: DataSpec | None, small: Model, config: CascadeConfig
) -> tuple[BoundData, BoundData, dict[str, Any]]:
    bound = data if isinstance(data, BoundData) else bind(data, small)
    if fit_data is not None:
        fit = fit_data if isinstance(fit_data, BoundData) else bind(fit_data, small)
        return (
            fit,
            bound,
            {"method": "separate fit data", "fit_source": fit.name, "certify_source": bound.name},
        )
    arrays = bound.materialize()
    n = len(next(iter(arrays.values())))
    n_fit = round(n * config.fit_fraction)
    if n_fit < 20 or n - n_fit < 20:
        raise DataError(
            f"dataset {bound.name!r} has {n} samples; a cascade needs at least 20 to "
            "fit and 20 to certify (hundreds for a useful bound); give more data"
        )
    order = np.random.default_rng(config.seed).permutation(n)
    parts = [{k: v[idx] for k, v in arrays.items()} for idx in (order[:n_fit], order[n_fit:])]
    info = {
        "method": "random split",
        "seed": config.seed,
        "fit_fraction": config.fit_fraction,
        "source": bound.name,
    }
    return bind(parts[0], small), bind(parts[1], small), info


def _first_output(
    session: Session, bound: BoundData, progress: Progress, label: str
) -> tuple[np.ndarray, np.ndarray | None]:
    outputs = run_outputs(session, bound, progress=progress, label=label)
    stacked = outputs.stacked(0)
    return stacked.reshape(len(stacked), -1), outputs.labels


def split_outputs(
    sessions: tuple[Session, Session],
    bound: BoundData,
    metric: GateMetric,
    progress: Progress = NULL_PROGRESS,
    part: str = "data",
) -> SplitOutputs:
    """Run both models over ``bound`` and record who is right on each sample."""
    small_out, labels = _first_output(sessions[0], bound, progress, f"small model ({part})")
    large_out, _ = _first_output(sessions[1], bound, progress, f"large model ({part})")
    logits, probabilities = as_logits(small_out)
    large_pred = large_out.argmax(axis=1)
    if metric is GateMetric.AGREEMENT:
        labels = large_pred
    elif labels is None:
        raise DataError(
            f"the {metric.value} metric needs labels and dataset {bound.name!r} has "
            "none; add a 'labels' array, or use --metric agreement"
        )
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    return SplitOutputs(
        logits=logits,
        labels=labels,
        small_correct=logits.argmax(axis=1) == labels,
        large_correct=large_pred == labels,
        probabilities=probabilities,
    )


def _fit_point(
    outcomes: GateOutcomes, grid: np.ndarray, constraints: list[Constraint]
) -> tuple[bool, float, float]:
    """Best point estimate on the fit split: (feasible, escalation, metric)."""
    n = len(outcomes)
    ok = np.ones(len(grid), dtype=bool)
    for c in constraints:
        ok &= outcomes.loss_counts(grid, c.risk) / n <= c.limit
    if not ok.any():
        return (False, 1.0, 0.0)
    escalation = outcomes.loss_counts(grid, Risk.ESCALATION)[ok] / n
    metric = 1.0 - outcomes.loss_counts(grid, Risk.ERROR)[ok] / n
    only_escalation = all(c.risk is Risk.ESCALATION for c in constraints)
    best = int(np.argmax(metric)) if only_escalation else int(np.argmin(escalation))
    return (True, float(escalation[best]), float(metric[best]))


def _choose_score(
    fit: SplitOutputs, temperature: float, config: CascadeConfig
) -> tuple[ScoreKind, dict[str, dict[str, Any]]]:
    """The score meeting the target with the fewest escalations on the fit split."""
    table: dict[str, dict[str, Any]] = {}
    constraints = config.target.constraints()
    only_escalation = all(c.risk is Risk.ESCALATION for c in constraints)
    keys = {}
    for kind in ScoreKind:
        scores = confidence_scores(fit.logits, kind, temperature)
        auroc = error_detection_auroc(scores, fit.small_correct)
        feasible, esc, metric = _fit_point(
            fit.outcomes(scores), threshold_grid(scores), constraints
        )
        table[kind.value] = {
            "auroc": auroc,
            "fit_feasible": feasible,
            "fit_escalation": esc,
            "fit_metric": metric,
        }
        goodness = metric if only_escalation else -esc
        keys[kind] = (feasible, goodness, 0.0 if np.isnan(auroc) else auroc)
    chosen = config.score or max(ScoreKind, key=lambda k: keys[k])
    return chosen, table


def _costs(
    config: CascadeConfig,
    sessions: tuple[Session, Session],
    feeds: list[dict[str, np.ndarray]],
    progress: Progress,
) -> Costs:
    if config.cost_small_ms is not None and config.cost_large_ms is not None:
        return Costs(
            small_ms=config.cost_small_ms,
            large_ms=config.cost_large_ms,
            network_ms=config.cost_network_ms,
        )
    stats = measure_interleaved(
        {"small": sessions[0], "large": sessions[1]}, feeds, _COST_LATENCY, progress=progress
    )
    small = config.cost_small_ms if config.cost_small_ms is not None else stats["small"].mean
    large = config.cost_large_ms if config.cost_large_ms is not None else stats["large"].mean
    return Costs(small_ms=small, large_ms=large, network_ms=config.cost_network_ms, measured=True)


_RISK_WORDS = {
    Risk.ERROR: "the cascade's {metric} is at least {value:g}",
    Risk.HARM: (
        "at most {limit:g} of requests get a wrong answer from the cascade where the large "
        "model's is right, so the cascade's {metric} is at most {limit:g} below the "
        "large model's"
    ),
    Risk.ESCALATION: "at most {limit:g} of requests are escalated",
}


def _statement(config: CascadeConfig, choice: ThresholdChoice) -> str:
    parts = [
        _RISK_WORDS[c.risk].format(metric=config.metric.value, limit=c.limit, value=1.0 - c.limit)
        for c in config.target.constraints()
    ]
    return (
        f"With {config.confidence:.0%} confidence over the {choice.n_certify} certification "
        f"samples, {' and '.join(parts)}. Learn-then-Test fixed-sequence testing with "
        f"one-sided Clopper-Pearson bounds over {choice.n_candidates} thresholds fixed on a "
        "separate fit split; it holds for requests like the certification data "
        "(watch GET /drift)."
    )


def _expected(
    cert: SplitOutputs, scores: np.ndarray, threshold: float, costs: Costs
) -> dict[str, Any]:
    outcomes = cert.outcomes(scores)
    escalation = float(outcomes.escalated(threshold).mean())
    expected_ms = costs.expected_ms(escalation)
    return {
        "escalation": escalation,
        "metric": 1.0 - float(outcomes.losses(threshold, Risk.ERROR).mean()),
        "harm": float(outcomes.losses(threshold, Risk.HARM).mean()),
        "small_metric": float(cert.small_correct.mean()),
        "large_metric": float(cert.large_correct.mean()),
        "expected_latency_ms": expected_ms,
        "cost_vs_large_only": expected_ms / costs.large_only_ms if costs.large_only_ms else None,
        "split": "certify",
    }


def _spec(
    config: CascadeConfig,
    gate: Gate,
    choice: ThresholdChoice,
    cert: SplitOutputs,
    scores: np.ndarray,
    costs: Costs,
    split_info: dict[str, Any],
    names: tuple[str, str],
) -> CascadeSpec:
    guarantee = {
        "statement": _statement(config, choice),
        **choice.to_dict(),
        "method": "learn-then-test fixed-sequence, clopper-pearson",
    }
    return CascadeSpec(
        gate=gate,
        metric=config.metric,
        target=config.target,
        confidence=config.confidence,
        guarantee=guarantee,
        expected=_expected(cert, scores, gate.threshold, costs),
        costs=costs,
        data=split_info,
        models={"small": names[0], "large": names[1]},
    )


def _calibration(
    cert: SplitOutputs,
    temperature: float,
    kind: ScoreKind,
    score_table: dict[str, dict[str, Any]],
    bins: int,
) -> dict[str, Any]:
    """Calibration measured on the certify split, which the temperature never saw."""
    before = confidence_scores(cert.logits, ScoreKind.MAX_PROB, 1.0)
    after = confidence_scores(cert.logits, ScoreKind.MAX_PROB, temperature)
    correct = cert.small_correct
    for name, row in score_table.items():
        scores = confidence_scores(cert.logits, ScoreKind(name), temperature)
        row["certify_auroc"] = error_detection_auroc(scores, correct)
    return {
        "temperature": temperature,
        "score": kind.value,
        "split": "certify",
        "bins": bins,
        "ece_before": expected_calibration_error(before, correct, bins),
        "ece_after": expected_calibration_error(after, correct, bins),
        "reliability_before": [b.to_dict() for b in reliability_bins(before, correct, bins)],
        "reliability_after": [b.to_dict() for b in reliability_bins(after, correct, bins)],
        "scores": score_table,
    }


def _point(point: OperatingPoint, costs: Costs) -> dict[str, Any]:
    """A curve point with its expected latency and its cost relative to "always large"."""
    expected = costs.expected_ms(point.escalation)
    relative = expected / costs.large_only_ms if costs.large_only_ms else None
    return {**point.to_dict(), "expected_latency_ms": expected, "cost_vs_large_only": relative}


def _report(
    spec: CascadeSpec,
    calibration: dict[str, Any],
    curve: list[OperatingPoint],
    choice: ThresholdChoice,
) -> dict[str, Any]:
    import edgetune.report.cascade  # noqa: F401  (registers the HTML sections)
    from edgetune.report import new_report

    report = new_report("cascade")
    report["cascade"] = spec.to_dict()
    report["calibration"] = calibration
    chosen = next(i for i, p in enumerate(curve) if p.threshold == choice.threshold)
    report["tradeoff"] = {
        "split": "certify",
        "chosen_index": chosen,
        "costs": spec.costs.to_dict(),
        "points": [_point(p, spec.costs) for p in curve],
    }
    return report
