"""Choosing the escalation threshold with a guarantee, not only on average.

The gate escalates a sample when its confidence score is below the threshold ``t``. Each
target is a bound on a rate over requests:

* ``error``: the cascade's answer is wrong (``1 - metric``), for ``--target-metric``;
* ``harm``: the cascade's answer is wrong while the large model's would have been right, for
  ``--max-drop`` (the cascade's drop below the large model is at most its harm rate);
* ``escalation``: the request is sent to the large model, for ``--max-escalation``.

Candidate thresholds are fixed beforehand on a *fit* split. On a separate *certify* split each
target is then tested by Learn-then-Test with fixed-sequence testing (Angelopoulos et al.,
2021): candidates are visited from the safest to the riskiest, and a candidate is certified
while the one-sided Clopper-Pearson upper bound on its rate stays within the target; the walk
stops at the first failure. With probability at least ``confidence`` over the certify split,
every certified threshold meets its target, so the chosen one does. Several targets each get
``1 - confidence`` divided by their number (Bonferroni), and the threshold must be certified
for all of them. The guarantee holds for future requests exchangeable with the certify split,
which is why the service watches for drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from edgetune.cascade._deps import scipy_module
from edgetune.errors import DataError

__all__ = [
    "ESCALATE_ALL",
    "ESCALATE_NONE",
    "Constraint",
    "GateOutcomes",
    "OperatingPoint",
    "Risk",
    "TargetNotMetError",
    "ThresholdChoice",
    "choose_threshold",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "operating_points",
    "threshold_grid",
    "upper_bounds",
]

ESCALATE_NONE = 0.0
"""No score is below 0, so nothing is escalated."""
ESCALATE_ALL = float(np.nextafter(1.0, 2.0))
"""Every score is at most 1, so everything is escalated (finite, so it survives JSON)."""


class TargetNotMetError(DataError):
    """No candidate threshold can be certified for the target on the data given."""


class Risk(str, Enum):
    ERROR = "error"
    HARM = "harm"
    ESCALATION = "escalation"

    @property
    def safe_high(self) -> bool:
        """Whether a higher threshold (more escalation) makes this rate smaller."""
        return self is not Risk.ESCALATION


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """``rate(risk) <= limit`` for the threshold, with the chosen confidence."""

    risk: Risk
    limit: float


@dataclass(frozen=True, kw_only=True)
class GateOutcomes:
    """Per-sample facts the threshold needs: gate score and who answers correctly."""

    scores: np.ndarray
    small_correct: np.ndarray
    large_correct: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def escalated(self, threshold: float) -> np.ndarray:
        return np.asarray(self.scores) < threshold

    def losses(self, threshold: float, risk: Risk) -> np.ndarray:
        escalated = self.escalated(threshold)
        if risk is Risk.ESCALATION:
            return escalated
        cascade_correct = np.where(escalated, self.large_correct, self.small_correct)
        if risk is Risk.ERROR:
            return ~cascade_correct
        return ~cascade_correct & self.large_correct

    def loss_counts(self, grid: np.ndarray, risk: Risk) -> np.ndarray:
        """How many samples count against ``risk`` at each threshold (sorted searches)."""
        scores = np.asarray(self.scores)

        def below(mask: np.ndarray) -> np.ndarray:
            return np.searchsorted(np.sort(scores[mask]), grid, side="left")

        if risk is Risk.ESCALATION:
            return below(np.ones(len(scores), dtype=bool))
        small_wrong = ~np.asarray(self.small_correct)
        if risk is Risk.HARM:
            bad = small_wrong & np.asarray(self.large_correct)
            return int(bad.sum()) - below(bad)
        large_wrong = ~np.asarray(self.large_correct)
        return below(large_wrong) + int(small_wrong.sum()) - below(small_wrong)

    def subset(self, index: np.ndarray) -> GateOutcomes:
        return GateOutcomes(
            scores=self.scores[index],
            small_correct=self.small_correct[index],
            large_correct=self.large_correct[index],
        )


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided exact binomial upper bound on a rate seen ``k`` times in ``n``."""
    return float(upper_bounds(np.array([k]), n, confidence)[0])


def upper_bounds(counts: np.ndarray, n: int, confidence: float) -> np.ndarray:
    """:func:`clopper_pearson_upper` for many counts at once."""
    counts = np.asarray(counts)
    inner = np.minimum(counts, n - 1)
    bounds = scipy_module("stats").beta.ppf(confidence, inner + 1, n - inner)
    return np.where(counts >= n, 1.0, bounds)


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided exact binomial lower bound on a rate seen ``k`` times in ``n``."""
    if k <= 0:
        return 0.0
    return float(scipy_module("stats").beta.ppf(1.0 - confidence, k, n - k + 1))


def threshold_grid(fit_scores: np.ndarray, size: int = 200) -> np.ndarray:
    """Candidate thresholds, ascending: quantiles of the fit split's scores plus both ends."""
    levels = np.linspace(0.0, 1.0, size)
    inner = np.quantile(np.asarray(fit_scores, dtype=np.float64), levels)
    return np.unique(np.concatenate([[ESCALATE_NONE], inner, [ESCALATE_ALL]]))


@dataclass(frozen=True, kw_only=True)
class Certified:
    """The candidates one target certified: a contiguous run of grid indices."""

    constraint: Constraint
    indices: tuple[int, ...]
    bounds: dict[int, float]
    first_failure: tuple[int, float] | None


def _certify(
    outcomes: GateOutcomes, grid: np.ndarray, constraint: Constraint, confidence: float
) -> Certified:
    """Fixed-sequence testing: walk from the safest candidate, stop at the first failure."""
    bounds = upper_bounds(outcomes.loss_counts(grid, constraint.risk), len(outcomes), confidence)
    order = np.arange(len(grid))[::-1] if constraint.risk.safe_high else np.arange(len(grid))
    failing = np.flatnonzero(bounds[order] > constraint.limit)
    stop = int(failing[0]) if len(failing) else len(order)
    passed = [int(i) for i in order[:stop]]
    first_failure = (int(order[stop]), float(bounds[order[stop]])) if stop < len(order) else None
    return Certified(
        constraint=constraint,
        indices=tuple(passed),
        bounds={i: float(bounds[i]) for i in passed},
        first_failure=first_failure,
    )


@dataclass(frozen=True, kw_only=True)
class ThresholdChoice:
    """The chosen threshold and the certified bounds that justify it."""

    threshold: float
    confidence: float
    per_target_confidence: float
    n_certify: int
    n_candidates: int
    n_certified: int
    bounds: dict[str, float]
    """Upper bound on each targeted rate at the chosen threshold."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "confidence": self.confidence,
            "per_target_confidence": self.per_target_confidence,
            "n_certify": self.n_certify,
            "n_candidates": self.n_candidates,
            "n_certified": self.n_certified,
            "bounds": dict(self.bounds),
        }


def choose_threshold(
    outcomes: GateOutcomes, grid: np.ndarray, constraints: Sequence[Constraint], confidence: float
) -> ThresholdChoice:
    """The certified threshold that escalates least (or, with only an escalation target, most)."""
    if not constraints:
        raise ValueError("choose_threshold needs at least one constraint")
    level = 1.0 - (1.0 - confidence) / len(constraints)
    runs = [_certify(outcomes, grid, c, level) for c in constraints]
    common = set(range(len(grid)))
    for run in runs:
        if not run.indices:
            raise TargetNotMetError(_unmet_message(run, grid, len(outcomes), confidence))
        common &= set(run.indices)
    if not common:
        raise TargetNotMetError(_conflict_message(runs, grid, len(outcomes)))
    only_escalation = all(c.risk is Risk.ESCALATION for c in constraints)
    chosen = max(common) if only_escalation else min(common)
    return ThresholdChoice(
        threshold=float(grid[chosen]),
        confidence=confidence,
        per_target_confidence=level,
        n_certify=len(outcomes),
        n_candidates=len(grid),
        n_certified=len(common),
        bounds={run.constraint.risk.value: run.bounds[chosen] for run in runs},
    )


def _unmet_message(run: Certified, grid: np.ndarray, n: int, confidence: float) -> str:
    c = run.constraint
    bound = run.first_failure[1] if run.first_failure else float("nan")
    where = "escalating every request" if c.risk.safe_high else "escalating nothing"
    return (
        f"no escalation threshold meets {c.risk.value} rate <= {c.limit:g} with "
        f"{confidence:.0%} confidence on {n} certification samples: even {where}, the upper "
        f"bound is {bound:.4g}; loosen the target, lower --confidence, or give more labeled data"
    )


def _conflict_message(runs: list[Certified], grid: np.ndarray, n: int) -> str:
    parts = []
    for run in runs:
        lo, hi = float(grid[min(run.indices)]), float(grid[max(run.indices)])
        parts.append(
            f"{run.constraint.risk.value} <= {run.constraint.limit:g} needs a threshold "
            f"in [{lo:.4g}, {hi:.4g}]"
        )
    return (
        f"the targets conflict on {n} certification samples: {'; '.join(parts)}; "
        "loosen one target or give more labeled data"
    )


@dataclass(frozen=True, kw_only=True)
class OperatingPoint:
    """One point of the trade-off curve, measured on the certify split."""

    threshold: float
    escalation: float
    metric: float
    harm: float
    bounds: dict[str, float]
    """One-sided upper bounds at the full confidence, one threshold at a time (for reading
    the curve; only the chosen point's bounds are corrected for choosing among many)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "escalation": self.escalation,
            "metric": self.metric,
            "harm": self.harm,
            "bounds": dict(self.bounds),
        }


def operating_points(
    outcomes: GateOutcomes, grid: np.ndarray, confidence: float
) -> list[OperatingPoint]:
    """Escalation rate, cascade metric and harm at every candidate threshold."""
    n = len(outcomes)
    counts = {risk: outcomes.loss_counts(grid, risk) for risk in Risk}
    bounds = {risk: upper_bounds(counts[risk], n, confidence) for risk in Risk}
    return [
        OperatingPoint(
            threshold=float(t),
            escalation=float(counts[Risk.ESCALATION][i] / n),
            metric=float(1.0 - counts[Risk.ERROR][i] / n),
            harm=float(counts[Risk.HARM][i] / n),
            bounds={r.value: float(bounds[r][i]) for r in Risk},
        )
        for i, t in enumerate(grid)
    ]
