"""Gate calibration: temperature scaling, scores, ECE (synthetic logits with known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.cascade.calibration import (
    ScoreKind,
    as_logits,
    confidence_scores,
    error_detection_auroc,
    expected_calibration_error,
    fit_temperature,
    log_softmax,
    reliability_bins,
)
from edgetune.errors import DataError


def _calibrated_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, classes))
    probs = np.exp(log_softmax(logits))
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature: float) -> None:
    logits, labels = _calibrated_logits(20000, 10, seed=3)
    fitted = fit_temperature(logits * true_temperature, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_scaling_lowers_the_calibration_error_of_an_overconfident_model() -> None:
    logits, labels = _calibrated_logits(6000, 10, seed=4)
    overconfident = logits * 3.0
    correct = overconfident.argmax(axis=1) == labels
    before = expected_calibration_error(
        confidence_scores(overconfident, ScoreKind.MAX_PROB), correct
    )
    t = fit_temperature(overconfident[:3000], labels[:3000])
    held_out = confidence_scores(overconfident[3000:], ScoreKind.MAX_PROB, t)
    after = expected_calibration_error(held_out, correct[3000:])
    assert before > 0.2 and after < before / 5


def test_scores_lie_in_unit_interval_and_rank_certain_rows_higher() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8], [0.0, 0.0, 0.0]])
    for kind in ScoreKind:
        scores = confidence_scores(logits, kind)
        assert np.all((scores >= 0) & (scores <= 1))
        assert scores[0] > scores[1] >= scores[2] - 1e-12
    assert confidence_scores(logits, ScoreKind.MARGIN)[2] == pytest.approx(0.0)


def test_reliability_bins_count_every_sample_and_match_accuracy() -> None:
    confidence = np.array([0.05, 0.15, 0.95, 0.97, 0.99])
    correct = np.array([False, True, True, True, False])
    bins = reliability_bins(confidence, correct, bins=10)
    assert sum(b.count for b in bins) == 5
    top = bins[-1]
    assert top.count == 3 and top.accuracy == pytest.approx(2 / 3)


def test_probabilities_are_recognised_and_turned_into_logits() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    logits, were_probs = as_logits(probs)
    assert were_probs and np.allclose(np.exp(log_softmax(logits)), probs, atol=1e-6)
    assert as_logits(np.array([[2.0, -1.0]]))[1] is False


def test_auroc_is_one_for_a_perfect_score_and_half_for_noise() -> None:
    correct = np.array([True] * 50 + [False] * 50)
    assert error_detection_auroc(np.r_[np.ones(50), np.zeros(50)], correct) == pytest.approx(1.0)
    noise = np.random.default_rng(0).random(100)
    assert abs(error_detection_auroc(noise, correct) - 0.5) < 0.15


def test_bad_labels_are_refused_with_the_range() -> None:
    with pytest.raises(DataError, match=r"labels range over \[0, 7\]"):
        fit_temperature(np.zeros((3, 4)), np.array([0, 1, 7]))
    with pytest.raises(DataError, match="class scores of shape"):
        as_logits(np.zeros(5))
