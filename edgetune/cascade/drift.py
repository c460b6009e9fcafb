"""Drift of the gate's inputs: is live traffic still like the data the threshold was certified on?

The threshold's guarantee holds for requests exchangeable with the certify split. The service
keeps a sliding window of gate scores and escalation decisions and compares it with the
reference taken at calibration time:

* population stability index (PSI) over the reference's decile bins: 0.1 is a warning,
  0.2 a shift (the usual credit-scoring rule of thumb);
* a two-sample Kolmogorov-Smirnov test of the scores against a stored reference sample;
* an exact binomial test of the window's escalation rate against the reference rate.

Either test below ``ALPHA``, or PSI at 0.2 or more, says the gate should be re-checked
(``edgetune cascade recalibrate``). Nothing is said before ``min_samples`` scores are in.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune.cascade._deps import scipy_module

__all__ = [
    "ALPHA",
    "PSI_ALERT",
    "PSI_WARN",
    "DriftMonitor",
    "DriftReference",
    "DriftStatus",
    "check_drift",
    "population_stability_index",
]

PSI_WARN = 0.1
PSI_ALERT = 0.2
ALPHA = 0.001
"""Significance of the KS and escalation tests; low because a service asks again and again."""
_MAX_SAMPLE = 2000
_PSI_EPS = 1e-4


@dataclass(frozen=True, kw_only=True)
class DriftReference:
    """Gate-score statistics at calibration time, stored beside the cascade."""

    edges: tuple[float, ...]
    """Inner bin edges (deciles of the reference scores, ties merged)."""
    proportions: tuple[float, ...]
    sample: tuple[float, ...]
    """Sorted reference scores (evenly thinned to at most 2000) for the KS test."""
    escalation_rate: float
    n: int

    @classmethod
    def from_scores(cls, scores: np.ndarray, threshold: float, bins: int = 10) -> DriftReference:
        scores = np.sort(np.asarray(scores, dtype=np.float64))
        edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))
        keep = np.linspace(0, len(scores) - 1, min(len(scores), _MAX_SAMPLE)).round().astype(int)
        return cls(
            edges=tuple(float(e) for e in edges),
            proportions=tuple(float(p) for p in bin_proportions(scores, edges)),
            sample=tuple(float(s) for s in scores[keep]),
            escalation_rate=float(np.mean(scores < threshold)),
            n=len(scores),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": list(self.edges),
            "proportions": list(self.proportions),
            "sample": list(self.sample),
            "escalation_rate": self.escalation_rate,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        return cls(
            edges=tuple(data["edges"]),
            proportions=tuple(data["proportions"]),
            sample=tuple(data["sample"]),
            escalation_rate=float(data["escalation_rate"]),
            n=int(data["n"]),
        )


def bin_proportions(scores: np.ndarray, edges: np.ndarray | tuple[float, ...]) -> np.ndarray:
    index = np.searchsorted(np.asarray(edges), np.asarray(scores), side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return counts / max(len(scores), 1)


def population_stability_index(reference: np.ndarray, current: np.ndarray) -> float:
    """Sum of (current - reference) * ln(current / reference) over bins, both smoothed."""
    ref = np.clip(np.asarray(reference, dtype=np.float64), _PSI_EPS, None)
    cur = np.clip(np.asarray(current, dtype=np.float64), _PSI_EPS, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass(frozen=True, kw_only=True)
class DriftStatus:
    """The window compared with the reference; ``drift`` says whether to re-check the gate."""

    n: int
    ready: bool
    drift: bool = False
    warning: bool = False
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    escalation_rate: float | None = None
    reference_escalation_rate: float | None = None
    escalation_pvalue: float | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_drift(
    reference: DriftReference, scores: np.ndarray, escalated: np.ndarray, *, min_samples: int = 200
) -> DriftStatus:
    """Compare a window of gate scores and escalation decisions with the reference."""
    n = len(scores)
    if n < min_samples:
        return DriftStatus(
            n=n, ready=False, reasons=[f"waiting for {min_samples} scores (have {n})"]
        )
    stats = scipy_module("stats")
    psi = population_stability_index(
        np.asarray(reference.proportions), bin_proportions(scores, reference.edges)
    )
    ks = stats.ks_2samp(scores, np.asarray(reference.sample))
    k = int(np.sum(escalated))
    esc_p = float(stats.binomtest(k, n, min(max(reference.escalation_rate, 1e-6), 1 - 1e-6)).pvalue)
    reasons = _reasons(psi, float(ks.pvalue), esc_p, k / n, reference.escalation_rate)
    return DriftStatus(
        n=n,
        ready=True,
        drift=bool(reasons),
        warning=psi >= PSI_WARN,
        psi=psi,
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        escalation_rate=k / n,
        reference_escalation_rate=reference.escalation_rate,
        escalation_pvalue=esc_p,
        reasons=reasons,
    )


def _reasons(psi: float, ks_p: float, esc_p: float, rate: float, ref_rate: float) -> list[str]:
    reasons = []
    if psi >= PSI_ALERT:
        reasons.append(f"score PSI {psi:.3f} >= {PSI_ALERT}")
    if ks_p < ALPHA:
        reasons.append(f"score KS test p = {ks_p:.2g} < {ALPHA}")
    if esc_p < ALPHA:
        reasons.append(
            f"escalation rate {rate:.3f} vs {ref_rate:.3f} at calibration "
            f"(binomial p = {esc_p:.2g})"
        )
    return reasons


class DriftMonitor:
    """A thread-safe sliding window of gate scores and escalation decisions."""

    def __init__(
        self, reference: DriftReference, *, window: int = 1000, min_samples: int = 200
    ) -> None:
        self.reference = reference
        self.min_samples = min(min_samples, window)
        self._scores: deque[float] = deque(maxlen=window)
        self._escalated: deque[bool] = deque(maxlen=window)
        self._lock = threading.Lock()

    def update(self, scores: np.ndarray, escalated: np.ndarray) -> None:
        with self._lock:
            self._scores.extend(float(s) for s in np.asarray(scores).reshape(-1))
            self._escalated.extend(bool(e) for e in np.asarray(escalated).reshape(-1))

    def status(self) -> DriftStatus:
        with self._lock:
            scores = np.fromiter(self._scores, dtype=np.float64)
            escalated = np.fromiter(self._escalated, dtype=bool)
        return check_drift(self.reference, scores, escalated, min_samples=self.min_samples)
