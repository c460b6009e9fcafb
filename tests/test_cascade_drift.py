"""Drift: a shifted stream of gate scores is flagged, an unshifted one is not."""

from __future__ import annotations

import numpy as np
import pytest

from edgetune.cascade.drift import (
    DriftMonitor,
    DriftReference,
    check_drift,
    population_stability_index,
)

THRESHOLD = 0.8


def _scores(n: int, seed: int, a: float = 8.0, b: float = 1.5) -> np.ndarray:
    """Confidence-like scores piled up near 1, as a good small model's are."""
    return np.random.default_rng(seed).beta(a, b, n)


@pytest.fixture
def reference() -> DriftReference:
    return DriftReference.from_scores(_scores(1500, seed=0), THRESHOLD)


def test_unshifted_streams_are_not_flagged(reference: DriftReference) -> None:
    for seed in range(1, 6):
        window = _scores(1000, seed=seed)
        status = check_drift(reference, window, window < THRESHOLD)
        assert status.ready and not status.drift, status.reasons
        assert status.psi is not None and status.psi < 0.1


def test_shifted_stream_is_flagged_with_reasons(reference: DriftReference) -> None:
    window = _scores(1000, seed=9, a=5.0, b=2.0)  # less confident: inputs changed
    status = check_drift(reference, window, window < THRESHOLD)
    assert status.drift
    assert any("PSI" in r for r in status.reasons) and any("KS" in r for r in status.reasons)
    assert status.escalation_rate is not None and status.escalation_rate > reference.escalation_rate


def test_escalation_rate_alone_can_signal_drift(reference: DriftReference) -> None:
    window = _scores(1000, seed=10)
    status = check_drift(reference, window, np.ones(1000, dtype=bool))
    assert status.drift and any("escalation rate" in r for r in status.reasons)


def test_monitor_waits_for_enough_scores_then_keeps_a_sliding_window(
    reference: DriftReference,
) -> None:
    monitor = DriftMonitor(reference, window=400, min_samples=300)
    monitor.update(_scores(100, seed=11), np.zeros(100, dtype=bool))
    assert not monitor.status().ready
    shifted = _scores(400, seed=12, a=3.0, b=3.0)
    monitor.update(shifted, shifted < THRESHOLD)
    assert monitor.status().n == 400 and monitor.status().drift
    calm = _scores(400, seed=13)
    monitor.update(calm, calm < THRESHOLD)  # the shifted scores slide out of the window
    assert not monitor.status().drift


def test_psi_is_zero_for_identical_bins_and_grows_with_shift() -> None:
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert population_stability_index(ref, ref) == pytest.approx(0.0)
    small = population_stability_index(ref, np.array([0.3, 0.25, 0.25, 0.2]))
    large = population_stability_index(ref, np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0 < small < 0.1 < 0.2 < large


def test_reference_round_trips_through_json(reference: DriftReference) -> None:
    assert DriftReference.from_dict(reference.to_dict()) == reference
    assert len(reference.sample) <= 2000 and len(reference.proportions) == len(reference.edges) + 1
