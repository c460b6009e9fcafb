"""Gate calibration: temperature scaling, confidence scores, and how well calibrated they are.

A small network's raw softmax confidence is often confidently wrong. Temperature scaling (Guo
et al., 2017) divides the logits by one scalar ``T`` fitted by minimizing the negative
log-likelihood on held-out labeled data: it keeps every prediction (the argmax) and removes most
of the over-confidence. The gate can then score a sample by the calibrated maximum probability,
by the margin between the two most likely classes, or by one minus the normalized entropy; all
three lie in [0, 1], higher meaning "answer locally".

Calibration is measured by the expected calibration error (ECE, equal-width bins) and shown as
a reliability diagram (accuracy against mean confidence per bin).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from edgetune.cascade._deps import scipy_module
from edgetune.errors import DataError

__all__ = [
    "ReliabilityBin",
    "ScoreKind",
    "as_logits",
    "confidence_scores",
    "error_detection_auroc",
    "expected_calibration_error",
    "fit_temperature",
    "log_softmax",
    "nll",
    "reliability_bins",
]

_BETA_BOUNDS = (1e-3, 50.0)
"""Search range of 1/T: temperatures from 0.02 to 1000."""


class ScoreKind(str, Enum):
    """How the gate turns the small model's calibrated probabilities into one confidence."""

    MAX_PROB = "max_prob"
    MARGIN = "margin"
    ENTROPY = "entropy"


def as_logits(outputs: np.ndarray) -> tuple[np.ndarray, bool]:
    """Logits as float64 ``(N, K)``, and whether the model gave probabilities (then logged)."""
    array = np.asarray(outputs, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise DataError(
            f"the cascade gate needs class scores of shape (N, classes>=2) from the small "
            f"model's first output; got shape {array.shape}; put the logits first"
        )
    if not np.all(np.isfinite(array)):
        raise DataError("the small model produced NaN or Inf scores; check the model and inputs")
    rows = array.sum(axis=1)
    if np.all(array >= 0) and np.allclose(rows, 1.0, atol=1e-3):
        return np.log(np.clip(array, 1e-12, None)), True
    return array, False


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    logp = log_softmax(logits, temperature)
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimizes NLL; convex in 1/T, so a bounded scalar search is exact."""
    labels = _check_labels(logits, labels)
    optimize = scipy_module("optimize")
    result = optimize.minimize_scalar(
        lambda beta: nll(logits, labels, 1.0 / beta),
        bounds=_BETA_BOUNDS,
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(1.0 / result.x)


def _check_labels(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(logits):
        raise DataError(
            f"{len(labels)} labels for {len(logits)} samples; give one class index per sample"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels have dtype {labels.dtype}; give integer class indices")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise DataError(
            f"labels range over [{labels.min()}, {labels.max()}] but the model has "
            f"{logits.shape[1]} classes; give class indices in [0, {logits.shape[1] - 1}]"
        )
    return labels.astype(np.int64)


def confidence_scores(logits: np.ndarray, kind: ScoreKind, temperature: float = 1.0) -> np.ndarray:
    """Per-sample confidence in [0, 1] (higher means the small model's answer is kept).

    Written for one-sample requests too: the gate runs on every request, so it avoids
    computing what the score does not need (the largest probability is ``1 / sum(exp)``
    once the largest logit is subtracted).
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    total = e.sum(axis=1)
    if kind is ScoreKind.MAX_PROB:
        return 1.0 / total
    if kind is ScoreKind.MARGIN:
        second = np.partition(e, -2, axis=1)[:, -2]
        return (1.0 - second) / total
    probs = e / total[:, None]
    entropy = -np.sum(probs * np.log(np.clip(probs, 1e-300, None)), axis=1)
    return np.clip(1.0 - entropy / np.log(probs.shape[1]), 0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class ReliabilityBin:
    """One bar of a reliability diagram."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "confidence": self.confidence,
            "accuracy": self.accuracy,
        }


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> list[ReliabilityBin]:
    """Equal-width confidence bins with their accuracy; empty bins are left out."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            out.append(
                ReliabilityBin(
                    lower=float(edges[b]),
                    upper=float(edges[b + 1]),
                    count=int(mask.sum()),
                    confidence=float(confidence[mask].mean()),
                    accuracy=float(correct[mask].mean()),
                )
            )
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    """Mean |accuracy - confidence| over bins, weighted by the share of samples in each."""
    n = len(confidence)
    if n == 0:
        return 0.0
    parts = reliability_bins(confidence, correct, bins)
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in parts) / n)


def error_detection_auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """Chance that a correct answer scores above a wrong one (0.5 = the score is useless)."""
    correct = np.asarray(correct, dtype=bool)
    n_pos, n_neg = int(correct.sum()), int((~correct).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    stats = scipy_module("stats")
    ranks = stats.rankdata(scores)
    return float((ranks[correct].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
