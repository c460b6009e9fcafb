"""The stage policy: membership, and when a stage advances, waits or halts."""

from __future__ import annotations

import pytest

from edgetune.bundle.ota.rollout import (
    Action,
    Decision,
    DeviceReport,
    GroupStats,
    RolloutPolicy,
    decide,
    parse_stages,
    plan_stage,
)
from edgetune.errors import ConfigError

DEVICES = [f"d{i:03d}" for i in range(200)]


def test_stages_must_increase_to_100() -> None:
    assert parse_stages("1,10,100") == (1, 10, 100)
    for bad in ("10,1,100", "1,10", "0,100", "a,100", "", "50,50,100"):
        with pytest.raises(ConfigError, match="stages"):
            parse_stages(bad)


def test_stage_membership_is_stable_nested_and_disjoint() -> None:
    policy = RolloutPolicy(min_control=5)
    c1, k1 = plan_stage(7, DEVICES, 1, policy)
    c10, k10 = plan_stage(7, list(reversed(DEVICES)), 10, policy)
    c100, k100 = plan_stage(7, DEVICES, 100, policy)
    assert (len(c1), len(k1), len(c10), len(k10), len(c100), k100) == (2, 5, 20, 20, 200, [])
    assert set(c1) <= set(c10) <= set(c100)
    assert not set(c1) & set(k1) and not set(c10) & set(k10)
    assert plan_stage(7, DEVICES, 1, policy) == (c1, k1)
    assert plan_stage(8, DEVICES, 1, policy)[0] != c1  # another rollout, another draw


def _ok(device: str, version: str = "2", errors: int = 1, latency: float = 1.0,
        confidence: float = 0.9) -> DeviceReport:
    return DeviceReport(device_id=device, status="ok", version=version, samples=100,
                        errors=errors, latency_ms=latency, confidence=confidence)


def _decide(reports: list[DeviceReport], age: float = 10.0, **policy: float) -> Decision:
    canaries = [f"c{i}" for i in range(3)]
    controls = [f"k{i}" for i in range(5)]
    return decide(RolloutPolicy(**policy).validate(), version="2", canaries=canaries,  # type: ignore[arg-type]
                  controls=controls, reports={r.device_id: r for r in reports}, age_s=age)


GOOD = [_ok(f"c{i}") for i in range(3)] + [_ok(f"k{i}", version="1") for i in range(5)]


def test_advances_when_canaries_match_control() -> None:
    decision = _decide(GOOD)
    assert decision.action is Action.ADVANCE


def test_waits_for_reports_and_soak_then_times_out() -> None:
    assert _decide(GOOD[:2]).action is Action.WAIT
    assert _decide(GOOD[:4]).action is Action.WAIT
    assert _decide(GOOD, soak_s=60).action is Action.WAIT
    late = _decide(GOOD[:2], age=4000.0)
    assert late.action is Action.HALT and "timed out" in late.reason


def test_canaries_still_on_the_old_version_do_not_count() -> None:
    stale = [_ok("c0", version="1"), *GOOD[1:]]
    assert _decide(stale).action is Action.WAIT


def test_any_failed_canary_halts_at_once() -> None:
    failed = DeviceReport(device_id="c0", status="health_failed", reason="NaN outputs")
    decision = _decide([failed])
    assert decision.action is Action.HALT and "NaN outputs" in decision.reason
    patient = _decide([failed], fail_fast=False)
    assert patient.action is Action.WAIT
    tolerant = _decide([failed, *GOOD[1:]], max_failure_rate=0.5)
    assert tolerant.action is Action.ADVANCE


@pytest.mark.parametrize(("canary", "word"), [
    ({"errors": 40}, "error rate"),
    ({"latency": 2.0}, "latency"),
    ({"confidence": 0.5}, "confidence"),
])
def test_regressions_halt(canary: dict[str, float], word: str) -> None:
    bad = [_ok(f"c{i}", **canary) for i in range(3)]
    decision = _decide(bad + GOOD[3:])
    assert decision.action is Action.HALT and word in decision.reason


def test_small_error_differences_are_not_regressions() -> None:
    slightly = [_ok(f"c{i}", errors=3) for i in range(3)]
    assert _decide(slightly + GOOD[3:]).action is Action.ADVANCE


def test_escalation_rise_halts() -> None:
    def esc(device: str, version: str, rate: float) -> DeviceReport:
        return DeviceReport(device_id=device, status="ok", version=version, samples=10,
                            escalation=rate)
    reports = [esc(f"c{i}", "2", 0.5) for i in range(3)] + [esc(f"k{i}", "1", 0.1)
                                                           for i in range(5)]
    decision = _decide(reports)
    assert decision.action is Action.HALT and "escalation" in decision.reason


def test_reference_stands_in_for_a_missing_control_group() -> None:
    reference = GroupStats.of(GOOD[3:])
    bad = [_ok(f"c{i}", errors=50) for i in range(3)]
    decision = decide(RolloutPolicy(), version="2", canaries=["c0", "c1", "c2"], controls=[],
                      reports={r.device_id: r for r in bad}, age_s=1.0, reference=reference)
    assert decision.action is Action.HALT
    first = decide(RolloutPolicy(), version="2", canaries=["c0", "c1", "c2"], controls=[],
                   reports={r.device_id: r for r in bad}, age_s=1.0, reference=None)
    assert first.action is Action.ADVANCE  # nothing to compare with: health checks only


def test_policy_round_trips_and_rejects_unknown_fields() -> None:
    policy = RolloutPolicy(soak_s=5.0, max_latency_ratio=2.0)
    assert RolloutPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match="unknown rollout policy"):
        RolloutPolicy.from_dict({"soak": 1})
    with pytest.raises(ConfigError):
        RolloutPolicy(max_latency_ratio=0.5).validate()
