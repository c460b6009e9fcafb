"""Threshold search: the certified bound holds on data the threshold never saw.

Synthetic gate with a known truth: the score ``s`` is uniform on [0, 1], the small model is
right with probability ``s``, the large model with probability 0.97 independently. Escalating
below ``t`` then has true harm ``0.97 (1 - t)^2 / 2``, true error ``0.03 t + (1 - t)^2 / 2`` and
true escalation rate ``t``, so every chosen threshold can be checked against the truth.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgetune.cascade.threshold import (
    ESCALATE_ALL,
    Constraint,
    GateOutcomes,
    Risk,
    TargetNotMetError,
    choose_threshold,
    clopper_pearson_lower,
    clopper_pearson_upper,
    operating_points,
    threshold_grid,
)

LARGE_ACC = 0.97
TRUE_RISK = {
    Risk.HARM: lambda t: LARGE_ACC * (1 - t) ** 2 / 2,
    Risk.ERROR: lambda t: (1 - LARGE_ACC) * t + (1 - t) ** 2 / 2,
    Risk.ESCALATION: lambda t: t,
}


def _draw(n: int, rng: np.random.Generator) -> GateOutcomes:
    scores = rng.random(n)
    return GateOutcomes(
        scores=scores, small_correct=rng.random(n) < scores, large_correct=rng.random(n) < LARGE_ACC
    )


def test_clopper_pearson_matches_closed_forms() -> None:
    assert clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_lower(100, 100, 0.95) == pytest.approx(0.05 ** (1 / 100))
    assert clopper_pearson_upper(100, 100, 0.95) == 1.0 and clopper_pearson_lower(0, 9, 0.9) == 0.0


@pytest.mark.parametrize(
    ("risk", "limit"), [(Risk.HARM, 0.02), (Risk.ERROR, 0.06), (Risk.ESCALATION, 0.3)]
)
def test_the_bound_holds_on_data_the_threshold_never_saw(risk: Risk, limit: float) -> None:
    rng = np.random.default_rng(11)
    confidence, trials = 0.9, 300
    violations, used = 0, []
    for _ in range(trials):
        grid = threshold_grid(rng.random(400))  # fixed on a fit split
        choice = choose_threshold(
            _draw(1000, rng), grid, [Constraint(risk=risk, limit=limit)], confidence
        )
        true = TRUE_RISK[risk](min(choice.threshold, 1.0))
        violations += true > limit
        used.append(true / limit)
        assert choice.bounds[risk.value] <= limit
    # at most 1 - confidence of trials may miss (plus three binomial standard deviations)
    assert violations / trials <= (1 - confidence) + 3 * np.sqrt(0.09 / trials)
    # and the bound is not vacuous: typically most of the budget is used
    assert np.median(used) > 0.5


def test_escalation_only_target_escalates_as_much_as_allowed() -> None:
    rng = np.random.default_rng(2)
    outcomes, grid = _draw(2000, rng), threshold_grid(rng.random(500))
    choice = choose_threshold(outcomes, grid, [Constraint(risk=Risk.ESCALATION, limit=0.4)], 0.95)
    assert 0.3 < outcomes.escalated(choice.threshold).mean() <= 0.4


def test_two_targets_share_the_confidence_and_both_hold() -> None:
    rng = np.random.default_rng(3)
    outcomes, grid = _draw(3000, rng), threshold_grid(rng.random(500))
    constraints = [
        Constraint(risk=Risk.HARM, limit=0.03),
        Constraint(risk=Risk.ESCALATION, limit=0.9),
    ]
    choice = choose_threshold(outcomes, grid, constraints, 0.9)
    assert choice.per_target_confidence == pytest.approx(0.95)
    assert set(choice.bounds) == {"harm", "escalation"}
    assert choice.bounds["harm"] <= 0.03 and choice.bounds["escalation"] <= 0.9


def test_unreachable_target_says_what_even_full_escalation_gives() -> None:
    rng = np.random.default_rng(4)
    outcomes, grid = _draw(500, rng), threshold_grid(rng.random(200))
    with pytest.raises(TargetNotMetError, match="even escalating every request, the upper bound"):
        choose_threshold(outcomes, grid, [Constraint(risk=Risk.ERROR, limit=0.01)], 0.95)


def test_conflicting_targets_are_reported() -> None:
    rng = np.random.default_rng(5)
    outcomes, grid = _draw(2000, rng), threshold_grid(rng.random(300))
    constraints = [
        Constraint(risk=Risk.HARM, limit=0.005),
        Constraint(risk=Risk.ESCALATION, limit=0.2),
    ]
    with pytest.raises(TargetNotMetError, match="targets conflict"):
        choose_threshold(outcomes, grid, constraints, 0.95)


def test_grid_ends_escalate_nothing_and_everything() -> None:
    rng = np.random.default_rng(6)
    outcomes = _draw(300, rng)
    grid = threshold_grid(outcomes.scores)
    points = operating_points(outcomes, grid, 0.95)
    assert points[0].escalation == 0.0 and points[-1].escalation == 1.0
    assert grid[-1] == ESCALATE_ALL and points[-1].harm == 0.0
    assert all(a.escalation <= b.escalation for a, b in itertools.pairwise(points))


@pytest.mark.parametrize("risk", list(Risk))
def test_counting_by_sorted_search_matches_counting_by_hand(risk: Risk) -> None:
    outcomes = _draw(400, np.random.default_rng(7))
    grid = threshold_grid(outcomes.scores, size=50)
    by_hand = [int(outcomes.losses(float(t), risk).sum()) for t in grid]
    assert outcomes.loss_counts(grid, risk).tolist() == by_hand
